#!/bin/bash
# Scenario (runs in L1): NVMe VFs (storage), the second class of VF, with the guest's data
# checked at every step. One L1 boot:
#   host       vfctl shows the NVMe PF (class, secondary controllers, flexible resources);
#              pf set-vfs 2 provisions the secondary controllers (resources, online) and binds
#              both VFs to vfio-pci
#   boot       VM n boots with an igb VF and NVMe VF0: the guest's nvme driver binds, 64 blocks
#              written and read back (O_DIRECT), the igb VF pings
#   detach     the guest's writer finishes, vfctl detach: the namespace disappears, no I/O error
#   attach     vfctl attach puts VF0 back: the namespace reappears with the data written before
#   plain      writer running; the igb PF is reconfigured in pause mode (VM n paused, its NVMe VF
#              quiesced in place): the writes continue after resume
#   lifecycle  writer running; the NVMe PF is reconfigured in pause mode (VM paused, NVMe VF
#              released, VFs destroyed and re-created with provisioning, re-acquired, resumed):
#              the guest's I/O outage is measured, no write lost, stale or torn, no I/O error
#   detach-mode  the NVMe PF reconfigured in detach mode: hot-detach, re-create, hot-attach,
#              the data still there
#   hot-add    VM h, booted with no device, gets NVMe VF1 hot-added (the DMA-before-mapping
#              case) and writes and verifies its own region; both VMs hold VFs of the PF
# Results: nvme.txt (KEY value lines) and the VMs' logs; tests/tests/testbed_nvme.rs asserts.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

IPF=0000:01:00.0
OUT=$RESULTS/nvme.txt
: > "$OUT"
BLOCKS=64
# The NVMe SR-IOV PF: found by class, like vfctl does.
NPF=
for d in /sys/bus/pci/devices/*; do
    [[ $(cat "$d/class") == 0x010802 && -e $d/sriov_totalvfs ]] && NPF=${d##*/}
done
NPFDIR=/sys/bus/pci/devices/$NPF
fact "nvme_pf ${NPF:-none}"

# The PF's secondary controllers as vfctl reports them: "cntlid:vf:online:queues:interrupts ...".
secondaries() {
    "$VFCTL" --json pf show "$NPF" | python3 -c '
import json, sys
p = json.load(sys.stdin)
print(p["class"], "numvfs=%d" % p["num_vfs"], "drivers=" + ",".join(str(v["driver"]) for v in p["vfs"]),
      "held=" + ",".join(str(v["held_by"]) for v in p["vfs"]),
      *["%d:%d:%s:%d:%d" % (s["cntlid"], s["vf_number"], "on" if s["online"] else "off", s["queues"], s["interrupts"])
        for s in p.get("nvme", {}).get("secondaries", [])], p.get("provisioning_error", ""))'
}
vm_start() {  # vm_start NAME IP [vfvmm args]
    local name=$1 ip=$2
    shift 2
    RUST_LOG=info vmm_start "$name" 1800 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" \
        --initramfs "$TESTBED_CACHE/l2.cpio.gz" --memory size=256M --cpus boot=1 \
        --name "$name" --api-socket "path=/run/nvme-$name.sock" "$@" \
        --cmdline "console=ttyS0 panic=-1 quiet l2.vf=1 l2.nvme=1 l2.ip=$ip l2.action=shell"
    wait_for_marker "$name" "L2-ACTION shell" 600
}
# gcmd NAME TIMEOUT PREFIX CMD: the guest's answer lines starting with PREFIX (the writer's
# own L2-BLKW lines interleave with every answer).
gcmd() { guest_cmd "$1" "$2" "$4" | grep -a "^$3" | one_line; }
# first_after NAME PREFIX NS: epoch-ns of NAME's first PREFIX marker after NS (empty if none).
first_after() { awk -v p="$2" -v t="$3" '$2 == p && $1 > t { print $1; exit }' "$RESULTS/$1.markers"; }
# last_before NAME PREFIX NS
last_before() { awk -v p="$2" -v t="$3" '$2 == p && $1 < t { x = $1 } END { print x }' "$RESULTS/$1.markers"; }
# wait_write_after NAME NS SECS: until the writer completed a write after NS.
wait_write_after() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        [[ -n $(first_after "$1" L2-BLKW "$2") ]] && return 0
        sleep 0.1
    done
    return 1
}
# outage NAME T_PAUSE T_RESUME: the writer's gap around a pause (ms from its last write before
# T_PAUSE to its first after T_RESUME) and how long after resume its first write came (ms).
outage() {
    local before after
    before=$(last_before "$1" L2-BLKW "$2")
    after=$(first_after "$1" L2-BLKW "$3")
    if [[ -z $before || -z $after ]]; then echo "gap_ms=- after_resume_ms=-"; return; fi
    echo "gap_ms=$(((after - before) / 1000000)) after_resume_ms=$(((after - $3) / 1000000))"
}
# klog NAME [SINCE]: the guest's kernel-log summary after line SINCE (BLKDMESG lines=... ...).
klog() { gcmd "$1" 30 BLKDMESG "/init blk-dmesg ${2:-0}"; }
klog_mark() { klog "$1" | sed -n 's/.*lines=\([0-9]*\).*/\1/p'; }
writes_between() { awk -v a="$2" -v b="$3" '$2 == "L2-BLKW" && $1 > a && $1 < b { n++ } END { print n + 0 }' "$RESULTS/$1.markers"; }

# --- host: the NVMe PF and its provisioning ---
fact "pf_before $(secondaries)"
"$VFCTL" pf show "$NPF" 2>&1 | sed 's/^/[pf-show] /' >&2
vfctl_rc setvfs pf set-vfs "$NPF" 2
fact "pf_after $(secondaries)"
"$VFCTL" pf show "$NPF" 2>&1 | sed 's/^/[pf-show-2] /' >&2
fact "pf_list $("$VFCTL" pf list | grep '^PF' | one_line)"
NVF0=$(basename "$(readlink "$NPFDIR/virtfn0")")
NVF1=$(basename "$(readlink "$NPFDIR/virtfn1")")
vf_setup 0000:01:10.0

# --- boot: an igb VF and NVMe VF0 ---
vm_start n 192.0.2.20 --device path=/sys/bus/pci/devices/0000:01:10.0,id=vf0 \
    --device "path=/sys/bus/pci/devices/$NVF0,id=nvme0"
fact "boot_nvme $(grep -a -m1 'L2-NVME' "$RESULTS/n.log" | sed 's/.*L2-//')"
fact "boot_ping $(grep -a -m1 'L2-PING ' "$RESULTS/n.log" | sed 's/.*L2-//')"
DEV=$(grep -a -m1 'L2-NVME' "$RESULTS/n.log" | sed -n 's/.*dev=\([a-z0-9]*\).*/\1/p')
fact "boot_info $("$VFCTL" --vm n --json info | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["state"], *[x["id"] + "=" + x["bdf"] + ":" + x["state"] for x in d["devices"]])')"
fact "boot_fill $(gcmd n 120 BLKFILL "/init blk-fill $DEV $BLOCKS 0")"
fact "boot_verify $(gcmd n 120 BLKVERIFY "/init blk-verify")"

# --- hot-detach with the application's I/O finished, then hot-attach: the data is still there ---
gcmd n 30 BLKWRITER "/init blk-writer-start" >/dev/null
sleep 5
mark=$(klog_mark n)
fact "detach_writer $(gcmd n 120 BLKWRITER "/init blk-writer-stop")"
fact "detach_verify $(gcmd n 120 BLKVERIFY "/init blk-verify")"
vfctl_rc detach detach n nvme0 --timeout 60
fact "detach_guest $(gcmd n 30 NVME "/init nvme-wait 2")"
fact "detach_dmesg $(klog n "$mark")"
fact "detach_pf $(secondaries)"
vfctl_rc attach attach n "$NPF" --vf 0 --id nvme0
fact "attach_guest $(gcmd n 120 NVME "/init nvme-wait 90")"
DEV2=$(grep -a 'L2-NVME' "$RESULTS/n.log" | tail -n 1 | sed -n 's/.*dev=\([a-z0-9]*\).*/\1/p')
# The namespace may come back under another name: the workload follows it.
gcmd n 30 X "echo /dev/$DEV2 > /run/blk/dev" >/dev/null
fact "attach_verify $(gcmd n 120 BLKVERIFY "/init blk-verify")"

# --- plain pause: the igb PF reconfigured under VM n; its NVMe VF is quiesced in place ---
gcmd n 30 BLKWRITER "/init blk-writer-start" >/dev/null
sleep 5
t0=$(now_ns)
vfctl_rc plain reconfigure $IPF --num-vfs 2 --mode pause
t1=$(now_ns)
wait_write_after n "$t1" 60
fact "plain_outage $(outage n "$t0" "$t1")"
fact "plain_ping $(gcmd n 60 VFWAIT "/init vf-wait-ping 0000:00:01.0 30")"

# --- lifecycle with data: the NVMe PF's VFs destroyed and re-created under the paused VM ---
mark=$(klog_mark n)
sleep 3
t0=$(now_ns)
vfctl_rc lifecycle reconfigure "$NPF" --num-vfs 2 --mode pause
t1=$(now_ns)
fact "lifecycle_pf $(secondaries)"
wait_write_after n "$t1" 180
fact "lifecycle_outage $(outage n "$t0" "$t1")"
sleep 5
t2=$(now_ns)
fact "lifecycle_writes_after $(writes_between n "$t1" "$t2")"
fact "lifecycle_writer $(gcmd n 120 BLKWRITER "/init blk-writer-stop")"
fact "lifecycle_verify $(gcmd n 120 BLKVERIFY "/init blk-verify")"
fact "lifecycle_guest $(gcmd n 30 NVME "/init nvme-wait 5")"
fact "lifecycle_dmesg $(klog n "$mark")"
fact "lifecycle_errors $(grep -ac 'L2-BLKW-ERROR\|L2-BLKW .*ok=0' "$RESULTS/n.log")"

# --- detach mode: the NVMe PF reconfigured with a hot-detach and re-attach ---
mark=$(klog_mark n)
vfctl_rc detachmode reconfigure "$NPF" --num-vfs 2 --mode detach --eject-timeout 60
fact "detachmode_guest $(gcmd n 120 NVME "/init nvme-wait 90")"
DEV3=$(grep -a 'L2-NVME' "$RESULTS/n.log" | tail -n 1 | sed -n 's/.*dev=\([a-z0-9]*\).*/\1/p')
gcmd n 30 X "echo /dev/$DEV3 > /run/blk/dev" >/dev/null
fact "detachmode_verify $(gcmd n 120 BLKVERIFY "/init blk-verify")"
fact "detachmode_dmesg $(klog n "$mark")"

# --- hot-add into a VM booted without devices; its own region of the shared namespace ---
vm_start h 192.0.2.21
fact "hotadd_boot $(grep -a -m1 'L2-NVME' "$RESULTS/h.log" | sed 's/.*L2-//')"
vfctl_rc hotadd attach h "$NPF" --id nvme0
fact "hotadd_guest $(gcmd h 120 NVME "/init nvme-wait 90")"
HDEV=$(grep -a 'L2-NVME' "$RESULTS/h.log" | tail -n 1 | sed -n 's/.*dev=\([a-z0-9]*\).*/\1/p')
fact "hotadd_fill $(gcmd h 120 BLKFILL "/init blk-fill $HDEV 16 1024")"
fact "hotadd_verify $(gcmd h 120 BLKVERIFY "/init blk-verify")"
fact "hotadd_pf $(secondaries)"
fact "final_verify_n $(gcmd n 120 BLKVERIFY "/init blk-verify")"
"$VFCTL" vm list 2>&1 | sed 's/^/[vm-list] /' >&2
fact "vm_list $("$VFCTL" vm list | one_line)"

for vm in n h; do
    send_input "$vm" "poweroff -f"
    vmm_wait "$vm"
done
fact done
