#!/bin/bash
# Scenario (runs in L1): boot one L2 configuration many times in one L1 run, the VMMs
# interleaved, and record each outcome (make stability; tests/testbed/README.md, "Stability").
# Parameters (optional file $RESULTS/params, KEY=VALUE lines, written by the caller on L0):
#   STAB_RUNS     boots per VMM (default 20)
#   STAB_FIRST    number of the first boot (default 1; a follow-up L1 run after a frozen one)
#   STAB_VMMS     VMMs to alternate, from: vfvmm vfvmm-nocoalesce qemu (default "vfvmm qemu");
#                 vfvmm-nocoalesce is vfvmm with VFVMM_COALESCED_PIO=off
#   STAB_CPUS     L2 vCPUs (default 2)
#   STAB_MEM      L2 memory in MiB (default 256)
#   STAB_VF       1: VF0 passed through at boot and the guest pings the PF 3 times; 0: no device
#   STAB_QUIET    1: "quiet" on the guest's command line (as the boot suite); 0: full console
#   STAB_TIMEOUT  seconds one L2 boot may take (default 240)
# Writes $RESULTS/stability.txt: one line per boot
#   STAB vmm=<v> run=<i> outcome=ok|reset|stall|noping|error rc=<rc> init_ms=<ms|?> total_ms=<ms>
# and a closing line "STAB-SUMMARY <vmm> ok=<n> fail=<n>" per VMM. Each boot is announced on the
# console first ("L1-STAB-BEGIN vmm=<v> run=<i>"), so the caller knows which boot an L1 froze in.
set -uo pipefail
# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

STAB_RUNS=20 STAB_FIRST=1 STAB_VMMS="vfvmm qemu" STAB_CPUS=2 STAB_MEM=256 STAB_VF=1 STAB_QUIET=0 STAB_TIMEOUT=240
if [[ -f $RESULTS/params ]]; then
    while IFS='=' read -r k v; do
        case $k in
            STAB_RUNS | STAB_FIRST | STAB_VMMS | STAB_CPUS | STAB_MEM | STAB_VF | STAB_QUIET | STAB_TIMEOUT) printf -v "$k" '%s' "$v" ;;
        esac
    done < "$RESULTS/params"
fi
VF0=0000:01:10.0
TESTBED_ECHO=0
CMDLINE="console=ttyS0 panic=-1 l2.action=poweroff"
[[ $STAB_QUIET == 1 ]] && CMDLINE+=" quiet"
VFVMM_DEV=() QEMU_DEV=()
if [[ $STAB_VF == 1 ]]; then
    CMDLINE+=" l2.vf=1 l2.ip=192.0.2.10"
    VFVMM_DEV=(--device "path=/sys/bus/pci/devices/$VF0,id=vf0")
    QEMU_DEV=(-device "vfio-pci,host=$VF0")
    vf_setup $VF0
fi
OUT=$RESULTS/stability.txt
: > "$OUT"
echo "L1-STABILITY runs=$STAB_RUNS first=$STAB_FIRST vmms=$STAB_VMMS l2_cpus=$STAB_CPUS l2_mem=$STAB_MEM vf=$STAB_VF quiet=$STAB_QUIET nproc=$(nproc)"

boot() {  # boot VMM NAME
    local vfvmm=("$VFVMM" --kernel "$TESTBED_CACHE/vmlinuz" --initramfs "$TESTBED_CACHE/l2.cpio.gz"
        --cpus "boot=$STAB_CPUS" --memory "size=${STAB_MEM}M" "${VFVMM_DEV[@]}" --cmdline "$CMDLINE")
    case $1 in
        vfvmm) vmm_start "$2" "$STAB_TIMEOUT" -- "${vfvmm[@]}" ;;
        vfvmm-nocoalesce) vmm_start "$2" "$STAB_TIMEOUT" -- env VFVMM_COALESCED_PIO=off "${vfvmm[@]}" ;;
        qemu) vmm_start "$2" "$STAB_TIMEOUT" -- qemu-system-x86_64 -enable-kvm -cpu host -M q35 \
            -m "$STAB_MEM" -smp "$STAB_CPUS" -nographic -nodefaults -no-reboot -serial stdio \
            -bios /usr/share/qemu/qboot.rom "${QEMU_DEV[@]}" \
            -kernel "$TESTBED_CACHE/vmlinuz" -initrd "$TESTBED_CACHE/l2.cpio.gz" -append "$CMDLINE" ;;
        *) tb_log "unknown VMM $1"; return 2 ;;
    esac
}

declare -A OK=() FAIL=()
for ((i = STAB_FIRST; i < STAB_FIRST + STAB_RUNS; i++)); do
    for vmm in $STAB_VMMS; do
        name=$vmm-$i
        echo "L1-STAB-BEGIN vmm=$vmm run=$i"
        t0=$(now_ns)
        boot "$vmm" "$name"
        rc=0
        vmm_wait "$name" 2>/dev/null || rc=$?
        t1=$(now_ns)
        log=$RESULTS/$name.log
        # A clean boot reaches /init (with a VF: pings 3/3 through it) and powers off (QEMU runs
        # with -no-reboot, so a guest reset also exits 0 there: the markers decide).
        if [[ $rc == 124 || $rc == 137 ]]; then outcome=stall
        elif ! grep -qa '^L2-ACTION poweroff' "$log"; then
            if [[ $rc == 3 || $rc == 0 ]]; then outcome=reset; else outcome=error; fi
        elif [[ $STAB_VF == 1 ]] && ! grep -qa '^L2-PING sent=3 received=3' "$log"; then outcome=noping
        elif [[ $rc != 0 ]]; then outcome=error
        else outcome=ok
        fi
        init=$(marker_ms "$name" L2-INIT-START || echo '?')
        line="STAB vmm=$vmm run=$i outcome=$outcome rc=$rc init_ms=$init total_ms=$(((t1 - t0) / 1000000))"
        echo "$line" >> "$OUT"
        echo "L1-$line"
        if [[ $outcome == ok ]]; then
            OK[$vmm]=$((${OK[$vmm]:-0} + 1))
            rm -f "$log"   # keep the logs of failures only
        else
            FAIL[$vmm]=$((${FAIL[$vmm]:-0} + 1))
            echo "L1-STAB-FAIL-TAIL $name: $(tail -n 3 "$log" | tr '\n' '|')"
        fi
    done
done
for vmm in $STAB_VMMS; do
    echo "STAB-SUMMARY $vmm ok=${OK[$vmm]:-0} fail=${FAIL[$vmm]:-0}" | tee -a "$OUT"
done
exit 0
