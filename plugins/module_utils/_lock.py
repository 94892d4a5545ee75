# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lock files that keep two runs off one VM (the backup_lock module).

A lock is a JSON file created with O_EXCL that names its owner (the run's ID), the host,
the repository it was taken for, and, where the module can see it, the ansible-playbook
process that holds it (PID and start time, so a reused PID is not mistaken for the owner).

A lock is stale, and broken, when that process is gone, when it is older than
``stale_after``, or when ``break_from`` names the node *and* the repository it was taken
for: a run that holds the node's lock for the VM in that repository knows that an earlier
run from the same node into the same repository is dead. A lock whose owner is alive (same
host, same process, same start time) is never broken, whatever its age.

Every change to a lock (take, break, release) happens while holding ``flock`` on a guard
file beside it (``PATH.guard``, never removed): a waiter re-reads the lock under the guard,
judges it and, if stale, unlinks it and creates its own before it lets go, so two waiters
that both judged one lock stale cannot both end up holding it (the second one re-reads the
first one's fresh lock). flock is released by the kernel when a process dies, so the guard
itself can never be stale. It works on local file systems, on NFSv4 (the Linux client maps
flock to NFS byte-range locks) and on CephFS; the lock file itself is still created with
O_EXCL, so a run of an older version (without the guard) never overwrites a lock either.

``mode=shared`` takes a reader's lock instead: one file per reader, ``PATH.shared-HASH``.
Any number of readers hold it at once; an exclusive lock is not granted while a live reader
holds one, and no reader gets one while a live exclusive lock is held (restores read, prune
and synthetic fulls take it exclusively). ``mode=append`` is the one-holder lock of a run that
only adds to what the lock protects (a backup): readers may come and go while it is held;
``make_exclusive`` turns it into an exclusive lock in place (a backup's commit that prunes).

With ``slots`` the lock is one of N files ``PATH.1`` .. ``PATH.N``: a counting semaphore that
bounds how many backups run at once on one hypervisor or node (the backup playbook's limits).

A run that has to wait writes, with ``progress_file``, who holds the lock and how long it
will still wait, which the vmbackup.libvirt.progress callback prints while the task runs;
after a wait, the result says how long it waited and for whom (a warning, too).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import socket
import time

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import makedirs_private

ARGUMENT_SPEC = dict(
    path=dict(type="path"),
    # Several locks in one run, taken in order (the backup role's hypervisor and node slots).
    locks=dict(type="list", elements="dict", options=dict(
        path=dict(type="path", required=True),
        slots=dict(type="int", default=0),
        purpose=dict(type="str", default=""),
    )),
    owner=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    mode=dict(type="str", default="exclusive", choices=["exclusive", "shared", "append"]),
    purpose=dict(type="str", default=""),
    node=dict(type="str", default=""),
    repository=dict(type="str", default=""),
    break_from=dict(type="str", default=""),
    wait=dict(type="int", default=0),
    stale_after=dict(type="int", default=86400),
    slots=dict(type="int", default=0),
    progress_file=dict(type="path"),
)
REQUIRED_ONE_OF = [("path", "locks")]
MUTUALLY_EXCLUSIVE = [("path", "locks")]

GUARD_SUFFIX = ".guard"
SHARED_INFIX = ".shared-"


def _proc_start(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _ppid(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def playbook_process():
    """The ansible-playbook process above this module, when it runs on the same host."""
    pid = os.getppid()
    found = None
    while pid > 1:
        if "ansible-playbook" in _cmdline(pid) or "ansible-runner" in _cmdline(pid):
            found = pid
        pid = _ppid(pid)
    return found


def read_lock(path):
    return _files.read_json(path, {"owner": "?", "created": 0, "corrupt": True})


def owner_alive(lock):
    """Whether the lock's ansible-playbook process runs on this host (same PID, same start time)."""
    pid = lock.get("pid")
    if not pid or lock.get("host") != socket.gethostname() or not lock.get("pid_start"):
        return False
    try:
        return _proc_start(int(pid)) == lock.get("pid_start")
    except (TypeError, ValueError):
        return False


def stale_reason(lock, params, now):
    """Why ``lock`` may be broken, or None. A lock whose owner is alive is never stale."""
    if lock.get("corrupt"):
        return "the lock file is unreadable"
    if owner_alive(lock):
        return None
    if (params["break_from"] and lock.get("node") == params["break_from"]
            and (lock.get("repository") or "") == (params.get("repository") or "")):
        return ("it was taken by an earlier run from node %s into repository %s, whose lock this run now holds"
                % (lock.get("node"), lock.get("repository") or "(none)"))
    pid = lock.get("pid")
    if pid and lock.get("host") == socket.gethostname():
        return "its process %s on %s is gone" % (pid, lock.get("host"))
    try:
        created = float(lock.get("created", 0))
    except (TypeError, ValueError):
        return "the lock file is unreadable"
    if now - created > params["stale_after"]:
        return "it is older than %ss" % params["stale_after"]
    return None


def describe(lock):
    try:
        created = datetime.datetime.fromtimestamp(float(lock.get("created", 0)), datetime.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        created = datetime.datetime.fromtimestamp(0, datetime.timezone.utc)
    return "run %s (%s%s) since %s on host %s%s" % (
        lock.get("owner"), lock.get("purpose") or "?", ", shared" if lock.get("mode") == "shared" else "",
        created.strftime("%Y-%m-%dT%H:%M:%SZ"), lock.get("host"),
        ", process %s" % lock["pid"] if lock.get("pid") else "")


def slot_paths(params):
    if params["slots"] < 1:
        return [params["path"]]
    return ["%s.%d" % (params["path"], i) for i in range(1, params["slots"] + 1)]


def shared_path(path, owner):
    """The reader's lock file of ``owner`` (a hash: owners may hold any character)."""
    return path + SHARED_INFIX + hashlib.sha256(owner.encode("utf-8")).hexdigest()[:16]


def reader_paths(path):
    directory, base = os.path.split(path)
    try:
        entries = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    prefix = base + SHARED_INFIX
    return sorted(os.path.join(directory, e) for e in entries if e.startswith(prefix) and not e.endswith(".tmp"))


@contextlib.contextmanager
def guard(path, check_mode=False):
    """flock on PATH.guard around one change to the lock (nothing in check mode)."""
    if check_mode:
        yield
        return
    makedirs_private(os.path.dirname(path))  # the first lock may create the repository: keep it private
    fd = os.open(path + GUARD_SUFFIX, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _create(path, content):
    """O_EXCL-create a lock file with ``content``; False if one exists (someone else's)."""
    try:
        _files.write_new(path, json.dumps(content).encode("utf-8"), sync_dir=False)
    except FileExistsError:
        return False
    return True


def _unlink(path):
    _files.unlink_quietly(path, missing_only=True)


def _judge(module, path, params, now, broken):
    """Read the lock at PATH under the guard: 'free', 'ours' or the live holder (breaking a stale one)."""
    lock = read_lock(path)
    if lock is None:
        return "free"
    if lock.get("owner") == params["owner"]:
        return "ours"
    reason = stale_reason(lock, params, now)
    if reason is None:
        return lock
    broken.append("broke the stale lock of %s: %s" % (describe(lock), reason))
    if not module.check_mode:
        _unlink(path)
    return "free"


def _try_take(module, params, content):
    """One attempt, under the guard: (outcome 'ours'/'taken'/None, path, broken stale locks, holders)."""
    broken, holders = [], []
    now = time.time()
    base = params["path"]
    with guard(base, module.check_mode):
        if params["mode"] == "shared":
            mine = shared_path(base, params["owner"])
            state = _judge(module, base, params, now, broken)  # the writer's lock
            if state == "ours":
                return "ours", base, broken, holders
            if state != "free" and state.get("mode") != "append":  # a backup only adds: readers may share
                return None, None, broken, [state]
            if read_lock(mine) is not None:
                return "ours", mine, broken, holders
            if not module.check_mode and not _create(mine, dict(content, mode="shared")):
                return None, None, broken, [read_lock(mine) or {"owner": "?", "created": now}]
            return "taken", mine, broken, holders
        if params["slots"] < 1 and params["mode"] == "exclusive":
            for reader in reader_paths(base):
                state = _judge(module, reader, params, now, broken)
                if state not in ("free", "ours"):
                    holders.append(state)
            if holders:
                state = _judge(module, base, params, now, broken)
                return None, None, broken, holders + ([state] if state not in ("free", "ours") else [])
        for path in slot_paths(params):
            state = _judge(module, path, params, now, broken)
            if state == "ours":
                return "ours", path, broken, holders
            if state != "free":
                holders.append(state)
                continue
            if module.check_mode:
                return "taken", path, broken, holders
            if _create(path, content):
                return "taken", path, broken, holders
            holders.append(read_lock(path) or {"owner": "?", "created": now})  # an unguarded (older) taker
        return None, None, broken, holders


def lock_params(path, owner, purpose="", node="", wait=0, mode="exclusive", repository="", progress_file=None):
    """The parameters of one plain lock, as the backup_lock module would take them."""
    params = {k: spec.get("default") for k, spec in ARGUMENT_SPEC.items()}
    params.update(path=path, owner=owner, purpose=purpose, node=node, wait=wait, mode=mode,
                  repository=repository, progress_file=progress_file)
    return params


def release(module, params):
    """Give back the lock (each slot or reader file this owner holds); only this owner's."""
    paths = slot_paths(params) + [shared_path(params["path"], params["owner"])]
    released = []
    with guard(params["path"], module.check_mode or not os.path.isdir(os.path.dirname(params["path"]))):
        for path in paths:
            lock = read_lock(path)
            if lock is not None and lock.get("owner") == params["owner"]:
                if not module.check_mode:
                    _unlink(path)
                released.append(path)
    return {"changed": bool(released), "held": False, "path": released[0] if released else None}


def make_exclusive(module, params):
    """Turn the lock this owner holds (a backup's ``append`` lock) into an exclusive one, in place.

    For retention inside a backup's commit: it removes backups, so no reader may hold the VM
    meanwhile. Under the guard, readers are checked (stale ones broken) and the lock's mode is
    rewritten before any new reader can look, so none gets in afterwards. While a live reader
    holds it, VmbackupError ("... is locked by ...", as acquire says it) and nothing changes.
    """
    base = params["path"]
    broken, holders = [], []
    with guard(base, module.check_mode):
        lock = read_lock(base)
        if lock is None or lock.get("owner") != params["owner"]:
            raise VmbackupError(
                "%s: run %s does not hold the lock %s (%s), so it cannot make it exclusive; nothing was removed"
                % (params["purpose"] or base, params["owner"], base,
                   "it is free" if lock is None else "held by %s" % describe(lock)))
        now = time.time()
        for reader in reader_paths(base):
            state = _judge(module, reader, params, now, broken)
            if state not in ("free", "ours"):
                holders.append(state)
        if holders:
            raise VmbackupError("%s is locked by %s; this run (%s) did not wait."
                                % (params["purpose"] or base, "; ".join(describe(h) for h in holders),
                                   params["owner"]))
        changed = lock.get("mode") != "exclusive"
        if changed and not module.check_mode:
            _files.write_atomic(base, json.dumps(dict(lock, mode="exclusive")).encode("utf-8"))
    return {"changed": changed, "held": True, "path": base, "broke_stale": "; ".join(broken) or None}


def _show_wait(params, holders, deadline, started):
    """Write, for the progress callback, who holds the lock and how long this run still waits."""
    if not params.get("progress_file"):
        return
    what = params["purpose"] or params["path"]
    left = max(0, int(deadline - time.time()))
    state = {"label": "lock", "done": 0, "percent": None, "elapsed": round(time.time() - started, 1),
             "message": "waiting for %s: held by %s; waiting up to %ss more (of %ss)"
                        % (what, "; ".join(describe(h) for h in holders), left, params["wait"])}
    _files.write_progress(os.path.expanduser(params["progress_file"]), state)


def _clear_wait(params):
    if params.get("progress_file"):
        _unlink(os.path.expanduser(params["progress_file"]))


def acquire(module, params):
    """Take the lock (or one of its slots), waiting up to ``wait`` seconds; VmbackupError if held."""
    if params["mode"] != "exclusive" and params["slots"] > 0:
        raise VmbackupError("backup_lock: mode=%s does not combine with slots (lock %s)"
                            % (params["mode"], params["path"]))
    pid = playbook_process()
    content = {"owner": params["owner"], "purpose": params["purpose"], "node": params["node"],
               "repository": params.get("repository") or "", "mode": params["mode"],
               "host": socket.gethostname(), "pid": pid, "pid_start": _proc_start(pid) if pid else None,
               "created": time.time()}
    started = time.time()
    deadline = started + params["wait"]
    broke = []
    waited_for = None
    try:
        while True:
            outcome, path, broken, holders = _try_take(module, params, content)
            broke += broken
            if outcome is not None:
                result = {"changed": outcome == "taken", "held": outcome == "ours" or not module.check_mode,
                          "broke_stale": "; ".join(broke) or None, "path": path, "waited": 0, "waited_for": None}
                if waited_for:
                    result.update(waited=int(time.time() - started), waited_for=waited_for)
                    if hasattr(module, "warn"):
                        module.warn("waited %ss for %s, held by %s" % (result["waited"], params["purpose"]
                                                                       or params["path"], waited_for))
                return result
            waited_for = "; ".join(describe(h) for h in holders)
            if time.time() < deadline:
                _show_wait(params, holders, deadline, started)
                time.sleep(1 if params["slots"] > 0 else 2)
                continue
            break
    finally:
        _clear_wait(params)
    what = params["purpose"] or params["path"]
    if params["slots"] > 0:
        raise VmbackupError(
            "All %d slots for %s are taken (by %s); this run (%s) waited %ss. Raise the limit or the "
            "wait; if those runs are dead, remove %s.*."
            % (params["slots"], what, waited_for, params["owner"], params["wait"], params["path"]))
    raise VmbackupError(
        "%s is locked by %s; this run (%s) waited %ss. Try again when it has finished; if that "
        "run is dead, run the vmbackup.libvirt.cleanup playbook or remove %s."
        % (what, waited_for, params["owner"], params["wait"],
           params["path"] if params["mode"] == "shared" or not reader_paths(params["path"])
           else "the lock files %s*" % params["path"]))


def run_several(module, params):
    """Each of ``locks`` in order, with the run's other options. A lock that cannot be taken fails
    the run after the locks it took are given back: a run never waits holding a slot it took for
    nothing, and never keeps one when it fails."""
    results = []
    for entry in params["locks"]:
        one = dict(params, locks=None, path=entry["path"], slots=entry["slots"],
                   purpose=entry["purpose"] or params["purpose"])
        if params["state"] == "absent":
            results.append(release(module, one))
            continue
        try:
            results.append(acquire(module, one))
        except VmbackupError as exc:
            taken = [dict(params, locks=None, path=e["path"], slots=e["slots"])
                     for e, r in zip(params["locks"], results) if r["changed"]]
            for lock in taken:
                release(module, lock)
            if taken:
                exc.msg += " The locks this run had taken before it were given back: %s." % ", ".join(
                    r["path"] for r in results if r["changed"])
            exc.details.setdefault("locks", [dict(r, held=not r["changed"] and r["held"]) for r in results])
            raise
    return {"changed": any(r["changed"] for r in results), "held": params["state"] == "present",
            "path": None, "locks": results}


def run(module):
    if module.params.get("locks") is not None:
        return run_several(module, module.params)
    if module.params["state"] == "absent":
        return release(module, module.params)
    return acquire(module, module.params)
