#!/usr/bin/env bash
# Start/stop libvirtd + virtlogd by hand (no systemd) for the test bed.
# Usage: libvirt.sh up|down|health
set -euo pipefail
TB_SCRIPT=libvirt.sh
. "$(dirname "$0")/lib.sh"

URI=qemu:///system
LIBVIRTD_PID=/run/libvirtd.pid
VIRTLOGD_PID=/run/virtlogd.pid

virsh_ok() { timeout 10 virsh -c "$URI" version >/dev/null 2>&1; }

up() {
    need_root
    need_cmd libvirtd virtlogd virsh
    mkdir -p /run/libvirt /var/lib/libvirt/images /var/log/libvirt/qemu
    if pid_alive "$VIRTLOGD_PID" || pgrep -x virtlogd >/dev/null; then
        :
    else
        log "starting virtlogd"
        virtlogd -d || die "virtlogd -d failed"
    fi
    if virsh_ok; then
        log "libvirtd already answering"
        return 0
    fi
    if pid_alive "$LIBVIRTD_PID" || pgrep -x libvirtd >/dev/null; then
        log "libvirtd running, waiting for it to answer"
    else
        log "starting libvirtd"
        libvirtd -d || die "libvirtd -d failed"
    fi
    wait_until 60 "virsh -c $URI version" virsh_ok \
        || die "libvirtd does not answer on $URI (see /var/log/libvirt/ or run 'libvirtd -v' by hand)"
    log "libvirtd up: $(virsh -c "$URI" version 2>/dev/null | grep -i 'running hypervisor' || true)"
}

down() {
    need_root
    stop_pidfile "$LIBVIRTD_PID" libvirtd 20
    stop_pidfile "$VIRTLOGD_PID" virtlogd 10
    log "libvirtd and virtlogd stopped"
}

health() {
    if virsh_ok; then
        log "healthy: virsh -c $URI answers"
    else
        die "unhealthy: virsh -c $URI version does not answer (run: $0 up)"
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    health) health ;;
    *) echo "usage: $0 up|down|health" >&2; exit 2 ;;
esac
