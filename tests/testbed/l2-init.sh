#!/bin/sh
# /init of the L2 guest initramfs (busybox sh); resources/build.sh copies it into l2.cpio.gz.
# Prints one-line L2-* markers on the console for the tests to assert on.
# Kernel command line: l2.input=1 (read one console line), l2.action=poweroff|reboot|shell.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

read -r up _ </proc/uptime
echo "L2-INIT-START uptime=$up"

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
    esac
done

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
