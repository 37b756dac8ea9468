#!/bin/bash
# Benchmark (runs in L1): process start -> L2 /init (the L2-INIT-START marker), vfvmm vs
# QEMU 10 (q35 + qboot), same kernel, initramfs, 256 MiB, 1 vCPU. Rounds alternate the two
# VMMs so drift in the emulated machine hits both alike.
# Writes $RESULTS/bench-boot.txt: one "BOOT <vmm> <round> <ms>" line per run.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
VFVMM=${VFVMM:-$REPO/target/release/vfvmm}
ROUNDS=${BENCH_ROUNDS:-3}
TESTBED_ECHO=0
APPEND="console=ttyS0 panic=-1 quiet l2.action=poweroff"
out=$RESULTS/bench-boot.txt
: > "$out"

for ((round = 1; round <= ROUNDS; round++)); do
    run_vmm "bench-vfvmm-$round" 300 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
        --initramfs "$TESTBED_CACHE/l2.cpio.gz" --cpus boot=1 --memory size=256M --cmdline "$APPEND" || true
    echo "BOOT vfvmm $round $(marker_ms "bench-vfvmm-$round" L2-INIT-START || echo NA)" | tee -a "$out"

    run_vmm "bench-qemu-$round" 300 -- qemu-system-x86_64 -enable-kvm -cpu host -M q35 -m 256 -smp 1 \
        -nographic -nodefaults -no-reboot -serial stdio -bios /usr/share/qemu/qboot.rom \
        -kernel "$TESTBED_CACHE/vmlinuz" -initrd "$TESTBED_CACHE/l2.cpio.gz" -append "$APPEND" || true
    echo "BOOT qemu $round $(marker_ms "bench-qemu-$round" L2-INIT-START || echo NA)" | tee -a "$out"
done
exit 0
