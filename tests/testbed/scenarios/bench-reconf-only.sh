#!/bin/bash
# One section of bench-boot.sh (make bench BENCH_ONLY=reconf).
export BENCH_ONLY=reconf
exec bash "$(dirname "${BASH_SOURCE[0]}")/bench-boot.sh"
