#!/bin/bash
# Benchmarks (run in L1), vfvmm vs QEMU 10 (q35 + qboot) side by side in one L1 run, same
# kernel, initramfs, 256 MiB, 1 vCPU, rounds alternating the two VMMs:
#   BOOT    process start -> L2 /init (L2-INIT-START), no device
#   BOOTVF  the same with VF0 passed through
#   BOOTELF process start -> L2 /init booting the ELF vmlinux cut from the same bzImage
#           (vfvmm: 64-bit entry; QEMU: PVH entry), i.e. without in-guest decompression
#   RTT     average ping RTT to the PF through VF0 (20 pings, 0.2 s apart)
# Writes $RESULTS/bench-boot.txt: "<KIND> <vmm> <round> <value>" lines (ms).
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
VFVMM=${VFVMM:-$REPO/target/release/vfvmm}
ROUNDS=${BENCH_ROUNDS:-3}
TESTBED_ECHO=0
APPEND="console=ttyS0 panic=-1 quiet"
VF0=0000:01:10.0
out=$RESULTS/bench-boot.txt
: > "$out"

vfvmm_cmd() { echo "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" --initramfs "$TESTBED_CACHE/l2.cpio.gz" --cpus boot=1 --memory size=256M; }
qemu_cmd() {
    echo qemu-system-x86_64 -enable-kvm -cpu host -M q35 -m 256 -smp 1 -nographic -nodefaults -no-reboot \
        -serial stdio -bios /usr/share/qemu/qboot.rom -kernel "$TESTBED_CACHE/vmlinuz" -initrd "$TESTBED_CACHE/l2.cpio.gz"
}

for ((round = 1; round <= ROUNDS; round++)); do
    # shellcheck disable=SC2046
    run_vmm "boot-vfvmm-$round" 300 -- $(vfvmm_cmd) --cmdline "$APPEND l2.action=poweroff" || true
    echo "BOOT vfvmm $round $(marker_ms "boot-vfvmm-$round" L2-INIT-START || echo NA)" | tee -a "$out"
    # shellcheck disable=SC2046
    run_vmm "boot-qemu-$round" 300 -- $(qemu_cmd) -append "$APPEND l2.action=poweroff" || true
    echo "BOOT qemu $round $(marker_ms "boot-qemu-$round" L2-INIT-START || echo NA)" | tee -a "$out"
done

for ((round = 1; round <= ROUNDS; round++)); do
    # shellcheck disable=SC2046
    run_vmm "elf-vfvmm-$round" 300 -- $(vfvmm_cmd | sed "s|vmlinuz|vmlinux|") --cmdline "$APPEND l2.action=poweroff" || true
    echo "BOOTELF vfvmm $round $(marker_ms "elf-vfvmm-$round" L2-INIT-START || echo NA)" | tee -a "$out"
    # shellcheck disable=SC2046
    run_vmm "elf-qemu-$round" 300 -- $(qemu_cmd | sed "s|vmlinuz|vmlinux|") -append "$APPEND l2.action=poweroff" || true
    echo "BOOTELF qemu $round $(marker_ms "elf-qemu-$round" L2-INIT-START || echo NA)" | tee -a "$out"
done

vf_setup "$VF0"
rtt() { sed -n 's/.*L2-RTT min=[0-9.]* avg=\([0-9.]*\) .*/\1/p' "$RESULTS/$1.log" | head -n 1; }
VFARGS="$APPEND l2.vf=1 l2.ip=192.0.2.10 l2.pings=20 l2.action=poweroff"
for ((round = 1; round <= ROUNDS; round++)); do
    # shellcheck disable=SC2046
    run_vmm "vf-vfvmm-$round" 400 -- $(vfvmm_cmd) --device "path=/sys/bus/pci/devices/$VF0" --cmdline "$VFARGS" || true
    echo "BOOTVF vfvmm $round $(marker_ms "vf-vfvmm-$round" L2-INIT-START || echo NA)" | tee -a "$out"
    echo "RTT vfvmm $round $(rtt "vf-vfvmm-$round" || true)" | tee -a "$out"
    # shellcheck disable=SC2046
    run_vmm "vf-qemu-$round" 400 -- $(qemu_cmd) -device "vfio-pci,host=$VF0" -append "$VFARGS" || true
    echo "BOOTVF qemu $round $(marker_ms "vf-qemu-$round" L2-INIT-START || echo NA)" | tee -a "$out"
    echo "RTT qemu $round $(rtt "vf-qemu-$round" || true)" | tee -a "$out"
done
exit 0
