#!/bin/bash
# Scenario (runs in L1): vfvmm boots the Debian bzImage and the ELF vmlinux as L2.
#   boot-bzimage: --cpus boot=2 --memory size=256M, console input, poweroff -f  -> exit 0
#   boot-elf:     ELF vmlinux, poweroff -f                                        -> exit 0
#   boot-reboot:  bzImage, reboot -f                                              -> exit 3
# The Rust test (tests/tests/testbed.rs) asserts on the logs and exit codes in $RESULTS.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
VFVMM=${VFVMM:-$REPO/target/release/vfvmm}
[[ -c /dev/kvm ]] || { tb_log "no /dev/kvm in L1"; exit 1; }
[[ -x $VFVMM ]] || { tb_log "no vfvmm binary at $VFVMM"; exit 1; }
CMDLINE="console=ttyS0 panic=-1 quiet"

vmm_start boot-bzimage 300 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
    --initramfs "$TESTBED_CACHE/l2.cpio.gz" --cpus boot=2 --memory size=256M \
    --cmdline "$CMDLINE l2.input=1 l2.action=poweroff"
send_input_when boot-bzimage L2-READY-FOR-INPUT hello-from-l1 240 || true
vmm_wait boot-bzimage || true

run_vmm boot-elf 300 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinux" \
    --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M \
    --cmdline "$CMDLINE l2.action=poweroff" || true

run_vmm boot-reboot 300 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
    --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M \
    --cmdline "$CMDLINE l2.action=reboot" || true
exit 0
