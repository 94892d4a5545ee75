# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the backup_repo module."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lock
from ansible_collections.vmbackup.libvirt.plugins.module_utils._retention import full_due
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import (
    FORMAT_VERSION,
    Repository,
    new_backup_id,
)

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    vm=dict(type="str"),
    action=dict(type="str", required=True, choices=["begin", "commit", "abort", "clean", "list", "select", "report"]),
    backup_id=dict(type="str"),
    backup=dict(type="str", default="latest"),
    before=dict(type="str"),
    manifest=dict(type="dict"),
    domain_xml=dict(type="str"),
    files=dict(type="dict", default={}),
    full_every=dict(type="int", default=0),
    full_every_days=dict(type="int", default=0),
    clean=dict(type="bool", default=False),
    report=dict(type="dict"),
    report_name=dict(type="str"),
    lock_owner=dict(type="str"),
    lock_purpose=dict(type="str", default=""),
    lock_node=dict(type="str", default=""),
    lock_wait=dict(type="int", default=0),
)

REQUIRED_IF = [
    ("action", "begin", ["vm"]),
    ("action", "commit", ["vm", "backup_id", "manifest", "domain_xml"]),
    ("action", "abort", ["vm", "backup_id"]),
    ("action", "clean", ["vm"]),
    ("action", "select", ["vm"]),
    ("action", "report", ["report", "report_name"]),
]

REPORT_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")


def summary(manifest):
    keys = ("backup_id", "vm", "type", "parent", "started", "finished", "status", "bytes_sent", "bytes_stored",
            "usable", "damaged")
    return {k: manifest.get(k) for k in keys}


def with_paths(repo, manifest):
    """A manifest with the absolute path of each disk image and of the domain XML."""
    bdir = repo.backup_dir(manifest["vm"], manifest["backup_id"])
    out = dict(manifest)
    out["dir"] = bdir
    out["domain_xml_path"] = os.path.join(bdir, manifest.get("domain_xml", "domain.xml"))
    out["disks"] = [dict(d, image=os.path.join(bdir, d["file"])) for d in manifest.get("disks", [])]
    return out


def run(module):
    p = module.params
    repo = Repository(p["path"])
    action = p["action"]
    vm = p["vm"]
    if action == "list":
        vms = [vm] if vm else repo.vms()
        backups = [summary(m) for v in vms for m in repo.backups(v)]
        return {"changed": False, "backups": backups,
                "partial": {v: repo.partials(v) for v in vms if repo.partials(v)}}
    if action == "select":
        manifest = repo.select(vm, p["backup"], p["before"])
        chain = repo.chain(vm, manifest["backup_id"])
        return {"changed": False, "backup": with_paths(repo, manifest),
                "chain": [with_paths(repo, m) for m in chain]}
    if action == "report":
        return write_report(module, repo, p["report_name"], p["report"])
    if action == "begin":
        # The VM's lock first (one module run instead of two): it makes the clean below safe.
        lock = _lock.acquire(module, _repo_lock(repo, vm, p)) if p["lock_owner"] else None
        backup_id = p["backup_id"] or new_backup_id()
        # With clean (the VM's lock is held): partial backups of dead runs go first.
        removed = repo.partials(vm) if p["clean"] else []
        if removed and not module.check_mode:
            repo.clean(vm)
        backups = repo.backups(vm, usable_only=True)
        parent = with_paths(repo, backups[-1]) if backups else None
        due, reason = full_due(backups, p["full_every"], p["full_every_days"])
        partial = repo.partial_dir(vm, backup_id)
        if not module.check_mode:
            repo.begin(vm, backup_id)
        return {"changed": True, "backup_id": backup_id, "dir": partial, "parent": parent,
                "full_due": due and bool(parent), "full_reason": reason,
                "removed": removed, "complete": [m["backup_id"] for m in backups],
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(), "lock": lock}
    if action == "clean":
        partial = repo.partials(vm)
        if partial and not module.check_mode:
            repo.clean(vm)
        return {"changed": bool(partial), "removed": partial,
                "complete": [m["backup_id"] for m in repo.backups(vm, usable_only=True)]}
    if action == "abort":
        existed = os.path.isdir(repo.partial_dir(vm, p["backup_id"]))
        if existed and not module.check_mode:
            repo.abort(vm, p["backup_id"])
        return {"changed": existed, "unlocked": _unlock(module, repo, vm, p)}
    # commit
    manifest = dict(p["manifest"])
    manifest.update({
        "format_version": FORMAT_VERSION,
        "vm": vm,
        "backup_id": p["backup_id"],
        "status": "complete",
        "domain_xml": "domain.xml",
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    })
    disks = manifest.get("disks") or []
    if manifest.get("type") == "incremental" and not manifest.get("parent"):
        raise VmbackupError("an incremental backup needs its parent backup ID")
    manifest["bytes_sent"] = sum(int(d.get("bytes_sent") or 0) for d in disks)
    manifest["bytes_stored"] = sum(int(d.get("stored_bytes") or 0) for d in disks)
    files = {"domain.xml": p["domain_xml"].encode("utf-8")}
    for name, content in (p["files"] or {}).items():
        if "/" in name or name in ("manifest.json", "domain.xml"):
            raise VmbackupError("invalid extra file name %r" % name)
        files[name] = base64.b64decode(content)
    manifest["files"] = sorted(n for n in files if n != "domain.xml")
    # verify checks these too: NVRAM and TPM state are as much the VM as its disks.
    manifest["files_sha256"] = {n: hashlib.sha256(files[n]).hexdigest() for n in sorted(files)}
    if module.check_mode:
        return {"changed": True, "manifest": manifest}
    final = repo.commit(vm, p["backup_id"], manifest, files)
    return {"changed": True, "manifest": manifest, "dir": final, "unlocked": _unlock(module, repo, vm, p)}


def _repo_lock(repo, vm, p):
    return _lock.lock_params(repo.lock_path(vm), p["lock_owner"], p["lock_purpose"], p["lock_node"], p["lock_wait"])


def _unlock(module, repo, vm, p):
    """With lock_owner, give back the VM's lock (only if that owner holds it): whether it was released."""
    if not p["lock_owner"]:
        return False
    return bool(_lock.release(module, _repo_lock(repo, vm, p))["path"])


def write_report(module, repo, name, report):
    """REPO/report-NAME-latest.json, replaced atomically (a reader never sees half of it)."""
    if not REPORT_NAME_RE.match(name):
        raise VmbackupError("invalid report name %r (letters, digits, '.', '_', '@', '-')" % name)
    path = os.path.join(repo.path, "report-%s-latest.json" % name)
    if module.check_mode:
        return {"changed": True, "report_path": path}
    repo.ensure()
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(report, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    os.replace(tmp, path)
    return {"changed": True, "report_path": path}
