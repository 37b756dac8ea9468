#!/bin/bash
# Scenario (runs in L1): the VF lifecycle's Paused state. One L1 boot:
#   quiesce    L2 paused while L1 pings it: VF0's bus mastering off and its vfio MSI-X counts
#              frozen in L1; after resume they move and the guest pings
#   cycles     5 x (pause, release (API: odd cycles; `echo 0 > sriov_numvfs`: even ones), VFs
#              re-created and bound, resume, guest pings again with no unplug)
#   two-vms    VMs with VF0 and VF1 paused and released, numvfs 2 -> 0 -> 4, resumed, both ping
#   missing    resume while the VF does not exist: the VM runs, the device is Released with the
#              reason; later pause + re-create + acquire-device + resume: pings again
#   bad-*      release while running 405, acquire with another kind of device 409, unknown 404;
#              then resume with the VF not re-created (re-opened at its path): pings again
#   plain      VM a with its idle VF0 and a hot-added VF2: plain pause/resume, then pause with
#              release and resume without re-creation; both VFs ping again each time
#   host-release  3 x: VM a paused, the host destroys both its VFs at once (echo 0), re-creates
#              them, resume: vfvmm stays up, both VFs ping again
# Results: lifecycle.txt (KEY value lines) and the VMs' logs; tests/tests/testbed_lifecycle.rs
# asserts on them.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PFDIR=/sys/bus/pci/devices/0000:01:00.0
VF0=0000:01:10.0
VF1=0000:01:10.2
GBDF=0000:00:01.0   # the VF at boot is in the guest's slot 1
OUT=$RESULTS/lifecycle.txt
: > "$OUT"
ms_now() { echo $(($(now_ns) / 1000000)); }

vm_start() {  # vm_start NAME VF IP SOCK [extra vfvmm args]
    local name=$1 vf=$2 ip=$3 sock=$4
    shift 4
    RUST_LOG=info vmm_start "$name" 1800 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
        --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M --cpus boot=2 \
        --device "path=/sys/bus/pci/devices/$vf,id=vf0" --api-socket "path=$sock" "$@" \
        --cmdline "console=ttyS0 panic=-1 quiet l2.vf=1 l2.ip=$ip l2.action=shell"
    wait_for_marker "$name" "L2-ACTION shell" 600
}
# A VF's vfio MSI-X interrupt total in L1 (all vectors).
vfio_irqs() { awk -v d="($1)" 'index($0, d) && /vfio-msix/ { for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) n += $i } END { print n + 0 }' /proc/interrupts; }
# A device's command register as L1 sees it (hex).
command_reg() { od -An -tx2 -j4 -N2 "/sys/bus/pci/devices/$1/config" | tr -d ' '; }
# Re-create the PF's VFs: COUNT of them, all bound to vfio-pci. Prints ms taken by the 0 write.
recreate_vfs() {
    local count=$1 t0 i vf
    t0=$(ms_now)
    echo 0 > "$PFDIR/sriov_numvfs"
    fact "numvfs0_ms $(($(ms_now) - t0))"
    echo 0 > "$PFDIR/sriov_drivers_autoprobe"
    [[ $count == 0 ]] && return
    echo "$count" > "$PFDIR/sriov_numvfs"
    for ((i = 0; i < count; i++)); do
        vf=$(basename "$(readlink "$PFDIR/virtfn$i")")
        bind_to "$vf" vfio-pci >/dev/null
    done
}
info_binding() { "$VFCTL" --api-socket "$1" --json info | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["state"], *[x["id"] + "=" + x["binding"].replace(" ", "_") for x in d["devices"]])'; }

vf_setup $VF0 $VF1

# --- quiesce, observed from L1 ---
SOCK=/run/lc-a.sock
vm_start lc-a $VF0 192.0.2.10 $SOCK
fact "boot_ping $(grep -ac '^L2-PING sent=3 received=3' "$RESULTS/lc-a.log")"
fact "state_before $(guest_cmd lc-a 30 "/init vf-state $GBDF")"
"$VFCTL" --api-socket $SOCK pause
fact "paused_info $(info_binding $SOCK)"
fact "paused_command $(command_reg $VF0)"
i0=$(vfio_irqs $VF0)
# L1 sends the paused guest traffic: nothing answers, and no interrupt arrives for the VF.
fact "paused_l1_ping $(ping -c 5 -i 0.2 -W 1 192.0.2.10 2>&1 | grep -o '[0-9]* packets transmitted, [0-9]* received')"
sleep 1
i1=$(vfio_irqs $VF0)
fact "paused_irqs $i0 $i1"
"$VFCTL" --api-socket $SOCK resume
fact "resumed_command $(command_reg $VF0)"
fact "resumed_ping $(guest_cmd lc-a 60 "/init vf-wait-ping $GBDF 30")"
fact "resumed_l1_ping $(ping -c 3 -i 0.2 -W 1 192.0.2.10 2>&1 | grep -o '[0-9]* packets transmitted, [0-9]* received')"
fact "resumed_irqs $i1 $(vfio_irqs $VF0)"

# --- 5 release / re-create / resume cycles ---
for cycle in 1 2 3 4 5; do
    if ((cycle % 2)); then
        "$VFCTL" --api-socket $SOCK pause --release > /dev/null
        how=api
    else
        "$VFCTL" --api-socket $SOCK pause
        how=numvfs   # the host's VFIO request releases it at once while paused
    fi
    fact "cycle$cycle how=$how released_info $( [[ $how == api ]] && info_binding $SOCK || echo -)"
    recreate_vfs 2
    fact "cycle$cycle after_numvfs_info $(info_binding $SOCK)"
    t0=$(ms_now)
    "$VFCTL" --api-socket $SOCK resume
    fact "cycle$cycle resume_ms $(($(ms_now) - t0)) info $(info_binding $SOCK)"
    fact "cycle$cycle $(guest_cmd lc-a 60 "/init vf-wait-ping $GBDF 30")"
    fact "cycle$cycle $(guest_cmd lc-a 30 "/init vf-state $GBDF")"
done

# --- bad input (VM a, running) ---
bad() { local out rc=0; out=$("$VFCTL" --api-socket $SOCK "$@" 2>&1) || rc=$?; fact "bad $* -> rc=$rc $out"; }
bad release-device vf0
bad release-device nosuch
"$VFCTL" --api-socket $SOCK pause --release > /dev/null
bad acquire-device nosuch
# Another kind of device: an e1000 (both of its group's members on vfio-pci, so it is usable).
xz -dc "$TESTBED_CACHE"/kernel/lib/modules/*/kernel/drivers/net/ethernet/intel/e1000/e1000.ko.xz > /tmp/e1000.ko
insmod /tmp/e1000.ko 2>/dev/null
# shellcheck disable=SC2207
E1000=($(grep -l 0x100e /sys/bus/pci/devices/*/device | xargs -n1 dirname | xargs -n1 basename | sort))
for e in "${E1000[@]}"; do bind_to "$e" vfio-pci >/dev/null; done
bad acquire-device vf0 "path=/sys/bus/pci/devices/${E1000[0]}"
fact "after_bad_info $(info_binding $SOCK)"
# Resumed without re-creating the VF: re-acquired at the same path (vfio-pci reset it).
"$VFCTL" --api-socket $SOCK resume
fact "after_bad $(guest_cmd lc-a 60 "/init vf-wait-ping $GBDF 30")"

# --- a VF that does not come back at resume ---
"$VFCTL" --api-socket $SOCK pause --release > /dev/null
recreate_vfs 0
t0=$(ms_now)
"$VFCTL" --api-socket $SOCK resume
fact "missing resume_ms $(($(ms_now) - t0)) info $(info_binding $SOCK)"
fact "missing guest_alive $(guest_cmd lc-a 30 "echo L2-ALIVE")"
"$VFCTL" --api-socket $SOCK pause
recreate_vfs 2
"$VFCTL" --api-socket $SOCK acquire-device vf0
fact "missing acquired_info $(info_binding $SOCK)"
"$VFCTL" --api-socket $SOCK resume
fact "missing $(guest_cmd lc-a 60 "/init vf-wait-ping $GBDF 30")"
fact "final_state $(guest_cmd lc-a 30 "/init vf-state $GBDF")"

# --- two VMs: VF0 and VF1 paused, numvfs 2 -> 0 -> 4, resumed ---
SOCKB=/run/lc-b.sock
vm_start lc-b $VF1 192.0.2.11 $SOCKB
"$VFCTL" --api-socket $SOCK pause
"$VFCTL" --api-socket $SOCKB pause
recreate_vfs 4
fact "two_vms vfs=$(cat $PFDIR/sriov_numvfs) a=$(info_binding $SOCK) b=$(info_binding $SOCKB)"
"$VFCTL" --api-socket $SOCK resume
"$VFCTL" --api-socket $SOCKB resume
fact "two_vms_a $(guest_cmd lc-a 60 "/init vf-wait-ping $GBDF 30")"
fact "two_vms_b $(guest_cmd lc-b 60 "/init vf-wait-ping $GBDF 30")"

# --- plain pause of a VM with an idle VF beside a hot-added one, then release without
# re-creation: both VFs' traffic comes back by itself each time ---
VF2=$(basename "$(readlink "$PFDIR/virtfn2")")
HBDF=0000:00:02.0   # the hot-added VF's slot in the guest
"$VFCTL" --api-socket $SOCK add-device "path=/sys/bus/pci/devices/$VF2,id=vf2" > /dev/null
fact "plain_added $(guest_cmd lc-a 90 "i=0; while [ ! -e /sys/bus/pci/drivers/igbvf/$HBDF/net ] && [ \$i -lt 600 ]; do sleep 0.1; i=\$((i+1)); done; /init vf-ping $HBDF 192.0.2.12")"
"$VFCTL" --api-socket $SOCK pause
sleep 3
"$VFCTL" --api-socket $SOCK resume
fact "plain_vf0 $(guest_cmd lc-a 60 "/init vf-wait-ping $GBDF 30")"
fact "plain_vf2 $(guest_cmd lc-a 60 "/init vf-wait-ping $HBDF 30")"
# Recoveries vfvmm saw end: the guest's driver re-enabled its function after the AER reset.
recovered() { grep -ac "recovered: the guest's driver re-enabled the function" "$RESULTS/lc-a.err"; }
r0=$(recovered)
"$VFCTL" --api-socket $SOCK pause --release > /dev/null
fact "reopen_info $(info_binding $SOCK)"
"$VFCTL" --api-socket $SOCK resume
fact "reopen_vf0 $(guest_cmd lc-a 60 "/init vf-wait-ping $GBDF 30")"
fact "reopen_vf2 $(guest_cmd lc-a 60 "/init vf-wait-ping $HBDF 30")"
fact "reopen_state $(guest_cmd lc-a 30 "/init vf-state $HBDF")"
fact "reopen_recoveries $(($(recovered) - r0))"

# --- the host takes two VFs of a paused VM back at once (echo 0 > sriov_numvfs), 3 times:
# each device is released as the kernel asks for it (vfvmm once aborted here in a race with
# the kernel removing the VF) ---
"$VFCTL" --api-socket $SOCKB shutdown-vmm
vmm_wait lc-b
for k in 1 2 3; do
    "$VFCTL" --api-socket $SOCK pause
    recreate_vfs 0
    fact "host_release$k alive=$(vmm_running lc-a && echo 1 || echo 0) $(info_binding $SOCK)"
    recreate_vfs 4
    "$VFCTL" --api-socket $SOCK resume
    fact "host_release${k}_vf0 $(guest_cmd lc-a 60 "/init vf-wait-ping $GBDF 30")"
    fact "host_release${k}_vf2 $(guest_cmd lc-a 60 "/init vf-wait-ping $HBDF 30")"
done

# What the guest saw of all that: its AER service on the RCEC, the errors vfvmm reported and
# the recoveries its drivers completed; and vfvmm's account of vf0's recoveries (vm.info).
fact "guest_aer $(guest_cmd lc-a 30 "echo L2-AER bound=\$(dmesg | grep -c '0000:00:1f.0: AER: enabled') fatal=\$(dmesg | grep -c 'Uncorrectable (Fatal) error') recovered=\$(dmesg | grep -c 'device recovery successful') failed=\$(dmesg | grep -c 'device recovery failed')")"
guest_cmd lc-a 30 "dmesg | grep -iE 'aer|igbvf' | tail -n 40 | sed 's/^/L2-KLOG /'" >&2
fact "recovery_info $("$VFCTL" --api-socket $SOCK --json info | python3 -c 'import json,sys; d=next(x for x in json.load(sys.stdin)["devices"] if x["id"] == "vf0"); r=d["recovery"]; l=r["last"]; print("signalled=%d resets=%d cause=%s delivered=%s reenabled_ms=%s" % (r["signalled"], r["resets"], l["cause"].replace(" ", "_"), l["delivered"], l["reenabled_after_ms"]))')"
"$VFCTL" --api-socket $SOCK shutdown-vmm
vmm_wait lc-a
fact "done"
exit 0
