#!/bin/bash
# `make demo` (runs in L1): vfvmm boots the Debian kernel + busybox initramfs as L2 with 2 vCPUs
# and 256 MiB; the guest console is echoed live, the guest answers a line typed on its serial
# console, then powers off.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
VFVMM=${VFVMM:-$REPO/target/release/vfvmm}
TESTBED_ECHO=1
echo "=== L1: $(uname -r), /dev/kvm: $(ls /dev/kvm), vfvmm: $VFVMM"
vmm_start demo 300 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" --initramfs "$TESTBED_CACHE/l2.cpio.gz" \
    --cpus boot=2 --memory size=256M --cmdline "console=ttyS0 panic=-1 l2.input=1 l2.action=poweroff"
send_input_when demo L2-READY-FOR-INPUT "hello from the demo" 240 || true
rc=0
vmm_wait demo || rc=$?
echo "=== vfvmm exited with $rc; process start -> L2 /init: $(marker_ms demo L2-INIT-START || echo '?') ms"
exit "$rc"
