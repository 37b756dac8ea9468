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

input=0
action=poweroff
for arg in $(cat /proc/cmdline); do
    case $arg in
        l2.input=*) input=${arg#*=} ;;
        l2.action=*) action=${arg#*=} ;;
    esac
done

if [ "$input" = 1 ]; then
    echo "L2-READY-FOR-INPUT"
    if read -r -t 60 line; then
        echo "L2-GOT-INPUT $line"
    else
        echo "L2-INPUT-TIMEOUT"
    fi
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
