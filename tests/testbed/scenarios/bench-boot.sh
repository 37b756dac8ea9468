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
# A sleep without forking (forks are slow in L1): read with a timeout on a silent fifo.
mkfifo /tmp/bench-idle; exec 4<>/tmp/bench-idle
nap() { read -r -t "$1" -u 4 || true; }
# vf_free_ns: poll until the VF's /dev/vfio group can be opened again (nobody holds it).
vf_free_ns() {
    local deadline=$((SECONDS + 120))
    while ((SECONDS < deadline)); do
        if { exec 3<>"/dev/vfio/$GROUP"; } 2>/dev/null; then exec 3>&-; now_ns; return 0; fi
        nap 0.005
    done
    return 1
}
hotplug_rounds() {  # hotplug_rounds NAME VMM ATTACH-CMD -- DETACH-CMD: each CMD is one string, eval'd
    local name=$1 vmm=$2 attach=$3 detach=$5 round t0 t1
    wait_for_marker "$name" L2-READY-FOR-HOTPLUG 300 || return
    for round in 1 2 3; do
        t0=$(now_ns)
        eval "$attach"
        wait_for_marker "$name" "L2-HOTPLUG-PING round=$round" 300 || return
        t1=$(marker_ns "$name" "L2-HOTPLUG-BOUND round=$round")
        echo "ATTACH $vmm $round $(((t1 - t0) / 1000000))" | tee -a "$out"
        t0=$(now_ns)
        eval "$detach"
        t1=$(vf_free_ns) && echo "DETACH $vmm $round $(((t1 - t0) / 1000000))" | tee -a "$out"
        wait_for_marker "$name" "L2-HOTPLUG-GONE round=$round" 120 || return
    done
}
SOCK=/tmp/bench-vfvmm.sock
# shellcheck disable=SC2046
vmm_start hp-vfvmm 900 -- $(vfvmm_cmd) --api-socket "path=$SOCK" --cmdline "$HPARGS"
hotplug_rounds hp-vfvmm vfvmm "\"$VFCTL\" --api-socket $SOCK add-device path=/sys/bus/pci/devices/$VF0,id=vf0 >/dev/null" \
    -- "\"$VFCTL\" --api-socket $SOCK remove-device vf0 >/dev/null"
"$VFCTL" --api-socket "$SOCK" shutdown-vmm > /dev/null 2>&1
vmm_wait hp-vfvmm

# QEMU: one QMP connection made beforehand, commands written to it through a fifo.
QMP=/tmp/bench-qemu.qmp
mkfifo /tmp/bench-qmp-in
# shellcheck disable=SC2046
vmm_start hp-qemu 900 -- $(qemu_cmd) -device pcie-root-port,id=hprp,chassis=2,slot=2 \
    -qmp "unix:$QMP,server=on,wait=off" -append "$HPARGS"
for _ in $(seq 100); do [[ -S $QMP ]] && break; nap 0.1; done
python3 "$HERE/qmp.py" "$QMP" --serve /tmp/bench-qmp-in > "$RESULTS/hp-qemu.qmp" 2>&1 &
exec 5>/tmp/bench-qmp-in
until grep -q QMP-READY "$RESULTS/hp-qemu.qmp" 2>/dev/null; do nap 0.1; done
hotplug_rounds hp-qemu qemu "echo '{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"vfio-pci\",\"host\":\"$VF0\",\"bus\":\"hprp\",\"id\":\"vf0\"}}' >&5" \
    -- "echo '{\"execute\":\"device_del\",\"arguments\":{\"id\":\"vf0\"}}' >&5"
echo '{"execute":"quit"}' >&5
exec 5>&-
vmm_wait hp-qemu
exit 0
