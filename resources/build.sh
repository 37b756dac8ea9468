#!/bin/bash
# Build (or reuse) the nested-testbed images in the cache:
#   vmlinuz      Debian bzImage (L1 and L2 kernel)
#   vmlinux      ELF kernel cut out of the bzImage (for ELF/PVH boot tests)
#   l1.cpio.gz   L1 "SR-IOV host" initramfs (init: resources/l1-init.sh)
#   l2.cpio.gz   L2 guest initramfs (init: tests/testbed/l2-init.sh, + igbvf.ko)
# Idempotent: each artifact is rebuilt only when its input hash changes.
# Usage: resources/build.sh [-q]     (-q: print only the artifact lines)
set -euo pipefail

# Preferred kernel (bookworm-backports; env VFVMM_KERNEL_VERSION overrides). If it is not available,
# the newest linux-image-6.12.*+deb12-amd64 in bookworm-backports is used (printed as a NOTE).
KERNEL_VERSION=${VFVMM_KERNEL_VERSION:-6.12.95+deb12-amd64}
CACHE=${VFVMM_CACHE:-/var/cache/vfvmm}
QBOOT=/usr/share/qemu/qboot.rom
# Modules for L1 (dependencies are added automatically, built-ins skipped).
L1_MODULES=(netfs 9pnet 9pnet_virtio 9p
            ccp irqbypass kvm kvm-amd dca i2c-algo-bit igb nvme
            vfio vfio_iommu_type1 vfio-pci-core vfio-pci)
# Modules shipped (not loaded) in L2: /lib/modules/NAME.ko, with /etc/modules.dep naming each
# one's dependencies in load order (the guest's init loads igbvf or nvme as a test asks).
L2_MODULES=(igbvf nvme evdev button)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$REPO/resources/build.sh
L1_INIT=$REPO/resources/l1-init.sh
L2_INIT=$REPO/tests/testbed/l2-init.sh
QUIET=0
[[ ${1:-} == -q ]] && QUIET=1
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

log() { [[ $QUIET == 1 ]] || echo "build.sh: $*" >&2; }
die() { echo "build.sh: ERROR: $*" >&2; exit 1; }
sha() { sha256sum "$@" | awk '{print $1}' | sha256sum | cut -c1-32; }

# set -e alone ends the script without a word: say which command failed.
trap 'echo "build.sh: ERROR: \"$BASH_COMMAND\" failed (line $LINENO)" >&2' ERR

[[ $(id -u) == 0 ]] || die "must run as root (installs packages, writes $CACHE)"

# ---------------------------------------------------------------- packages
APT_UPDATED=0
apt_update_once() {
    [[ $APT_UPDATED == 1 ]] && return
    log "apt-get update (package lists; 10-30 s) ..."
    apt-get update -qq >&2
    APT_UPDATED=1
}
# The mirror this machine's apt already uses for Debian bookworm (deb822 .sources stanzas or
# one-line .list entries), so that backports come from the same place.
bookworm_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk 'BEGIN { RS = "" }
             /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/ && !/(^|\n)Enabled:[ \t]*no/ {
                 if (match($0, /URIs:[ \t]*[^ \t\n]+/)) {
                     u = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", u); print u; exit
                 }
             }' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" { sub(/\[[^]]*\][ \t]*/, ""); if ($3 == "bookworm") { print $2; exit } }'
}
ensure_backports() {
    if ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        local mirror
        mirror=$(bookworm_mirror | head -n 1)
        [[ -n $mirror ]] || die "no Debian bookworm source in /etc/apt to take bookworm-backports from: add bookworm-backports to apt's sources"
        log "adding bookworm-backports (from $mirror) to apt sources"
        echo "deb $mirror bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
        APT_UPDATED=0
    fi
}
# Installed version of a package, or nothing (never fails: an absent package is not an error).
pkg_version() { { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null || true; } | sed -n 's/^install ok installed //p'; }
ensure_packages() {
    local p missing=() qv
    # iputils-ping: the testbed scripts ping L2 guests from L1, which runs this machine's /usr.
    for p in busybox-static cpio kmod xz-utils zstd iputils-ping; do
        [[ -n $(pkg_version "$p") ]] || missing+=("$p")
    done
    qv=$(pkg_version qemu-system-x86)
    # igb (82576 SR-IOV PF) needs QEMU >= 8; bookworm has 7.2, backports has 10.x.
    if [[ -z $qv ]] || dpkg --compare-versions "$qv" lt 1:8; then
        ensure_backports; apt_update_once
        log "installing qemu-system-x86 10 from bookworm-backports (had: ${qv:-none}; ~60 MB, about 1 min) ..."
        apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >&2
    fi
    if ((${#missing[@]})); then
        apt_update_once
        log "installing ${missing[*]} ..."
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    [[ -f $QBOOT ]] || die "$QBOOT missing (package qemu-system-data)"
}

# ---------------------------------------------------------------- kernel package
# Sets KDEB (path of the cached .deb). Uses the cache without asking apt when possible.
resolve_kernel_deb() {
    local pkg="linux-image-$KERNEL_VERSION" f
    f=$(find "$CACHE/debs" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -1)
    if [[ -z $f ]]; then
        ensure_backports
        apt-cache show "$pkg" >/dev/null 2>&1 || apt_update_once
        if ! apt-cache show "$pkg" >/dev/null 2>&1; then
            local fb
            # newest linux-image-6.12.N+deb12-amd64 that bookworm-backports carries
            # shellcheck disable=SC2046
            fb=$(apt-cache madison $(apt-cache search --names-only \
                     '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' | awk '{print $1}') \
                 | awk -F' *[|] *' '$3 ~ /bookworm-backports/ {print $1}' | sort -Vu | tail -1)
            [[ -n $fb ]] || die "neither $pkg nor any linux-image-6.12.*+deb12-amd64 is in bookworm-backports"
            echo "build.sh: NOTE: $pkg not available, falling back to $fb" >&2
            pkg=$fb
        fi
        f=$(find "$CACHE/debs" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -1)
    fi
    if [[ -z $f ]]; then
        log "downloading $pkg (about 106 MB) ..."
        local tmp; tmp=$(mktemp -d "$CACHE/dl.XXXXXX")
        chmod 755 "$tmp"; chown _apt "$tmp" 2>/dev/null || true   # let apt's sandbox user write
        (cd "$tmp" && apt-get download -q -t bookworm-backports "$pkg" >&2)
        find "$CACHE/debs" -maxdepth 1 -name 'linux-image-*.deb' -delete   # keep only one kernel
        mv "$tmp"/*.deb "$CACHE/debs/"
        rmdir "$tmp"
        f=$(find "$CACHE/debs" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -1)
    fi
    KDEB=$f
    KID=$(basename "$KDEB" .deb)
}

# Unpacks the .deb into $CACHE/kernel (once per .deb). Sets KVER, KTREE, KMODDIR.
ensure_kernel_tree() {
    [[ -n ${KTREE:-} ]] && return
    KTREE=$CACHE/kernel
    if [[ $(cat "$KTREE.stamp" 2>/dev/null) != "$KID" ]]; then
        log "unpacking $KID (about 10 s) ..."
        rm -rf "$KTREE" "$KTREE.stamp"
        dpkg -x "$KDEB" "$KTREE.tmp"
        mv "$KTREE.tmp" "$KTREE"
        echo "$KID" > "$KTREE.stamp"
    fi
    KVER=$(ls "$KTREE/lib/modules")
    KMODDIR=$KTREE/lib/modules/$KVER
    [[ -f $KTREE/boot/vmlinuz-$KVER ]] || die "no boot/vmlinuz-$KVER in $KDEB"
}

# ---------------------------------------------------------------- helpers
# up_to_date ARTIFACT HASH: artifact exists and was built from HASH.
up_to_date() { [[ -s $1 && $(cat "$1.stamp" 2>/dev/null) == "$2" ]]; }
mark_built() { echo "$2" > "$1.stamp"; }

# Writes the ELF vmlinux inside bzImage $1 to $2: decompress from each zstd magic until an ELF
# comes out (zstd exits non-zero on the trailing non-zstd bytes; the output is still complete).
extract_vmlinux() {
    local img=$1 out=$2 off
    for off in $(grep -obUaP '\x28\xb5\x2f\xfd' "$img" | cut -d: -f1); do
        tail -c +"$((off + 1))" "$img" | zstd -dcq 2>/dev/null > "$out.tmp" || true
        if [[ $(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
            mv "$out.tmp" "$out"
            if command -v file >/dev/null; then log "$(file -b "$out" | cut -d, -f1-2)"; fi
            return 0
        fi
    done
    rm -f "$out.tmp"
    return 1
}

# Module index: normalized name (- -> _) -> .ko.* path; and the set of built-ins.
declare -A MODPATH=() BUILTIN=()
index_modules() {
    ((${#MODPATH[@]})) && return
    local f n
    while IFS= read -r f; do
        n=${f##*/}; n=${n%%.ko*}; MODPATH[${n//-/_}]=$f
    done < <(find "$KMODDIR/kernel" -name '*.ko*')
    while IFS= read -r f; do
        n=${f##*/}; n=${n%%.ko*}; BUILTIN[${n//-/_}]=1
    done < "$KMODDIR/modules.builtin"
}
# resolve_module NAME: appends NAME's dependencies, then NAME, to ORDER (no duplicates).
declare -A SEEN=()
ORDER=()
resolve_module() {
    local n=${1//-/_} d
    [[ -n ${SEEN[$n]:-} ]] && return
    SEEN[$n]=1
    if [[ -n ${BUILTIN[$n]:-} ]]; then log "module $1: built-in, skipped"; return; fi
    [[ -n ${MODPATH[$n]:-} ]] || die "module $1 not found in $KVER"
    for d in $(modinfo -F depends "${MODPATH[$n]}" | tr ',' ' '); do resolve_module "$d"; done
    ORDER+=("$n")
}
# module_deps NAME: NAME's (non-built-in) dependencies, transitively, dependencies first.
module_deps() {
    local d
    for d in $(modinfo -F depends "${MODPATH[${1//-/_}]}" | tr ',' ' '); do
        d=${d//-/_}
        [[ -n ${BUILTIN[$d]:-} ]] && continue
        module_deps "$d"
        echo "$d"
    done | awk '!seen[$0]++'
}
decompress_ko() {
    case $1 in
        *.ko.xz) xz -dc "$1" ;; *.ko.zst) zstd -dcq "$1" ;; *.ko.gz) gzip -dc "$1" ;; *) cat "$1" ;;
    esac
}

# build_initramfs OUT INIT LOAD(0|1) MODULES...: busybox + /init + /lib/modules/NAME.ko.
# With LOAD=1, /etc/modules.order lists the modules in load order (dependencies first).
build_initramfs() {
    local out=$1 init=$2 load=$3 stage m n a
    shift 3
    index_modules
    SEEN=(); ORDER=()
    for m in "$@"; do resolve_module "$m"; done
    log "building $(basename "$out") (busybox + ${#ORDER[@]} modules; a few seconds) ..."
    stage=$(mktemp -d "$CACHE/stage.XXXXXX")
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,host,lib/modules}
    cp /bin/busybox "$stage/bin/busybox"
    for a in $("$stage/bin/busybox" --list-full); do
        [[ -e $stage/$a ]] || ln -s /bin/busybox "$stage/$a"
    done
    mknod -m 600 "$stage/dev/console" c 5 1
    mknod -m 666 "$stage/dev/null" c 1 3
    install -m 755 "$init" "$stage/init"
    : > "$stage/etc/modules.order"
    : > "$stage/etc/modules.dep"
    for n in "${ORDER[@]}"; do
        decompress_ko "${MODPATH[$n]}" > "$stage/lib/modules/$n.ko"
        if [[ $load == 1 ]]; then echo "$n" >> "$stage/etc/modules.order"; fi
        echo "$n $(module_deps "$n" | tr '\n' ' ')" >> "$stage/etc/modules.dep"
    done
    echo "$KVER" > "$stage/etc/kernel-version"
    (cd "$stage" && find . -mindepth 1 -print0 | sort -z \
        | cpio --null -o -H newc --reproducible --quiet) | gzip -6n > "$out.tmp"
    rm -rf "$stage"
    mv "$out.tmp" "$out"
    log "$(basename "$out"): modules ${ORDER[*]:-none}"
}

# ---------------------------------------------------------------- main
mkdir -p "$CACHE/debs"
exec 9> "$CACHE/.lock"
flock 9   # serialize concurrent builds

ensure_packages
resolve_kernel_deb
[[ -f $L1_INIT ]] || die "missing $L1_INIT"
[[ -f $L2_INIT ]] || die "missing $L2_INIT"
BASE_HASH=$(sha "$SELF" /bin/busybox)
declare -A STATUS=()

H=$(echo "$KID $BASE_HASH" | sha /dev/stdin)
if up_to_date "$CACHE/vmlinuz" "$H" && up_to_date "$CACHE/vmlinux" "$H"; then
    STATUS[vmlinuz]=cached; STATUS[vmlinux]=cached
else
    ensure_kernel_tree
    cp "$KTREE/boot/vmlinuz-$KVER" "$CACHE/vmlinuz.tmp" && mv "$CACHE/vmlinuz.tmp" "$CACHE/vmlinuz"
    extract_vmlinux "$CACHE/vmlinuz" "$CACHE/vmlinux" || die "could not extract an ELF vmlinux"
    echo "$KVER" > "$CACHE/kernel-version"
    mark_built "$CACHE/vmlinuz" "$H"; mark_built "$CACHE/vmlinux" "$H"
    STATUS[vmlinuz]=built; STATUS[vmlinux]=built
fi

H=$(echo "$KID $BASE_HASH $(sha "$L1_INIT")" | sha /dev/stdin)
if up_to_date "$CACHE/l1.cpio.gz" "$H"; then STATUS[l1]=cached; else
    ensure_kernel_tree
    build_initramfs "$CACHE/l1.cpio.gz" "$L1_INIT" 1 "${L1_MODULES[@]}"
    mark_built "$CACHE/l1.cpio.gz" "$H"; STATUS[l1]=built
fi

H=$(echo "$KID $BASE_HASH $(sha "$L2_INIT")" | sha /dev/stdin)
if up_to_date "$CACHE/l2.cpio.gz" "$H"; then STATUS[l2]=cached; else
    ensure_kernel_tree
    build_initramfs "$CACHE/l2.cpio.gz" "$L2_INIT" 0 "${L2_MODULES[@]}"
    mark_built "$CACHE/l2.cpio.gz" "$H"; STATUS[l2]=built
fi

echo "kernel:     $(cat "$CACHE/kernel-version") ($KID)"
echo "vmlinuz:    $CACHE/vmlinuz (${STATUS[vmlinuz]})"
echo "vmlinux:    $CACHE/vmlinux (${STATUS[vmlinux]})"
echo "l1.cpio.gz: $CACHE/l1.cpio.gz (${STATUS[l1]})"
echo "l2.cpio.gz: $CACHE/l2.cpio.gz (${STATUS[l2]})"
echo "qboot.rom:  $QBOOT (present)"
