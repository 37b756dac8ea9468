#!/bin/bash
# One section of bench-boot.sh (make bench BENCH_ONLY=vf).
export BENCH_ONLY=vf
exec bash "$(dirname "${BASH_SOURCE[0]}")/bench-boot.sh"
