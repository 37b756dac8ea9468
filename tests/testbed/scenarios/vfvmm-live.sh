#!/bin/bash
# Scenario (runs in L1): replacing VFs under running VMs (vfctl reconfigure --mode live). One
# L1 boot:
#   live       VMs a and b (igb VF0, VF1; heartbeat line every 100 ms, a pinger) through
#              `vfctl reconfigure PF --num-vfs 4 --mode live` (2 -> 0 -> 4): heartbeat and
#              ping gaps per VM (host-timestamped), same netdev and ifindex, no PCI remove/add,
#              AER recovery in the guest
#   detach     the same VMs through a detach-mode reconfigure (4 -> 0 -> 4), for comparison
#   auto       both VFs live-released, re-created by plain sysfs writes and bound to vfio-pci:
#              each VM re-acquires its VF on the kernel's bind event
#   nvme       VM n with an NVMe VF and its storage writer through a live reconfigure of the
#              NVMe PF: writes wait and go on, none lost, no I/O error
#   never      VM a's VF live-released and not brought back: given up after the VM's bound
#              (--reacquire-timeout 10), the VM runs on; its guest driver gives up after
#              Linux's 60 s reset wait; a pause + acquire-device + resume resolves it
#   bad-*      live release of an unknown id (404), twice (409), while paused (405); acquire of
#              a device that is not released (409)
# Results: live.txt (KEY value lines) and the VMs' logs; tests/tests/testbed_live.rs asserts.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PF=0000:01:00.0
OUT=$RESULTS/live.txt
: > "$OUT"
GBDF=0000:00:01.0

vm_start() {  # vm_start NAME IP [vfvmm args]
    local name=$1 ip=$2
    shift 2
    RUST_LOG=info vmm_start "$name" 1800 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
        --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M --cpus boot=1 \
        --name "$name" --api-socket "path=/run/live-$name.sock" --reacquire-timeout 10 \
        --event-monitor "path=/run/live-$name.events" "$@" \
        --cmdline "console=ttyS0 panic=-1 quiet l2.vf=1 l2.nvme=1 l2.heartbeat=1 l2.ip=$ip l2.action=shell"
    wait_for_marker "$name" "L2-ACTION shell" 600
}
# gap NAME MARKER FROM_NS TO_NS: the longest time (ms) between consecutive MARKER lines of NAME
# in [FROM, TO], counting the window's edges.
gap() {
    awk -v m="$2" -v a="$3" -v b="$4" '
        $2 == m && $1 >= a && $1 <= b { if (last) { d = $1 - last; if (d > max) max = d } else { d = $1 - a; if (d > max) max = d } last = $1 }
        END { if (!last) { print int((b - a) / 1e6); exit } d = b - last; if (d > max) max = d; print int(max / 1e6) }' "$RESULTS/$1.markers"
}
# first_after NAME MARKER NS: ms from NS to NAME's first MARKER line after it ("-" if none).
first_after() {
    awk -v m="$2" -v t="$3" '$2 == m && $1 > t { print int(($1 - t) / 1e6); found = 1; exit } END { if (!found) print "-" }' \
        "$RESULTS/$1.markers"
}
# mode_run KEY ARGS...: a reconfigure under VMs a and b; each VM's longest heartbeat gap over
# the change and the 2 s after it (a stopped vCPU shows as a gap as long as the change).
mode_run() {
    local key=$1 t0 t1 vm
    shift
    t0=$(now_ns)
    vfctl_rc "$key" "$@"
    t1=$(now_ns)
    sleep 2
    for vm in a b; do
        fact "${key}_$vm hb_gap_ms=$(gap "$vm" L2-HB "$t0" "$(now_ns)") window_ms=$(((t1 - t0) / 1000000))"
    done
    T0=$t0 T1=$t1
}
# pong_facts KEY: each VM's ping gap over the last mode_run and when its first reply came.
pong_facts() {
    local vm i
    for vm in a b; do
        for ((i = 0; i < 300; i++)); do [[ $(first_after "$vm" L2-PONG "$T1") != - ]] && break; sleep 0.1; done
        fact "${1}_pong_$vm ping_gap_ms=$(gap "$vm" L2-PONG "$T0" "$(now_ns)") pong_after_ms=$(first_after "$vm" L2-PONG "$T1")"
    done
}

# --- two VMs, each with a VF, a heartbeat and a pinger ---
vf_setup 0000:01:10.0 0000:01:10.2
vm_start a 192.0.2.30 --device path=/sys/bus/pci/devices/0000:01:10.0,id=vf0
vm_start b 192.0.2.31 --device path=/sys/bus/pci/devices/0000:01:10.2,id=vf0
for vm in a b; do
    fact "before_$vm $(guest_cmd $vm 30 "/init vf-state $GBDF" | grep '^VFSTATE')"
    guest_cmd $vm 30 "/init pinger-start" > /dev/null
done
sleep 3

# --- live mode: 2 -> 0 -> 4 ---
mode_run live reconfigure $PF --num-vfs 4 --mode live
pong_facts live
for vm in a b; do
    fact "live_state_$vm $(guest_cmd $vm 30 "/init vf-state $GBDF" | grep '^VFSTATE')"
    fact "live_aer_$vm $(guest_cmd $vm 30 "echo L2-AER fatal=\$(dmesg | grep -c 'Uncorrectable (Fatal) error') recovered=\$(dmesg | grep -c 'device recovery successful') failed=\$(dmesg | grep -c 'device recovery failed')" | grep '^AER')"
    fact "live_info_$vm $("$VFCTL" --vm $vm --json info | python3 -c 'import json,sys; d=json.load(sys.stdin); x=d["devices"][0]; print(d["state"], x["binding"].replace(" ", "_"), x["recovery"]["last"]["cause"].replace(" ", "_"), x["recovery"]["last"]["reenabled_after_ms"])')"
done
guest_cmd a 30 "dmesg | grep -iE 'aer|igbvf|not ready' | tail -n 20 | sed 's/^/L2-KLOG /'" >&2
# The event stream an orchestrator follows (vfctl events): VM a's device events so far.
device_events() {
    "$VFCTL" --vm "$1" events --no-follow | python3 -c '
import json, sys
print(" ".join(e["event"] + ("(" + e["properties"]["reason"].replace(" ", "_") + ")" if (e.get("properties") or {}).get("reason") else "")
               for e in map(json.loads, sys.stdin) if e["source"] == "device" or e["event"] in ("booted", "paused", "resumed")))'
}
fact "live_events_a $(device_events a)"

# --- detach mode, for comparison: 4 -> 0 -> 4 (the re-attached VFs' netdevs get their
# addresses again, as an operator's network setup would) ---
mode_run detach reconfigure $PF --num-vfs 4 --mode detach --eject-timeout 60
for vm in a b; do
    ip=192.0.2.3$([[ $vm == a ]] && echo 0 || echo 1)
    guest_cmd $vm 90 "i=0; while [ ! -e /sys/bus/pci/drivers/igbvf/$GBDF/net ] && [ \$i -lt 600 ]; do sleep 0.1; i=\$((i+1)); done; /init vf-ping $GBDF $ip 1" > /dev/null
done
pong_facts detach

# --- bad input ---
bad() { local out rc=0; out=$("$VFCTL" --vm a "$@" 2>&1) || rc=$?; fact "bad $* -> rc=$rc $out"; }
bad release-device nosuch --live
bad acquire-device vf0
"$VFCTL" --vm a release-device vf0 --live > /dev/null
bad release-device vf0 --live
"$VFCTL" --vm a acquire-device vf0 > /dev/null
"$VFCTL" --vm a pause
bad release-device vf0 --live
"$VFCTL" --vm a resume
fact "after_bad $(guest_cmd a 60 "/init vf-wait-ping $GBDF 30" | grep '^VFWAIT')"

# --- automatic re-acquire: both VFs live-released, the host re-creates them with plain sysfs
# writes and binds them to vfio-pci; each VM takes its VF back on the kernel's bind event ---
# (No python here: it takes most of a second to start in L1, and this polls.)
binding_of() { "$VFCTL" --vm "$1" --json info | grep -o '"binding": *"[^"]*"' | head -n 1 | sed 's/.*: *"//; s/"$//; s/ /_/g'; }
for vm in a b; do "$VFCTL" --vm $vm release-device vf0 --live > /dev/null; done
fact "auto_released a=$(binding_of a) b=$(binding_of b)"
t0=$(now_ns)
echo 0 > /sys/bus/pci/devices/$PF/sriov_numvfs
echo 4 > /sys/bus/pci/devices/$PF/sriov_numvfs
for vf in 0000:01:10.0 0000:01:10.2; do bind_to $vf vfio-pci > /dev/null; done
for ((i = 0; i < 150; i++)); do
    [[ $(binding_of a) == Bound && $(binding_of b) == Bound ]] && break
    sleep 0.1
done
fact "auto_back a=$(binding_of a) b=$(binding_of b) ms=$((($(now_ns) - t0) / 1000000))"
for vm in a b; do fact "auto_ping_$vm $(guest_cmd $vm 60 "/init vf-wait-ping $GBDF 30" | grep '^VFWAIT')"; done

# --- a VF that never comes back (VM b goes first: its VF would go with the count) ---
"$VFCTL" --vm b shutdown-vmm > /dev/null 2>&1
vmm_wait b
t0=$(now_ns)
vfctl_rc never_release --vm a release-device vf0 --live
echo 0 > /sys/bus/pci/devices/$PF/sriov_numvfs
sleep 12
fact "never_info $("$VFCTL" --vm a --json info | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["state"], d["devices"][0]["binding"].replace(" ", "_"))')"
fact "never_alive hb_gap_ms=$(gap a L2-HB "$t0" "$(now_ns)")"
fact "never_guest $(guest_cmd a 120 "i=0; while ! dmesg | grep -q 'device recovery failed' && [ \$i -lt 900 ]; do sleep 0.1; i=\$((i+1)); done; echo L2-GAVEUP failed=\$(dmesg | grep -c 'device recovery failed') notready=\$(dmesg | grep -c 'not ready')" | grep '^GAVEUP')"
# Resolved by a pause + acquire-device + resume (a remove-device would need the guest's
# igbvf to let go of a device whose recovery failed: its remove then hangs in the guest).
"$VFCTL" --vm a pause
echo 2 > /sys/bus/pci/devices/$PF/sriov_numvfs
bind_to 0000:01:10.0 vfio-pci > /dev/null
vfctl_rc never_acquire --vm a acquire-device vf0
"$VFCTL" --vm a resume
fact "never_after $("$VFCTL" --vm a --json info | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["state"], *[x["id"] + "=" + x["binding"].replace(" ", "_") for x in d["devices"]])')"
fact "never_ping $(guest_cmd a 60 "/init vf-wait-ping $GBDF 30" | grep '^VFWAIT')"
vfvmm_alive() { vmm_running "$1" && echo 1 || echo 0; }
fact "never_vmm alive=$(vfvmm_alive a)"
fact "never_events_a $(device_events a)"

# --- NVMe: a live reconfigure with the storage writer running ---
NPF=
for d in /sys/bus/pci/devices/*; do
    [[ $(cat "$d/class") == 0x010802 && -e $d/sriov_totalvfs ]] && NPF=${d##*/}
done
"$VFCTL" pf set-vfs "$NPF" 2 > /dev/null
NVF0=$(basename "$(readlink "/sys/bus/pci/devices/$NPF/virtfn0")")
vm_start n 192.0.2.32 --device "path=/sys/bus/pci/devices/$NVF0,id=nvme0"
DEV=$(grep -a -m1 'L2-NVME' "$RESULTS/n.log" | sed -n 's/.*dev=\([a-z0-9]*\).*/\1/p')
fact "nvme_fill $(guest_cmd n 120 "/init blk-fill $DEV 64 0" | grep '^BLKFILL' | one_line)"
guest_cmd n 30 "/init blk-writer-start" > /dev/null
sleep 3
t0=$(now_ns)
vfctl_rc nvme_live reconfigure "$NPF" --num-vfs 2 --mode live
t1=$(now_ns)
for ((i = 0; i < 300; i++)); do [[ $(first_after n L2-BLKW "$t1") != - ]] && break; sleep 0.1; done
sleep 3
fact "nvme_gap write_gap_ms=$(gap n L2-BLKW "$t0" "$(now_ns)") write_after_ms=$(first_after n L2-BLKW "$t1") hb_gap_ms=$(gap n L2-HB "$t0" "$(now_ns)")"
fact "nvme_writer $(guest_cmd n 120 "/init blk-writer-stop" | grep '^BLKWRITER' | one_line)"
fact "nvme_verify $(guest_cmd n 120 "/init blk-verify" | grep '^BLKVERIFY' | one_line)"
fact "nvme_dmesg $(guest_cmd n 30 "/init blk-dmesg" | grep '^BLKDMESG' | one_line)"
fact "nvme_errors $(grep -ac 'L2-BLKW-ERROR\|L2-BLKW .*ok=0' "$RESULTS/n.log")"

for vm in a n; do
    "$VFCTL" --vm $vm shutdown-vmm > /dev/null 2>&1
    vmm_wait $vm
done
fact done
