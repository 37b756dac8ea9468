#!/bin/bash
# Measures how often the demo's L2 boot fails in one testbed configuration: one L1 run boots the
# L2 guest (VF0 at boot, ping, power off) RUNS times with each VMM, interleaved.
# Usage: tests/testbed/stability.sh [RUNS] [VMMS] [L2_CPUS]      (defaults: 20 "vfvmm qemu" 2)
# L1 configuration from the environment, as for run-l1.sh: VFVMM_L1_ACCEL, VFVMM_L1_SMP.
# Prints the per-boot lines and a summary; results stay in the printed directory.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUNS=${1:-20} VMMS=${2:-vfvmm qemu} CPUS=${3:-2}
results=$(mktemp -d /tmp/vfvmm-stability.XXXXXX)
printf 'STAB_RUNS=%s\nSTAB_VMMS=%s\nSTAB_CPUS=%s\n' "$RUNS" "$VMMS" "$CPUS" > "$results/params"
echo "stability: L1 accel=${VFVMM_L1_ACCEL:-tcg} smp=${VFVMM_L1_SMP:-1}, L2 vCPUs=$CPUS, $RUNS boots per VMM ($VMMS); results in $results"
rc=0
bash "$HERE/run-l1.sh" "$HERE/scenarios/stability.sh" "$results" $((RUNS * 600 + 300)) > "$results/run-l1.out" || rc=$?
cat "$results/stability.txt" 2>/dev/null || true
echo "stability: L1 run exit $rc"
exit "$rc"
