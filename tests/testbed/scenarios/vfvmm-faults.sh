#!/bin/bash
# Scenario (runs in L1): faults from the guest and the host, and leaks over many cycles. One L1
# boot:
#   no-eject   a guest that ignores eject (its ACPI GED driver unbound): remove-device leaves
#              the device Detaching, then "eject timed out"; the guest still answers; a second
#              remove retries; vmm.shutdown still ends vfvmm
#   pf-unbind  the PF's driver unbound under a running VM holding a VF: the host's request goes
#              to the guest, which ejects the VF; the VM runs on; the PF comes back
#   cycles     50 hot-attach/detach cycles of a VF: open fds, MSI routes, BAR memory slots and
#              vfvmm's RSS before and after
# Results: faults.txt (KEY value lines); tests/tests/testbed_faults.rs asserts on them.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PF=0000:01:00.0
VF0=0000:01:10.0
VF1=0000:01:10.2
OUT=$RESULTS/faults.txt
: > "$OUT"

vm_start() {  # vm_start NAME [vfvmm args]
    local name=$1
    shift
    RUST_LOG=info vmm_start "$name" 1800 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
        --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M --cpus boot=1 \
        --name "$name" --api-socket "path=/run/flt-$name.sock" "$@" \
        --cmdline "console=ttyS0 panic=-1 quiet l2.vf=1 l2.ip=192.0.2.10 l2.action=shell"
    wait_for_marker "$name" "L2-ACTION shell" 600
}
dev_state() {  # dev_state VM ID: the device's attachment state
    "$VFCTL" --vm "$1" --json info | python3 -c 'import json,sys; print(next((d["state"] for d in json.load(sys.stdin)["devices"] if d["id"] == sys.argv[1]), "none"))' "$2"
}
wait_state() {  # wait_state VM ID STATE SECS
    local i
    for ((i = 0; i < $4 * 10; i++)); do
        [[ $(dev_state "$1" "$2") == "$3"* ]] && return 0
        sleep 0.1
    done
    return 1
}

vf_setup $VF0 $VF1

# --- a guest that ignores eject ---
vm_start ne --device "path=/sys/bus/pci/devices/$VF0,id=vf0" --eject-timeout 5
fact "ne_ged $(guest_cmd ne 30 'for d in /sys/bus/platform/drivers/acpi-ged/ACPI0013*; do echo ${d##*/} > /sys/bus/platform/drivers/acpi-ged/unbind; done; echo L2-GED-BOUND $(ls /sys/bus/platform/drivers/acpi-ged | grep -c ACPI0013)')"
"$VFCTL" --vm ne remove-device vf0
fact "ne_after_remove $(dev_state ne vf0)"
wait_state ne vf0 "Detaching (eject timed out)" 30
fact "ne_timed_out $(dev_state ne vf0)"
fact "ne_guest $(guest_cmd ne 30 'echo L2-ALIVE')"
"$VFCTL" --vm ne remove-device vf0
fact "ne_retry $(dev_state ne vf0)"
t0=$(now_ns)
"$VFCTL" --vm ne shutdown-vmm
vmm_wait ne
fact "ne_shutdown rc=$(cat "$RESULTS/ne.rc") ms=$((($(now_ns) - t0) / 1000000)) vf0_driver=$(driver_of $VF0)"

# --- the PF's driver unbound under a running VM ---
vm_start pu --device "path=/sys/bus/pci/devices/$VF0,id=vf0"
t0=$(now_ns)
echo $PF > /sys/bus/pci/drivers/igb/unbind
fact "pu_unbind ms=$((($(now_ns) - t0) / 1000000)) vfs=$(ls -d /sys/bus/pci/devices/$PF/virtfn* 2>/dev/null | wc -l)"
wait_state pu vf0 Detached 30
fact "pu_state $(dev_state pu vf0)"
fact "pu_guest $(guest_cmd pu 30 'echo L2-IGBVF-DEVICES $(ls /sys/bus/pci/drivers/igbvf | grep -c 0000:)')"
echo $PF > /sys/bus/pci/drivers/igb/bind
sleep 2
vf_setup $VF0 $VF1
fact "pu_pf_back driver=$(driver_of $PF) numvfs=$(cat /sys/bus/pci/devices/$PF/sriov_numvfs)"
"$VFCTL" --vm pu shutdown-vmm
vmm_wait pu
fact "pu_exit rc=$(cat "$RESULTS/pu.rc")"

# --- 50 attach/detach cycles: nothing grows ---
vm_start cy
PID=$("$VFCTL" --vm cy ping --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
usage() {  # fds, MSI routes, BAR slots, RSS (kB)
    local res
    res=$("$VFCTL" --vm cy --json info | python3 -c 'import json,sys; r=json.load(sys.stdin)["resources"]; print(r["msi_routes"], r["bar_memory_slots"])')
    echo "fds=$(ls /proc/$PID/fd | wc -l) routes_slots=${res// /,} rss_kb=$(awk '/VmRSS/ { print $2 }' /proc/$PID/status)"
}
cycle() {  # cycle N: attach VF1 as vfN, wait for the guest, detach, wait for Detached
    "$VFCTL" --vm cy add-device "path=/sys/bus/pci/devices/$VF1,id=c$1" > /dev/null || return 1
    wait_state cy "c$1" Attached 60 || return 1
    "$VFCTL" --vm cy remove-device "c$1" || return 1
    wait_state cy "c$1" Detached 60
}
# Two warm-up cycles (first-time allocations), then the measurement.
cycle 0 && cycle 1
fact "cy_before $(usage)"
ok=0
for ((n = 2; n < 52; n++)); do cycle $n && ok=$((ok + 1)); done
fact "cy_cycles ok=$ok"
fact "cy_after $(usage)"
fact "cy_guest $(guest_cmd cy 30 'echo L2-ALIVE')"
"$VFCTL" --vm cy shutdown-vmm
vmm_wait cy
fact "done"
exit 0
