#!/bin/bash
# Boot the L1 "SR-IOV host" under TCG and run SCRIPT in it (chroot into L0's read-only /).
# L1's SR-IOV PFs: igb at 0000:01:00.0, NVMe at 0000:03:00.0 (a fresh 64 MiB namespace per run).
# Usage: run-l1.sh SCRIPT RESULTS_DIR [TIMEOUT_SECONDS]     (default timeout 600)
#        run-l1.sh shell RESULTS_DIR                         (interactive L1 shell; Ctrl-A x quits)
# SCRIPT: absolute L0 path, run as `bash SCRIPT` with RESULTS=/tmp/results (= RESULTS_DIR on L0),
#         TESTBED_CACHE (image cache), TESTBED_L1=1.
# Writes RESULTS_DIR/l1-console.log (console, CR stripped), l1-exit-code, l1-start (epoch ns of
# QEMU start), l1-markers ("<epoch-ns> L1-..." per marker line, L0 clock).
#        l1-qmp (path of L1's QMP socket on L0, valid while L1 runs), l1-heartbeat (written by L1
#        every 5 s), l1-kallsyms (L1's code symbols), l1-watchdog (longest silence seen, seconds),
#        and, when the watchdog fired, l1-freeze.txt (l1_dump.py's report).
# Watchdog: when neither the console nor L1's heartbeat file changed for VFVMM_L1_WATCHDOG seconds
# (default 60; 0 disables), L1 is frozen: its CPUs' state is dumped from L0 through QMP (RIP
# samples resolved against L1's symbols, registers, stack) and L1 is stopped.
# Exit: the script's exit code; 124 on timeout; 125 if L1 printed no L1-SCRIPT-EXIT marker;
#       126 when the watchdog found L1 frozen.
# Env: VFVMM_CACHE (default /var/cache/vfvmm), VFVMM_L1_SMP (default 1), VFVMM_L1_ACCEL (default
#      tcg: single-threaded TCG; see tests/testbed/README.md, "Stability"), VFVMM_SKIP_BUILD=1,
#      VFVMM_9P_CACHE (9p cache mode of the read-only shares in L1: loose (default) or none).
set -euo pipefail

usage() { echo "usage: $0 SCRIPT|shell RESULTS_DIR [TIMEOUT_SECONDS]" >&2; exit 2; }
[[ $# -ge 2 && $# -le 3 ]] || usage
SCRIPT=$1
TIMEOUT=${3:-600}
[[ $TIMEOUT =~ ^[0-9]+$ ]] || usage
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VFVMM_CACHE:-/var/cache/vfvmm}
# One L1 CPU under single-threaded TCG: with multi-threaded TCG and 2 L1 CPUs, L2 guests (under
# QEMU as much as under vfvmm) reset or stall at random and L1 itself wedges (RCU stalls).
SMP=${VFVMM_L1_SMP:-1}
ACCEL=${VFVMM_L1_ACCEL:-tcg}
WATCHDOG=${VFVMM_L1_WATCHDOG:-60}
[[ $WATCHDOG =~ ^[0-9]+$ ]] || { echo "run-l1.sh: VFVMM_L1_WATCHDOG must be a number of seconds" >&2; exit 2; }

if [[ $SCRIPT != shell ]]; then
    [[ $SCRIPT == /* ]] || { echo "run-l1.sh: SCRIPT must be an absolute path" >&2; exit 2; }
    [[ -f $SCRIPT ]] || { echo "run-l1.sh: no such script: $SCRIPT" >&2; exit 2; }
fi
# L1 mounts its own proc/sys/dev and tmpfs over these, so L0 files there are invisible in L1.
# The repository and the image cache are shared separately and mounted at their L0 paths, so
# a clone or cache under /tmp works; other scripts must live elsewhere.
hidden_in_l1() { [[ $1 =~ ^/(tmp|run|var/tmp|dev|proc|sys)(/|$) ]]; }
for p in "$REPO" "$CACHE"; do
    if [[ $(realpath -m "$p") =~ ^/(dev|proc|sys)(/|$) || $p =~ [[:space:],] ]]; then
        echo "run-l1.sh: $p cannot be shared into L1 (under /dev /proc /sys, or has spaces/commas)" >&2
        exit 2
    fi
done
if [[ $SCRIPT != shell && $(realpath -m "$SCRIPT") != "$REPO"/* ]] && hidden_in_l1 "$(realpath -m "$SCRIPT")"; then
    echo "run-l1.sh: $SCRIPT is under a path that L1 hides (/tmp /run /var/tmp /dev /proc /sys)" >&2
    exit 2
fi
mkdir -p "$2"
RESULTS_DIR=$(realpath "$2")
[[ $CACHE == /* ]] || CACHE=$(realpath "$CACHE")

# Images are cached; a warm build.sh only checks hashes (~0.2 s).
[[ ${VFVMM_SKIP_BUILD:-0} == 1 ]] || "$REPO/resources/build.sh" -q >/dev/null

# L1's QMP socket: a short path of its own (unix socket paths are limited to 107 bytes).
QMP_DIR=$(mktemp -d /tmp/vfvmm-l1.XXXXXX)
QMP_SOCK=$QMP_DIR/qmp.sock
trap 'rm -rf "$QMP_DIR"' EXIT
# The NVMe namespace's backing store: 64 MiB, sparse, new for every L1 run.
truncate -s 64M "$QMP_DIR/nvme-ns1.img"

APPEND="console=ttyS0 panic=-1 intel_iommu=on vfvmm.cache=$CACHE vfvmm.repo=$REPO"
APPEND+=" vfvmm.9pcache=${VFVMM_9P_CACHE:-loose}"
[[ $SCRIPT == shell ]] || APPEND+=" vfvmm.script=$SCRIPT"
QEMU=(qemu-system-x86_64
    -accel "$ACCEL" -cpu max -M q35 -m 2048 -smp "$SMP"
    -nographic -no-reboot -nodefaults -serial stdio
    -qmp "unix:$QMP_SOCK,server=on,wait=off"
    -device intel-iommu
    -device pcie-root-port,id=rp1,slot=1,chassis=1
    -device igb,bus=rp1,netdev=n0 -netdev hubport,id=n0,hubid=0
    # Two NICs behind a PCIe-to-PCI bridge share one IOMMU group: the non-viable-group test.
    -device pcie-pci-bridge,id=pb1,bus=pcie.0,addr=0x5
    -device e1000,bus=pb1,addr=1,netdev=n1 -device e1000,bus=pb1,addr=2,netdev=n2
    -netdev hubport,id=n1,hubid=1 -netdev hubport,id=n2,hubid=1
    # An NVMe SR-IOV PF (the second class of VF: storage) behind its own root port, after the
    # bridge so the buses above keep their numbers. Its namespace (a sparse file of this run)
    # belongs to the subsystem: it keeps its content while VFs come and go. Resources for the
    # VFs' secondary controllers: 8 flexible queues and 4 flexible interrupts (2 VFs x (admin +
    # 3 I/O queues, 2 vectors)); QEMU wants max_ioqpairs - sriov_vq_flexible >= 2.
    -device pcie-root-port,id=rp2,bus=pcie.0,addr=0x6,slot=2,chassis=2
    -device nvme-subsys,id=nvsubsys0
    -device "nvme,bus=rp2,id=nvme0,serial=vfvmm0,subsys=nvsubsys0,sriov_max_vfs=2,sriov_vq_flexible=8,sriov_vi_flexible=4,max_ioqpairs=12,msix_qsize=8"
    -drive "file=$QMP_DIR/nvme-ns1.img,if=none,id=nvm1,format=raw"
    -device nvme-ns,drive=nvm1,bus=nvme0,nsid=1,shared=on
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=$RESULTS_DIR,mount_tag=results,security_model=none"
    -virtfs "local,path=$REPO,mount_tag=repo,security_model=none,readonly=on,multidevs=remap"
    -virtfs "local,path=$CACHE,mount_tag=cache,security_model=none,readonly=on,multidevs=remap"
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/l1.cpio.gz"
    -append "$APPEND")

if [[ $SCRIPT == shell ]]; then exec "${QEMU[@]}"; fi

LOG=$RESULTS_DIR/l1-console.log
MARKERS=$RESULTS_DIR/l1-markers
FROZEN=$RESULTS_DIR/l1-freeze.txt
rm -f "$LOG" "$MARKERS" "$RESULTS_DIR"/l1-{exit-code,start,heartbeat,kallsyms,watchdog,freeze.txt}
echo "$QMP_SOCK" > "$RESULTS_DIR/l1-qmp"

# Copies the console to stdout and LOG (CR stripped); timestamps L1-* markers into MARKERS.
console_reader() {
    local line t
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        printf '%s\n' "$line"
        printf '%s\n' "$line" >&3
        if [[ $line =~ (L1-[A-Z][A-Z0-9-]*.*) ]]; then
            t=$EPOCHREALTIME
            printf '%s000 %s\n' "${t/./}" "${BASH_REMATCH[1]}" >&4
        fi
    done 3>"$LOG" 4>"$MARKERS"
}

# watchdog: every 2 s, the seconds since the console log or L1's heartbeat file last changed.
# Past WATCHDOG: dump L1 through QMP into FROZEN and stop L1 (QMP quit); QEMU's exit ends the run.
watchdog() {
    local now newest silent longest=0
    set +e   # a missing file (no heartbeat yet) is not an error here
    echo 0 > "$RESULTS_DIR/l1-watchdog"
    while sleep 2; do
        now=$(date +%s)
        newest=$(stat -c %Y "$LOG" "$RESULTS_DIR/l1-heartbeat" 2>/dev/null | sort -n | tail -n 1)
        silent=$((now - ${newest:-now}))
        if ((silent > longest)); then longest=$silent; echo "$longest" > "$RESULTS_DIR/l1-watchdog"; fi
        ((WATCHDOG > 0 && silent >= WATCHDOG)) || continue
        echo "run-l1.sh: watchdog: L1 silent for ${silent}s (no console output, no heartbeat): dumping its state" >&2
        if ! timeout 20 python3 "$HERE/l1_dump.py" "$QMP_SOCK" "$RESULTS_DIR/l1-kallsyms" > "$FROZEN.tmp" 2>&1; then
            # QEMU itself does not answer (its monitor is stuck too): say so in the dump.
            { echo "L1-FREEZE status=no-answer (QEMU's monitor did not answer within 20 s)"; cat "$FROZEN.tmp"; } > "$FROZEN.no-answer"
            mv "$FROZEN.no-answer" "$FROZEN.tmp"
        fi
        mv "$FROZEN.tmp" "$FROZEN"
        head -n 1 "$FROZEN" >&2
        timeout 5 python3 "$HERE/qmp.py" "$QMP_SOCK" quit >/dev/null 2>&1 || true
        sleep 2
        # A QEMU that did not quit is killed: a frozen L1 never costs more than this.
        pkill -KILL -f -- "unix:$QMP_SOCK," 2>/dev/null || true
        return
    done
}

# A terminal on stdin: keep it (QEMU reads it; timeout must stay in the foreground group).
TIMEOUT_OPTS=(--kill-after=10)
if [[ -t 0 ]]; then TIMEOUT_OPTS+=(--foreground); else exec </dev/null; fi

t=$EPOCHREALTIME
echo "${t/./}000" > "$RESULTS_DIR/l1-start"
: > "$LOG"
watchdog &
WATCHDOG_PID=$!
set +e
timeout "${TIMEOUT_OPTS[@]}" "$TIMEOUT" "${QEMU[@]}" 2>&1 | console_reader
qrc=${PIPESTATUS[0]}
set -e
kill "$WATCHDOG_PID" 2>/dev/null || true
wait "$WATCHDOG_PID" 2>/dev/null || true

marker=$(grep -a -o 'L1-SCRIPT-EXIT [0-9]*' "$LOG" | tail -n 1 || true)
if [[ -f $FROZEN ]]; then
    rc=126; why="L1 frozen: no console output or heartbeat for ${WATCHDOG}s; $(head -n 1 "$FROZEN")"
elif [[ $qrc == 124 || $qrc == 137 ]]; then
    rc=124; why="timeout after ${TIMEOUT}s"
elif [[ -n $marker ]]; then
    rc=${marker#L1-SCRIPT-EXIT }; why="script exit code"
else
    rc=125; why="no L1-SCRIPT-EXIT marker (qemu exit $qrc)"
fi
echo "$rc" > "$RESULTS_DIR/l1-exit-code"

# Summary: L0-clock seconds from QEMU start to each L1 milestone.
start=$(cat "$RESULTS_DIR/l1-start")
awk -v s="$start" '$2 ~ /^L1-(INIT-START|SCRIPT-START|SCRIPT-EXIT)$/ {
    printf "run-l1.sh: %-16s +%.2fs\n", $2, ($1 - s) / 1e9 }' "$MARKERS" >&2
t=$EPOCHREALTIME
echo "run-l1.sh: watchdog: longest L1 silence $(cat "$RESULTS_DIR/l1-watchdog" 2>/dev/null || echo 0)s (limit ${WATCHDOG}s)" >&2
echo "run-l1.sh: exit $rc ($why), total $(( (${t/./}000 - start) / 1000000 )) ms" >&2
exit "$rc"
