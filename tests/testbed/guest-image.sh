#!/usr/bin/env bash
# Build the test-bed guest kernel + initramfs: a busybox initramfs that mounts
# the host's / read-only over 9p, puts a tmpfs overlay on it, chroots into it
# and runs qemu-ga (plus extra roles chosen on the kernel command line).
# Usage: guest-image.sh build|health
set -euo pipefail
TB_SCRIPT=guest-image.sh
. "$(dirname "$0")/lib.sh"

GUEST="$TB/guest"

# Modules inserted in this order (dependencies from modules.dep are inserted
# first automatically). Optional ones are skipped when the kernel lacks them.
MODULES_REQUIRED="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
virtio_console netfs fscache 9pnet 9pnet_virtio 9p virtio_blk overlay
dm-mod dm-bufio dm-snapshot failover net_failover virtio_net"
MODULES_OPTIONAL="crc32c_generic libcrc32c dm-bio-prison dm-persistent-data dm-thin-pool virtio-rng"

# ---------------------------------------------------------------- stage 1 --
# /init inside the initramfs (busybox sh).
read -r -d '' STAGE1 <<'EOF' || true
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
say() { echo "vmbackup-init[$(cut -d' ' -f1 /proc/uptime)]: $*"; }
fail() {
    say "FATAL: $*"
    say "powering off in 5 s"
    sleep 5
    poweroff -f
    sleep 1000000
}
say "stage 1 starting, cmdline: $(cat /proc/cmdline)"
while read -r m; do
    [ -n "$m" ] || continue
    insmod "/modules/$m.ko" || say "insmod $m failed"
done < /modules/order
say "modules inserted"
NINEP_OPTS=trans=virtio,version=9p2000.L,ro,msize=262144
say "mounting the host root: mount -t 9p -o $NINEP_OPTS hostroot /lower"
mount -t 9p -o "$NINEP_OPTS" hostroot /lower \
    || fail "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "cannot mount the overlay"
cp /stage2.sh /newroot/.vmbackup-stage2 || fail "cannot copy stage 2"
[ -x /newroot/bin/sh ] || fail "no /bin/sh in the host root"
say "switching to the host root (9p + tmpfs overlay)"
exec chroot /newroot /bin/sh /.vmbackup-stage2
fail "chroot failed"
EOF

# ---------------------------------------------------------------- stage 2 --
# Runs as PID 1 inside the chroot, with the host's /bin/sh.
read -r -d '' STAGE2 <<'EOF' || true
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
say() { echo "vmbackup-stage2[$(cut -d' ' -f1 /proc/uptime)]: $*"; }
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/lock /run/vmbackup
# a clean, private home for root (the host's /root and its shell rc files stay out)
mount -t tmpfs -o mode=0700 tmpfs /root
printf 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' > /root/.profile
ip link set lo up 2>/dev/null

ROLES=""
CFG=""
HOSTNAME_WANTED=vmbackup-guest
for w in $(cat /proc/cmdline); do
    case "$w" in
        vmbackup.role=*) ROLES="$ROLES $(echo "${w#vmbackup.role=}" | tr ',' ' ')" ;;
        vmbackup.cfg=*) CFG="${w#vmbackup.cfg=}" ;;
        vmbackup.hostname=*) HOSTNAME_WANTED="${w#vmbackup.hostname=}" ;;
    esac
done
hostname "$HOSTNAME_WANTED" 2>/dev/null
echo "$HOSTNAME_WANTED" > /etc/hostname
say "stage 2 starting, roles:${ROLES:- none}"

# shutdown/reboot without systemd (qemu-ga's guest-shutdown runs /sbin/shutdown).
for f in /sbin/shutdown /sbin/poweroff /sbin/reboot /sbin/halt; do
    rm -f "$f"
    cat > "$f" <<'SHUT'
#!/bin/sh
sync
case "$0 $*" in
    *reboot*|*-r*) exec busybox reboot -f ;;
    *) exec busybox poweroff -f ;;
esac
SHUT
    chmod 0755 "$f"
done

qga_loop() {
    port=""
    i=0
    while [ $i -lt 300 ]; do
        for n in /sys/class/virtio-ports/*/name; do
            [ -r "$n" ] || continue
            if [ "$(cat "$n")" = org.qemu.guest_agent.0 ]; then
                port="/dev/$(basename "$(dirname "$n")")"
            fi
        done
        [ -n "$port" ] && [ -c "$port" ] && break
        port=""
        i=$((i + 1))
        sleep 0.2
    done
    if [ -z "$port" ]; then
        say "no virtio port named org.qemu.guest_agent.0: no guest agent"
        return 0
    fi
    say "guest agent on $port"
    while :; do
        /usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /run
        say "qemu-ga exited ($?), restarting"
        sleep 1
    done
}

role_lvmhost() {
    [ -n "$CFG" ] && [ -d "$CFG" ] || { say "lvmhost: vmbackup.cfg=DIR missing"; return 1; }
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
    say "lvmhost: network: $(ip -o -4 addr show dev eth0 | awk '{print $4}')"

    mkdir -p /etc/lvm
    cat > /etc/lvm/lvm.conf <<'LVMCONF'
# written by the vmbackup test bed (guest overlay only; the host's file is untouched)
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
}
activation {
    udev_sync = 0
    udev_rules = 0
    verify_udev_operations = 1
    monitoring = 0
}
global {
    event_activation = 0
}
LVMCONF
    rm -f /etc/lvm/lvmlocal.conf
    if ! vgs vg0 >/dev/null 2>&1; then
        say "lvmhost: creating vg0 on /dev/vda"
        pvcreate -ff -y /dev/vda && vgcreate vg0 /dev/vda || say "lvmhost: vgcreate failed"
    fi
    say "lvmhost: $(vgchange -ay vg0 2>&1 | tr -s ' \n' ' ')"

    mkdir -p /run/sshd /run/vmbackup/ssh
    chmod 0755 /run/sshd
    chmod 0700 /run/vmbackup/ssh
    cp "$CFG"/ssh_host_ed25519_key "$CFG"/ssh_host_ed25519_key.pub "$CFG"/authorized_keys \
       "$CFG"/sshd_config /run/vmbackup/ssh/ || { say "lvmhost: cannot copy ssh files from $CFG"; return 1; }
    chmod 0600 /run/vmbackup/ssh/*
    ( while :; do
        /usr/sbin/sshd -D -e -f /run/vmbackup/ssh/sshd_config
        say "sshd exited ($?), restarting"
        sleep 1
      done ) &
    say "lvmhost: sshd started"
    # libvirt: a hypervisor of its own, not sharing the host's persistent state
    # (started in the background: libvirtd -d waits for its own initialisation).
    for d in /etc/libvirt/qemu /etc/libvirt/storage /etc/libvirt/secrets \
             /var/lib/libvirt/qemu /var/lib/libvirt/images /var/cache/libvirt /var/log/libvirt; do
        mkdir -p "$d" && mount -t tmpfs -o mode=0755 tmpfs "$d"
    done
    mkdir -p /var/log/libvirt/qemu /run/libvirt
    ( virtlogd -d && libvirtd -d && say "lvmhost: libvirtd started" || say "lvmhost: libvirtd failed to start" ) &
}

qga_loop &
for r in $ROLES; do
    case "$r" in
        lvmhost) role_lvmhost || say "role lvmhost failed" ;;
        *) say "unknown role $r" ;;
    esac
done
say "ready"
while :; do
    sleep 3600 &
    wait
done
EOF

stamp_of() {
    local kernel="$1"
    {
        echo "kernel=$kernel $(stat -c '%s %Y' "$kernel")"
        echo "busybox=$(stat -c '%s %Y' "$(command -v busybox)")"
        sha256sum "$0" "$TESTBED_DIR/lib.sh" | awk '{print $1}'
    } | sha256sum | awk '{print $1}'
}

# find_module KVER NAME: print the relative path of NAME's .ko file.
find_module() {
    local kver="$1" name="$2" alt
    alt="$(echo "$name" | tr '_-' '-_')"
    grep -E "(^|/)(${name}|${alt})\.ko(\.xz|\.zst|\.gz)?:" "/lib/modules/$kver/modules.dep" | head -1 | cut -d: -f1
}

# Resolve dependencies (modules.dep lists the direct and indirect ones; load
# them deepest first) and emit module paths in load order, without repeats.
declare -A SEEN
ORDERED=()
add_module_path() {
    local kver="$1" path="$2" deps d
    [ -n "${SEEN[$path]:-}" ] && return 0
    SEEN[$path]=1
    deps="$(grep -E "^${path//./\\.}:" "/lib/modules/$kver/modules.dep" | cut -d: -f2-)"
    # modules.dep lists deps so that the last one must be loaded first
    local arr=($deps) i
    for (( i=${#arr[@]}-1; i>=0; i-- )); do
        add_module_path "$kver" "${arr[$i]}"
    done
    ORDERED+=("$path")
}

build() {
    need_root
    need_cmd busybox cpio gzip sha256sum
    local kernel kver stamp
    kernel="$(guest_kernel)" || die "no /boot/vmlinuz-* with matching /lib/modules/<ver> (install linux-image-amd64)"
    kver="${kernel#/boot/vmlinuz-}"
    [ -r "$kernel" ] || die "cannot read $kernel"
    mkdir -p "$GUEST"
    chmod 0755 "$TB" "$GUEST" 2>/dev/null || true
    exec 9>"$GUEST/.lock"
    flock -w 300 9 || die "timed out waiting for the build lock $GUEST/.lock"
    stamp="$(stamp_of "$kernel")"
    if [ -s "$GUEST/vmlinuz" ] && [ -s "$GUEST/initrd.img" ] && [ "$(cat "$GUEST/stamp" 2>/dev/null)" = "$stamp" ]; then
        log "guest image up to date ($kver) in $GUEST"
        return 0
    fi
    log "building guest image for kernel $kver in $GUEST"
    rm -rf "$GUEST"/.build.*
    BUILD_WORK="$GUEST/.build.$$"
    local work="$BUILD_WORK"
    rm -rf "$work"
    trap 'rm -rf "${BUILD_WORK:-/nonexistent}"' EXIT
    mkdir -p "$work/root/bin" "$work/root/modules"
    cp "$(command -v busybox)" "$work/root/bin/busybox"
    local m p
    for m in $MODULES_REQUIRED; do
        p="$(find_module "$kver" "$m")"
        [ -n "$p" ] || die "kernel module $m not found under /lib/modules/$kver"
        add_module_path "$kver" "$p"
    done
    for m in $MODULES_OPTIONAL; do
        p="$(find_module "$kver" "$m")"
        if [ -n "$p" ]; then add_module_path "$kver" "$p"; else log "optional module $m not found, skipped"; fi
    done
    local src base
    : > "$work/root/modules/order"
    for p in "${ORDERED[@]}"; do
        src="/lib/modules/$kver/$p"
        base="$(basename "$p")"; base="${base%%.ko*}"
        case "$p" in
            *.ko.xz) xz -dc "$src" > "$work/root/modules/$base.ko" ;;
            *.ko.zst) zstd -qdc "$src" > "$work/root/modules/$base.ko" ;;
            *.ko.gz) gzip -dc "$src" > "$work/root/modules/$base.ko" ;;
            *.ko) cp "$src" "$work/root/modules/$base.ko" ;;
            *) die "unexpected module file $p" ;;
        esac
        echo "$base" >> "$work/root/modules/order"
    done
    log "modules: $(tr '\n' ' ' < "$work/root/modules/order")"
    printf '%s\n' "$STAGE1" > "$work/root/init"
    printf '%s\n' "$STAGE2" > "$work/root/stage2.sh"
    chmod 0755 "$work/root/init" "$work/root/stage2.sh"
    (cd "$work/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 > "$work/initrd.img"
    cp "$kernel" "$work/vmlinuz"
    chmod 0644 "$work/vmlinuz" "$work/initrd.img"
    mv -f "$work/vmlinuz" "$GUEST/vmlinuz"
    mv -f "$work/initrd.img" "$GUEST/initrd.img"
    echo "$kver" > "$GUEST/kernel-version"
    echo "$stamp" > "$GUEST/stamp"
    log "built $GUEST/vmlinuz and $GUEST/initrd.img ($(du -h "$GUEST/initrd.img" | cut -f1))"
}

health() {
    [ -s "$GUEST/vmlinuz" ] || die "missing $GUEST/vmlinuz (run: $0 build)"
    [ -s "$GUEST/initrd.img" ] || die "missing $GUEST/initrd.img (run: $0 build)"
    log "healthy: $GUEST/vmlinuz $GUEST/initrd.img ($(cat "$GUEST/kernel-version" 2>/dev/null))"
}

case "${1:-}" in
    build|up) build ;;
    health) health ;;
    down) : ;;
    *) echo "usage: $0 build|health" >&2; exit 2 ;;
esac
