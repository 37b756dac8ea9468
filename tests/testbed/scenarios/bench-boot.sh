#!/bin/bash
# Benchmarks (run in L1), vfvmm vs QEMU 10 (q35 + qboot) side by side in one L1 run, same
# kernel, initramfs, 256 MiB, 1 vCPU, rounds alternating the two VMMs:
#   BOOT    process start -> L2 /init (L2-INIT-START), no device
#   BOOTVF  the same with VF0 passed through
#   BOOTELF process start -> L2 /init booting the ELF vmlinux cut from the same bzImage
#           (vfvmm: 64-bit entry; QEMU: PVH entry), i.e. without in-guest decompression
#   BOOTHP  BOOT with guest RAM in 2 MiB huge pages (vfvmm: --memory ...,hugepages=on; QEMU:
#           -mem-path on hugetlbfs)
#   BOOTELFHP  BOOTELF with huge pages: both, the fastest boot of the same guest either VMM offers
#   BOOTPF  BOOT with guest RAM allocated before the guest starts (vfvmm: --memory ...,prefault=on,
#           which also maps it ahead of the guest; QEMU: -mem-prealloc)
#   RTT     average ping RTT to the PF through VF0 (20 pings, 0.2 s apart)
#   ATTACH  hot-attach: API call (vfctl add-device / QMP device_add into a pcie-root-port) ->
#           the guest's igbvf bound (L2-HOTPLUG-BOUND seen on the console); FIRSTATTACH: the
#           VM's first one (it also pins guest RAM the guest never touched)
#   DETACH  hot-detach: API call (vfctl remove-device / QMP device_del) -> the VF is free in L1
#           (its /dev/vfio group can be opened again)
#   ATTACHHP, FIRSTATTACHHP, DETACHHP: the same with guest RAM in huge pages
#   ATTACHPF, FIRSTATTACHPF, DETACHPF: the same with guest RAM prefaulted (as BOOTPF)
#   RECONF_PAUSE / RECONF_DETACH: reconfiguring one vfvmm VM's PF by pause vs by detach (below)
#   MULTI_*  vfctl reconfigure of two VMs, pause vs detach mode (below)
# Writes $RESULTS/bench-boot.txt: "<KIND> <vmm> <round> <value>" lines (ms), and
# $RESULTS/bench-phases.txt: vfvmm's own timings of BOOT, ATTACH and DETACH by phase,
# "<timeline>\t<round>\t<phase>\t<ms>" (from its RUST_LOG=info "timing boot:" line and from
# vm.info's timings), plus the rest of each figure that lies outside vfvmm's timeline.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

ROUNDS=${BENCH_ROUNDS:-3}
# Reconfiguring by pause is compared with the driver recovery it replaced: medians of 5.
RECONF_ROUNDS=${BENCH_RECONF_ROUNDS:-5}
# Boots are short and noisy in the testbed: more rounds for them.
BOOT_ROUNDS=${BENCH_BOOT_ROUNDS:-5}
TESTBED_ECHO=0
APPEND="console=ttyS0 panic=-1 quiet"
VF0=0000:01:10.0
out=$RESULTS/bench-boot.txt
phases_out=$RESULTS/bench-phases.txt
: > "$out"
: > "$phases_out"

# timing_phases TIMELINE ROUND LINE: vfvmm's "a +1 ms; b +2 ms [ecam=3]; ..." -> phase lines in
# $phases_out; prints the phases' sum (ms).
timing_phases() {
    printf '%s\n' "$3" | tr ';' '\n' | sed -E 's/^ +//; s/ \[[^]]*\]$//' | awk -v t="$1" -v r="$2" -v out="$phases_out" '
        match($0, / \+[0-9]+ ms$/) {
            name = substr($0, 1, RSTART - 1); ms = substr($0, RSTART + 2) + 0
            printf "%s\t%s\t%s\t%d\n", t, r, name, ms >> out; sum += ms
        }
        END { print sum + 0 }'
}
# rest_phase TIMELINE ROUND TOTAL SUM NAME: what the figure has beyond vfvmm's timeline.
rest_phase() { [[ $3 =~ ^[0-9]+$ ]] && printf '%s\t%s\t%s\t%d\n' "$1" "$2" "$5" $(($3 - $4)) >> "$phases_out"; }

# vfvmm_cmd / qemu_cmd [MEMORY]: the VMM's command line; MEMORY: "" 4 KiB pages (default), HP
# guest RAM in 2 MiB huge pages (vfvmm hugepages=on; QEMU -mem-path on hugetlbfs), PF guest RAM
# allocated before the guest starts (vfvmm prefault=on, which also maps it ahead of the guest;
# QEMU -mem-prealloc).
vfvmm_cmd() {
    local memory=size=256M
    case ${1:-} in HP) memory+=,hugepages=on ;; PF) memory+=,prefault=on ;; esac
    echo "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" --initramfs "$TESTBED_CACHE/l2.cpio.gz" --cpus boot=1 --memory "$memory"
}
qemu_cmd() {
    local memory=()
    case ${1:-} in HP) memory=(-mem-path /dev/hugepages) ;; PF) memory=(-mem-prealloc) ;; esac
    echo qemu-system-x86_64 -enable-kvm -cpu host -M q35 -m 256 -smp 1 -nographic -nodefaults -no-reboot \
        -serial stdio -bios /usr/share/qemu/qboot.rom -kernel "$TESTBED_CACHE/vmlinuz" -initrd "$TESTBED_CACHE/l2.cpio.gz" "${memory[@]}"
}

# BENCH_ONLY=boot|vf|reconf|modes|hotplug runs one section ("multi": the old name of modes).
[[ ${BENCH_ONLY:-} == multi ]] && BENCH_ONLY=modes
section() { [[ ${BENCH_ONLY:-all} == all || ${BENCH_ONLY:-all} == "$1" ]]; }
# Progress for bench.sh on L0: "L1-BENCH-SECTION NAME K N rounds=R" as a section starts and
# "L1-BENCH-ROUND NAME R ROUNDS" as one of its rounds ends (its figure lines came before).
SECTIONS=(boot vf reconf modes hotplug)
[[ ${BENCH_ONLY:-all} == all ]] || SECTIONS=("$BENCH_ONLY")
bench_section() {
    local i
    for i in "${!SECTIONS[@]}"; do
        [[ ${SECTIONS[$i]} == "$1" ]] && echo "L1-BENCH-SECTION $1 $((i + 1)) ${#SECTIONS[@]} rounds=$2"
    done
}
bench_round() { echo "L1-BENCH-ROUND $1 $2 $3"; }

# Huge pages for BOOTHP (512 x 2 MiB of L1's 2 GiB, while the boot section runs).
echo 512 > /proc/sys/vm/nr_hugepages
mkdir -p /dev/hugepages && { mountpoint -q /dev/hugepages || mount -t hugetlbfs none /dev/hugepages; }
# boot_vfvmm KIND TIMELINE NAME ARGS...: one vfvmm boot, its figure and its phases.
boot_vfvmm() {
    local kind=$1 timeline=$2 name=$3 boot_ms sum
    shift 3
    RUST_LOG=info run_vmm "$name" 300 -- "$@" --cmdline "$APPEND l2.action=poweroff" || true
    boot_ms=$(marker_ms "$name" L2-INIT-START || echo NA)
    echo "$kind vfvmm $round $boot_ms" | tee -a "$out"
    sum=$(timing_phases "$timeline" "$round" "$(sed -n 's/.*timing boot: //p' "$RESULTS/$name.err" | tail -n 1)")
    rest_phase "$timeline" "$round" "$boot_ms" "$sum" "guest: to /init (after the last milestone)"
}
boot_qemu() {  # boot_qemu KIND NAME ARGS...
    local kind=$1 name=$2
    shift 2
    run_vmm "$name" 300 -- "$@" -append "$APPEND l2.action=poweroff" || true
    echo "$kind qemu $round $(marker_ms "$name" L2-INIT-START || echo NA)" | tee -a "$out"
}
# The testbed slows down over an L1 run (later boots take longer, whichever VMM): every
# round boots each configuration once, in the same order, so that no figure gets the fast
# early slots.
section boot && bench_section boot "$BOOT_ROUNDS"
# shellcheck disable=SC2046
section boot && for ((round = 1; round <= BOOT_ROUNDS; round++)); do
    boot_vfvmm BOOT boot "boot-vfvmm-$round" $(vfvmm_cmd)
    boot_qemu BOOT "boot-qemu-$round" $(qemu_cmd)
    boot_vfvmm BOOTPF bootpf "pf-boot-vfvmm-$round" $(vfvmm_cmd PF)
    boot_qemu BOOTPF "pf-boot-qemu-$round" $(qemu_cmd PF)
    boot_vfvmm BOOTHP boothp "hp-boot-vfvmm-$round" $(vfvmm_cmd HP)
    boot_qemu BOOTHP "hp-boot-qemu-$round" $(qemu_cmd HP)
    boot_vfvmm BOOTELF bootelf "elf-vfvmm-$round" $(vfvmm_cmd | sed "s|vmlinuz|vmlinux|")
    boot_qemu BOOTELF "elf-qemu-$round" $(qemu_cmd | sed "s|vmlinuz|vmlinux|")
    boot_vfvmm BOOTELFHP bootelfhp "elfhp-vfvmm-$round" $(vfvmm_cmd HP | sed "s|vmlinuz|vmlinux|")
    boot_qemu BOOTELFHP "elfhp-qemu-$round" $(qemu_cmd HP | sed "s|vmlinuz|vmlinux|")
    bench_round boot "$round" "$BOOT_ROUNDS"
done
# The other sections run without huge pages: give L1 its memory back.
echo 0 > /proc/sys/vm/nr_hugepages

vf_setup "$VF0"
rtt() { sed -n 's/.*L2-RTT min=[0-9.]* avg=\([0-9.]*\) .*/\1/p' "$RESULTS/$1.log" | head -n 1; }
VFARGS="$APPEND l2.vf=1 l2.ip=192.0.2.10 l2.pings=20 l2.action=poweroff"
section vf && bench_section vf "$ROUNDS"
section vf && for ((round = 1; round <= ROUNDS; round++)); do
    # shellcheck disable=SC2046
    run_vmm "vf-vfvmm-$round" 400 -- $(vfvmm_cmd) --device "path=/sys/bus/pci/devices/$VF0" --cmdline "$VFARGS" || true
    echo "BOOTVF vfvmm $round $(marker_ms "vf-vfvmm-$round" L2-INIT-START || echo NA)" | tee -a "$out"
    echo "RTT vfvmm $round $(rtt "vf-vfvmm-$round" || true)" | tee -a "$out"
    # shellcheck disable=SC2046
    run_vmm "vf-qemu-$round" 400 -- $(qemu_cmd) -device "vfio-pci,host=$VF0" -append "$VFARGS" || true
    echo "BOOTVF qemu $round $(marker_ms "vf-qemu-$round" L2-INIT-START || echo NA)" | tee -a "$out"
    echo "RTT qemu $round $(rtt "vf-qemu-$round" || true)" | tee -a "$out"
    bench_round vf "$round" "$ROUNDS"
done

HERE=$(dirname "${BASH_SOURCE[0]}")/..
PFDIR=/sys/bus/pci/devices/0000:01:00.0
ms_now() { echo $(($(now_ns) / 1000000)); }
recreate_vfs() {  # the PF's VF count through 0 and back to 2, VFs bound to vfio-pci
    echo 0 > "$PFDIR/sriov_numvfs"
    echo 2 > "$PFDIR/sriov_numvfs"
    bind_to "$VF0" vfio-pci >/dev/null
    bind_to 0000:01:10.2 vfio-pci >/dev/null
}

# Reconfigure one VM (the PF's VF count through 0 and back) by pause vs by detach, in one VM:
#   RECONF_PAUSE   pause + release -> numvfs 2 -> 0 -> 2 -> resume -> first ping reply via the VF
#                  (parts: RP_PAUSE pause+release, RP_NUMVFS VF re-creation, RP_RESUME resume with
#                  re-acquire, RP_GUEST resume -> first reply, the guest driver's recovery)
#   RECONF_DETACH  remove-device -> VF free -> numvfs 2 -> 0 -> 2 -> add-device -> the guest's
#                  igbvf bound, its netdev up -> first ping reply
# pause_round NAME LABEL ROUND: one pause + release -> re-create -> resume -> first reply round
# of VM NAME (socket $SOCKR), its figures printed under LABEL.
pause_round() {
    local name=$1 label=$2 round=$3 t0 t1 t2 t3 t4 res
    t0=$(ms_now)
    "$VFCTL" --api-socket "$SOCKR" pause --release > /dev/null
    t1=$(ms_now)
    recreate_vfs
    t2=$(ms_now)
    "$VFCTL" --api-socket "$SOCKR" resume
    t3=$(ms_now)
    res=$(guest_cmd "$name" 120 "/init vf-wait-ping $gbdf 60")
    t4=$(ms_now)
    if [[ $res == *ok=1* ]]; then
        echo "RECONF_PAUSE $label $round $((t4 - t0))" | tee -a "$out"
        printf 'RP_PAUSE %s %s %s\nRP_NUMVFS %s %s %s\nRP_RESUME %s %s %s\nRP_GUEST %s %s %s\n' \
            "$label" "$round" $((t1 - t0)) "$label" "$round" $((t2 - t1)) "$label" "$round" $((t3 - t2)) \
            "$label" "$round" $((t4 - t3)) | tee -a "$out"
    fi
}
if section reconf; then
    ROUNDS=$RECONF_ROUNDS
    bench_section reconf "$ROUNDS"
    SOCKR=/tmp/bench-reconf.sock
    # shellcheck disable=SC2046
    vmm_start rc-vfvmm 1800 -- $(vfvmm_cmd) --device "path=/sys/bus/pci/devices/$VF0,id=vf0" --api-socket "path=$SOCKR" \
        --cmdline "$APPEND l2.vf=1 l2.ip=192.0.2.10 l2.action=shell"
    wait_for_marker rc-vfvmm "L2-ACTION shell" 600
    gbdf=0000:00:01.0 ip=10
    for ((round = 1; round <= ROUNDS; round++)); do
        pause_round rc-vfvmm vfvmm "$round"
        t0=$(ms_now)
        id=$(printf 'vf%02d' "$round")
        "$VFCTL" --api-socket "$SOCKR" remove-device "$([[ $round == 1 ]] && echo vf0 || echo "vf$(printf '%02d' $((round - 1)))")" > /dev/null
        until "$VFCTL" --api-socket "$SOCKR" info | grep -q "Detached"; do sleep 0.05; done
        recreate_vfs
        gbdf=$("$VFCTL" --api-socket "$SOCKR" --json add-device "path=/sys/bus/pci/devices/$VF0,id=$id" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["bdf"])')
        ip=$((ip + 1))
        res=$(guest_cmd rc-vfvmm 180 "i=0; while [ ! -e /sys/bus/pci/drivers/igbvf/$gbdf/net ] && [ \$i -lt 1200 ]; do sleep 0.05; i=\$((i+1)); done; /init vf-ping $gbdf 192.0.2.$ip 1 >/dev/null; /init vf-wait-ping $gbdf 60")
        t4=$(ms_now)
        [[ $res == *ok=1* ]] && echo "RECONF_DETACH vfvmm $round $((t4 - t0))" | tee -a "$out"
        bench_round reconf "$round" "$ROUNDS"
    done
    "$VFCTL" --api-socket "$SOCKR" shutdown-vmm > /dev/null 2>&1
    vmm_wait rc-vfvmm
    # The same pause rounds with an earlier vfvmm (make bench BENCH_BASELINE=REV), labelled
    # "baseline": e.g. the igbvf-only driver recovery that AER recovery replaced.
    baseline=$(cat "$RESULTS/baseline-vfvmm" 2>/dev/null || true)
    if [[ -x $baseline ]]; then
        # shellcheck disable=SC2046
        vmm_start rc-base 1800 -- $(VFVMM=$baseline vfvmm_cmd) --device "path=/sys/bus/pci/devices/$VF0,id=vf0" \
            --api-socket "path=$SOCKR" --cmdline "$APPEND l2.vf=1 l2.ip=192.0.2.10 l2.action=shell"
        wait_for_marker rc-base "L2-ACTION shell" 600
        gbdf=0000:00:01.0
        for ((round = 1; round <= ROUNDS; round++)); do pause_round rc-base baseline "$round"; done
        "$VFCTL" --api-socket "$SOCKR" shutdown-vmm > /dev/null 2>&1
        vmm_wait rc-base
    fi
fi
# Reconfigure two VMs holding VF0 and VF1 with vfctl (2 -> 0 -> 4 VFs) in each mode: live (the
# VMs run, their drivers wait through PCIe error recovery), pause and detach:
#   MULTI_LIVE / MULTI_PAUSE / MULTI_DETACH   vfctl reconfigure's total time
#   MULTI_<MODE>_DOWN   each VM's longest gap between replies to a ping L1 sends it every 0.1 s,
#                until it answers again (detach mode: the re-attached VF's netdev is new, so the
#                guest configures its address again: the script does that as soon as the
#                guest's igbvf is bound)
#   MULTI_<MODE>_HB     each VM's longest gap between its heartbeat lines (one every 100 ms,
#                timestamped on L1): a stopped vCPU shows as a gap as long as the change
if section modes; then
    bench_section modes "$ROUNDS"
    PF=0000:01:00.0
    VF1=0000:01:10.2
    vf_setup "$VF0" "$VF1"
    for vm in ma mb; do
        vf=$VF0 ip=10
        [[ $vm == mb ]] && vf=$VF1 ip=11
        # shellcheck disable=SC2046
        vmm_start "$vm" 1800 -- $(vfvmm_cmd) --name "$vm" --api-socket "path=/tmp/bench-$vm.sock" \
            --reacquire-timeout 30 --device "path=/sys/bus/pci/devices/$vf,id=vf0" \
            --cmdline "$APPEND l2.vf=1 l2.heartbeat=1 l2.ip=192.0.2.$ip l2.action=shell"
        wait_for_marker "$vm" "L2-ACTION shell" 600
    done
    # hb_gap VM FROM_NS TO_NS: the longest gap (ms) between VM's heartbeat lines in the window.
    hb_gap() {
        # From the window's start: a VM paused at once shows its gap before its first line.
        awk -v a="$2" -v b="$3" 'BEGIN { last = a } $2 == "L2-HB" && $1 >= a && $1 <= b { if ($1 - last > g) g = $1 - last; last = $1 }
            END { if (b - last > g) g = b - last; printf "%d\n", g / 1e6 }' "$RESULTS/$1.markers"
    }
    PINGERS=()
    pingers() {  # pingers start|stop TAG
        if [[ $1 == start ]]; then
            for ip in 10 11; do
                ping -D -n -i 0.1 -W 1 "192.0.2.$ip" > "$RESULTS/ping-$2-$ip.txt" 2>&1 &
                PINGERS+=($!)
            done
            # Both answer steadily before anything changes (ARP resolved), or 30 s passed.
            for ip in 10 11; do
                for ((i = 0; i < 300; i++)); do
                    (($(grep -c "bytes from" "$RESULTS/ping-$2-$ip.txt") >= 5)) && break
                    sleep 0.1
                done
            done
        elif ((${#PINGERS[@]})); then
            # Both guests answer again (or 60 s passed), then a last second of replies.
            for ip in 10 11; do
                for ((i = 0; i < 600; i++)); do ping -c 1 -W 1 "192.0.2.$ip" > /dev/null 2>&1 && break; sleep 0.1; done
            done
            sleep 1
            kill "${PINGERS[@]}" 2>/dev/null
            wait "${PINGERS[@]}" 2>/dev/null
            PINGERS=()
        fi
    }
    longest_gap() {  # ms between consecutive replies, the longest
        awk -F'[][]' '/bytes from/ { t = $2 * 1000; if (last && t - last > gap) gap = t - last; last = t } END { printf "%d\n", gap }' "$1"
    }
    guest_readdress() {  # after detach mode: each guest configures its new netdev
        local vm bdf ip
        for vm in ma mb; do
            ip=10
            [[ $vm == mb ]] && ip=11
            bdf=$("$VFCTL" --vm "$vm" --json info | python3 -c 'import json,sys; print(next(d["bdf"] for d in json.load(sys.stdin)["devices"] if d["state"] != "Detached"))')
            guest_cmd "$vm" 120 "i=0; while [ ! -e /sys/bus/pci/drivers/igbvf/$bdf/net ] && [ \$i -lt 1200 ]; do sleep 0.05; i=\$((i+1)); done; /init vf-ping $bdf 192.0.2.$ip 1" > /dev/null
        done
    }
    for ((round = 1; round <= ROUNDS; round++)); do
        for mode in live pause detach; do
            # igbvf does not reset twice within 10 s: the previous (unmeasured) change would
            # otherwise hold the guests' recovery back.
            sleep 11
            pingers start "$mode-$round"
            t0=$(ms_now) t0n=$(now_ns)
            if "$VFCTL" reconfigure "$PF" --num-vfs 4 --mode "$mode" > "$RESULTS/multi-$mode-$round.txt" 2>&1; then
                t1=$(ms_now) t1n=$(now_ns)
                [[ $mode == detach ]] && guest_readdress
                pingers stop
                KIND=MULTI_${mode^^}
                echo "$KIND vfvmm $round $((t1 - t0))" | tee -a "$out"
                for ip in 10 11; do
                    echo "${KIND}_DOWN vfvmm $round $(longest_gap "$RESULTS/ping-$mode-$round-$ip.txt")" | tee -a "$out"
                done
                for vm in ma mb; do
                    echo "${KIND}_HB vfvmm $round $(hb_gap "$vm" "$t0n" "$((t1n + 2000000000))")" | tee -a "$out"
                done
            else
                pingers stop
                echo "multi: reconfigure --mode $mode failed (round $round), see multi-$mode-$round.txt" >&2
            fi
            # Back to 2 VFs for the next measurement (not measured).
            "$VFCTL" reconfigure "$PF" --num-vfs 2 --mode pause > "$RESULTS/multi-back-$mode-$round.txt" 2>&1
            pingers stop
        done
        bench_round modes "$round" "$ROUNDS"
    done
    for vm in ma mb; do "$VFCTL" --vm "$vm" shutdown-vmm > /dev/null 2>&1; vmm_wait "$vm"; done
fi
section hotplug || exit 0
bench_section hotplug 3

# Hot-attach / hot-detach latency, 3 rounds each in one guest per VMM.
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
# hotplug_rounds NAME VMM SUFFIX ATTACH-CMD -- DETACH-CMD: each CMD is one string, eval'd.
# Figures ATTACH$SUFFIX / DETACH$SUFFIX per round, and FIRSTATTACH$SUFFIX for the VM's first
# attach (the one that pins guest RAM the guest never touched); vfvmm's phases under the
# timelines attach$suffix / detach$suffix (lower case).
hotplug_rounds() {
    local name=$1 vmm=$2 suffix=$3 attach=$4 detach=$6 round t0 t1 ms
    local timeline=${suffix,,}
    wait_for_marker "$name" L2-READY-FOR-HOTPLUG 300 || return
    for round in 1 2 3; do
        t0=$(now_ns)
        eval "$attach"
        wait_for_marker "$name" "L2-HOTPLUG-PING round=$round" 300 || return
        t1=$(marker_ns "$name" "L2-HOTPLUG-BOUND round=$round")
        ms=$(((t1 - t0) / 1000000))
        echo "ATTACH$suffix $vmm $round $ms" | tee -a "$out"
        ((round == 1)) && echo "FIRSTATTACH$suffix $vmm $round $ms" | tee -a "$out"
        [[ $vmm == vfvmm ]] && vfvmm_phases attach "attach$timeline" "$round" "$ms" "rest: API client; guest driver until bound"
        t0=$(now_ns)
        eval "$detach"
        t1=$(vf_free_ns) && echo "DETACH$suffix $vmm $round $(((t1 - t0) / 1000000))" | tee -a "$out"
        [[ $vmm == vfvmm ]] && vfvmm_phases detach "detach$timeline" "$round" $(((t1 - t0) / 1000000)) "rest: API client; VF seen free by the poll"
        wait_for_marker "$name" "L2-HOTPLUG-GONE round=$round" 120 || return
    done
}
SOCK=/tmp/bench-vfvmm.sock
# vfvmm_phases attach|detach TIMELINE ROUND TOTAL REST-NAME: the last attach/detach's phases
# from vm.info, tabulated under TIMELINE.
vfvmm_phases() {
    local line sum
    line=$("$VFCTL" --api-socket "$SOCK" --json info | python3 -c '
import json, sys
t = json.load(sys.stdin)["timings"]["last_" + sys.argv[1]] or {"phases": []}
print("; ".join("%s +%d ms" % (p["phase"], p["ms"]) for p in t["phases"]))' "$1")
    sum=$(timing_phases "$2" "$3" "$line")
    rest_phase "$2" "$3" "$4" "$sum" "$5"
}
# QEMU: one QMP connection made beforehand, commands written to it through a fifo.
QMP=/tmp/bench-qemu.qmp
mkfifo /tmp/bench-qmp-in
# hotplug_pair SUFFIX: a vfvmm VM, then a QEMU VM, 3 rounds each, guest RAM as vfvmm_cmd SUFFIX.
hotplug_pair() {
    local suffix=$1
    # shellcheck disable=SC2046
    vmm_start "hp$suffix-vfvmm" 900 -- $(vfvmm_cmd "$suffix") --api-socket "path=$SOCK" --cmdline "$HPARGS"
    hotplug_rounds "hp$suffix-vfvmm" vfvmm "$suffix" "\"$VFCTL\" --api-socket $SOCK add-device path=/sys/bus/pci/devices/$VF0,id=vf0 >/dev/null" \
        -- "\"$VFCTL\" --api-socket $SOCK remove-device vf0 >/dev/null"
    "$VFCTL" --api-socket "$SOCK" shutdown-vmm > /dev/null 2>&1
    vmm_wait "hp$suffix-vfvmm"

    rm -f "$QMP"
    # shellcheck disable=SC2046
    vmm_start "hp$suffix-qemu" 900 -- $(qemu_cmd "$suffix") -device pcie-root-port,id=hprp,chassis=2,slot=2 \
        -qmp "unix:$QMP,server=on,wait=off" -append "$HPARGS"
    for _ in $(seq 100); do [[ -S $QMP ]] && break; nap 0.1; done
    python3 "$HERE/qmp.py" "$QMP" --serve /tmp/bench-qmp-in > "$RESULTS/hp$suffix-qemu.qmp" 2>&1 &
    exec 5>/tmp/bench-qmp-in
    until grep -q QMP-READY "$RESULTS/hp$suffix-qemu.qmp" 2>/dev/null; do nap 0.1; done
    hotplug_rounds "hp$suffix-qemu" qemu "$suffix" "echo '{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"vfio-pci\",\"host\":\"$VF0\",\"bus\":\"hprp\",\"id\":\"vf0\"}}' >&5" \
        -- "echo '{\"execute\":\"device_del\",\"arguments\":{\"id\":\"vf0\"}}' >&5"
    echo '{"execute":"quit"}' >&5
    exec 5>&-
    vmm_wait "hp$suffix-qemu"
}
hotplug_pair ""
bench_round hotplug 1 3
hotplug_pair PF
bench_round hotplug 2 3
# Huge pages for the last pair only (160 x 2 MiB: one 256 MiB guest at a time).
echo 160 > /proc/sys/vm/nr_hugepages
hotplug_pair HP
bench_round hotplug 3 3
echo 0 > /proc/sys/vm/nr_hugepages
exit 0
