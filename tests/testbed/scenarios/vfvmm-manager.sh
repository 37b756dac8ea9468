#!/bin/bash
# Scenario (runs in L1): vfctl as the host's VF manager across several VMs. One L1 boot:
#   registry   VMs a (VF0) and b (VF1) started with --name: vfctl vm list / pf show name them
#   set-vfs    refused while VMs hold VFs, the count unchanged
#   dry-run    reconfigure --dry-run changes nothing
#   pause      reconfigure --num-vfs 4 --mode pause: both guests ping again, no unplug seen
#   attach     VM c gets a free VF (VF2) with vfctl attach while a and b keep running
#   detach     reconfigure --num-vfs 4 --mode detach: every VM pings again through its VF
#   lose       --num-vfs 1 refused without --allow-detach (nothing changed); with it b and c
#              lose their VFs cleanly while a keeps VF0 (pause mode)
#   rollback   a guest that ignores eject (its ACPI GED driver unbound) in detach mode: the
#              change is rolled back, the count is unchanged and a pings again
# Results: manager.txt (KEY value lines) and the VMs' logs; tests/tests/testbed_manager.rs
# asserts on them.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PF=0000:01:00.0
PFDIR=/sys/bus/pci/devices/$PF
OUT=$RESULTS/manager.txt
: > "$OUT"

vm_start() {  # vm_start NAME IP [vfvmm args]: a VM that registers as NAME
    local name=$1 ip=$2
    shift 2
    RUST_LOG=info vmm_start "$name" 1800 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
        --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M --cpus boot=1 \
        --name "$name" --api-socket "path=/run/mgr-$name.sock" "$@" \
        --cmdline "console=ttyS0 panic=-1 quiet l2.vf=1 l2.ip=$ip l2.action=shell"
    wait_for_marker "$name" "L2-ACTION shell" 600
}
# The guest BDF of device ID in VM NAME.
guest_bdf() {
    "$VFCTL" --vm "$1" --json info | python3 -c 'import json,sys; print(next(d["bdf"] for d in json.load(sys.stdin)["devices"] if d["id"] == sys.argv[1] and d["state"] != "Detached"))' "$2"
}
# VM NAME pings the PF through device ID (IP configured on its netdev first).
ping_via() {  # ping_via NAME ID IP
    local bdf
    bdf=$(guest_bdf "$1" "$2") || { echo "VFWAIT no-device ok=0"; return; }
    guest_cmd "$1" 90 "i=0; while [ ! -e /sys/bus/pci/drivers/igbvf/$bdf/net ] && [ \$i -lt 900 ]; do sleep 0.1; i=\$((i+1)); done; /init vf-ping $bdf $3 1 >/dev/null; /init vf-wait-ping $bdf 30" | grep VFWAIT
}
states() {  # one line: each VM's state and devices
    "$VFCTL" --json vm list | python3 -c '
import json, sys
out = []
for v in json.load(sys.stdin):
    devs = " ".join(d["id"] + "=" + d["state"] + "/" + d["binding"].replace(" ", "_") for d in v["devices"])
    out.append(v["name"] + ":" + str(v["state"]) + (" " + devs if devs else ""))
print("; ".join(out))'
}

vf_setup 0000:01:10.0 0000:01:10.2
vm_start a 192.0.2.10 --device path=/sys/bus/pci/devices/0000:01:10.0,id=vf0
vm_start b 192.0.2.11 --device path=/sys/bus/pci/devices/0000:01:10.2,id=vf0
for vm in a b; do fact "before_$vm $(guest_cmd $vm 30 "/init vf-state 0000:00:01.0")"; done

# --- registry and inventory ---
fact "vm_list $("$VFCTL" vm list | one_line)"
fact "pf_show $("$VFCTL" --json pf show $PF | python3 -c 'import json,sys; p=json.load(sys.stdin); print(p["num_vfs"], p["total_vfs"], p["driver"], *[str(v["index"]) + "=" + str(v["held_by"]) for v in p["vfs"]])')"
fact "pf_list $("$VFCTL" pf list | head -n1 | one_line)"
"$VFCTL" pf list 2>&1 | sed 's/^/[pf-list] /' >&2

# --- set-vfs is refused while VMs hold VFs; a dry run changes nothing ---
vfctl_rc setvfs_refused pf set-vfs $PF 4
fact "after_setvfs numvfs=$(cat $PFDIR/sriov_numvfs)"
vfctl_rc dryrun reconfigure $PF --num-vfs 4 --dry-run
fact "after_dryrun numvfs=$(cat $PFDIR/sriov_numvfs) $(states)"

# --- pause mode: 2 -> 4 under both VMs ---
vfctl_rc pause reconfigure $PF --num-vfs 4 --mode pause
fact "after_pause numvfs=$(cat $PFDIR/sriov_numvfs) $(states)"
for vm in a b; do
    fact "pause_$vm $(guest_cmd $vm 60 "/init vf-wait-ping 0000:00:01.0 30")"
    fact "pause_state_$vm $(guest_cmd $vm 30 "/init vf-state 0000:00:01.0")"
done

# --- a third VM gets a free VF while the others run ---
vm_start c 192.0.2.12
vfctl_rc attach attach c $PF --id vf0
fact "attach_ping_c $(ping_via c vf0 192.0.2.12)"
fact "after_attach $(states)"
"$VFCTL" pf list 2>&1 | sed 's/^/[pf-list-3] /' >&2
"$VFCTL" vm list 2>&1 | sed 's/^/[vm-list-3] /' >&2

# --- detach mode: 4 -> 0 -> 4, every device hot-detached and re-attached ---
vfctl_rc detach reconfigure $PF --num-vfs 4 --mode detach --eject-timeout 60
fact "after_detach numvfs=$(cat $PFDIR/sriov_numvfs) $(states)"
fact "detach_ping_a $(ping_via a vf0 192.0.2.10)"
fact "detach_ping_b $(ping_via b vf0 192.0.2.11)"
fact "detach_ping_c $(ping_via c vf0 192.0.2.12)"

# --- VFs that cannot stay: refused, then allowed ---
vfctl_rc lose_refused reconfigure $PF --num-vfs 1
fact "after_lose_refused numvfs=$(cat $PFDIR/sriov_numvfs) $(states)"
vfctl_rc lose reconfigure $PF --num-vfs 1 --allow-detach --mode pause
fact "after_lose numvfs=$(cat $PFDIR/sriov_numvfs) $(states)"
fact "lose_ping_a $(guest_cmd a 60 "/init vf-wait-ping $(guest_bdf a vf0) 30")"
fact "lose_guest_b $(guest_cmd b 30 "echo L2-IGBVF-DEVICES \$(ls /sys/bus/pci/drivers/igbvf | grep -c 0000:)" | one_line)"

# --- a guest that ignores eject, in detach mode: rolled back ---
vfctl_rc grow reconfigure $PF --num-vfs 2 --mode pause
vfctl_rc attach_c2 attach c $PF --id stuck
fact "ged_unbind_c $(guest_cmd c 30 'for d in /sys/bus/platform/drivers/acpi-ged/ACPI0013*; do echo ${d##*/} > /sys/bus/platform/drivers/acpi-ged/unbind; done; echo L2-GED-BOUND $(ls /sys/bus/platform/drivers/acpi-ged | grep -c ACPI0013)')"
vfctl_rc rollback reconfigure $PF --num-vfs 3 --mode detach --eject-timeout 5
fact "after_rollback numvfs=$(cat $PFDIR/sriov_numvfs) $(states)"
fact "rollback_ping_a $(ping_via a vf0 192.0.2.10)"

for vm in a b c; do "$VFCTL" --vm $vm shutdown-vmm > /dev/null; done
for vm in a b c; do vmm_wait $vm; done
fact "registry_after_exit $("$VFCTL" vm list | one_line)"
fact "done"
exit 0
