#!/usr/bin/env bash
# The "LVM hypervisor": a TCG guest run directly by qemu-system-x86_64 (not via
# libvirt) with a 2 GiB raw disk holding volume group vg0, sshd reachable on
# 127.0.0.1:$PORT (root, key auth) and its own libvirtd.
# Usage: lvmhost.sh up|down|health|reset|selftest   (reset = down + delete the VG disk)
set -euo pipefail
TB_SCRIPT=lvmhost.sh
. "$(dirname "$0")/lib.sh"

PORT="${VMBACKUP_LVMHOST_PORT:-2299}"
D="$TB/lvmhost"
CFG="$D/guest"                 # copied into the guest's /run by the guest itself
PIDFILE="$D/qemu.pid"
CONSOLE="$D/console.log"
PV="$D/pv.raw"
PV_SIZE="${VMBACKUP_LVMHOST_PV_SIZE:-2G}"
CLIENT_KEY="$TB/ssh/id_ed25519"
KNOWN_HOSTS="$D/known_hosts"
UP_TIMEOUT="${VMBACKUP_LVMHOST_TIMEOUT:-120}"

# ssh_lvmhost [TIMEOUT] -- CMD...: run CMD on the LVM host (bounded by timeout(1)).
ssh_lvmhost() {
    local t=60
    if [ "${2:-}" = "--" ]; then t="$1"; shift 2; fi
    timeout -k 5 "$t" ssh -F /dev/null -i "$CLIENT_KEY" -p "$PORT" \
        -o UserKnownHostsFile="$KNOWN_HOSTS" -o StrictHostKeyChecking=yes \
        -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=5 \
        -o ServerAliveInterval=5 -o ServerAliveCountMax=3 \
        root@127.0.0.1 "$@"
}

ssh_ok() { ssh_lvmhost 20 -- true </dev/null >/dev/null 2>&1; }

console_tail() { tail -n "${1:-30}" "$CONSOLE" 2>/dev/null | tr -d '\r' | sed 's/^/  console| /' >&2 || true; }

prepare_files() {
    mkdir -p "$D" "$CFG" "$TB/ssh"
    chmod 0700 "$TB/ssh" "$CFG"
    if [ ! -s "$CLIENT_KEY" ]; then
        log "generating client key $CLIENT_KEY"
        rm -f "$CLIENT_KEY" "$CLIENT_KEY.pub"
        ssh-keygen -q -t ed25519 -N '' -C vmbackup-testbed -f "$CLIENT_KEY"
    fi
    if [ ! -s "$CFG/ssh_host_ed25519_key" ]; then
        log "generating host key $CFG/ssh_host_ed25519_key"
        rm -f "$CFG/ssh_host_ed25519_key" "$CFG/ssh_host_ed25519_key.pub"
        ssh-keygen -q -t ed25519 -N '' -C vmbackup-lvmhost -f "$CFG/ssh_host_ed25519_key"
    fi
    cp "$CLIENT_KEY.pub" "$CFG/authorized_keys"
    cat > "$CFG/sshd_config" <<CONF
# vmbackup test bed: sshd inside the LVM host guest (files copied to /run/vmbackup/ssh)
Port 22
ListenAddress 0.0.0.0
HostKey /run/vmbackup/ssh/ssh_host_ed25519_key
PidFile /run/vmbackup/sshd.pid
PermitRootLogin prohibit-password
AuthorizedKeysFile /run/vmbackup/ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
AcceptEnv LANG LC_*
MaxStartups 64:30:128
MaxSessions 64
Subsystem sftp /usr/lib/openssh/sftp-server
CONF
    printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$CFG/ssh_host_ed25519_key.pub")" > "$KNOWN_HOSTS.tmp"
    mv -f "$KNOWN_HOSTS.tmp" "$KNOWN_HOSTS"
    cat > "$D/ssh_config" <<CONF
# ssh -F $D/ssh_config lvmhost
Host lvmhost
    HostName 127.0.0.1
    Port $PORT
    User root
    IdentityFile $CLIENT_KEY
    IdentitiesOnly yes
    UserKnownHostsFile $KNOWN_HOSTS
    StrictHostKeyChecking yes
    BatchMode yes
CONF
    if [ ! -e "$PV" ]; then
        log "creating sparse $PV_SIZE PV disk $PV"
        truncate -s "$PV_SIZE" "$PV"
    fi
}

start_qemu() {
    local port_busy
    port_busy="$(ss -Hltn "sport = :$PORT" 2>/dev/null | head -1 || true)"
    [ -z "$port_busy" ] || die "127.0.0.1:$PORT is already in use by another process: $port_busy"
    rm -f "$CONSOLE" "$D/qga.sock" "$D/qmp.sock"
    log "starting qemu (TCG, 1024 MiB, vg0 on $PV, ssh on 127.0.0.1:$PORT)"
    qemu-system-x86_64 \
        -name vmbackup-lvmhost \
        -machine pc,accel=tcg -m 1024 -smp 1 \
        -nodefaults -display none -no-reboot \
        -kernel "$TB/guest/vmlinuz" -initrd "$TB/guest/initrd.img" \
        -append "console=ttyS0 vmbackup.role=lvmhost vmbackup.cfg=$CFG vmbackup.hostname=lvmhost" \
        -serial "file:$CONSOLE" \
        -drive "file=$PV,format=raw,if=virtio,cache=writeback" \
        -fsdev local,id=fs0,path=/,security_model=passthrough,readonly=on \
        -device virtio-9p-pci,fsdev=fs0,mount_tag=hostroot \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:22" \
        -device virtio-net-pci,netdev=n0 \
        -device virtio-serial-pci \
        -chardev "socket,id=qga0,path=$D/qga.sock,server=on,wait=off" \
        -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
        -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-pci,rng=rng0 \
        -qmp "unix:$D/qmp.sock,server=on,wait=off" \
        -daemonize -pidfile "$PIDFILE" 9>&- \
        || die "qemu-system-x86_64 failed to start"
}

up() {
    need_root
    need_cmd qemu-system-x86_64 ssh ssh-keygen truncate flock
    mkdir -p "$D"
    exec 9>"$D/.lock"
    flock -w 300 9 || die "timed out waiting for $D/.lock"
    if pid_alive "$PIDFILE" && [ -s "$KNOWN_HOSTS" ] && ssh_ok; then
        log "already up (pid $(cat "$PIDFILE")): ssh -F $D/ssh_config lvmhost"
        return 0
    fi
    "$TESTBED_DIR/guest-image.sh" build
    prepare_files
    local t0=$SECONDS
    if pid_alive "$PIDFILE"; then
        log "qemu running (pid $(cat "$PIDFILE")) but ssh not answering yet: waiting"
    else
        start_qemu
    fi
    local deadline=$((SECONDS + UP_TIMEOUT))
    until ssh_ok; do
        if ! pid_alive "$PIDFILE"; then
            console_tail 40
            die "the LVM host qemu exited during boot (console: $CONSOLE)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            console_tail 40
            die "ssh to the LVM host did not work within ${UP_TIMEOUT}s (console: $CONSOLE; qemu still running, '$0 down' stops it)"
        fi
        sleep 1
    done
    log "up in $((SECONDS - t0))s: ssh -F $D/ssh_config lvmhost  (known_hosts: $KNOWN_HOSTS)"
}

down() {
    need_root
    mkdir -p "$D"
    exec 9>"$D/.lock"
    flock -w 300 9 || die "timed out waiting for $D/.lock"
    stop_pidfile "$PIDFILE" "LVM host qemu" 15
    rm -f "$D/qga.sock" "$D/qmp.sock"
    log "down"
}

reset() {
    down
    rm -f "$PV"
    log "removed $PV (vg0 is recreated on next up)"
}

health() {
    pid_alive "$PIDFILE" || die "unhealthy: the LVM host qemu is not running (run: $0 up)"
    ssh_ok || die "unhealthy: ssh root@127.0.0.1:$PORT does not work"
    local out
    out="$(ssh_lvmhost 30 -- vgs --reportformat json vg0 </dev/null 2>&1)" \
        || die "unhealthy: 'vgs --reportformat json vg0' failed: $out"
    log "healthy: ssh on 127.0.0.1:$PORT, vg0: $(echo "$out" | tr -d ' \n' | head -c 200)"
}

selftest() {
    health
    local t0=$SECONDS out
    out="$(ssh_lvmhost 300 -- 'set -e
        lvremove -f vg0/vmbtb_snap vg0/vmbtb_lv1 >/dev/null 2>&1 || true
        lvcreate -q -L 64M -n vmbtb_lv1 vg0
        lvcreate -q -s -L 32M -n vmbtb_snap vg0/vmbtb_lv1
        lvs --reportformat json vg0 | grep -q "\"vmbtb_snap\""
        a=$(sha256sum < /dev/vg0/vmbtb_lv1); b=$(sha256sum < /dev/vg0/vmbtb_snap); [ "$a" = "$b" ]
        lvremove -q -f vg0/vmbtb_snap vg0/vmbtb_lv1
        /usr/bin/python3 -c "import lxml" && echo lxml-ok
        virsh -c qemu:///system version >/dev/null && echo libvirt-ok' </dev/null 2>&1)" \
        || die "selftest failed: $out"
    log "selftest OK in $((SECONDS - t0))s (lvcreate, snapshot, lvs json, lvremove, python3 lxml, libvirtd)"
}

case "${1:-}" in
    selftest) selftest ;;
    up) up ;;
    down) down ;;
    health) health ;;
    reset) reset ;;
    *) echo "usage: $0 up|down|health|reset|selftest" >&2; exit 2 ;;
esac
