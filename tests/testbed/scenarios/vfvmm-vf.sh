#!/bin/bash
# Scenario (runs in L1): SR-IOV VF passthrough with vfvmm.
#   vf-boot: VF0 passed at boot; igbvf binds in L2, ping the PF 3/3, MSI-X counters grow.
# The Rust test (tests/tests/testbed_vf.rs) asserts on the logs in $RESULTS.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
VFVMM=${VFVMM:-$REPO/target/release/vfvmm}
PF=/sys/bus/pci/devices/0000:01:00.0
VF0=0000:01:10.0
VF1=0000:01:10.2
CMDLINE="console=ttyS0 panic=-1 quiet"

# VFs appear unbound; each one is handed to vfio-pci explicitly.
echo 0 > "$PF/sriov_drivers_autoprobe"
echo 2 > "$PF/sriov_numvfs"
for vf in $VF0 $VF1; do
    for _ in $(seq 50); do [[ -e /sys/bus/pci/devices/$vf ]] && break; sleep 0.1; done
done
bind_vfio() {
    echo vfio-pci > "/sys/bus/pci/devices/$1/driver_override"
    echo "$1" > /sys/bus/pci/drivers_probe
    echo "L1-VF-BIND $1 driver=$(basename "$(readlink "/sys/bus/pci/devices/$1/driver")") group=$(basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")")"
}
bind_vfio $VF0
bind_vfio $VF1
ls -l /dev/vfio/

RUST_LOG=info run_vmm vf-boot 300 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
    --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M \
    --device "path=/sys/bus/pci/devices/$VF0,id=vf0" \
    --cmdline "$CMDLINE l2.vf=1 l2.ip=192.0.2.10 l2.action=poweroff" || true
exit 0
