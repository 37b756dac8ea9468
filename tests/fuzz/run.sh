#!/bin/bash
# make fuzz: every cargo-fuzz target for SECONDS each (default 60; make test runs them for 20).
# libFuzzer needs nightly-only compiler flags; this machine has one stable toolchain and no
# other can be fetched, so RUSTC_BOOTSTRAP=1 lets stable rustc take them. A crash fails the
# run and leaves its input in tests/fuzz/artifacts/TARGET/ (turn it into a unit test).
set -euo pipefail
SECONDS_EACH=${1:-60}
cd "$(dirname "${BASH_SOURCE[0]}")"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (cargo install --locked cargo-fuzz; about 2 min, once)"
    cargo install --locked cargo-fuzz >/dev/null
fi
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
    echo "fuzz: $target for ${SECONDS_EACH} s"
    mkdir -p "corpus/$target"
    log=$(mktemp)
    rc=0
    cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 >"$log" 2>&1 || rc=$?
    grep -E "^(Done|==|SUMMARY|thread|ERROR)|panicked|deadly|crash-" "$log" || true
    if ((rc != 0)); then
        tail -n 30 "$log"
        rm -f "$log"
        echo "fuzz: $target FAILED (exit $rc; the input is in tests/fuzz/artifacts/$target)"
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz: all targets ran without a crash"
