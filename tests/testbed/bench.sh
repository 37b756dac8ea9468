#!/bin/bash
# make bench: one L1 run of tests/testbed/scenarios/bench-boot.sh; prints every run, the
# medians and the vfvmm/QEMU ratios (boot to /init, with and without a VF; ping RTT via a VF;
# hot-attach/detach), and reconfiguring a VM's PF by pause vs by detach.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
results=$(mktemp -d /tmp/vfvmm-bench.XXXXXX)
echo "bench: results and logs in $results"
# BENCH_ONLY=boot|vf|reconf|multi|hotplug runs one section (scenarios/bench-SECTION-only.sh).
scenario=$REPO/tests/testbed/scenarios/bench-boot.sh
[[ -n ${BENCH_ONLY:-} ]] && scenario=$REPO/tests/testbed/scenarios/bench-$BENCH_ONLY-only.sh
bash "$REPO/tests/testbed/run-l1.sh" "$scenario" "$results" 3000 >"$results/run-l1.out"
python3 - "$results/bench-boot.txt" "${BENCH_ONLY:-all}" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) == 4 and parts[3] not in ("NA", ""):
        runs.setdefault((parts[0], parts[1]), []).append(float(parts[3]))
labels = {"BOOT": "boot-to-init (ms)", "BOOTVF": "boot-to-init with a VF (ms)", "RTT": "ping RTT via the VF (ms)",
          "BOOTELF": "boot-to-init, ELF vmlinux (ms)", "ATTACH": "hot-attach -> driver bound (ms)",
          "DETACH": "hot-detach -> VF free on host (ms)"}
optional = {"BOOTELF"}
section = sys.argv[2] if len(sys.argv) > 2 else "all"
if section != "all":  # BENCH_ONLY: only that section's figures are required
    only = {"boot": {"BOOT", "BOOTELF"}, "vf": {"BOOTVF", "RTT"}, "hotplug": {"ATTACH", "DETACH"}, "reconf": set(),
            "multi": set()}[section]
    optional |= set(labels) - only
missing = False
# Reconfiguring one vfvmm VM's PF (VF count through 0): by pause vs by detach.
reconf = {k: runs.get((k, "vfvmm")) for k in ("RECONF_PAUSE", "RECONF_DETACH", "RP_PAUSE", "RP_NUMVFS", "RP_RESUME", "RP_GUEST")}
if section in ("all", "reconf"):
    for kind, label in (("RECONF_PAUSE", "reconfigure by pause (ms)"), ("RECONF_DETACH", "reconfigure by detach (ms)"),
                        ("RP_PAUSE", "  pause: pause + release"), ("RP_NUMVFS", "  pause: VFs re-created"),
                        ("RP_RESUME", "  pause: resume + re-acquire"), ("RP_GUEST", "  pause: guest traffic back")):
        vals = reconf[kind]
        print(f"{label:30s} vfvmm  runs={vals} median={statistics.median(vals):.0f}" if vals else f"{label:30s} vfvmm  no runs")
    p, d = reconf["RECONF_PAUSE"], reconf["RECONF_DETACH"]
    if p and d:
        print(f"{'reconfigure':30s} ratio pause/detach = {statistics.median(p) / statistics.median(d):.2f}")
    else:
        missing = True
# vfctl reconfigure of two VMs (2 -> 4 VFs): pause vs detach mode.
if section in ("all", "multi"):
    multi = {k: runs.get((k, "vfvmm")) for k in ("MULTI_PAUSE", "MULTI_DETACH", "MULTI_PAUSE_DOWN", "MULTI_DETACH_DOWN")}
    for kind, label in (("MULTI_PAUSE", "2 VMs, reconfigure --mode pause (ms)"),
                        ("MULTI_DETACH", "2 VMs, reconfigure --mode detach (ms)"),
                        ("MULTI_PAUSE_DOWN", "  pause: a VM's downtime (ms)"),
                        ("MULTI_DETACH_DOWN", "  detach: a VM's downtime (ms)")):
        vals = multi[kind]
        print(f"{label:38s} runs={vals} median={statistics.median(vals):.0f}" if vals else f"{label:38s} no runs")
    for total, label in (("MULTI_PAUSE", "total"), ("MULTI_PAUSE_DOWN", "downtime")):
        p, d = multi[total], multi[total.replace("PAUSE", "DETACH")]
        if p and d:
            print(f"{'2 VMs, ' + label:38s} ratio pause/detach = {statistics.median(p) / statistics.median(d):.2f}")
        else:
            missing = True
for kind, label in labels.items():
    if section != "all" and kind not in only:
        continue  # a section of its own was asked for: the others did not run
    v, q = runs.get((kind, "vfvmm")), runs.get((kind, "qemu"))
    for vmm, vals in (("vfvmm", v), ("qemu", q)):
        print(f"{label:30s} {vmm:6s} runs={vals} median={statistics.median(vals):.2f}" if vals else f"{label:30s} {vmm:6s} no runs")
    if v and q:
        print(f"{label:30s} ratio vfvmm/qemu = {statistics.median(v) / statistics.median(q):.2f}")
    elif kind not in optional:
        missing = True
if missing:
    sys.exit("bench: missing runs, see the results directory")
PY
