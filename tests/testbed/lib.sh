# shellcheck shell=bash
# Helpers for testbed scenario scripts (bash, run inside the L1 chroot by run-l1.sh).
# Source it:  . "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
#
# A VMM run NAME produces, in $RESULTS:
#   NAME.start    epoch-ns (L1 clock) written right before exec of the VMM command
#   NAME.log      the VMM's stdout (the guest console), one line per line, CR stripped
#   NAME.err      the VMM's stderr
#   NAME.markers  "<epoch-ns> <marker...>" for each console line containing L<digit>-<UPPER>...,
#                 starting at the marker (L1 clock, taken when the line was read)
#   NAME.first    epoch-ns when the first console line was read (absent if there was no output)
#   NAME.end      epoch-ns when the VMM's stdout closed (normally: process exit)
#   NAME.rc       the exit code (124: timed out, 137: killed after the grace period)
# Stdin of the VMM is a fifo (in $TESTBED_RUN) that stays open until the run ends: the VMM never
# sees EOF, and send_input writes lines into it.
#
# API:
#   vmm_start NAME TIMEOUT -- CMD...        start in the background
#   vmm_wait NAME                           wait, write NAME.rc, return the exit code
#   run_vmm NAME TIMEOUT -- CMD...          vmm_start + vmm_wait
#   wait_for_marker NAME TEXT [TIMEOUT]     wait for a console line containing TEXT (fixed string);
#                                           1 on timeout or when the VMM exited without it
#   send_input NAME TEXT                    write TEXT + newline to the VMM's stdin
#   send_input_when NAME MARKER TEXT [TIMEOUT]   wait_for_marker, then send_input
#   vmm_kill NAME                           TERM, then KILL after 5 s (the VMM's process group)
#   marker_ms NAME MARKER                   ms from NAME.start to the first MARKER line
#   check NAME CONDITION...                 run CONDITION; log "CHECK NAME PASS|FAIL"; count failures
#   fact KEY VALUE...                       append a result line to $OUT (a scenario's facts file)
#   one_line                                a filter: its input on one line, blanks squeezed
#   vfctl_rc KEY ARGS...                    run vfctl ARGS; fact "KEY rc=N <its output on one line>"
# Sets REPO, VFVMM (target/release/vfvmm unless given) and VFCTL (beside it).
# Stragglers are killed on exit (trap tb_cleanup EXIT; call tb_cleanup yourself if you replace it).

: "${RESULTS:?RESULTS is not set (run scenarios through run-l1.sh)}"
# Scenarios create VFs and bind devices: refuse to run anywhere but inside the testbed's L1,
# whose kernel command line carries vfvmm.script= (never on the host's own PCI devices).
grep -q 'vfvmm\.script=' /proc/cmdline || { echo "testbed: refusing to run outside the testbed L1" >&2; exit 1; }
# The repository (L1 sees the host's tree read-only) and the binaries under test.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VFVMM=${VFVMM:-$REPO/target/release/vfvmm}
VFCTL=${VFCTL:-$(dirname "$VFVMM")/vfctl}
TESTBED_CACHE=${TESTBED_CACHE:-/var/cache/vfvmm}
TESTBED_RUN=${TESTBED_RUN:-/tmp/testbed-run}   # fifos; must not be on 9p
TESTBED_ECHO=${TESTBED_ECHO:-1}                 # 1: echo VMM console lines to stderr as "[NAME] ..."
mkdir -p "$RESULTS" "$TESTBED_RUN"

declare -gA _VMM_PID=() _VMM_READER=() _VMM_INFD=()
TB_FAILURES=0

tb_log() { printf 'testbed: %s\n' "$*" >&2; }
# fact KEY VALUE...: one result line in the scenario's facts file $OUT (for its Rust test),
# echoed as "L1-FACT ..." on the console.
fact() { echo "$*" >> "${OUT:?set OUT to the facts file}"; echo "L1-FACT $*"; }
now_ns() { local t=$EPOCHREALTIME; printf '%s000\n' "${t/./}"; }
one_line() { tr '\n' ' ' | sed 's/  */ /g; s/ $//'; }
vfctl_rc() {
    local out rc=0
    out=$("$VFCTL" "${@:2}" 2>&1) || rc=$?
    echo "$out" | sed "s/^/[$1] /" >&2
    fact "$1 rc=$rc $(echo "$out" | one_line)"
}

# _vmm_reader NAME: console (stdin) -> NAME.log, NAME.markers, and stderr if TESTBED_ECHO=1.
_vmm_reader() {
    local name=$1 line t first=1
    while IFS= read -r line || [[ -n $line ]]; do
        if ((first)); then now_ns > "$RESULTS/$name.first"; first=0; fi
        line=${line%$'\r'}
        printf '%s\n' "$line" >&3
        if [[ $line =~ (L[0-9]-[A-Z][A-Z0-9-]*.*) ]]; then
            t=$EPOCHREALTIME
            printf '%s000 %s\n' "${t/./}" "${BASH_REMATCH[1]}" >&4
        fi
        if [[ $TESTBED_ECHO == 1 ]]; then printf '[%s] %s\n' "$name" "$line" >&2; fi
    done 3>"$RESULTS/$name.log" 4>"$RESULTS/$name.markers"
    now_ns > "$RESULTS/$name.end"
}

vmm_start() {
    local name=$1 timeout=$2
    shift 2
    [[ ${1:-} == -- ]] && shift
    (($#)) || { tb_log "vmm_start $name: no command"; return 2; }
    local in=$TESTBED_RUN/$name.in out=$TESTBED_RUN/$name.out fd
    rm -f "$in" "$out" "$RESULTS/$name".{start,first,log,err,markers,end,rc} "$TESTBED_RUN/$name.seq"
    mkfifo "$in" "$out"
    exec {fd}<>"$in"           # our own reader+writer: opening the fifo never blocks, no EOF
    _VMM_INFD[$name]=$fd
    _vmm_reader "$name" <"$out" &
    _VMM_READER[$name]=$!
    # timeout puts the VMM in its own process group (killed as a whole on timeout/vmm_kill).
    # The inner bash stamps NAME.start and execs the VMM.
    timeout --kill-after=5 "$timeout" \
        bash -c 't=$EPOCHREALTIME; echo "${t/./}000" > "$0"; exec "$@"' "$RESULTS/$name.start" "$@" \
        <"$in" >"$out" 2>"$RESULTS/$name.err" {fd}>&- &
    _VMM_PID[$name]=$!
    tb_log "started $name (pid ${_VMM_PID[$name]}, timeout ${timeout}s): $*"
}

vmm_running() { [[ -n ${_VMM_PID[$1]:-} ]] && kill -0 "${_VMM_PID[$1]}" 2>/dev/null; }

vmm_wait() {
    local name=$1 rc=0 fd
    [[ -n ${_VMM_PID[$name]:-} ]] || { tb_log "vmm_wait: $name was not started"; return 2; }
    wait "${_VMM_PID[$name]}" || rc=$?
    wait "${_VMM_READER[$name]}" 2>/dev/null || true
    fd=${_VMM_INFD[$name]}
    exec {fd}>&-
    rm -f "$TESTBED_RUN/$name.in" "$TESTBED_RUN/$name.out"
    unset "_VMM_PID[$name]" "_VMM_READER[$name]" "_VMM_INFD[$name]"
    echo "$rc" > "$RESULTS/$name.rc"
    tb_log "$name exited with $rc"
    if [[ $rc != 0 && -s $RESULTS/$name.err ]]; then
        tb_log "$name stderr (tail):"; tail -n 20 "$RESULTS/$name.err" >&2
    fi
    return "$rc"
}

run_vmm() {
    local name=$1
    vmm_start "$@" || return
    vmm_wait "$name"
}

vmm_kill() {
    local name=$1 pid=${_VMM_PID[$1]:-} i
    [[ -n $pid ]] || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do vmm_running "$name" || return 0; sleep 0.1; done
    tb_log "$name did not stop on SIGTERM, killing"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

wait_for_marker() {
    local name=$1 text=$2 timeout=${3:-60} deadline
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if grep -qaF -- "$text" "$RESULTS/$name.log" 2>/dev/null; then return 0; fi
        if ! vmm_running "$name"; then
            # it may have printed the marker just before exiting; the reader may still be writing
            sleep 0.2
            grep -qaF -- "$text" "$RESULTS/$name.log" 2>/dev/null && return 0
            tb_log "wait_for_marker $name: exited without '$text'"; return 1
        fi
        sleep 0.1
    done
    tb_log "wait_for_marker $name: no '$text' after ${timeout}s"
    return 1
}

send_input() {
    local name=$1 text=$2
    [[ -n ${_VMM_INFD[$name]:-} ]] || { tb_log "send_input: $name is not running"; return 2; }
    printf '%s\n' "$text" >&"${_VMM_INFD[$name]}"
    tb_log "sent to $name: $text"
}

# guest_cmd NAME TIMEOUT CMD: runs CMD in the guest's shell (l2.action=shell) over its serial
# console and waits for it to finish; prints the L2- lines it printed, without the "L2-".
# 1 when it did not finish in time. (Usable inside $(...): the sequence number is in a file.)
_guest_next_seq() {
    local f=$TESTBED_RUN/$1.seq n
    n=$(($(cat "$f" 2>/dev/null || echo 0) + 1))
    echo "$n" > "$f"
    echo "$n"
}
_guest_send() {  # _guest_send NAME SEQ CMD; prints the console line count before sending
    wc -l < "$RESULTS/$1.log"
    # The tty echoes the command line; $((N)) makes the end marker differ from the echo.
    send_input "$1" "$3; echo L2-END-\$(($2))." 2>/dev/null
}
guest_cmd() {
    local name=$1 timeout=$2 cmd=$3 seq before
    seq=$(_guest_next_seq "$name")
    before=$(_guest_send "$name" "$seq" "$cmd")
    wait_for_marker "$name" "L2-END-$seq." "$timeout" 2>/dev/null || return 1
    tail -n +"$((before + 1))" "$RESULTS/$name.log" | grep -a '^L2-' | grep -av '^L2-END-' | sed 's/^L2-//'
}

# guest_cmd_unanswered NAME CMD SECS: sends CMD and checks it is NOT answered within SECS
# (a paused guest); guest_cmd_wait NAME TIMEOUT then waits for the answer.
guest_cmd_unanswered() {
    local name=$1 cmd=$2 secs=$3 seq before
    seq=$(_guest_next_seq "$name")
    before=$(_guest_send "$name" "$seq" "$cmd")
    sleep "$secs"
    ! tail -n +"$((before + 1))" "$RESULTS/$name.log" | grep -qa "^L2-END-$seq\."
}
guest_cmd_wait() {
    wait_for_marker "$1" "L2-END-$(cat "$TESTBED_RUN/$1.seq")." "$2" 2>/dev/null
}

send_input_when() {
    wait_for_marker "$1" "$2" "${4:-60}" && send_input "$1" "$3"
}

marker_ms() {
    local name=$1 marker=$2 start t
    start=$(cat "$RESULTS/$name.start" 2>/dev/null) || return 1
    t=$(awk -v m="$marker" '$2 == m { print $1; exit }' "$RESULTS/$name.markers")
    [[ -n $t ]] || return 1
    echo $(((t - start) / 1000000))
}

check() {
    local name=$1
    shift
    if "$@" >/dev/null 2>&1; then
        echo "CHECK $name PASS"
    else
        echo "CHECK $name FAIL"
        TB_FAILURES=$((TB_FAILURES + 1))
    fi
}

tb_cleanup() {
    local name
    for name in "${!_VMM_PID[@]}"; do
        tb_log "cleanup: stopping $name"
        vmm_kill "$name"
    done
}
trap tb_cleanup EXIT

# --- SR-IOV helpers (L1's igb PF at 0000:01:00.0) ---
TB_PF=${TB_PF:-0000:01:00.0}

# driver_of BDF: the bound driver's name, or "none".
driver_of() {
    local link
    link=$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null) || { echo none; return; }
    basename "$link"
}

# bind_to BDF DRIVER: unbind from the current driver, bind to DRIVER via driver_override.
bind_to() {
    if [[ -e /sys/bus/pci/devices/$1/driver ]]; then echo "$1" > "/sys/bus/pci/devices/$1/driver/unbind"; fi
    echo "$2" > "/sys/bus/pci/devices/$1/driver_override"
    echo "$1" > /sys/bus/pci/drivers_probe
    echo "L1-BIND $1 driver=$(driver_of "$1")"
}

# vf_setup BDF...: make sure the PF has 2 VFs (no autoprobe) and bind the given VFs to vfio-pci.
vf_setup() {
    local pf=/sys/bus/pci/devices/$TB_PF vf
    if [[ $(cat "$pf/sriov_numvfs") == 0 ]]; then
        echo 0 > "$pf/sriov_drivers_autoprobe"
        echo 2 > "$pf/sriov_numvfs"
    fi
    for vf in "$@"; do
        for _ in $(seq 50); do [[ -e /sys/bus/pci/devices/$vf ]] && break; sleep 0.1; done
        [[ $(driver_of "$vf") == vfio-pci ]] || bind_to "$vf" vfio-pci
    done
}
