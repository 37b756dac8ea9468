#!/bin/sh
# /init of the L2 guest initramfs (busybox sh); resources/build.sh copies it into l2.cpio.gz.
# Prints one-line L2-* markers on the console for the tests to assert on.
# Kernel command line: l2.input=1 (read one console line), l2.action=poweroff|reboot|shell.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

# Helper mode (run from the guest's shell, not as PID 1), used by the demo over the console:
#   /init vf-ping BDF IP [COUNT]   bring up the igbvf netdev of BDF with IP, ping the PF through
#                                  it: "L2-VFPING bdf=BDF if=IF carrier=C received=N/COUNT rtt=MS"
#   /init vf-list                  "L2-VFLIST BDF=IF ..." for every device igbvf has bound
#   /init vf-wait-ping BDF SECS    ping the PF through BDF's netdev once a second until a reply:
#                                  "L2-VFWAIT bdf=BDF ok=0|1 ms=<since the call> tries=N"
#   /init vf-state BDF             "L2-VFSTATE bdf=BDF if=IF ifindex=N carrier=C pcidevs=N
#                                  removed=N" (removed: kernel log lines about removed devices)
# Storage (an NVMe VF; blocks of 4 KiB, each 128 lines "blk=BBBBBB seq=SSSSSSSSS vfvmm."; the
# sequence number each block must hold is kept in /run/blk, so a lost, stale or torn write
# is found; every access is O_DIRECT, so the device is read, not the page cache):
#   /init nvme-wait SECS           wait for an NVMe namespace: "L2-NVME dev=nvme0n1 bdf=BDF
#                                  sectors=N ms=<waited>" (dev=none when there is none)
#   /init blk-fill DEV N [BASE]    write blocks BASE..BASE+N-1 with seq 0: "L2-BLKFILL ... rc="
#   /init blk-verify               read them all back: "L2-BLKVERIFY blocks=N good=G stale=S
#                                  ahead=A corrupt=C" (stale: an older seq than written)
#   /init blk-writer-start         in the background: rewrite block seq%N with seq, read it back,
#                                  "L2-BLKW seq=S blk=B ok=1" per write ("L2-BLKW-ERROR ..." on
#                                  an I/O error, ok=0 when the read-back differs)
#   /init blk-writer-stop          end the writer after its current write: "L2-BLKWRITER
#                                  writes=W errors=E last=S"
#   /init pinger-start             in the background: ping the PF once, print "L2-PONG" on a
#                                  reply, every 0.1 s (a ping that fails prints nothing)
#   /init blk-dmesg [SINCE]        "L2-BLKDMESG lines=L ioerr=N timeouts=N resets=N removed=N"
#                                  from the kernel log after its line SINCE (nvme's own lines
#                                  are printed as L2-KLOG too; L: the log's length now)
# modload NAME: insmod NAME's dependencies (/etc/modules.dep), then NAME; loaded ones are skipped.
modload() {
    for m in $(sed -n "s/^$1 //p" /etc/modules.dep) "$1"; do
        grep -q "^$m " /proc/modules || insmod "/lib/modules/$m.ko"
    done
}

# --- storage workload (see the header) ---
BLK=/run/blk
uptime_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
nvme_wait() {
    t0=$(uptime_ms) dev=
    while :; do
        # A namespace's block device (nvme0n1); not a path device of native multipath
        # (nvme0c0n1: hidden, no /dev node), which a namespace shared across controllers has.
        for b in /sys/block/nvme*n*; do
            case ${b##*/} in *c*) continue ;; esac
            [ -b "/dev/${b##*/}" ] && [ "$(cat "$b/size" 2>/dev/null)" != 0 ] && dev=${b##*/} && break
        done
        [ -n "$dev" ] && break
        [ $(($(uptime_ms) - t0)) -ge $(($1 * 1000)) ] && { dev=; break; }
        sleep 0.1
    done
    if [ -z "$dev" ]; then echo "L2-NVME dev=none ms=$(($(uptime_ms) - t0))"; return 1; fi
    bdfs=
    for c in /sys/class/nvme/nvme*; do [ -e "$c/device" ] && bdfs="$bdfs${bdfs:+,}$(basename "$(readlink "$c/device")")"; done
    echo "L2-NVME dev=$dev bdf=$bdfs sectors=$(cat "/sys/block/$dev/size") ms=$(($(uptime_ms) - t0))"
}
blk_pattern() {  # blk_pattern FIRST COUNT SEQ: COUNT blocks from FIRST, all with SEQ
    awk -v f="$1" -v n="$2" -v s="$3" 'BEGIN { for (b = f; b < f + n; b++) for (i = 0; i < 128; i++) printf "blk=%06d seq=%09d vfvmm.\n", b, s }'
}
blk_fill() {
    [ -b "/dev/$1" ] || { echo "L2-BLKFILL dev=$1 blocks=0 base=$3 rc=not-a-block-device"; return 1; }
    mkdir -p $BLK/exp
    rm -f $BLK/exp/* $BLK/stop
    echo "/dev/$1" > $BLK/dev; echo "$2" > $BLK/count; echo "$3" > $BLK/base
    blk_pattern "$3" "$2" 0 | dd of="/dev/$1" bs=4096 seek="$3" count="$2" iflag=fullblock oflag=direct conv=notrunc status=none
    rc=$?
    b=$3
    while [ $b -lt $(($3 + $2)) ]; do echo 0 > $BLK/exp/$b; b=$((b + 1)); done
    echo "L2-BLKFILL dev=$1 blocks=$2 base=$3 rc=$rc"
}
blk_verify() {
    dev=$(cat $BLK/dev) n=$(cat $BLK/count) base=$(cat $BLK/base)
    grep -r . $BLK/exp | sed 's|.*/||; s/:/ /' > $BLK/expect
    dd if="$dev" bs=4096 skip="$base" count="$n" iflag=direct status=none | awk -v base="$base" -v n="$n" '
        NR == FNR { want[$1] = $2; next }
        {
            b = base + int((FNR - 1) / 128)
            if ($0 == sprintf("blk=%06d seq=%09d vfvmm.", b, want[b])) { same[b]++; next }
            if (substr($0, 1, 10) == sprintf("blk=%06d", b) && $0 ~ /^blk=[0-9]+ seq=[0-9]+ vfvmm\.$/) {
                split($2, kv, "="); s = kv[2] + 0
                if (s < want[b]) older[b]++; else newer[b]++
            } else other[b]++
        }
        END {
            for (b = base; b < base + n; b++) {
                if (same[b] == 128) good++
                else if (older[b] == 128) stale++
                else if (newer[b] == 128) ahead++
                else corrupt++
            }
            printf "L2-BLKVERIFY blocks=%d good=%d stale=%d ahead=%d corrupt=%d\n", n, good, stale, ahead, corrupt
        }' $BLK/expect -
}
blk_writer_loop() {
    dev=$(cat $BLK/dev) n=$(cat $BLK/count) base=$(cat $BLK/base) seq=0 writes=0 errors=0
    while [ ! -e $BLK/stop ]; do
        seq=$((seq + 1)) b=$((base + seq % n))
        if blk_pattern $b 1 $seq | dd of="$dev" bs=4096 seek=$b count=1 iflag=fullblock oflag=direct conv=notrunc status=none 2>$BLK/err; then
            echo $seq > $BLK/exp/$b
            writes=$((writes + 1))
            want=$(printf 'blk=%06d seq=%09d vfvmm.' $b $seq)
            got=$(dd if="$dev" bs=4096 skip=$b count=1 iflag=direct status=none | grep -c -x -F "$want")
            if [ "$got" = 128 ]; then echo "L2-BLKW seq=$seq blk=$b ok=1"; else echo "L2-BLKW seq=$seq blk=$b ok=0 got=$got"; errors=$((errors + 1)); fi
        else
            errors=$((errors + 1))
            echo "L2-BLKW-ERROR seq=$seq blk=$b $(head -c 200 $BLK/err | tr '\n' ' ')"
        fi
    done
    echo "writes=$writes errors=$errors last=$seq" > $BLK/writer.done
}
blk_writer_start() {
    rm -f $BLK/stop $BLK/writer.done
    blk_writer_loop </dev/null >/dev/console 2>&1 &
    echo $! > $BLK/writer.pid
    echo "L2-BLKWRITER started pid=$!"
}
blk_writer_stop() {
    touch $BLK/stop
    i=0
    while [ ! -e $BLK/writer.done ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done
    echo "L2-BLKWRITER $(cat $BLK/writer.done 2>/dev/null || echo still-running)"
}
blk_dmesg() {  # blk_dmesg [SINCE]: the kernel log's lines after line SINCE
    dmesg | tail -n +$((${1:-0} + 1)) > $BLK/klog
    grep -iE 'nvme|blk_update|I/O error' $BLK/klog | sed 's/^/L2-KLOG /'
    echo "L2-BLKDMESG lines=$(dmesg | wc -l) ioerr=$(grep -ciE 'I/O error|blk_update_request' $BLK/klog) timeouts=$(grep -ci 'timeout' $BLK/klog) resets=$(grep -ci 'reset' $BLK/klog) removed=$(grep -ciE 'remov|hot.?unplug|surprise|unplugged' $BLK/klog)"
}

if [ $$ != 1 ] && [ $# -gt 0 ]; then
    case $1 in
        vf-list)
            out=
            for n in /sys/bus/pci/drivers/igbvf/0000:*/net/*; do
                [ -e "$n" ] || continue
                d=${n%/net/*}; out="$out ${d##*/}=${n##*/}"
            done
            echo "L2-VFLIST$out" ;;
        vf-ping)
            bdf=$2 ip=$3 count=${4:-3} ifname=
            for n in /sys/bus/pci/drivers/igbvf/"$bdf"/net/*; do [ -e "$n" ] && ifname=${n##*/}; done
            if [ -z "$ifname" ]; then echo "L2-VFPING bdf=$bdf if=none carrier=0 received=0/$count rtt=-"; exit 1; fi
            ip link set "$ifname" up
            ip addr add "$ip/24" dev "$ifname" 2>/dev/null
            i=0
            while [ "$(cat "/sys/class/net/$ifname/carrier" 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
            out=$(ping -I "$ifname" -c "$count" -i 0.2 -W 3 192.0.2.1 2>&1)
            rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
            rtt=$(echo "$out" | sed -n 's|^round-trip min/avg/max = [0-9.]*/\([0-9.]*\)/.*|\1|p')
            echo "L2-VFPING bdf=$bdf if=$ifname carrier=$(cat "/sys/class/net/$ifname/carrier" 2>/dev/null) received=${rx:-0}/$count rtt=${rtt:--}"
            [ "${rx:-0}" = "$count" ] ;;
        vf-wait-ping)
            bdf=$2 secs=${3:-30} ifname= tries=0 ok=0
            for n in /sys/bus/pci/drivers/igbvf/"$bdf"/net/*; do [ -e "$n" ] && ifname=${n##*/}; done
            read -r t0 _ </proc/uptime
            while [ -n "$ifname" ] && [ $tries -lt "$secs" ]; do
                tries=$((tries + 1))
                if ping -I "$ifname" -c 1 -W 1 192.0.2.1 >/dev/null 2>&1; then ok=1; break; fi
            done
            read -r t1 _ </proc/uptime
            ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", (b - a) * 1000 }')
            echo "L2-VFWAIT bdf=$bdf ok=$ok ms=$ms tries=$tries"
            [ $ok = 1 ] ;;
        vf-state)
            bdf=$2 ifname=
            for n in /sys/bus/pci/drivers/igbvf/"$bdf"/net/*; do [ -e "$n" ] && ifname=${n##*/}; done
            ndev=0
            for d in /sys/bus/pci/devices/*; do [ -e "$d" ] && ndev=$((ndev + 1)); done
            removed=$(dmesg | grep -ciE 'remov|hot.?unplug|surprise|unplugged')
            echo "L2-VFSTATE bdf=$bdf if=${ifname:-none} ifindex=$(cat "/sys/class/net/$ifname/ifindex" 2>/dev/null) carrier=$(cat "/sys/class/net/$ifname/carrier" 2>/dev/null) pcidevs=$ndev removed=$removed" ;;
        nvme-wait) nvme_wait "${2:-30}" ;;
        blk-fill) blk_fill "$2" "$3" "${4:-0}" ;;
        blk-verify) blk_verify ;;
        blk-writer-start) blk_writer_start ;;
        blk-writer-stop) blk_writer_stop ;;
        blk-dmesg) blk_dmesg "${2:-0}" ;;
        pinger-start)
            ( while :; do ping -c 1 -W 1 192.0.2.1 >/dev/null 2>&1 && echo "L2-PONG"; sleep 0.1; done ) </dev/null >/dev/console 2>&1 &
            echo "L2-PINGER started pid=$!" ;;
        *) echo "usage: /init vf-list | vf-ping BDF IP [COUNT] | vf-wait-ping BDF SECS | vf-state BDF | nvme-wait SECS | blk-fill DEV N [BASE] | blk-verify | blk-writer-start | blk-writer-stop | blk-dmesg [SINCE]" >&2; exit 2 ;;
    esac
    exit
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

read -r up _ </proc/uptime
echo "L2-INIT-START uptime=$up"

# Several VFs in one subnet (the demo has two): each interface answers ARP only for its own
# address, or the PF's replies for one VF's address may go to the other VF ("ARP flux").
echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore
echo 2 > /proc/sys/net/ipv4/conf/all/arp_announce

# CPUs: count the entries of the online list, e.g. "0-3,5" -> 5.
online=$(cat /sys/devices/system/cpu/online)
count=0
IFS=,
for r in $online; do
    case $r in
        *-*) count=$((count + ${r#*-} - ${r%-*} + 1)) ;;
        *) count=$((count + 1)) ;;
    esac
done
unset IFS
echo "L2-CPUS online=$online count=$count"

# PCI devices as sysfs sees them.
devs=
for d in /sys/bus/pci/devices/*; do
    [ -e "$d" ] && devs="$devs ${d##*/}"
done
echo "L2-PCI$devs"
for d in /sys/bus/pci/devices/*; do
    [ -e "$d" ] || continue
    echo "L2-PCIDEV ${d##*/} $(cat "$d/vendor") $(cat "$d/device") $(cat "$d/class")"
done

# The ACPI power button powers the guest off (a tiny acpid): wait for one event from it.
insmod /lib/modules/evdev.ko 2>/dev/null
insmod /lib/modules/button.ko 2>/dev/null
for d in /sys/class/input/input*; do
    grep -q "Power Button" "$d/name" 2>/dev/null || continue
    for e in "$d"/event*; do
        [ -e "$e" ] || continue
        ( dd if="/dev/input/${e##*/}" of=/dev/null bs=24 count=1 2>/dev/null && echo "L2-POWER-BUTTON" && poweroff -f ) &
        break 2
    done
done

input=0
action=poweroff
vf=0
nvme=0
ip=192.0.2.2
pings=3
hotplug=0
counter=0
for arg in $(cat /proc/cmdline); do
    case $arg in
        l2.input=*) input=${arg#*=} ;;
        l2.action=*) action=${arg#*=} ;;
        l2.vf=*) vf=${arg#*=} ;;
        l2.ip=*) ip=${arg#*=} ;;
        l2.pings=*) pings=${arg#*=} ;;
        l2.hotplug=*) hotplug=${arg#*=} ;;
        l2.counter=*) counter=${arg#*=} ;;
        l2.nvme=*) nvme=${arg#*=} ;;
        l2.heartbeat=*) heartbeat=${arg#*=} ;;
    esac
done

# l2.heartbeat=1: "L2-HB n" every 100 ms (the host timestamps them: a gap is a vCPU stall).
if [ "${heartbeat:-0}" = 1 ]; then
    ( i=0; while :; do echo "L2-HB $i"; i=$((i + 1)); sleep 0.1; done ) &
fi

# l2.nvme=1: load the nvme driver (at boot or for a later hot-attach) and report the namespace
# of an NVMe function present at boot (dev=none when there is none).
if [ "${nvme:-0}" = 1 ]; then
    modload nvme 2>&1 | sed 's/^/L2-INSMOD /'
    if grep -qx 0x010802 /sys/bus/pci/devices/*/class 2>/dev/null; then nvme_wait 30; else echo "L2-NVME dev=none ms=0"; fi
fi

# l2.counter=1: print a counter twice a second, to see the guest make progress (or not).
if [ "$counter" = 1 ]; then
    ( i=0; while :; do echo "L2-COUNTER $i"; i=$((i + 1)); sleep 0.5; done ) &
fi

# MSI-X interrupt counts of the VF's queues and mailbox: "name total" per line.
vf_irqs() {
    awk -v dev="$1" '$NF ~ dev { n = 0; for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) n += $i; print $NF, n }' /proc/interrupts
}

# l2.vf=1: bind igbvf to the passed-through VF, ping the PF (192.0.2.1) through it.
if [ "$vf" = 1 ]; then
    insmod /lib/modules/igbvf.ko 2>&1 | sed 's/^/L2-INSMOD /'
    i=0
    while [ $i -lt 100 ]; do
        for d in /sys/bus/pci/drivers/igbvf/0000:*; do [ -e "$d" ] && break 2; done
        sleep 0.1; i=$((i + 1))
    done
    for d in /sys/bus/pci/drivers/igbvf/0000:*; do
        [ -e "$d" ] && echo "L2-VF-BOUND ${d##*/} driver=igbvf"
    done
    ifname=
    for n in /sys/bus/pci/drivers/igbvf/0000:*/net/*; do [ -e "$n" ] && ifname=${n##*/}; done
    if [ -n "$ifname" ]; then
        ip link set "$ifname" up
        ip addr add "$ip/24" dev "$ifname"
        i=0
        while [ "$(cat /sys/class/net/$ifname/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        echo "L2-VF-NET $ifname carrier=$(cat /sys/class/net/$ifname/carrier 2>/dev/null) ip=$ip"
        vf_irqs "$ifname" | sed 's/^/L2-IRQ-BEFORE /'
        out=$(ping -c "$pings" -i 0.2 -W 3 192.0.2.1 2>&1)
        echo "$out" | sed 's/^/L2-PINGLOG /'
        rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
        echo "L2-PING sent=$pings received=${rx:-0}"
        echo "$out" | sed -n 's|^round-trip min/avg/max = \([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\) ms|L2-RTT min=\1 avg=\2 max=\3|p'
        vf_irqs "$ifname" | sed 's/^/L2-IRQ-AFTER /'
    else
        echo "L2-VF-NET none"
    fi
fi

if [ "$input" = 1 ]; then
    echo "L2-READY-FOR-INPUT"
    if read -r -t 60 line; then
        echo "L2-GOT-INPUT $line"
    else
        echo "L2-INPUT-TIMEOUT"
    fi
fi

# l2.hotplug=N: N rounds of "a VF appears (hot-attach) -> ping the PF -> it goes (hot-detach)".
vf_netdev() {
    for n in /sys/bus/pci/drivers/igbvf/0000:*/net/*; do [ -e "$n" ] && { echo "${n##*/}"; return; }; done
}
if [ "$hotplug" -gt 0 ]; then
    insmod /lib/modules/igbvf.ko 2>&1 | sed 's/^/L2-INSMOD /'
    echo "L2-READY-FOR-HOTPLUG"
    round=1
    while [ "$round" -le "$hotplug" ]; do
        i=0
        while [ -z "$(vf_netdev)" ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done
        ifname=$(vf_netdev)
        if [ -z "$ifname" ]; then echo "L2-HOTPLUG-TIMEOUT round=$round"; break; fi
        bdf=$(basename "$(readlink -f "/sys/class/net/$ifname/device")")
        up=$(cut -d' ' -f1 /proc/uptime)
        echo "L2-HOTPLUG-BOUND round=$round bdf=$bdf uptime=$up"
        ip link set "$ifname" up
        ip addr add "$ip/24" dev "$ifname"
        i=0
        while [ "$(cat /sys/class/net/$ifname/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        rx=$(ping -c 3 -i 0.2 -W 3 192.0.2.1 2>&1 | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
        echo "L2-HOTPLUG-PING round=$round received=${rx:-0}"
        i=0
        while [ -e "/sys/bus/pci/devices/$bdf" ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done
        if [ -e "/sys/bus/pci/devices/$bdf" ]; then echo "L2-HOTPLUG-STILL-THERE round=$round"; break; fi
        echo "L2-HOTPLUG-GONE round=$round bdf=$bdf"
        round=$((round + 1))
    done
    echo "L2-HOTPLUG-DONE"
fi

case $action in
    poweroff | reboot | shell) ;;
    *) echo "L2-WARNING unknown l2.action=$action, using poweroff"; action=poweroff ;;
esac
echo "L2-ACTION $action"
case $action in
    reboot) reboot -f ;;
    shell) exec setsid cttyhack sh ;;
    *) poweroff -f ;;
esac
