#!/bin/bash
# Benchmarks (run in L1), vfvmm vs QEMU 10 (q35 + qboot) side by side in one L1 run, same
# kernel, initramfs, 256 MiB, 1 vCPU, rounds alternating the two VMMs:
#   BOOT    process start -> L2 /init (L2-INIT-START), no device
#   BOOTVF  the same with VF0 passed through
#   BOOTELF process start -> L2 /init booting the ELF vmlinux cut from the same bzImage
#           (vfvmm: 64-bit entry; QEMU: PVH entry), i.e. without in-guest decompression
#   RTT     average ping RTT to the PF through VF0 (20 pings, 0.2 s apart)
#   ATTACH  hot-attach: API call (vfctl add-device / QMP device_add into a pcie-root-port) ->
#           the guest's igbvf bound (L2-HOTPLUG-BOUND seen on the console)
#   DETACH  hot-detach: API call (vfctl remove-device / QMP device_del) -> the VF is free in L1
#           (its /dev/vfio group can be opened again)
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

# BENCH_ONLY=boot|vf|hotplug runs one section.
section() { [[ ${BENCH_ONLY:-all} == all || ${BENCH_ONLY:-all} == "$1" ]]; }

section boot && for ((round = 1; round <= ROUNDS; round++)); do
    # shellcheck disable=SC2046
    run_vmm "boot-vfvmm-$round" 300 -- $(vfvmm_cmd) --cmdline "$APPEND l2.action=poweroff" || true
    echo "BOOT vfvmm $round $(marker_ms "boot-vfvmm-$round" L2-INIT-START || echo NA)" | tee -a "$out"
    # shellcheck disable=SC2046
    run_vmm "boot-qemu-$round" 300 -- $(qemu_cmd) -append "$APPEND l2.action=poweroff" || true
    echo "BOOT qemu $round $(marker_ms "boot-qemu-$round" L2-INIT-START || echo NA)" | tee -a "$out"
done

section boot && for ((round = 1; round <= ROUNDS; round++)); do
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
section vf && for ((round = 1; round <= ROUNDS; round++)); do
    # shellcheck disable=SC2046
    run_vmm "vf-vfvmm-$round" 400 -- $(vfvmm_cmd) --device "path=/sys/bus/pci/devices/$VF0" --cmdline "$VFARGS" || true
    echo "BOOTVF vfvmm $round $(marker_ms "vf-vfvmm-$round" L2-INIT-START || echo NA)" | tee -a "$out"
    echo "RTT vfvmm $round $(rtt "vf-vfvmm-$round" || true)" | tee -a "$out"
    # shellcheck disable=SC2046
    run_vmm "vf-qemu-$round" 400 -- $(qemu_cmd) -device "vfio-pci,host=$VF0" -append "$VFARGS" || true
    echo "BOOTVF qemu $round $(marker_ms "vf-qemu-$round" L2-INIT-START || echo NA)" | tee -a "$out"
    echo "RTT qemu $round $(rtt "vf-qemu-$round" || true)" | tee -a "$out"
done

# Hot-attach / hot-detach latency, 3 rounds each in one guest per VMM.
HERE=$(dirname "${BASH_SOURCE[0]}")/..
VFCTL=$(dirname "$VFVMM")/vfctl
GROUP=$(basename "$(readlink "/sys/bus/pci/devices/$VF0/iommu_group")")
HPARGS="$APPEND l2.hotplug=3 l2.ip=192.0.2.10 l2.action=shell"
marker_ns() { awk -v m="$2" 'index($0, m) { print $1; exit }' "$RESULTS/$1.markers"; }
hotplug_rounds() {  # hotplug_rounds NAME VMM ATTACH-CMD... -- DETACH-CMD...
    local name=$1 vmm=$2 round t0 t1 ms
    shift 2
    local attach=() detach=()
    while [[ $1 != -- ]]; do attach+=("$1"); shift; done
    shift
    detach=("$@")
    wait_for_marker "$name" L2-READY-FOR-HOTPLUG 300 || return
    for round in 1 2 3; do
        t0=$(now_ns)
        "${attach[@]}" > /dev/null 2>&1
        wait_for_marker "$name" "L2-HOTPLUG-PING round=$round" 300 || return
        t1=$(marker_ns "$name" "L2-HOTPLUG-BOUND round=$round")
        echo "ATTACH $vmm $round $(((t1 - t0) / 1000000))" | tee -a "$out"
        "${detach[@]}" > /dev/null 2>&1
        ms=$(python3 "$HERE/vfio-free.py" "$GROUP" 120 || echo NA)
        echo "DETACH $vmm $round $ms" | tee -a "$out"
        wait_for_marker "$name" "L2-HOTPLUG-GONE round=$round" 120 || return
    done
}
section hotplug || exit 0
SOCK=/tmp/bench-vfvmm.sock
# shellcheck disable=SC2046
vmm_start hp-vfvmm 900 -- $(vfvmm_cmd) --api-socket "path=$SOCK" --cmdline "$HPARGS"
hotplug_rounds hp-vfvmm vfvmm "$VFCTL" --api-socket "$SOCK" add-device "path=/sys/bus/pci/devices/$VF0,id=vf0" \
    -- "$VFCTL" --api-socket "$SOCK" remove-device vf0
"$VFCTL" --api-socket "$SOCK" shutdown-vmm > /dev/null 2>&1
vmm_wait hp-vfvmm

QMP=/tmp/bench-qemu.qmp
# shellcheck disable=SC2046
vmm_start hp-qemu 900 -- $(qemu_cmd) -device pcie-root-port,id=hprp,chassis=2,slot=2 \
    -qmp "unix:$QMP,server=on,wait=off" -append "$HPARGS"
hotplug_rounds hp-qemu qemu python3 "$HERE/qmp.py" "$QMP" device_add "{\"driver\":\"vfio-pci\",\"host\":\"$VF0\",\"bus\":\"hprp\",\"id\":\"vf0\"}" \
    -- python3 "$HERE/qmp.py" "$QMP" device_del '{"id":"vf0"}'
python3 "$HERE/qmp.py" "$QMP" quit > /dev/null 2>&1
vmm_wait hp-qemu
exit 0
