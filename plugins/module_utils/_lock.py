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
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    owner=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    purpose=dict(type="str", default=""),
    node=dict(type="str", default=""),
    break_from=dict(type="str", default=""),
    wait=dict(type="int", default=0),
    stale_after=dict(type="int", default=86400),
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


def run(module):
    p = module.params
    path = p["path"]
    if p["state"] == "absent":
        lock = read_lock(path)
        if lock is None or lock.get("owner") != p["owner"]:
            return {"changed": False, "held": False}
        if not module.check_mode:
            os.unlink(path)
        return {"changed": True, "held": False}

    deadline = time.time() + p["wait"]
    broken = None
    while True:
        lock = read_lock(path)
        if lock is not None and lock.get("owner") == p["owner"]:
            return {"changed": False, "held": True, "broke_stale": broken}
        if lock is not None:
            reason = stale_reason(lock, p, time.time())
            if reason is None:
                if time.time() < deadline:
                    time.sleep(2)
                    continue
                raise VmbackupError(
                    "%s is locked by %s; this run (%s) waited %ss. Try again when it has finished; if that "
                    "run is dead, run the vmbackup.libvirt.cleanup playbook or remove %s."
                    % (p["purpose"] or path, describe(lock), p["owner"], p["wait"], path))
            broken = "broke the stale lock of %s: %s" % (describe(lock), reason)
            if not module.check_mode:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        if module.check_mode:
            return {"changed": True, "held": False, "broke_stale": broken}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pid = playbook_process()
        content = {"owner": p["owner"], "purpose": p["purpose"], "node": p["node"], "host": socket.gethostname(),
                   "pid": pid, "pid_start": _proc_start(pid) if pid else None, "created": time.time()}
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue  # another run won the race; look again
        with os.fdopen(fd, "w") as fh:
            json.dump(content, fh)
        return {"changed": True, "held": True, "broke_stale": broken}
