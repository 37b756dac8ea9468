#!/bin/bash
# make bench: one L1 run of tests/testbed/scenarios/bench-boot.sh; prints every run, the
# medians and the vfvmm/QEMU ratios (boot to /init, with and without a VF; ping RTT via a VF;
# hot-attach/detach), reconfiguring a VM's PF by pause vs by detach, vfvmm's phase tables
# (boot, attach, detach), and the change since the previous make bench; writes a CSV of every
# run and a PNG chart (tests/testbed/bench_report.py).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
results=$(mktemp -d /tmp/vfvmm-bench.XXXXXX)
echo "bench: results and logs in $results"
# BENCH_ONLY=boot|vf|reconf|modes|hotplug runs one section (scenarios/bench-SECTION-only.sh;
# "multi" is the old name of modes).
[[ ${BENCH_ONLY:-} == multi ]] && BENCH_ONLY=modes
scenario=$REPO/tests/testbed/scenarios/bench-boot.sh
[[ -n ${BENCH_ONLY:-} ]] && scenario=$REPO/tests/testbed/scenarios/bench-$BENCH_ONLY-only.sh
# BENCH_BASELINE=REV: the reconf section also runs its pause rounds with vfvmm built at git
# revision REV (under target/, which L1 sees), labelled "baseline".
if [[ -n ${BENCH_BASELINE:-} ]]; then
    src=$REPO/target/bench-baseline-src
    rm -rf "$src" && mkdir -p "$src"
    git -C "$REPO" archive "$BENCH_BASELINE" | tar -x -C "$src"
    echo "bench: building the baseline vfvmm at $BENCH_BASELINE (about a minute) ..."
    (cd "$src" && CARGO_TARGET_DIR=$REPO/target/bench-baseline cargo build --release --bin vfvmm -q)
    echo "$REPO/target/bench-baseline/release/vfvmm" > "$results/baseline-vfvmm"
fi
echo "bench: every section on both VMMs takes about 10-20 minutes; progress below (elapsed, what is left)"
t0=$EPOCHREALTIME
bash "$REPO/tests/testbed/run-l1.sh" "$scenario" "$results" 3000 | tee "$results/run-l1.out" |
    python3 "$REPO/tests/testbed/bench_progress.py" "$t0"
# The chart needs matplotlib (Debian's python3-matplotlib, for Debian's python3).
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
$PY -c 'import matplotlib' 2>/dev/null || {
    echo "bench: installing python3-matplotlib for the chart"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-matplotlib) > "$results/apt.out" 2>&1 ||
        echo "bench: could not install python3-matplotlib (no chart): see $results/apt.out"
}
previous=${VFVMM_CACHE:-/var/cache/vfvmm}/bench-previous/${BENCH_ONLY:-all}
$PY "$REPO/tests/testbed/bench_report.py" "$results" "${BENCH_ONLY:-all}" "$previous"
