#!/bin/bash
# One section of bench-boot.sh (make bench BENCH_ONLY=modes): two VMs' VFs replaced in live,
# pause and detach mode.
export BENCH_ONLY=modes
exec bash "$(dirname "${BASH_SOURCE[0]}")/bench-boot.sh"
