#!/bin/sh
# /init of the L1 "SR-IOV host" initramfs (busybox sh). Copied in by resources/build.sh.
# Loads the modules from /etc/modules.order, mounts L0's / (9p tag hostroot, read-only) at /host
# and the results dir (9p tag results) at /host/tmp/results, brings up the igb PF as 192.0.2.1/24,
# then runs `chroot /host /bin/bash $vfvmm.script` and powers off.
# Kernel command line: vfvmm.script=ABS_PATH (none: interactive shell), vfvmm.cache=DIR,
# vfvmm.repo=DIR (both shared read-only over 9p and mounted at the same path),
# vfvmm.9pcache=none|loose (9p cache mode of the read-only shares; default loose).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

up_s() { read -r up _ </proc/uptime; echo "$up"; }
echo "L1-INIT-START uptime=$(up_s)"

script=
repo=
cache=/var/cache/vfvmm
rocache=loose
for arg in $(cat /proc/cmdline); do
    case $arg in
        vfvmm.9pcache=*) rocache=${arg#*=} ;;
        vfvmm.script=*) script=${arg#*=} ;;
        vfvmm.cache=*) cache=${arg#*=} ;;
        vfvmm.repo=*) repo=${arg#*=} ;;
    esac
done

# Stop here: interactive shell (debugging) or power off (script mode; run-l1.sh sees no exit marker).
fail() {
    echo "L1-ERROR $*"
    if [ -z "$script" ]; then setsid cttyhack sh; fi
    poweroff -f
}

# Modules, dependencies first; built-ins were left out at build time.
nfail=0
while read -r m; do
    [ -n "$m" ] || continue
    if ! out=$(insmod "/lib/modules/$m.ko" 2>&1); then
        echo "L1-MODULE-FAIL $m: $out"
        nfail=$((nfail + 1))
    fi
done </etc/modules.order
echo "L1-MODULES loaded=$(wc -l </proc/modules) failed=$nfail"

# No transparent huge pages in L1: with THP on and -smp 2 (multi-threaded TCG), L2 guests
# sometimes reset spontaneously early in boot (suspected: THP collapse racing nested paging).
thp=/sys/kernel/mm/transparent_hugepage
if [ -w $thp/enabled ]; then echo never >$thp/enabled; echo never >$thp/defrag; fi

# L0's root, read-only, with this kernel's pseudo filesystems and writable tmpfs on top.
opts=trans=virtio,version=9p2000.L,msize=1048576
mount -t 9p -o "$opts,ro,cache=$rocache" hostroot /host || fail "cannot mount 9p hostroot"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=755 tmpfs /host/run
mount -t tmpfs -o mode=1777 tmpfs /host/var/tmp
mkdir -p /host/tmp/results
# Liveness for run-l1.sh's watchdog on L0: the heartbeat file's mtime moves every 5 s while
# L1's scheduler and timers work, whatever the console is doing. L1's code symbols (kernel and
# modules, as placed in this boot; Debian's System.map is a stub) let the watchdog's dump name
# the code a frozen L1 was running.
if mount -t 9p -o "$opts" results /host/tmp/results; then
    (while :; do up_s >/host/tmp/results/l1-heartbeat; sleep 5; done) &
    grep -i ' t ' /proc/kallsyms >/host/tmp/results/l1-kallsyms &
else
    echo "L1-WARNING no 9p tag results"
fi
# The repository and the image cache at their L0 paths (they may be under /tmp, hidden above).
for share in "repo:$repo" "cache:$cache"; do
    tag=${share%%:*} dir=${share#*:}
    [ -n "$dir" ] || continue
    mkdir -p "/host$dir" 2>/dev/null
    mount -t 9p -o "$opts,ro,cache=$rocache" "$tag" "/host$dir" || echo "L1-WARNING cannot mount 9p tag $tag at $dir"
done

# The igb PF: up, with a documentation address so L2 has something to ping.
pf=/sys/bus/pci/devices/0000:01:00.0
i=0
while [ ! -d "$pf/net" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ifname=$(ls "$pf/net" 2>/dev/null | head -n 1)
ip link set lo up
if [ -n "$ifname" ] && ip link set "$ifname" up && ip addr add 192.0.2.1/24 dev "$ifname"; then
    echo "L1-PF $ifname 192.0.2.1/24"
else
    echo "L1-WARNING igb PF 0000:01:00.0 has no netdev"
fi

if [ -z "$script" ]; then
    echo "L1-SHELL no vfvmm.script; L0's root is at /host (try: chroot /host /bin/bash)"
    setsid cttyhack sh
    poweroff -f
fi

echo "L1-SCRIPT-START uptime=$(up_s) script=$script"
chroot /host /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RESULTS=/tmp/results TESTBED_CACHE="$cache" TESTBED_L1=1 \
    /bin/bash "$script"
rc=$?
sync
umount /host/tmp/results 2>/dev/null
echo "L1-SCRIPT-EXIT $rc"
poweroff -f
