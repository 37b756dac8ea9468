#!/bin/bash
# make demo: boot L1 (QEMU/TCG SR-IOV host) and, inside it, a Linux guest under vfvmm.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
results=$(mktemp -d /tmp/vfvmm-demo.XXXXXX)
echo "demo: results and logs in $results"
bash "$REPO/tests/testbed/run-l1.sh" "$REPO/tests/testbed/scenarios/demo.sh" "$results" 900
