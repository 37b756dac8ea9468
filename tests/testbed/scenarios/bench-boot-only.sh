#!/bin/bash
# One section of bench-boot.sh (make bench BENCH_ONLY=boot).
export BENCH_ONLY=boot
exec bash "$(dirname "${BASH_SOURCE[0]}")/bench-boot.sh"
