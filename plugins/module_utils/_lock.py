# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lock files that keep two runs off one VM (the backup_lock module).

A lock is a JSON file created with O_EXCL that names its owner (the run's ID), the host,
and, where the module can see it, the ansible-playbook process that holds it (PID and
start time, so a reused PID is not mistaken for the owner). A lock is stale, and broken,
when that process is gone, when it is older than ``stale_after``, or when ``break_from``
names the node that holds it: a run that holds the node's lock for the VM knows that an
earlier run from the same node is dead.

With ``slots`` the lock is one of N files ``PATH.1`` .. ``PATH.N``: a counting semaphore that
bounds how many backups run at once on one hypervisor or node (the backup playbook's limits).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import makedirs_private

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    owner=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    purpose=dict(type="str", default=""),
    node=dict(type="str", default=""),
    break_from=dict(type="str", default=""),
    wait=dict(type="int", default=0),
    stale_after=dict(type="int", default=86400),
    slots=dict(type="int", default=0),
)


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
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except ValueError:
        return {"owner": "?", "created": 0, "corrupt": True}


def stale_reason(lock, params, now):
    if lock.get("corrupt"):
        return "the lock file is unreadable"
    if params["break_from"] and lock.get("node") == params["break_from"]:
        return "it was taken by an earlier run from node %s, whose lock this run now holds" % lock.get("node")
    pid = lock.get("pid")
    if pid and lock.get("host") == socket.gethostname():
        if _proc_start(pid) != lock.get("pid_start"):
            return "its process %s on %s is gone" % (pid, lock.get("host"))
    if now - float(lock.get("created", 0)) > params["stale_after"]:
        return "it is older than %ss" % params["stale_after"]
    return None


def describe(lock):
    created = datetime.datetime.fromtimestamp(float(lock.get("created", 0)), datetime.timezone.utc)
    return "run %s (%s) since %s on host %s%s" % (
        lock.get("owner"), lock.get("purpose") or "?", created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        lock.get("host"), ", process %s" % lock["pid"] if lock.get("pid") else "")


def slot_paths(params):
    if params["slots"] < 1:
        return [params["path"]]
    return ["%s.%d" % (params["path"], i) for i in range(1, params["slots"] + 1)]


def _release(module, paths, owner):
    released = []
    for path in paths:
        lock = read_lock(path)
        if lock is not None and lock.get("owner") == owner:
            if not module.check_mode:
                os.unlink(path)
            released.append(path)
    return {"changed": bool(released), "held": False, "path": released[0] if released else None}


def _try_take(module, path, params, content):
    """Take PATH if it is free, ours or stale: (held, broken stale lock or None, holder or None)."""
    lock = read_lock(path)
    if lock is not None and lock.get("owner") == params["owner"]:
        return "ours", None, None
    broken = None
    if lock is not None:
        reason = stale_reason(lock, params, time.time())
        if reason is None:
            return None, None, lock
        broken = "broke the stale lock of %s: %s" % (describe(lock), reason)
        if not module.check_mode:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    if module.check_mode:
        return "taken", broken, None
    makedirs_private(os.path.dirname(path))  # the first lock may create the repository: keep it private
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return None, broken, read_lock(path) or {"owner": "?", "created": time.time()}  # lost a race
    with os.fdopen(fd, "w") as fh:
        json.dump(content, fh)
    return "taken", broken, None


def lock_params(path, owner, purpose="", node="", wait=0):
    """The parameters of one plain lock, as the backup_lock module would take them."""
    params = {k: spec.get("default") for k, spec in ARGUMENT_SPEC.items()}
    params.update(path=path, owner=owner, purpose=purpose, node=node, wait=wait)
    return params


def release(module, params):
    return _release(module, slot_paths(params), params["owner"])


def acquire(module, params):
    """Take the lock (or one of its slots), waiting up to ``wait`` seconds; VmbackupError if held."""
    paths = slot_paths(params)
    pid = playbook_process()
    content = {"owner": params["owner"], "purpose": params["purpose"], "node": params["node"],
               "host": socket.gethostname(), "pid": pid, "pid_start": _proc_start(pid) if pid else None,
               "created": time.time()}
    deadline = time.time() + params["wait"]
    while True:
        holders = []
        for path in paths:
            outcome, broken, holder = _try_take(module, path, params, content)
            if outcome == "ours":
                return {"changed": False, "held": True, "broke_stale": None, "path": path}
            if outcome == "taken":
                return {"changed": True, "held": not module.check_mode, "broke_stale": broken, "path": path}
            holders.append(holder)
        if time.time() < deadline:
            time.sleep(1 if params["slots"] > 0 else 2)
            continue
        what = params["purpose"] or params["path"]
        if params["slots"] > 0:
            raise VmbackupError(
                "All %d slots for %s are taken (by %s); this run (%s) waited %ss. Raise the limit or the "
                "wait; if those runs are dead, remove %s.*."
                % (params["slots"], what, "; ".join(describe(h) for h in holders), params["owner"],
                   params["wait"], params["path"]))
        raise VmbackupError(
            "%s is locked by %s; this run (%s) waited %ss. Try again when it has finished; if that "
            "run is dead, run the vmbackup.libvirt.cleanup playbook or remove %s."
            % (what, describe(holders[0]), params["owner"], params["wait"], params["path"]))


def run(module):
    if module.params["state"] == "absent":
        return release(module, module.params)
    return acquire(module, module.params)
