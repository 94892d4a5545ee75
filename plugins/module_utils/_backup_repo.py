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
import tempfile

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lock
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _metrics
from ansible_collections.vmbackup.libvirt.plugins.module_utils._domain import Domain
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _retention
from ansible_collections.vmbackup.libvirt.plugins.module_utils._retention import POLICY_ARGSPEC, full_due
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import (
    FORMAT_VERSION,
    ManifestError,
    Repository,
    check_file_name,
    check_id,
    new_backup_id,
)

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    vm=dict(type="str"),
    action=dict(type="str", required=True,
                choices=["begin", "commit", "abort", "clean", "list", "select", "report", "metrics"]),
    backup_id=dict(type="str"),
    backup=dict(type="str", default="latest"),
    before=dict(type="str"),
    manifest=dict(type="dict"),
    domain_xml=dict(type="str"),
    include_xml=dict(type="bool", default=False),
    include_files=dict(type="bool", default=False),
    files=dict(type="dict", default={}, no_log=True),  # NVRAM: UEFI variables can hold secrets
    full_every=dict(type="int", default=0),
    full_every_days=dict(type="int", default=0),
    clean=dict(type="bool", default=False),
    report=dict(type="dict"),
    report_name=dict(type="str"),
    metrics_file=dict(type="path"),
    lock_owner=dict(type="str"),
    lock_purpose=dict(type="str", default=""),
    lock_node=dict(type="str", default=""),
    lock_wait=dict(type="int", default=0),
    lock_progress_file=dict(type="path"),
    **POLICY_ARGSPEC  # for commit: retention of the VM, as backup_prune applies it
)

REQUIRED_IF = [
    ("action", "begin", ["vm"]),
    ("action", "commit", ["vm", "backup_id", "manifest", "domain_xml"]),
    ("action", "abort", ["vm", "backup_id"]),
    ("action", "clean", ["vm"]),
    ("action", "select", ["vm"]),
    ("action", "report", ["report", "report_name"]),
    ("action", "metrics", ["metrics_file"]),
]

REPORT_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")


def summary(manifest):
    keys = ("backup_id", "vm", "type", "parent", "started", "finished", "status", "bytes_sent", "bytes_stored",
            "usable", "damaged", "problems")
    return {k: manifest.get(k) for k in keys}


def with_paths(repo, manifest, vm=None):
    """A manifest with the absolute path of each disk image and of the domain XML (checked to be inside)."""
    vm = vm or manifest["vm"]
    bdir = repo.backup_dir(vm, manifest["backup_id"])
    out = dict(manifest)
    out["dir"] = bdir
    out["domain_xml_path"] = os.path.join(bdir, manifest.get("domain_xml") or "domain.xml")
    out["disks"] = [dict(d, image=repo.image_path(vm, manifest["backup_id"], d)) for d in manifest.get("disks", [])]
    return out


def run(module):
    # Everything this module creates in the repository (directories, lock, manifest, files,
    # reports) is root's alone from creation on.
    with _files.private_umask():
        return _run(module)


def _make_private(module, repo):
    """Create the repository or tighten its loose modes (with a warning naming each change)."""
    if module.check_mode:
        return []
    warnings = repo.ensure()
    for w in warnings:
        module.warn(w)
    return warnings


def _run(module):
    p = module.params
    repo = Repository(p["path"])
    action = p["action"]
    vm = p["vm"]
    if p["backup_id"]:
        check_id(p["backup_id"], "backup_id")  # before anything is locked, read or written
    if action == "list":
        vms = [vm] if vm else repo.vms()
        backups = [summary(m) for v in vms for m in repo.backups(v)]
        return {"changed": False, "backups": backups,
                "partial": {v: repo.partials(v) for v in vms if repo.partials(v)}}
    if action == "select":
        return _select(module, repo, vm, p)
    if action == "report":
        check_repository_path(repo.path, p["lock_node"])
        return write_report(module, repo, p["report_name"], p["report"])
    if action == "metrics":
        return write_metrics(module, repo, p["metrics_file"])
    if action == "begin":
        # Before anything else: a repository that cannot hold backups fails here, clearly.
        check_repository_path(repo.path, p["lock_node"])
        mode_fixes = _make_private(module, repo)
        # The VM's lock first (one module run instead of two): it makes the clean below safe.
        lock = _lock.acquire(module, _repo_lock(repo, vm, p)) if p["lock_owner"] else None
        backup_id = p["backup_id"] or new_backup_id()
        # With clean (the VM's lock is held): partial backups of dead runs go first.
        removed = repo.partials(vm) if p["clean"] else []
        if removed and not module.check_mode:
            repo.clean(vm)
        backups = repo.backups(vm, usable_only=True)
        parent = with_paths(repo, backups[-1], vm) if backups else None
        due, reason = full_due(backups, p["full_every"], p["full_every_days"])
        partial = repo.partial_dir(vm, backup_id)
        if not module.check_mode:
            repo.begin(vm, backup_id)
        return {"changed": True, "backup_id": backup_id, "dir": partial, "parent": parent,
                "full_due": due and bool(parent), "full_reason": reason,
                "removed": removed, "complete": [m["backup_id"] for m in backups],
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(), "lock": lock,
                "mode_fixes": mode_fixes}
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
    # commit: the domain XML's passwords never show in a result or an error; the rest stays visible.
    module.no_log_values.update(Domain(p["domain_xml"], what="VM %s" % vm).secrets())
    # A wrong policy fails before anything is written; without keep_* rules none is read (min_age
    # alone means nothing, as the role's prune task was skipped then).
    policy = _retention.policy_of(p) if any(p[k] for k in POLICY_ARGSPEC if k.startswith("keep_")) else None
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
        return {"changed": True, "manifest": manifest, "prune": _prune(module, repo, vm, p, policy)}
    final = repo.commit(vm, p["backup_id"], manifest, files)
    try:
        # The manifest is durable: retention now, still under the VM's lock (one module run less).
        pruned = _prune(module, repo, vm, p, policy)
    finally:
        unlocked = _unlock(module, repo, vm, p)
    return {"changed": True, "manifest": manifest, "dir": final, "unlocked": unlocked, "prune": pruned}


def _select(module, repo, vm, p):
    """The backup to restore and its chain; with lock_owner, under a reader's lock it keeps.

    The lock comes first, so nothing selected can be pruned before the restore has read it; it
    is given back if the selection fails (nothing of a failed run keeps the VM's backups locked).
    """
    params = _repo_lock(repo, vm, p, mode="shared") if p["lock_owner"] else None
    lock = _lock.acquire(module, params) if params else None
    try:
        manifest = repo.select(vm, p["backup"], p["before"])
        chain = repo.chain(vm, manifest["backup_id"])  # checks every link's files and backing names
        out = {"changed": False, "backup": with_paths(repo, manifest, vm),
               "chain": [with_paths(repo, m, vm) for m in chain], "lock": lock,
               "lock_path": repo.lock_path(vm) if lock else None,
               "secrets_returned": bool(p["include_xml"] or p["include_files"])}
        out.update(selected_files(repo, vm, manifest, p["include_xml"], p["include_files"]))
        return out
    except Exception:
        if lock and lock["changed"] and not module.check_mode:
            _lock.release(module, params)
        raise


def selected_files(repo, vm, manifest, include_xml, include_files):
    """The domain XML (C(domain_xml)) and, with include_files, the NVRAM (C(nvram_content), base64)
    and the TPM state files (C(tpm_state), name: base64) of one backup.

    Each file is checked against the sha256 its manifest records (backups that record it), so
    what the restore defines is what was backed up, read once, here.
    """
    bdir = repo.backup_dir(vm, manifest["backup_id"])
    sums = manifest.get("files_sha256") or {}

    def read(name):
        path = os.path.join(bdir, check_file_name(name, "file"))
        try:
            with open(path, "rb") as handle:  # check_files (select) has made sure it is a regular file inside
                data = handle.read()
        except OSError as exc:
            raise ManifestError("backup %s of VM %s cannot be restored: %s cannot be read (%s); restore "
                                "another backup (backup=ID)" % (manifest["backup_id"], vm, path, exc.strerror))
        actual = hashlib.sha256(data).hexdigest()
        if sums.get(name) and actual != sums[name]:
            raise ManifestError("backup %s of VM %s cannot be restored: %s has sha256 %s, its manifest says %s; "
                                "nothing was written. Run the vmbackup.libvirt.verify playbook (it marks the backup "
                                "damaged) and restore another backup (backup=ID)"
                                % (manifest["backup_id"], vm, path, actual, sums[name]))
        return data

    out = {}
    if include_xml:
        out["domain_xml"] = read(manifest.get("domain_xml") or "domain.xml").decode("utf-8")
    if include_files:
        out["nvram_content"] = (base64.b64encode(read("nvram.fd")).decode("ascii")
                                if manifest.get("nvram") else None)
        tpm_files = (manifest.get("tpm") or {}).get("files") or []
        out["tpm_state"] = {name: base64.b64encode(read("tpm-" + check_file_name(name, "TPM state file")))
                            .decode("ascii") for name in tpm_files}
    return out


def _prune(module, repo, vm, p, policy):
    """backup_prune's result for this VM after its commit, or None without keep_* rules.

    The backup is complete whatever happens here: a failed prune is returned (C(failed), C(msg))
    and warned about, never raised, so the caller does not undo a complete backup.
    """
    if policy is None:
        return None
    lock = _repo_lock(repo, vm, p) if p["lock_owner"] else None
    try:
        return _retention.prune_held(module, repo, vm, policy, lock)
    except Exception as exc:  # pylint: disable=broad-except  # anything: the backup stays complete
        msg = ("VM %s: backup %s is complete, but retention failed: %s. What it could not remove stays (it removes newest first, so "
               "every chain left is whole); run the vmbackup.libvirt.prune playbook once fixed."
               % (vm, p["backup_id"], getattr(exc, "msg", None) or exc))
        module.warn(msg)
        return dict(_retention.empty_result(), failed=True, msg=msg)


def check_repository_path(path, node=""):
    """Refuse a repository path that cannot hold backups, naming it, the node and what to do.

    The path must be a directory, or be missing (it is then created, with missing parents);
    the directory, or its nearest existing parent, must take a file: a real write, as root
    passes every mode check but a read-only mount or an immutable directory still refuses it.
    """
    where = "backup repository %s%s" % (path, " on backup node %s" % node if node else "")
    fix = "Set vmbackup_repository (backup_repository) to a directory this node can write"
    if os.path.lexists(path) and not os.path.isdir(path):
        kind = "a file" if os.path.isfile(path) else "not a directory"
        raise VmbackupError("the %s is %s; nothing was written. %s, or move it away." % (where, kind, fix))
    # A missing repository is created with its missing parents: the nearest existing one must
    # be a directory that takes a file.
    probe_dir = path
    while not os.path.isdir(probe_dir):
        parent = os.path.dirname(probe_dir)
        if os.path.lexists(probe_dir) or parent == probe_dir:
            raise VmbackupError("the %s cannot be created: %s is not a directory; nothing was written. %s."
                                % (where, probe_dir, fix))
        probe_dir = parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".vmbackup-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise VmbackupError("the %s is not writable: %s cannot take a file (%s); nothing was written. Make it "
                            "writable (a read-only mount, an immutable directory, a full or foreign file system?), "
                            "or %s." % (where, probe_dir, exc.strerror, fix[0].lower() + fix[1:]))


def _repo_lock(repo, vm, p, mode="append"):
    # append: a backup only adds to the repository, so restores (shared) may read meanwhile;
    # prune and synthetic fulls (exclusive) wait for it. shared: a restore's select.
    return _lock.lock_params(repo.lock_path(vm), p["lock_owner"], p["lock_purpose"], p["lock_node"], p["lock_wait"],
                             mode=mode, repository=repo.path, progress_file=p.get("lock_progress_file"))


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
    mode_fixes = _make_private(module, repo)
    data = json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"
    _files.write_atomic(path, data.encode("utf-8"))
    return {"changed": True, "report_path": path, "mode_fixes": mode_fixes}


def latest_reports(repo):
    """The hypervisors' latest reports in the repository (an unreadable one is left out)."""
    if not os.path.isdir(repo.path):
        return []
    names = sorted(n for n in os.listdir(repo.path) if n.startswith("report-") and n.endswith("-latest.json"))
    found = [_files.read_json(os.path.join(repo.path, n), None) for n in names]
    return [r for r in found if r]


def write_metrics(module, repo, path):
    """The repository's state as a Prometheus textfile at PATH (0644: node_exporter reads it;
    it holds names, times and sizes, no secret), replaced atomically."""
    where = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(where):
        raise VmbackupError("the directory of metrics_file %s does not exist on host %s; create it (node_exporter's "
                            "--collector.textfile.directory) or choose another; nothing was written" % (path, where))
    if not path.endswith(".prom"):
        raise VmbackupError("metrics_file %s must end in .prom: node_exporter's textfile collector reads only those"
                            % path)
    usable = {vm: repo.backups(vm, usable_only=True) for vm in repo.vms()}
    text = _metrics.render(_metrics.samples(repo.path, usable, latest_reports(repo), round(_now(), 3)))
    if not module.check_mode:
        _files.write_atomic(path, text.encode("utf-8"), mode=0o644)
    return {"changed": True, "metrics_file": path, "vms": sorted(usable)}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).timestamp()
