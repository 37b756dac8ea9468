#!/usr/bin/env python3
"""make bench's report: the medians and vfvmm/QEMU ratios of every figure, vfvmm's phase
tables (boot, hot-attach, hot-detach), a CSV of every run and a PNG chart, and the change
since the previous `make bench` (kept in PREVIOUS_DIR).

usage: bench_report.py RESULTS_DIR SECTION PREVIOUS_DIR
  RESULTS_DIR/bench-boot.txt    "<KIND> <vmm> <round> <ms>" lines
  RESULTS_DIR/bench-phases.txt  "<timeline>\t<round>\t<phase>\t<ms>" lines (vfvmm's timings)
writes RESULTS_DIR/bench.csv, bench-phases.csv, bench.png; copies them to PREVIOUS_DIR.
"""
import csv
import os
import shutil
import statistics
import sys

results, section, previous_dir = sys.argv[1], sys.argv[2], sys.argv[3]

LABELS = {"BOOT": "boot-to-init (ms)", "BOOTVF": "boot-to-init with a VF (ms)", "RTT": "ping RTT via the VF (ms)",
          "BOOTELF": "boot-to-init, ELF vmlinux (ms)", "BOOTHP": "boot-to-init, huge pages (ms)",
          "BOOTELFHP": "boot-to-init, ELF + huge pages (ms)", "BOOTPF": "boot-to-init, RAM prefaulted (ms)",
          "ATTACH": "hot-attach -> driver bound (ms)", "FIRSTATTACH": "a VM's first hot-attach (ms)",
          "DETACH": "hot-detach -> VF free on host (ms)",
          "ATTACHHP": "hot-attach, huge pages (ms)", "FIRSTATTACHHP": "first hot-attach, huge pages (ms)",
          "DETACHHP": "hot-detach, huge pages (ms)",
          "ATTACHPF": "hot-attach, RAM prefaulted (ms)", "FIRSTATTACHPF": "first hot-attach, RAM prefaulted (ms)",
          "DETACHPF": "hot-detach, RAM prefaulted (ms)"}
SECTIONS = {"boot": {"BOOT", "BOOTELF", "BOOTHP", "BOOTELFHP", "BOOTPF"}, "vf": {"BOOTVF", "RTT"},
            "hotplug": {"ATTACH", "FIRSTATTACH", "DETACH", "ATTACHHP", "FIRSTATTACHHP", "DETACHHP", "ATTACHPF",
                        "FIRSTATTACHPF", "DETACHPF"}, "reconf": set(),
            "modes": set()}
# Which timeline breaks which figure down.
PHASES_OF = {"BOOT": "boot", "BOOTHP": "boothp", "BOOTELF": "bootelf", "BOOTELFHP": "bootelfhp", "BOOTPF": "bootpf",
             "ATTACH": "attach", "DETACH": "detach", "ATTACHHP": "attachhp", "DETACHHP": "detachhp",
             "ATTACHPF": "attachpf", "DETACHPF": "detachpf"}


def read_runs(path):
    runs = {}
    if os.path.exists(path):
        for line in open(path):
            parts = line.split()
            if len(parts) == 4 and parts[3] not in ("NA", ""):
                runs.setdefault((parts[0], parts[1]), []).append(float(parts[3]))
    return runs


def read_phases(path):
    """{timeline: {phase: [ms per round]}} with phases in first-seen order."""
    phases = {}
    if os.path.exists(path):
        for line in open(path):
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4:
                timeline, _round, phase, ms = parts
                phases.setdefault(timeline, {}).setdefault(phase, []).append(float(ms))
    return phases


def median(values):
    return statistics.median(values) if values else None


def change(now, before):
    if now is None or before is None or before == 0:
        return ""
    return f"  (previous {before:.0f}, {100 * (now - before) / before:+.0f} %)"


runs = read_runs(os.path.join(results, "bench-boot.txt"))
phases = read_phases(os.path.join(results, "bench-phases.txt"))
before_runs = read_runs(os.path.join(previous_dir, "bench-boot.txt"))
before_phases = read_phases(os.path.join(previous_dir, "bench-phases.txt"))
missing = False
optional = {"BOOTELF", "BOOTELFHP"}
only = set(LABELS) if section == "all" else SECTIONS[section]

# Reconfiguring one vfvmm VM's PF (VF count through 0): by pause vs by detach.
if section in ("all", "reconf"):
    for kind, label in (("RECONF_PAUSE", "reconfigure by pause (ms)"), ("RECONF_DETACH", "reconfigure by detach (ms)"),
                        ("RP_PAUSE", "  pause: pause + release"), ("RP_NUMVFS", "  pause: VFs re-created"),
                        ("RP_RESUME", "  pause: resume + re-acquire"), ("RP_GUEST", "  pause: guest traffic back")):
        vals = runs.get((kind, "vfvmm"))
        print(f"{label:30s} vfvmm  runs={vals} median={median(vals):.0f}" if vals else f"{label:30s} vfvmm  no runs")
    p, d = runs.get(("RECONF_PAUSE", "vfvmm")), runs.get(("RECONF_DETACH", "vfvmm"))
    if p and d:
        print(f"{'reconfigure':30s} ratio pause/detach = {median(p) / median(d):.2f}")
    else:
        missing = True
    # make bench BENCH_BASELINE=REV: the same pause rounds with an earlier vfvmm.
    for kind, label in (("RP_GUEST", "  pause: guest traffic back"), ("RECONF_PAUSE", "reconfigure by pause (ms)")):
        b, v = runs.get((kind, "baseline")), runs.get((kind, "vfvmm"))
        if b:
            print(f"{label:30s} baseline runs={b} median={median(b):.0f}")
            if v:
                print(f"{label:30s} ratio vfvmm/baseline = {median(v) / max(median(b), 1):.2f}")
# vfctl reconfigure of two VMs (2 -> 0 -> 4 VFs): live, pause and detach mode.
if section in ("all", "modes"):
    print(f"\n{'2 VMs, 2 -> 0 -> 4 VFs (median ms)':38s} {'live':>8s} {'pause':>8s} {'detach':>8s} {'live/detach':>12s}")
    for suffix, label in (("", "vfctl reconfigure, total"), ("_DOWN", "a VM's longest ping gap"),
                          ("_HB", "a VM's longest heartbeat gap")):
        meds = {m: median(runs.get((f"MULTI_{m}{suffix}", "vfvmm"), [])) for m in ("LIVE", "PAUSE", "DETACH")}
        if any(v is None for v in meds.values()):
            missing = True
        cell = {m: "-" if v is None else f"{v:.0f}" for m, v in meds.items()}
        ratio = f"{meds['LIVE'] / meds['DETACH']:.2f}" if meds["LIVE"] and meds["DETACH"] else "-"
        print(f"{label:38s} {cell['LIVE']:>8s} {cell['PAUSE']:>8s} {cell['DETACH']:>8s} {ratio:>12s}")
    for m in ("LIVE", "PAUSE", "DETACH"):
        for suffix in ("", "_DOWN", "_HB"):
            vals = runs.get((f"MULTI_{m}{suffix}", "vfvmm"))
            print(f"  MULTI_{m}{suffix:6s} runs={vals}")

for kind, label in LABELS.items():
    if kind not in only:
        continue  # a section of its own was asked for: the others did not run
    v, q = runs.get((kind, "vfvmm")), runs.get((kind, "qemu"))
    for vmm, vals in (("vfvmm", v), ("qemu", q)):
        if vals:
            was = median(before_runs.get((kind, vmm), []))
            print(f"{label:30s} {vmm:6s} runs={vals} median={median(vals):.2f}{change(median(vals), was)}")
        else:
            print(f"{label:30s} {vmm:6s} no runs")
    if v and q:
        print(f"{label:30s} ratio vfvmm/qemu = {median(v) / median(q):.2f}")
    elif kind not in optional:
        missing = True

# vfvmm's phase tables: the median of each phase over the rounds.
for kind, timeline in PHASES_OF.items():
    table = phases.get(timeline)
    if kind not in only or not table:
        continue
    total = median(runs.get((kind, "vfvmm"), []))
    print(f"\n{LABELS[kind]} -- vfvmm, by phase (median of {max(len(v) for v in table.values())} runs)")
    for phase, vals in table.items():
        m = median(vals)
        share = f"{100 * m / total:5.1f} %" if total else ""
        was = median(before_phases.get(timeline, {}).get(phase, []))
        print(f"  {phase:48s} {m:9.0f} ms {share}{change(m, was)}")
    if total:
        print(f"  {'total (' + kind + ')':48s} {total:9.0f} ms")

# Every run, as CSV.
with open(os.path.join(results, "bench.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["metric", "vmm", "round", "ms"])
    for line in open(os.path.join(results, "bench-boot.txt")):
        parts = line.split()
        if len(parts) == 4:
            w.writerow(parts)
with open(os.path.join(results, "bench-phases.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["timeline", "round", "phase", "ms"])
    if os.path.exists(os.path.join(results, "bench-phases.txt")):
        for line in open(os.path.join(results, "bench-phases.txt")):
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4:
                w.writerow(parts)


def chart(path):
    """Bars per figure, vfvmm beside QEMU (and the previous run's vfvmm), vfvmm's bar split into
    its phases where it has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in LABELS if k in only and k != "RTT" and runs.get((k, "vfvmm"))]
    if not kinds:
        return False
    cols = min(len(kinds), 6)
    rows = (len(kinds) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 7.5 * rows), squeeze=False)
    for ax in axes.flat[len(kinds):]:
        ax.set_visible(False)
    # One colour per phase name across the panels, and one legend for the figure.
    colors = plt.cm.tab20.colors  # the default cycle has 10
    color_of, legend = {}, {}
    for ax, kind in zip(axes.flat, kinds):
        bars = [("vfvmm", median(runs.get((kind, "vfvmm"), [])))]
        if runs.get((kind, "qemu")):
            bars.append(("QEMU", median(runs[(kind, "qemu")])))
        if before_runs.get((kind, "vfvmm")):
            bars.append(("vfvmm\nprevious", median(before_runs[(kind, "vfvmm")])))
        table = phases.get(PHASES_OF.get(kind, ""), {})
        for x, (name, value) in enumerate(bars):
            if name == "vfvmm" and table:
                bottom = 0.0
                for phase, vals in table.items():
                    m = median(vals)
                    color = color_of.setdefault(phase, colors[len(color_of) % len(colors)])
                    legend.setdefault(phase, ax.bar(x, m, bottom=bottom, color=color))
                    bottom += m
                if value > bottom:
                    rest = "rest (outside vfvmm's timeline)"
                    legend.setdefault(rest, ax.bar(x, value - bottom, bottom=bottom, color="lightgrey"))
            else:
                ax.bar(x, value, color="grey" if name == "QEMU" else "silver")
            ax.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(bars)), [b[0] for b in bars])
        ax.set_title(LABELS[kind], fontsize=9)
    fig.suptitle("make bench: medians in the nested testbed (ms; lower is better)")
    legend_rows = (len(legend) + 2) // 3
    if legend:
        fig.legend(list(legend.values()), list(legend.keys()), loc="lower center", ncol=3, fontsize=9)
    fig.tight_layout(rect=(0, min(0.4, 0.035 * legend_rows / rows), 1, 0.97))
    fig.savefig(path, dpi=110)
    return True


try:
    if chart(os.path.join(results, "bench.png")):
        print(f"\nchart: {os.path.join(results, 'bench.png')}")
except ImportError as e:
    print(f"bench: no chart ({e})", file=sys.stderr)
print(f"every run: {os.path.join(results, 'bench.csv')}, {os.path.join(results, 'bench-phases.csv')}")

# This run becomes the previous one for the next make bench (only a complete one).
if not missing:
    os.makedirs(previous_dir, exist_ok=True)
    for name in ("bench-boot.txt", "bench-phases.txt", "bench.csv", "bench-phases.csv", "bench.png"):
        src = os.path.join(results, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(previous_dir, name))
if missing:
    sys.exit("bench: missing runs, see the results directory")
