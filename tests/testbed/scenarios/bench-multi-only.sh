#!/bin/bash
# One section of bench-boot.sh (make bench BENCH_ONLY=multi).
export BENCH_ONLY=multi
exec bash "$(dirname "${BASH_SOURCE[0]}")/bench-boot.sh"
