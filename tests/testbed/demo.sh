#!/bin/bash
# make demo: the nested SR-IOV testbed shows what vfvmm is for (tests/testbed/scenarios/demo.sh):
# an L1 "SR-IOV host" under QEMU/TCG with an emulated igb PF, and inside it vfvmm running a
# guest that gets VFs at boot and by hot-attach. Shows the narration; logs stay in RESULTS.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
results=$(mktemp -d /tmp/vfvmm-demo.XXXXXX)
t0=$EPOCHREALTIME
elapsed() { local t=$EPOCHREALTIME; awk -v a="${t0}" -v b="$t" 'BEGIN { printf "%.1f s", b - a }'; }

echo "demo: logs in $results (L1 console: l1-console.log; guest console: demo-guest.log)"
echo "demo: starting the L1 SR-IOV host: QEMU/TCG, q35 + intel-iommu + igb PF (about 20-40 s to boot) ..."
# run-l1.sh prints the whole L1 console; show the demo's narration and the L1 milestones.
rc=0
VFVMM_SKIP_BUILD=1 bash "$REPO/tests/testbed/run-l1.sh" "$REPO/tests/testbed/scenarios/demo.sh" "$results" 900 \
    2> >(grep --line-buffered -v '^run-l1.sh: L1-' >&2) \
    | while IFS= read -r line; do
        case $line in
            # L1 sees the results directory as /tmp/results; show its path here.
            "DEMO| "*) line=${line#DEMO| }; printf '%s\n' "${line//\/tmp\/results/$results}" ;;
            *L1-SCRIPT-START*) echo "demo: L1 host is up after $(elapsed); the demo runs inside it" ;;
            *L1-ERROR*|*L1-MODULE-FAIL*|*L1-WARNING*) printf 'demo: %s\n' "${line#*L1-}" ;;
        esac
    done || true
rc=$(cat "$results/l1-exit-code" 2>/dev/null || echo 125)
echo ""
if [[ $rc == 0 ]]; then
    echo "demo: PASSED in $(elapsed) (logs: $results)"
else
    echo "demo: FAILED (exit $rc) after $(elapsed); L1 console: $results/l1-console.log"
fi
exit "$rc"
