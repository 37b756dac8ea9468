#!/bin/bash
# make bench: one L1 run of tests/testbed/scenarios/bench-boot.sh; prints every run, the
# medians and the vfvmm/QEMU ratios (boot to /init, with and without a VF; ping RTT via a VF).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
results=$(mktemp -d /tmp/vfvmm-bench.XXXXXX)
echo "bench: results and logs in $results"
bash "$REPO/tests/testbed/run-l1.sh" "$REPO/tests/testbed/scenarios/bench-boot.sh" "$results" 3000 >"$results/run-l1.out"
python3 - "$results/bench-boot.txt" <<'PY'
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
missing = False
for kind, label in labels.items():
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
