#!/bin/bash
# `make demo` (runs in L1, the SR-IOV host): what vfvmm is for, step by step.
#   VFs on the host -> a guest boots with VF0 and pings through it -> VF1 hot-attached ->
#   vfctl info -> pause/resume -> pause with release, the host re-creates its VFs, resume, the
#   guest's traffic comes back -> VF1 hot-detached -> vm.shutdown.
# Narration lines start with "DEMO| " (tests/testbed/demo.sh shows only those); the guest's
# console goes to $RESULTS/demo-guest.log. Each step is checked: the demo exits non-zero at the
# first step that does not do what it says. Step timings: $RESULTS/demo-steps.tsv.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SOCK=/run/vfvmm-demo.sock
PF=0000:01:00.0
VF0=0000:01:10.0
VF1=0000:01:10.2
VM=demo-guest
TESTBED_ECHO=0

say() { echo "DEMO| $*"; }
indent() { sed 's/^/DEMO|     /'; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }
secs() { printf '%d.%01d s' $(($1 / 1000)) $((($1 % 1000) / 100)); }

: > "$RESULTS/demo-steps.tsv"
summary() {
    say ""
    say "Summary"
    say "  $(printf '%-86s %8s  %s' step time result)"
    while IFS=$'\t' read -r name ms result; do
        say "  $(printf '%-86s %8s  %s' "$name" "$(secs "$ms")" "$result")"
    done < "$RESULTS/demo-steps.tsv"
}
step() { STEP=$1; STEP_T0=$(now_ns); say ""; say "==> $1"; }
done_step() {  # done_step ok|FAILED [why]
    local ms
    ms=$(ms_since "$STEP_T0")
    printf '%s\t%s\t%s\n' "$STEP" "$ms" "$1" >> "$RESULTS/demo-steps.tsv"
    if [[ $1 == ok ]]; then
        say "    done in $(secs "$ms")"
    else
        say "    FAILED: ${2:-}"
        say "    guest console: $RESULTS/demo-guest.log (last lines below)"
        tail -n 15 "$RESULTS/$VM.log" 2>/dev/null | indent
        if vmm_running "$VM"; then
            say "    diagnostics: guest neighbours, interfaces, VF interrupts; L1 neighbours"
            guest_cmd "$VM" 30 "ip neigh | sed 's/^/L2-NEIGH /'; cat /proc/net/dev | grep eth | sed 's/^/L2-NETDEV /'; grep eth /proc/interrupts | sed 's/^/L2-IRQ /'" | indent
            ip neigh | sed 's/^/L1 neigh: /' | indent
            grep vfio-msix /proc/interrupts | sed 's/^/L1 irq: /' | indent
        fi
        summary
        exit 1
    fi
}
guest() { guest_cmd "$VM" "$@"; }
vfctl() { "$VFCTL" --api-socket "$SOCK" "$@"; }
vf_line() {  # the host's view of a VF
    local g
    g=$(basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group" 2>/dev/null)" 2>/dev/null)
    printf '%s  %s:%s  driver=%-9s iommu_group=%s\n' "$1" "$(cut -c3- "/sys/bus/pci/devices/$1/vendor")" \
        "$(cut -c3- "/sys/bus/pci/devices/$1/device")" "$(driver_of "$1")" "${g:-none}"
}

say "L1 host: Linux $(uname -r), $(nproc) CPU(s), KVM: $(grep -c . /sys/module/kvm_amd/parameters/nested 2>/dev/null >/dev/null && echo "kvm_amd nested=$(cat /sys/module/kvm_amd/parameters/nested)")"

step "SR-IOV host: PF $PF makes 2 VFs, both bound to vfio-pci"
say "    PF $PF  driver=$(driver_of $PF)  netdev=$(ls /sys/bus/pci/devices/$PF/net)  totalvfs=$(cat /sys/bus/pci/devices/$PF/sriov_totalvfs)"
vf_setup $VF0 $VF1 >/dev/null
vf_line $VF0 | sed 's/^/VF0 /' | indent
vf_line $VF1 | sed 's/^/VF1 /' | indent
if [[ $(driver_of $VF0) == vfio-pci && $(driver_of $VF1) == vfio-pci ]]; then done_step ok
else done_step FAILED "the VFs are not on vfio-pci"; fi

step "vfvmm boots a Linux guest (2 vCPUs, 256 MiB) with VF0 passed through"
say "    vfvmm --kernel vmlinuz --initramfs l2.cpio.gz --cpus boot=2 --memory size=256M \\"
say "          --device path=/sys/bus/pci/devices/$VF0,id=vf0 --api-socket path=$SOCK"
say "    guest console -> $RESULTS/demo-guest.log"
vmm_start "$VM" 900 -- "$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" --initramfs "$TESTBED_CACHE/l2.cpio.gz" \
    --cpus boot=2 --memory size=256M --device "path=/sys/bus/pci/devices/$VF0,id=vf0" \
    --api-socket "path=$SOCK" \
    --cmdline "console=ttyS0 panic=-1 l2.vf=1 l2.ip=192.0.2.10 l2.action=shell"
if wait_for_marker "$VM" "L2-PING " 600 2>/dev/null; then
    say "    guest /init reached $(secs "$(marker_ms "$VM" L2-INIT-START)") after vfvmm started"
    grep -a -e '^L2-PCIDEV 0000:00:0' -e '^L2-VF-BOUND' -e '^L2-VF-NET' -e '^L2-PING ' -e '^L2-RTT' "$RESULTS/$VM.log" \
        | sed 's/^L2-/guest: /' | indent
    if grep -qa '^L2-PING sent=3 received=3' "$RESULTS/$VM.log"; then done_step ok
    else done_step FAILED "the guest's ping through VF0 did not get 3 replies"; fi
else
    done_step FAILED "the guest did not get to ping (vfvmm: $(tail -n 3 "$RESULTS/$VM.err" 2>/dev/null | tr '\n' ' '))"
fi
wait_for_marker "$VM" "L2-ACTION shell" 60 2>/dev/null

step "vfctl add-device: VF1 is hot-attached, the guest's igbvf binds it"
out=$(vfctl --json add-device "path=/sys/bus/pci/devices/$VF1,id=vf1" 2>&1)
say "    \$ vfctl add-device path=/sys/bus/pci/devices/$VF1,id=vf1"
echo "$out" | indent
gbdf=$(echo "$out" | sed -n 's/.*"bdf": *"\([^"]*\)".*/\1/p')
if [[ -n $gbdf ]] && res=$(guest 120 "i=0; while [ ! -e /sys/bus/pci/drivers/igbvf/$gbdf ] && [ \$i -lt 600 ]; do sleep 0.1; i=\$((i+1)); done; /init vf-ping $gbdf 192.0.2.11") \
    && grep -q "received=3/3" <<< "$res"; then
    echo "$res" | sed 's/^/guest: /' | indent
    done_step ok
else
    echo "${res:-}" | indent
    done_step FAILED "VF1 did not come up in the guest (${gbdf:-no bdf from add-device})"
fi

step "vfctl info: the VM and both devices"
info=$(vfctl info 2>&1)
echo "$info" | indent
if [[ $(grep -c "Attached" <<< "$info") -ge 2 ]]; then done_step ok; else done_step FAILED "both devices should be Attached"; fi

step "vfctl pause: the vCPUs stop; a command typed now waits"
vfctl pause 2>&1 | indent
state=$(vfctl --json info | python3 -c "import json,sys; print(json.load(sys.stdin)[\"state\"])" 2>/dev/null)
say "    VM state: $state"
if [[ $state == Paused ]] && guest_cmd_unanswered "$VM" "echo typed-while-paused" 3; then
    say "    no answer from the paused guest after 3 s (as it should be)"
    done_step ok
else
    done_step FAILED "the guest is not paused (state: $state)"
fi

step "vfctl resume: the guest runs again, answers what was typed while it was paused, both VFs pass traffic"
vfctl resume 2>&1 | indent
if guest_cmd_wait "$VM" 60 && [[ $(vfctl --json info | python3 -c "import json,sys; print(json.load(sys.stdin)['state'])") == Running ]]; then
    say "    the command typed while paused ran on resume; VM state: Running, devices Bound again"
    if res=$(guest 120 "/init vf-wait-ping 0000:00:01.0 30; /init vf-wait-ping $gbdf 30") \
        && [[ $(grep -c "ok=1" <<< "$res") == 2 ]]; then
        echo "$res" | sed 's/^VFWAIT /guest: ping through the VF: /' | indent
        done_step ok
    else
        echo "${res:-}" | indent
        done_step FAILED "the guest's traffic did not come back after a plain resume"
    fi
else
    done_step FAILED "no answer after resume"
fi

step "pause --release, the host re-creates its VFs, resume: the guest keeps both devices"
vfctl pause --release 2>&1 | indent
vfctl info | grep '^device' | indent
t0=$(now_ns)
echo 0 > "/sys/bus/pci/devices/$PF/sriov_numvfs"
say "    host: echo 0 > sriov_numvfs  ($(secs "$(ms_since "$t0")"); both VFs destroyed while the guest holds them)"
echo 2 > "/sys/bus/pci/devices/$PF/sriov_numvfs"
bind_to $VF0 vfio-pci >/dev/null
bind_to $VF1 vfio-pci >/dev/null
say "    host: echo 2 > sriov_numvfs, VFs bound to vfio-pci again  ($(secs "$(ms_since "$t0")"))"
t1=$(now_ns)
vfctl resume 2>&1 | indent
say "    resumed in $(secs "$(ms_since "$t1")") (both VFs re-acquired and their state replayed)"
if res=$(guest 120 "/init vf-wait-ping 0000:00:01.0 30; /init vf-wait-ping $gbdf 30; /init vf-state 0000:00:01.0") \
    && [[ $(grep -c "ok=1" <<< "$res") == 2 ]] && vfctl info | grep -q "vf1.*Attached, Bound"; then
    echo "$res" | sed 's/^VFWAIT /guest: ping through the VF works again: /; s/^VFSTATE /guest: same device, same netdev: /' | indent
    done_step ok
else
    echo "${res:-}" | indent
    done_step FAILED "the guest's traffic did not come back after resume"
fi

step "vfctl remove-device vf1: the guest ejects VF1, the host gets it back"
vfctl remove-device vf1 2>&1 | indent
t=0
while ! vfctl info 2>/dev/null | grep -q "vf1.*Detached" && ((t < 600)); do sleep 0.1; t=$((t + 1)); done
res=$(guest 60 "[ -e /sys/bus/pci/devices/$gbdf ] && echo L2-STILL-THERE $gbdf || echo L2-GONE $gbdf")
vf_line $VF1 | sed 's/^/host: VF1 /' | indent
echo "$res" | sed 's/^/guest: /' | indent
if grep -q "^GONE" <<< "$res" && vfctl info | grep -q "vf1.*Detached" && [[ $(driver_of $VF1) == vfio-pci ]] \
    && exec {g}<>"/dev/vfio/$(basename "$(readlink /sys/bus/pci/devices/$VF1/iommu_group)")"; then
    exec {g}>&-
    say "    VF1's /dev/vfio group can be opened again: vfvmm let go of it"
    done_step ok
else
    done_step FAILED "VF1 was not released"
fi

step "vfctl shutdown: ACPI power button, the guest powers off, vfvmm exits 0"
vfctl shutdown 2>&1 | indent
rc=0
vmm_wait "$VM" 2>/dev/null || rc=$?
say "    vfvmm exit code: $rc; VF0 back on the host: $(driver_of $VF0)"
if [[ $rc == 0 ]]; then done_step ok; else done_step FAILED "vfvmm exited with $rc"; fi

summary
say ""
say "All steps passed. Guest console: $RESULTS/demo-guest.log"
exit 0
