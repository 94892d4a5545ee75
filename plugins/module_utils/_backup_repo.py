# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the backup_repo module."""

from __future__ import annotations

import base64
import datetime
import os

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._retention import full_due
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import (
    FORMAT_VERSION,
    Repository,
    new_backup_id,
)

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    vm=dict(type="str"),
    action=dict(type="str", required=True, choices=["begin", "commit", "abort", "clean", "list", "select"]),
    backup_id=dict(type="str"),
    backup=dict(type="str", default="latest"),
    before=dict(type="str"),
    manifest=dict(type="dict"),
    domain_xml=dict(type="str"),
    files=dict(type="dict", default={}),
    full_every=dict(type="int", default=0),
    full_every_days=dict(type="int", default=0),
)

REQUIRED_IF = [
    ("action", "begin", ["vm"]),
    ("action", "commit", ["vm", "backup_id", "manifest", "domain_xml"]),
    ("action", "abort", ["vm", "backup_id"]),
    ("action", "clean", ["vm"]),
    ("action", "select", ["vm"]),
]


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
    if action == "begin":
        backup_id = p["backup_id"] or new_backup_id()
        backups = repo.backups(vm, usable_only=True)
        parent = with_paths(repo, backups[-1]) if backups else None
        due, reason = full_due(backups, p["full_every"], p["full_every_days"])
        partial = repo.partial_dir(vm, backup_id)
        if not module.check_mode:
            repo.begin(vm, backup_id)
        return {"changed": True, "backup_id": backup_id, "dir": partial, "parent": parent,
                "full_due": due and bool(parent), "full_reason": reason,
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat()}
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
        return {"changed": existed}
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
    if module.check_mode:
        return {"changed": True, "manifest": manifest}
    final = repo.commit(vm, p["backup_id"], manifest, files)
    return {"changed": True, "manifest": manifest, "dir": final}
