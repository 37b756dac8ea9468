//! Phase timings of boot and of the last device attach and detach: a [`Timeline`] is a start
//! and named milestones (see `devices::timing`); each phase runs from the milestone before it
//! to its own, with the exits the guest caused in it. `vm.info` shows them under `timings`,
//! `RUST_LOG=info` logs them, and `make bench` tabulates them.

use devices::timing::{Exits, Milestone};
use serde_json::{json, Value};

/// Milestones from a start, kept in time order.
#[derive(Debug, Clone)]
pub struct Timeline {
    start: Milestone,
    marks: Vec<(String, Milestone)>,
}

/// One phase: its name (the milestone that ends it), when it ended and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    pub at_ms: u64,
    pub ms: u64,
    pub exits: Exits,
}

impl Timeline {
    pub fn starting_now() -> Self {
        Self::starting_at(Milestone::now())
    }

    pub fn starting_at(start: Milestone) -> Self {
        Self { start, marks: Vec::new() }
    }

    /// The process's start (from /proc), before which the guest caused no exit.
    pub fn from_process_start() -> Self {
        let now = std::time::Instant::now();
        let age = std::time::Duration::from_millis(crate::process_age_ms());
        Self::starting_at(Milestone { at: now.checked_sub(age).unwrap_or(now), exits: Exits::default() })
    }

    pub fn start(&self) -> Milestone {
        self.start
    }

    /// Marks `name` now.
    pub fn mark(&mut self, name: &str) {
        self.add(name, Milestone::now());
    }

    /// Adds a milestone reached elsewhere (a vCPU, a device), unless one of that name is there
    /// or it happened before the start (it belongs to an earlier attach).
    pub fn add(&mut self, name: &str, milestone: Milestone) {
        if milestone.at < self.start.at || self.marks.iter().any(|(n, _)| n == name) {
            return;
        }
        let at = self.marks.partition_point(|(_, m)| m.at <= milestone.at);
        self.marks.insert(at, (name.to_string(), milestone));
    }

    pub fn has(&self, name: &str) -> bool {
        self.marks.iter().any(|(n, _)| n == name)
    }

    pub fn phases(&self) -> Vec<Phase> {
        let mut previous = self.start;
        self.marks
            .iter()
            .map(|(name, m)| {
                let phase = Phase {
                    name: name.clone(),
                    at_ms: m.at.duration_since(self.start.at).as_millis() as u64,
                    ms: m.at.duration_since(previous.at).as_millis() as u64,
                    exits: m.exits.since(&previous.exits),
                };
                previous = *m;
                phase
            })
            .collect()
    }

    /// `{"total_ms", "phases": [{"phase", "at_ms", "ms", "exits": {kind: n}}]}`.
    pub fn to_json(&self) -> Value {
        let phases = self.phases();
        let exits = |e: &Exits| e.nonzero().map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>();
        json!({
            "total_ms": phases.last().map_or(0, |p| p.at_ms),
            "phases": phases
                .iter()
                .map(|p| json!({ "phase": p.name, "at_ms": p.at_ms, "ms": p.ms, "exits": exits(&p.exits) }))
                .collect::<Vec<_>>(),
        })
    }

    /// One line: `phase +N ms [exits]; ...` (phase names have no `;`).
    pub fn summary(&self) -> String {
        self.phases()
            .iter()
            .map(|p| {
                let exits: Vec<String> = p.exits.nonzero().map(|(k, n)| format!("{k}={n}")).collect();
                if exits.is_empty() {
                    format!("{} +{} ms", p.name, p.ms)
                } else {
                    format!("{} +{} ms [{}]", p.name, p.ms, exits.join(" "))
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Boot and the last attach and detach, for `vm.info`.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub boot: Option<Timeline>,
    /// `(device id, timeline)`.
    pub last_attach: Option<(String, Timeline)>,
    pub last_detach: Option<(String, Timeline)>,
}

impl Timings {
    pub fn to_json(&self) -> Value {
        let device = |t: &Option<(String, Timeline)>| match t {
            Some((id, timeline)) => {
                let mut v = timeline.to_json();
                v["id"] = json!(id);
                v
            }
            None => Value::Null,
        };
        json!({
            "boot": self.boot().map_or(Value::Null, |b| b.to_json()),
            "last_attach": device(&self.last_attach),
            "last_detach": device(&self.last_detach),
        })
    }

    /// Boot's timeline with the milestones the vCPU and serial threads reached.
    pub fn boot(&self) -> Option<Timeline> {
        let mut boot = self.boot.clone()?;
        if let Some(m) = devices::timing::FIRST_VCPU_ENTRY.get() {
            boot.add("first vCPU entry", m);
        }
        if let Some(m) = devices::timing::FIRST_SERIAL_BYTE.get() {
            boot.add("first serial byte", m);
        }
        Some(boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(start: &Milestone, ms: u64, ecam: u64) -> Milestone {
        let mut exits = start.exits;
        exits.counts[3] += ecam;
        Milestone { at: start.at + Duration::from_millis(ms), exits }
    }

    #[test]
    fn phases_run_between_milestones_in_time_order_with_their_exits() {
        let start = Milestone::now();
        let mut t = Timeline::starting_at(start);
        t.add("opened", at(&start, 300, 0));
        t.add("validated", at(&start, 2, 0));
        // A vCPU's milestone arriving late, but earlier in time than the last mark.
        t.add("guest enabled MSI-X", at(&start, 900, 40));
        t.add("guest checked the slot", at(&start, 500, 10));
        t.add("opened", at(&start, 999, 0)); // a second of a name is ignored
        let phases = t.phases();
        let names: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["validated", "opened", "guest checked the slot", "guest enabled MSI-X"]);
        let ms: Vec<u64> = phases.iter().map(|p| p.ms).collect();
        assert_eq!(ms, [2, 298, 200, 400]);
        assert_eq!((phases[2].exits.total(), phases[3].exits.total()), (10, 30));
        let v = t.to_json();
        assert_eq!(v["total_ms"], 900);
        assert_eq!(v["phases"][3]["exits"]["ecam"], 30);
        assert_eq!(v["phases"][0]["exits"], json!({}));
        assert!(t.summary().contains("guest enabled MSI-X +400 ms [ecam=30]"), "{}", t.summary());
    }

    #[test]
    fn milestones_from_before_the_start_belong_to_an_earlier_attach() {
        let earlier = Milestone::now();
        std::thread::sleep(Duration::from_millis(2));
        let mut t = Timeline::starting_now();
        t.add("guest enabled MSI-X", earlier);
        assert!(!t.has("guest enabled MSI-X"));
        assert!(t.phases().is_empty());
    }

    #[test]
    fn vm_info_shows_what_happened_and_null_for_what_did_not() {
        let mut timings = Timings::default();
        let mut t = Timeline::starting_now();
        t.mark("validated");
        timings.last_attach = Some(("vf0".into(), t));
        let v = timings.to_json();
        assert_eq!(v["last_attach"]["id"], "vf0");
        assert_eq!(v["last_attach"]["phases"][0]["phase"], "validated");
        assert!(v["last_detach"].is_null() && v["boot"].is_null());
    }
}
