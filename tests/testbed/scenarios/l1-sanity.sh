#!/bin/bash
# Scenario (runs in L1): is L1 a usable SR-IOV + VFIO + KVM host?
# Writes $RESULTS/l1-sanity.txt ("KEY VALUE..." facts, then "CHECK NAME PASS|FAIL" lines) and
# $RESULTS/l1-dmesg.log. Exit 0 when every check passed.
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PF=/sys/bus/pci/devices/0000:01:00.0
OUT=$RESULTS/l1-sanity.txt
dmesg > "$RESULTS/l1-dmesg.log"

# set_numvfs N: write sriov_numvfs and wait (up to 30 s) until N virtfn links exist.
set_numvfs() {
    echo "$1" > "$PF/sriov_numvfs"
    local i vfs
    for ((i = 0; i < 300; i++)); do
        vfs=("$PF"/virtfn*)
        ((${#vfs[@]} == $1)) && return 0
        sleep 0.1
    done
    return 1
}
shopt -s nullglob
group_of() { basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"; }
driver_of() { local d; d=$(readlink "$1/driver") && basename "$d" || echo none; }

{
    echo "KERNEL $(uname -r)"
    echo "KVM_DEV $(stat -c '%F %t:%T' /dev/kvm 2>/dev/null || echo missing)"
    echo "KVM_AMD_NESTED $(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null || echo missing)"
    echo "KVM_AMD_NPT $(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null || echo missing)"
    grep -o 'kvm_amd: .*' "$RESULTS/l1-dmesg.log" | sed 's/^/DMESG /' || true
    echo "IOMMU_GROUPS $(find /sys/kernel/iommu_groups -mindepth 1 -maxdepth 1 | wc -l)"
    echo "PF $(cat "$PF/vendor") $(cat "$PF/device") driver=$(driver_of "$PF")" \
         "totalvfs=$(cat "$PF/sriov_totalvfs") iommu_group=$(group_of 0000:01:00.0)"
    echo "PF_NET $(ls "$PF/net") $(ip -o -4 addr show dev "$(ls "$PF/net")" | awk '{print $4}')"
    echo "VFIO $(ls /dev/vfio | tr '\n' ' ')"
    echo "MODULES $(awk '{print $1}' /proc/modules | sort | tr '\n' ' ')"

    check dev-kvm test -c /dev/kvm
    check kvm-amd-nested grep -q 'Nested Virtualization enabled' "$RESULTS/l1-dmesg.log"
    check kvm-amd-npt grep -q 'Nested Paging enabled' "$RESULTS/l1-dmesg.log"
    check pf-igb test "$(cat "$PF/vendor"):$(cat "$PF/device")" = 0x8086:0x10c9
    check vfio-dev test -c /dev/vfio/vfio
    check iommu-groups test -e "$PF/iommu_group"

    t0=$(now_ns)
    check vfs-create set_numvfs 2
    t1=$(now_ns)
    echo "VFS_CREATE_MS $(((t1 - t0) / 1000000))"
    for vf in "$PF"/virtfn*; do
        bdf=$(basename "$(readlink "$vf")")
        echo "VF $bdf $(cat "$vf/vendor") $(cat "$vf/device") iommu_group=$(group_of "$bdf")" \
             "driver=$(driver_of "$vf")"
    done
    check vf0-10ca test "$(cat /sys/bus/pci/devices/0000:01:10.0/device 2>/dev/null)" = 0x10ca
    check vf1-10ca test "$(cat /sys/bus/pci/devices/0000:01:10.2/device 2>/dev/null)" = 0x10ca
    check vf-own-groups test "$(group_of 0000:01:10.0)" != "$(group_of 0000:01:10.2)"
    check vfs-remove set_numvfs 0
    check vfs-gone test ! -e /sys/bus/pci/devices/0000:01:10.0
} 2>&1 | tee "$OUT"

! grep -q ' FAIL$' "$OUT"
