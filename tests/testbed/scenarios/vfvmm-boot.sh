#!/bin/bash
# Scenario (runs in L1): vfvmm boots the Debian bzImage and the ELF vmlinux as L2.
#   boot-bzimage: --cpus boot=2 --memory size=256M, console input, poweroff -f  -> exit 0
#   boot-elf:     ELF vmlinux, poweroff -f                                        -> exit 0
#   boot-reboot:  bzImage, reboot -f                                              -> exit 3
# The Rust test (tests/tests/testbed.rs) asserts on the logs and exit codes in $RESULTS.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

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

# Guest RAM in huge pages: refused with the fix while none are reserved, then boots on them
# (the pages in use while it runs are recorded).
echo 0 > /proc/sys/vm/nr_hugepages
run_vmm boot-hugepages-none 60 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
    --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M,hugepages=on \
    --cmdline "$CMDLINE l2.action=poweroff" || true
echo 200 > /proc/sys/vm/nr_hugepages
vmm_start boot-hugepages 300 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
    --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M,hugepages=on \
    --cmdline "$CMDLINE l2.action=shell"
wait_for_marker boot-hugepages "L2-ACTION shell" 240 || true
hp=/sys/kernel/mm/hugepages/hugepages-2048kB
# Faulted in (total - free) plus reserved for later faults (resv): what the VM holds.
echo "held=$(($(cat $hp/nr_hugepages) - $(cat $hp/free_hugepages) + $(cat $hp/resv_hugepages)))" \
    > "$RESULTS/hugepages-in-use.txt"
guest_cmd boot-hugepages 60 "poweroff -f" > /dev/null || true
vmm_wait boot-hugepages || true
echo 0 > /proc/sys/vm/nr_hugepages

# Guest RAM prefaulted: all of it allocated before the guest starts (the VM holds it while the
# guest idles at its shell) and mapped ahead of the guest (the boot timeline says so).
RUST_LOG=info vmm_start boot-prefault 300 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
    --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M,prefault=on \
    --cmdline "$CMDLINE l2.action=shell"
wait_for_marker boot-prefault "L2-ACTION shell" 240 || true
# vfvmm is the child of the timeout process vmm_start started.
for p in /proc/[0-9]*; do
    read -r -a st < "$p/stat" 2>/dev/null || continue
    if [[ ${st[3]} == "${_VMM_PID[boot-prefault]}" ]]; then
        echo "rss_kib=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "$p/status")" > "$RESULTS/prefault-rss.txt"
    fi
done
guest_cmd boot-prefault 60 "poweroff -f" > /dev/null || true
vmm_wait boot-prefault || true
exit 0
