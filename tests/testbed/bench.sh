#!/bin/bash
# make bench: in one L1 run, process start -> L2 /init for vfvmm and for QEMU 10 (q35 + qboot),
# same kernel, initramfs, 256 MiB, 1 vCPU; prints each run, the medians and the ratio.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
results=$(mktemp -d /tmp/vfvmm-bench.XXXXXX)
echo "bench: results and logs in $results"
bash "$REPO/tests/testbed/run-l1.sh" "$REPO/tests/testbed/scenarios/bench-boot.sh" "$results" 1800 >"$results/run-l1.out"
python3 - "$results/bench-boot.txt" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    kind, vmm, rnd, ms = line.split()
    if kind == "BOOT" and ms != "NA":
        runs.setdefault(vmm, []).append(int(ms))
for vmm, ms in sorted(runs.items()):
    print(f"boot-to-init {vmm:6s} runs(ms)={ms} median={statistics.median(ms):.0f} ms")
if "vfvmm" in runs and "qemu" in runs:
    v, q = statistics.median(runs["vfvmm"]), statistics.median(runs["qemu"])
    print(f"boot-to-init ratio vfvmm/qemu = {v / q:.2f} (target <= 0.50)")
else:
    sys.exit("bench: missing runs, see the results directory")
PY
