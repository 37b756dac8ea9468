#!/bin/bash
# One section of bench-boot.sh (make bench BENCH_ONLY=hotplug).
export BENCH_ONLY=hotplug
exec bash "$(dirname "${BASH_SOURCE[0]}")/bench-boot.sh"
