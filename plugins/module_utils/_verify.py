# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the backup_verify module: re-read stored backups and mark what fails."""

from __future__ import annotations

import os

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandError, CommandRunner
from ansible_collections.vmbackup.libvirt.plugins.module_utils._rbd import RbdDiffError, scan_diff
from ansible_collections.vmbackup.libvirt.plugins.module_utils._files import sha256_file
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import (
    ManifestError,
    Repository,
    check_id,
)

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    vm=dict(type="str"),
    backup=dict(type="list", elements="str", default=["all"]),
    fail_on_damage=dict(type="bool", default=True),
)


def check_disk(runner, repo, vm, backup_id, disk):
    """Problems with one stored disk image (empty when it checks out)."""
    path = repo.image_path(vm, backup_id, disk)
    if not os.path.exists(path):
        return ["%s is missing" % path]
    problems = []
    actual = sha256_file(path)
    if actual != disk.get("sha256"):
        problems.append("%s: sha256 %s, the manifest says %s" % (path, actual, disk.get("sha256")))
    if path.endswith(".qcow2"):
        try:
            runner.run(["qemu-img", "check", "-q", "-f", "qcow2", path], what="checking %s" % path)
        except CommandError as exc:
            problems.append("%s: qemu-img check failed (rc=%s): %s" % (path, exc.rc, (exc.stderr or exc.stdout).strip()))
    elif path.endswith(".rbddiff"):
        try:
            scan_diff(path)
        except RbdDiffError as exc:
            problems.append(str(exc.msg))
    return problems


def check_backup(runner, repo, vm, manifest):
    """Problems with one backup: its manifest, its files, the backing files of its deltas, its parent."""
    if manifest.get("unreadable"):
        return list(manifest["problems"])
    backup_id = manifest["backup_id"]
    bdir = repo.backup_dir(vm, backup_id)
    try:
        # Before qemu-img opens anything: a delta's backing must be the parent's image of its disk.
        repo.check_backing(vm, manifest)
    except ManifestError as exc:
        return [exc.msg]
    problems = []
    for disk in manifest.get("disks", []):
        problems += check_disk(runner, repo, vm, backup_id, disk)
    if not os.path.exists(os.path.join(bdir, manifest.get("domain_xml") or "domain.xml")):
        problems.append("the domain XML is missing")
    problems += check_files(bdir, manifest)
    parent = manifest.get("parent")
    if parent:
        try:
            if repo.manifest(vm, parent) is None:
                problems.append("its parent backup %s is missing" % parent)
        except ManifestError as exc:
            problems.append("its parent backup %s is damaged: %s" % (parent, exc.msg))
    return problems


def check_files(bdir, manifest):
    """Problems with the domain XML, NVRAM and TPM state files (backups that record their sha256)."""
    problems = []
    for name, expected in sorted((manifest.get("files_sha256") or {}).items()):
        path = os.path.join(bdir, os.path.basename(name))
        if not os.path.exists(path):
            problems.append("%s is missing" % path)
            continue
        actual = sha256_file(path)
        if actual != expected:
            problems.append("%s: sha256 %s, the manifest says %s" % (path, actual, expected))
    return problems


def select_backups(backups, wanted):
    """The manifests ``wanted`` names, in repository order: ``all``, ``latest`` and backup IDs
    may be combined (a restore verifies its whole chain in one run); an ID not there is skipped."""
    if "all" in wanted:
        return list(backups)
    ids = set(wanted)
    last = backups[-1]["backup_id"] if backups and "latest" in ids else None
    return [m for m in backups if m["backup_id"] in ids or m["backup_id"] == last]


def run(module):
    p = module.params
    wanted = p["backup"] or ["all"]
    for name in wanted:
        if name not in ("all", "latest"):
            check_id(name, "backup (all, latest or backup IDs)")
    repo = Repository(p["path"])
    runner = CommandRunner(module)
    vms = [p["vm"]] if p["vm"] else repo.vms()
    results = []
    changed = False
    for vm in vms:
        for manifest in select_backups(repo.backups(vm), wanted):
            backup_id = manifest["backup_id"]
            bdir = repo.backup_dir(vm, backup_id)
            problems = check_backup(runner, repo, vm, manifest)
            was_damaged = repo.damage(vm, backup_id) is not None
            # Marks go only into a real directory of the repository (never through a symlink).
            markable = os.path.realpath(bdir) == os.path.join(os.path.realpath(repo.vm_dir(vm)), backup_id)
            if problems and not was_damaged and markable:
                changed = True
                if not module.check_mode:
                    repo.mark_damaged(vm, backup_id, problems)
            elif not problems and was_damaged:
                changed = True
                if not module.check_mode:
                    repo.clear_damaged(vm, backup_id)
            results.append({"vm": vm, "backup_id": backup_id, "ok": not problems, "problems": problems})
    # A backup is usable only if every backup its chain needs is (recomputed after marking).
    usable = {(vm, m["backup_id"]) for vm in vms for m in repo.backups(vm, usable_only=True)}
    for r in results:
        r["usable"] = (r["vm"], r["backup_id"]) in usable if not module.check_mode else r["ok"]
    damaged = [r for r in results if not r["ok"]]
    out = {"changed": changed, "backups": results, "damaged": damaged}
    if damaged and p["fail_on_damage"]:
        found = "; ".join("%s/%s: %s" % (d["vm"], d["backup_id"], ", ".join(d["problems"])) for d in damaged)
        module.fail_json(msg="verify found %d damaged backup(s) in %s: %s. They are marked and will not be "
                             "restored nor used as parents; the next backup of those VMs is a full one."
                             % (len(damaged), repo.path, found), **out)
    return out
