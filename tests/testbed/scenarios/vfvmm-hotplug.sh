#!/bin/bash
# Scenario (runs in L1): VF hot-attach / hot-detach through the API with the guest's
# cooperation (ACPI PCI hotplug: GED, acpiphp, _EJ0). One guest, booted without devices:
#   3 rounds: vfctl add-device VF0 -> igbvf binds, ping 3/3 -> info Attached ->
#             vfctl remove-device -> the device leaves the guest -> info Detached
#   errors in round 1: same VF twice (409), same id (409), unknown id (404), a VF bound to
#             igbvf (400); the VM keeps running
#   two VFs attached at once; the host destroys them (sriov_numvfs=0) while attached: the
#   guest is asked to eject, the write returns, the VM keeps running.
# The Rust test (tests/tests/testbed_hotplug.rs) asserts on the files in $RESULTS.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

VF0=0000:01:10.0
VF1=0000:01:10.2
SOCK=/tmp/vfvmm-hotplug.sock
vfctl() { "$VFCTL" --api-socket "$SOCK" "$@"; }
# state_of ID: the device's state in vm.info
state_of() { vfctl --json info | python3 -c "import json,sys; print(next((d['state'] for d in json.load(sys.stdin)['devices'] if d['id']=='$1'), 'absent'))"; }
wait_state() {  # wait_state ID STATE TIMEOUT
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do [[ $(state_of "$1") == "$2" ]] && return 0; sleep 0.5; done
    return 1
}

vf_setup $VF0 $VF1
RUST_LOG=info vmm_start hp 1200 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
    --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M --api-socket "path=$SOCK" \
    --cmdline "console=ttyS0 panic=-1 quiet l2.hotplug=3 l2.ip=192.0.2.10 l2.action=shell"
wait_for_marker hp L2-READY-FOR-HOTPLUG 300 || { tb_log "guest never got ready"; exit 0; }

for round in 1 2 3; do
    vfctl --json add-device "path=/sys/bus/pci/devices/$VF0/,id=vf0" > "$RESULTS/hp-add-$round.json" 2>&1
    wait_for_marker hp "L2-HOTPLUG-PING round=$round" 300 || break
    wait_state vf0 Attached 30
    vfctl --json info > "$RESULTS/hp-info-attached-$round.json" 2>&1
    if [[ $round == 1 ]]; then
        { vfctl add-device "path=/sys/bus/pci/devices/$VF0,id=other"; echo "rc=$?"; } > "$RESULTS/hp-err-same-vf.txt" 2>&1
        { vfctl add-device "path=/sys/bus/pci/devices/$VF1,id=vf0"; echo "rc=$?"; } > "$RESULTS/hp-err-same-id.txt" 2>&1
        { vfctl remove-device nosuch; echo "rc=$?"; } > "$RESULTS/hp-err-unknown.txt" 2>&1
        xz -dc "$TESTBED_CACHE"/kernel/lib/modules/*/kernel/drivers/net/ethernet/intel/igbvf/igbvf.ko.xz > /tmp/igbvf.ko
        insmod /tmp/igbvf.ko
        bind_to $VF1 igbvf
        { vfctl add-device "path=/sys/bus/pci/devices/$VF1,id=vf1"; echo "rc=$?"; } > "$RESULTS/hp-err-host-driver.txt" 2>&1
        bind_to $VF1 vfio-pci
        vfctl ping > "$RESULTS/hp-alive.txt" 2>&1
    fi
    vfctl remove-device vf0 > "$RESULTS/hp-remove-$round.txt" 2>&1
    wait_for_marker hp "L2-HOTPLUG-GONE round=$round" 300
    wait_state vf0 Detached 60
    vfctl --json info > "$RESULTS/hp-info-detached-$round.json" 2>&1
    echo "$(driver_of $VF0)" > "$RESULTS/hp-driver-after-$round.txt"
done

# Two VFs at once.
vfctl --json add-device "path=/sys/bus/pci/devices/$VF0,id=vf0" > "$RESULTS/hp-two-add0.json" 2>&1
vfctl --json add-device "path=/sys/bus/pci/devices/$VF1,id=vf1" > "$RESULTS/hp-two-add1.json" 2>&1
wait_state vf0 Attached 120
wait_state vf1 Attached 120
vfctl --json info > "$RESULTS/hp-info-two.json" 2>&1

# The host takes both VFs back while attached: vfio-pci signals the request interrupt, vfvmm
# asks the guest to eject, the guest does, vfvmm releases them, and the write returns.
start=$(now_ns)
timeout 120 bash -c "echo 0 > /sys/bus/pci/devices/$TB_PF/sriov_numvfs"
echo "rc=$?" > "$RESULTS/hp-release-rc.txt"
echo $((($(now_ns) - start) / 1000000)) > "$RESULTS/hp-release-ms.txt"
vfctl ping > "$RESULTS/hp-alive-after-release.txt" 2>&1
vfctl --json info > "$RESULTS/hp-info-released.json" 2>&1
# vm.shutdown: the ACPI power button; the guest powers off and vfvmm exits 0.
vfctl shutdown > "$RESULTS/hp-shutdown.txt" 2>&1
vmm_wait hp
exit 0
