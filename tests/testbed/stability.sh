#!/bin/bash
# Measures how often an L2 boot fails, or freezes L1, in one testbed configuration: L1 runs boot
# the L2 guest RUNS times with each VMM, interleaved (scenarios/stability.sh). When run-l1.sh's
# watchdog finds an L1 frozen, the boot it froze in is counted as "l1-frozen" with the dump's
# summary, and a new L1 run goes on with the boots that are left.
# Usage: tests/testbed/stability.sh [RUNS] [VMMS] [L2_CPUS]      (defaults: 20 "vfvmm qemu" 2)
# Env: STAB_MEM (MiB, default 256), STAB_VF (1: VF at boot + ping, default; 0: no device),
#      STAB_QUIET (1: quiet guest console), and the L1 configuration as for run-l1.sh:
#      VFVMM_L1_ACCEL, VFVMM_L1_SMP, VFVMM_L1_WATCHDOG.
# Prints the per-boot lines and a summary; results stay in the printed directory.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUNS=${1:-20} VMMS=${2:-vfvmm qemu} CPUS=${3:-2}
MEM=${STAB_MEM:-256} VF=${STAB_VF:-1} QUIET=${STAB_QUIET:-0}
results=$(mktemp -d /tmp/vfvmm-stability.XXXXXX)
echo "stability: L1 accel=${VFVMM_L1_ACCEL:-tcg} smp=${VFVMM_L1_SMP:-1}, L2 vCPUs=$CPUS mem=${MEM}M vf=$VF quiet=$QUIET, $RUNS boots per VMM ($VMMS); results in $results"
all=$results/stability.txt
: > "$all"
first=1 l1_runs=0 rc=0 total=$((RUNS * $(wc -w <<<"$VMMS"))) start_s=${EPOCHREALTIME%.*}
while ((first <= RUNS && l1_runs < 10)); do
    l1_runs=$((l1_runs + 1))
    dir=$results/l1-$l1_runs
    mkdir -p "$dir"
    printf 'STAB_RUNS=%s\nSTAB_FIRST=%s\nSTAB_VMMS=%s\nSTAB_CPUS=%s\nSTAB_MEM=%s\nSTAB_VF=%s\nSTAB_QUIET=%s\n' \
        $((RUNS - first + 1)) "$first" "$VMMS" "$CPUS" "$MEM" "$VF" "$QUIET" > "$dir/params"
    # Each boot's outcome as it comes (elapsed time, boots done of all), from L1's console.
    bash "$HERE/run-l1.sh" "$HERE/scenarios/stability.sh" "$dir" $(((RUNS - first + 1) * 300 + 300)) \
        2> "$dir/run-l1.err" | tee "$dir/run-l1.out" | while IFS= read -r line; do
            [[ $line == *L1-STAB\ vmm=* ]] || continue
            done_here=$((${done_here:-0} + 1))
            done_boots=$(($(grep -c '^STAB ' "$all" || true) + done_here))
            t=$EPOCHREALTIME
            printf 'stability [%ds] %d/%d %s\n' $(( ${t%.*} - start_s )) "$done_boots" "$total" "${line#*L1-STAB }"
        done
    rc=${PIPESTATUS[0]}
    grep -a '^STAB ' "$dir/stability.txt" 2>/dev/null >> "$all" || true
    begun=$(grep -ao 'L1-STAB-BEGIN vmm=[^ ]* run=[0-9]*' "$dir/l1-console.log" | tail -n 1 || true)
    if [[ $rc == 0 ]]; then break; fi
    # The L1 run ended early: the boot it was in (begun, not recorded) is counted, and the
    # next L1 run starts with the boot after it (with the same one if none had begun).
    set -- $begun
    vmm=${2#vmm=} run=${3#run=}
    if [[ -n $begun ]] && ! grep -q "^STAB vmm=$vmm run=$run " "$all"; then
        if [[ $rc == 126 ]]; then why="outcome=l1-frozen $(head -n 1 "$dir/l1-freeze.txt")"; else why="outcome=l1-failed rc=$rc"; fi
        echo "STAB vmm=$vmm run=$run $why" | tee -a "$all"
        sed 's/^/stability:   /' "$dir/l1-freeze.txt" 2>/dev/null | head -n 12
    fi
    echo "stability: L1 run $l1_runs ended with exit $rc ($(tail -n 1 "$dir/run-l1.err"))"
    [[ -z $begun ]] || first=$((run + 1))
done
echo "stability: $l1_runs L1 run(s)"
for vmm in $VMMS; do
    printf 'STAB-SUMMARY %s boots=%d ok=%d fail=%d l1-frozen=%d\n' "$vmm" \
        "$(grep -c "^STAB vmm=$vmm " "$all")" "$(grep -c "^STAB vmm=$vmm .*outcome=ok " "$all")" \
        "$(grep "^STAB vmm=$vmm " "$all" | grep -vc 'outcome=ok ')" "$(grep -c "^STAB vmm=$vmm .*outcome=l1-frozen" "$all")"
done | tee -a "$all"
