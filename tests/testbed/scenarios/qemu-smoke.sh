#!/bin/bash
# Scenario (runs in L1): QEMU as the L2 VMM proves the chain L0 (TCG) -> L1 (KVM) -> L2, plus
# console input: L2 waits for a line after L2-READY-FOR-INPUT; we send "hello-l2".
# Results: qemu-smoke.{log,err,rc,start,end,markers} and qemu-smoke.checks in $RESULTS.
# Exit 0 when QEMU exited 0 and every expected marker was seen.
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=qemu-smoke
[[ -c /dev/kvm ]] || { tb_log "no /dev/kvm in L1"; exit 1; }

vmm_start "$NAME" 300 -- qemu-system-x86_64 -enable-kvm -cpu host -M q35 -m 256 -smp 1 \
    -nographic -nodefaults -no-reboot -serial stdio \
    -bios /usr/share/qemu/qboot.rom \
    -kernel "$TESTBED_CACHE/vmlinuz" -initrd "$TESTBED_CACHE/l2.cpio.gz" \
    -append "console=ttyS0 panic=-1 l2.input=1 l2.action=poweroff"
send_input_when "$NAME" L2-READY-FOR-INPUT hello-l2 240 || true
rc=0
vmm_wait "$NAME" || rc=$?

log=$RESULTS/$NAME.log
has() { grep -qaE -- "$1" "$log"; }
{
    check qemu-exit-0 test "$rc" = 0
    check l2-init-start has '^L2-INIT-START uptime=[0-9.]+$'
    check l2-cpus has '^L2-CPUS online=0 count=1$'
    check l2-pci has '^L2-PCI( [0-9a-f:.]+)+$'
    check l2-pcidev has '^L2-PCIDEV 0000:00:00\.0 0x8086 0x29c0 0x060000$'
    check l2-ready has '^L2-READY-FOR-INPUT$'
    check l2-got-input has '^L2-GOT-INPUT hello-l2$'
    check l2-action has '^L2-ACTION poweroff$'
} | tee "$RESULTS/$NAME.checks"
ms=$(marker_ms "$NAME" L2-INIT-START || echo "?")
echo "TIMING $NAME process-start-to-L2-INIT-START ${ms}ms" | tee -a "$RESULTS/$NAME.checks"

! grep -q ' FAIL$' "$RESULTS/$NAME.checks"
