# Shared helpers for the vmbackup.libvirt test bed scripts (sourced, not run).
# shellcheck shell=bash

TB="${VMBACKUP_TESTBED:-/var/tmp/vmbackup-testbed}"
TESTBED_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

log() { printf '%s: %s\n' "${TB_SCRIPT:-testbed}" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "${TB_SCRIPT:-testbed}" "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

need_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "command '$c' not found (is its Debian package installed? see scripts/install-deps.sh)"
    done
}

# wait_until TIMEOUT_SECONDS DESCRIPTION CMD...: poll CMD every 0.5 s until it succeeds.
wait_until() {
    local timeout="$1" what="$2"; shift 2
    local deadline=$(( $(date +%s) + timeout ))
    while :; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "timed out after ${timeout}s waiting for: $what"
            return 1
        fi
        sleep 0.5
    done
}

# pid_alive PIDFILE: true if the pid in PIDFILE is a running process.
pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# stop_pidfile PIDFILE NAME [TIMEOUT]: TERM, wait, then KILL the pid in PIDFILE.
stop_pidfile() {
    local pidfile="$1" name="$2" timeout="${3:-15}" pid
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid="$(cat "$pidfile")"
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until "$timeout" "$name to exit" sh -c "! kill -0 $pid"; then
        log "killing $name (pid $pid)"
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 5 "$name to die" sh -c "! kill -0 $pid" || die "could not stop $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

# The guest kernel: newest /boot/vmlinuz-* whose modules are installed
# (override with VMBACKUP_GUEST_KERNEL=/boot/vmlinuz-VERSION).
guest_kernel() {
    local k v
    if [ -n "${VMBACKUP_GUEST_KERNEL:-}" ]; then
        echo "$VMBACKUP_GUEST_KERNEL"; return 0
    fi
    for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
        v="${k#/boot/vmlinuz-}"
        if [ -d "/lib/modules/$v/kernel" ]; then echo "$k"; return 0; fi
    done
    return 1
}
