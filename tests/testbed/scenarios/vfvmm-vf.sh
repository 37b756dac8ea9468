#!/bin/bash
# Scenario (runs in L1): SR-IOV VF passthrough with vfvmm. One L1 boot, several checks:
#   vf-boot      VF0 at boot: igbvf binds in L2, ping the PF 3/3, MSI-X counters grow
#   vf-reuse     VF0 again right after: the first run released it cleanly
#   bad-*        bad --device input: one error line, exit 1, the VFs' drivers unchanged
#   vm-a, vm-b   two VMs at once, VF0 and VF1, both ping the PF
# The Rust test (tests/tests/testbed_vf.rs) asserts on the logs in $RESULTS.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PF=0000:01:00.0
VF0=0000:01:10.0
VF1=0000:01:10.2
CMDLINE="console=ttyS0 panic=-1 quiet"

vf_vm() {  # vf_vm NAME VF IP [extra vfvmm args...]; with --api-socket the guest stays up
    local name=$1 vf=$2 ip=$3 action=poweroff
    shift 3
    [[ " $* " == *" --api-socket "* ]] && action=shell
    RUST_LOG=info vmm_start "$name" 400 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
        --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M \
        --device "path=/sys/bus/pci/devices/$vf,id=vf0" "$@" \
        --cmdline "$CMDLINE l2.vf=1 l2.ip=$ip l2.action=$action l2.counter=${COUNTER:-0}"
}

vf_setup $VF0 $VF1

vf_vm vf-boot $VF0 192.0.2.10
vmm_wait vf-boot
vf_vm vf-reuse $VF0 192.0.2.10
vmm_wait vf-reuse

# The API with a VF attached at boot: info shows it Attached; pause/resume; shutdown-vmm.
SOCK=/tmp/vfvmm-api.sock
COUNTER=1 vf_vm vf-api $VF0 192.0.2.10 --api-socket "path=$SOCK"
if wait_for_marker vf-api "L2-PING " 300; then
    "$VFCTL" --api-socket "$SOCK" --json info > "$RESULTS/vf-api.info" 2>&1
    "$VFCTL" --api-socket "$SOCK" info > "$RESULTS/vf-api.info-human" 2>&1
    counters() { grep -c "L2-COUNTER" "$RESULTS/vf-api.log"; }
    { "$VFCTL" --api-socket "$SOCK" pause; sleep 1; c0=$(counters); sleep 3; c1=$(counters)
      "$VFCTL" --api-socket "$SOCK" pause; echo "rc=$?"
      "$VFCTL" --api-socket "$SOCK" resume; sleep 3; c2=$(counters); } > "$RESULTS/vf-api.pause" 2>&1
    echo "$c0 $c1 $c2" > "$RESULTS/vf-api.counters"
    "$VFCTL" --api-socket "$SOCK" shutdown-vmm > "$RESULTS/vf-api.shutdown" 2>&1
fi
vmm_wait vf-api
[[ -e $SOCK ]] && echo present > "$RESULTS/vf-api.socket" || echo removed > "$RESULTS/vf-api.socket"

# Bad input. VF1 goes to its host driver first, to be refused and left alone.
xz -dc "$TESTBED_CACHE"/kernel/lib/modules/*/kernel/drivers/net/ethernet/intel/igbvf/igbvf.ko.xz > /tmp/igbvf.ko
insmod /tmp/igbvf.ko
bind_to $VF1 igbvf
bad() {  # bad NAME DEVICE-ARGS...
    local name=$1
    shift
    run_vmm "$name" 60 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" --initramfs "$TESTBED_CACHE/l2.cpio.gz" \
        --memory size=256M "$@" --cmdline "$CMDLINE"
    echo "$(driver_of $VF0) $(driver_of $VF1)" > "$RESULTS/$name.drivers"
}
bad bad-not-pci --device path=/sys/bus/pci/devices/0000:01:1f.7
bad bad-host-driver --device path=/sys/bus/pci/devices/$VF1
bad bad-pf --device path=/sys/bus/pci/devices/$PF
bad bad-twice --device path=/sys/bus/pci/devices/$VF0 --device "path=/sys/bus/pci/devices/$VF0/"
bind_to $VF1 vfio-pci

# A non-viable IOMMU group: two e1000s behind a PCI bridge share one; one goes to vfio-pci,
# the other stays with its host driver.
xz -dc "$TESTBED_CACHE"/kernel/lib/modules/*/kernel/drivers/net/ethernet/intel/e1000/e1000.ko.xz > /tmp/e1000.ko
insmod /tmp/e1000.ko
# shellcheck disable=SC2207
E1000=($(grep -l 0x100e /sys/bus/pci/devices/*/device | xargs -n1 dirname | xargs -n1 basename | sort))
echo "L1-E1000 ${E1000[*]} group=$(basename "$(readlink "/sys/bus/pci/devices/${E1000[0]}/iommu_group")")"
bind_to "${E1000[0]}" vfio-pci
bind_to "${E1000[1]}" e1000
run_vmm bad-group 60 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" --initramfs "$TESTBED_CACHE/l2.cpio.gz" \
    --memory size=256M --device "path=/sys/bus/pci/devices/${E1000[0]}" --cmdline "$CMDLINE"
echo "$(driver_of "${E1000[0]}") $(driver_of "${E1000[1]}")" > "$RESULTS/bad-group.drivers"
echo "${E1000[1]}" > "$RESULTS/bad-group.other"

# Two VMs at once.
vf_vm vm-a $VF0 192.0.2.10
vf_vm vm-b $VF1 192.0.2.11
vmm_wait vm-a
vmm_wait vm-b
echo "$(driver_of $VF0) $(driver_of $VF1)" > "$RESULTS/final.drivers"

# README's real-host block, copied out of README.md verbatim and run as a host admin would,
# with its variables pointed at this testbed (the VFs are re-created through 0 by the block).
sed -n '/^<!-- real-host-begin -->$/,/^<!-- real-host-end -->$/p' "$REPO/README.md" \
    | sed -n '/^```sh$/,/^```$/p' | sed '1d;$d' > "$RESULTS/real-host.sh"
PF=$PF KERNEL=$TESTBED_CACHE/vmlinuz INITRD=$TESTBED_CACHE/l2.cpio.gz VFVMM=$VFVMM \
    CMDLINE="$CMDLINE l2.vf=1 l2.ip=192.0.2.10 l2.action=poweroff" \
    run_vmm real-host 400 -- bash -e "$RESULTS/real-host.sh"
exit 0
