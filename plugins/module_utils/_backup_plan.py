# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup role's decisions, as pure functions (no Ansible, no I/O).

The role sequences begin -> snapshot -> transfer -> commit -> keep/merge -> report; what each
step does with the results of the steps before it is decided here:

- ``disk_plan(disks, unsupported, shareable)``: which disks vm_info could not back up block the
  backup, which are left out (quietly, or with a warning), by the role's disk settings.
- ``plan(vm, begin, backup_type)``: which disks go to which backend (file, block, rbd), whether
  the VM has file disks only (kvm_snapshot then repairs in its own run) or needs a freeze around
  several backends, whether a delta is allowed at all (and if not, why: ``full_reason``), the
  parent backup's images per disk, and the parent that rbd_export compares its snapshots with.
- ``transfers(plan, kind, registered)``: one entry per disk of a backend, from what its snapshot
  step returned: the image to read, the mode (``full`` / ``delta`` / ``incremental``), the
  parent image of a delta, and ``reason``, why the disk is copied that way.
- ``extra_files(nvram, tpm)``: the ``files`` of backup_repo action=commit (nvram.fd, tpm-*).
- ``disk_transfers(plan, steps)``: disk_transfer's ``disks``, the file and LVM disks in one run.
- ``steps_left(steps)``: what the rescue and always sections still have to undo, read from the
  registered results of the steps so far (no stage variable).
- ``record(run, result)``: the backup_result filter, one of the records below by ``result``.
- ``result_ok`` / ``result_failed`` / ``with_cleanup_warnings``: the VM's record in the run's
  results (the keys report.yml, the run summary and the JSON/JUnit reports read);
  ``repaired`` / ``result_cleanup``: what repair.yml did, and the cleanup playbook's record.

Inputs are the registered results of the modules (vm_info's ``vms[0]``, backup_repo
action=begin, kvm_snapshot / lvm_snapshot state=present, the loop of rbd_export state=present,
backup_repo action=commit, backup_prune), as Ansible hands them to a filter.
"""

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._metrics import duration

BACKENDS = ("file", "block", "rbd")
LVM_REASON = "LVM volumes are copied whole (no changed-block source for them yet)"
# The role's vmbackup_unsupported_disks and vmbackup_shareable_disks, first the default.
DISK_POLICIES = {"unsupported": ("fail", "skip"), "shareable": ("skip", "fail")}


def disk_plan(disks, unsupported="fail", shareable="skip"):
    """The disks that block the backup, the disks left out, and the warnings of those left out.

    ``disks``: vm_info's disks of the VM; only those it marks not ``supported`` are named.
    """
    for name, value in (("unsupported", unsupported), ("shareable", shareable)):
        if value not in DISK_POLICIES[name]:
            # The filter's own name leads: the role's template error then says which filter.
            raise ValueError("backup_disk_plan: %s must be one of %s, not %r"
                             % (name, ", ".join(DISK_POLICIES[name]), value))
    blocking, skipped, warnings = [], [], []
    for disk in disks:
        if disk.get("supported"):
            continue
        entry = {"target": disk.get("target"), "reason": disk.get("skip_reason") or "not supported"}
        # Nothing the VM writes: left out quietly (the manifest lists it under excluded).
        if disk.get("device") in ("cdrom", "floppy") or disk.get("readonly"):
            skipped.append(entry)
            continue
        policy, setting = ((shareable, "vmbackup_shareable_disks") if disk.get("shareable")
                           else (unsupported, "vmbackup_unsupported_disks"))
        if policy == "fail":
            blocking.append(dict(entry, hint="set %s=skip to back up the other disks without it" % setting))
        else:
            skipped.append(entry)
            warnings.append("disk %s was not backed up: %s" % (entry["target"], entry["reason"]))
    return {"blocking": blocking, "skipped": skipped, "warnings": warnings}


BACKUP_TYPES = ("auto", "full", "incremental")  # the role's choices; auto and incremental decide alike


def _check_type(backup_type):
    if backup_type not in BACKUP_TYPES:
        raise ValueError("backup_type must be one of %s, not %r" % (", ".join(BACKUP_TYPES), backup_type))


def _parent_of(begin):
    """The parent backup of begin (its latest usable complete backup): id, synthetic source, images."""
    parent = (begin or {}).get("parent") or None
    if not parent:
        return None
    return {
        "backup_id": parent.get("backup_id"),
        "synthesized_from": parent.get("synthesized_from") or None,
        "images": dict((d.get("target"), d.get("image")) for d in parent.get("disks") or []
                       if d.get("target") and d.get("image")),
    }


def full_reason(begin, backup_type):
    """Why no disk of this backup may be a delta (a string), or None when deltas are allowed."""
    _check_type(backup_type)
    if backup_type == "full":
        return "backup_type=full"
    if not (begin or {}).get("parent"):
        return "first backup (no usable complete backup of the VM)"
    if begin.get("full_due"):
        return "full due: %s" % (begin.get("full_reason") or "full_every / full_every_days reached")
    return None


def refusal(blocking):
    """Why the backup is refused (the disks that block it, each with its reason and what to do), or None."""
    if not blocking:
        return None
    return ("has disks the collection cannot back up: %s."
            % "; ".join("%s: %s: %s" % (d["target"], d["reason"], d["hint"]) for d in blocking))


def plan(vm, begin, backup_type="auto", unsupported=None, shareable=None):
    """The VM's backup plan, from vm_info's entry, backup_repo action=begin and backup_type.

    With the role's disk settings (``unsupported``, ``shareable``), the plan also carries
    disk_plan's verdict: ``refused`` (why the backup may not go on, or None), ``skipped`` and
    ``warnings``.
    """
    disks = list((vm or {}).get("disks") or [])
    backends = dict((kind, [d for d in disks if d.get("backend") == kind]) for kind in BACKENDS)
    others = backends["block"] + backends["rbd"]
    reason = full_reason(begin, backup_type)
    parent = _parent_of(begin)
    verdict = {}
    if unsupported is not None or shareable is not None:
        found = disk_plan(disks, unsupported or "fail", shareable or "skip")
        verdict = {"refused": refusal(found["blocking"]), "skipped": found["skipped"], "warnings": found["warnings"]}
    return dict(verdict, **{
        "backends": backends,
        "file_only": not others,
        # Several backends of a running VM: the guest is frozen (or paused) around all snapshots.
        "multi": bool((vm or {}).get("running")) and bool(others),
        "full_reason": reason,
        "parent": parent,
        # rbd_export compares the image's snapshots with this backup (no parent: a full export).
        "rbd_parent": parent["backup_id"] if parent and reason is None else None,
    })


def file_transfer(plan_, disk):
    """One file disk's transfer from its kvm_snapshot entry: mode, parent image and why."""
    target = disk.get("target")
    entry = {"target": target, "image": disk.get("frozen"), "format": disk.get("frozen_format"),
             "mode": "full", "parent_image": None}
    parent = plan_.get("parent")
    if plan_.get("full_reason"):
        return dict(entry, reason=plan_["full_reason"])
    image = parent["images"].get(target)
    if not image:
        return dict(entry, reason="parent backup %s has no image for %s (a disk added since)"
                    % (parent["backup_id"], target))
    if not disk.get("frozen_is_overlay"):
        return dict(entry, reason="the overlay of the parent backup %s was not kept on %s"
                    % (parent["backup_id"], target))
    kept = disk.get("parent_snapshot")
    if kept == parent["backup_id"]:
        reason = "changes since the parent backup %s" % kept
    elif parent.get("synthesized_from") and kept == parent["synthesized_from"]:
        reason = "changes since backup %s, on the synthetic full %s made from it" % (kept, parent["backup_id"])
    else:
        return dict(entry, reason="the kept overlay of %s is from backup %s, not from the parent backup %s"
                    % (target, kept, parent["backup_id"]))
    return dict(entry, mode="delta", parent_image=image, reason=reason)


def disk_transfers(plan_, steps):
    """disk_transfer's ``disks`` for the VM's file and LVM disks (one module run for both), in the
    order of ``transfers(file) + transfers(block)``; ``steps``: the VM's registered results
    (``begin`` for the backup's directory, ``snapshot``, ``lvm_snapshot``)."""
    directory = (steps.get("begin") or {}).get("dir")
    out = []
    for entry in transfers(plan_, "file", steps.get("snapshot")) + transfers(plan_, "block", steps.get("lvm_snapshot")):
        disk = {"image": entry["image"], "format": entry["format"], "mode": entry["mode"],
                "repo_image": "%s/%s.qcow2" % (directory, entry["target"])}
        if entry.get("parent_image"):
            disk["parent_image"] = entry["parent_image"]
        out.append(disk)
    return out


def transfers(plan_, kind, registered):
    """The transfers of one backend's disks, from what that backend's snapshot step returned.

    ``kind=file``: ``registered`` is kvm_snapshot's result (its ``disks``); ``kind=block``:
    lvm_snapshot's (its ``volumes``, in the order of the plan's block disks); ``kind=rbd``: the
    registered loop of rbd_export state=present over the plan's rbd disks. ``kind=disk_transfer``:
    ``registered`` holds the VM's registered steps, and the value is disk_transfer's ``disks``
    (see ``disk_transfers``).
    """
    registered = registered or {}
    if kind == "disk_transfer":
        return disk_transfers(plan_, registered)
    if kind == "file":
        return [file_transfer(plan_, d) for d in registered.get("disks") or []]
    if kind == "block":
        volumes = registered.get("volumes") or []
        return [{"target": d.get("target"), "image": v.get("path"), "format": d.get("format") or "raw",
                 "size": v.get("virtual_size"), "mode": "full", "parent_image": None, "reason": LVM_REASON}
                for d, v in zip(plan_["backends"]["block"], volumes)]
    if kind == "rbd":
        out = []
        for r in registered.get("results") or []:
            if r.get("skipped"):
                continue
            mode = r.get("mode") or "full"
            if mode == "incremental":
                reason = "changes since RBD snapshot %s" % r.get("from_snapshot")
            else:
                reason = r.get("fallback_reason") or plan_.get("full_reason") or "no parent backup to compare with"
            out.append({"target": (r.get("item") or {}).get("target"), "image": r.get("image"),
                        "snapshot": r.get("snapshot"), "from_snapshot": r.get("from_snapshot") or None,
                        "size": r.get("size"), "mode": mode, "reason": reason})
        return out
    raise ValueError("kind must be one of %s, disk_transfer, not %r" % (", ".join(BACKENDS), kind))


def extra_files(nvram=None, tpm=None):
    """backup_repo commit's ``files``: the NVRAM (a slurp result) and the TPM's state files (a slurp loop)."""
    files = {}
    if nvram and not nvram.get("skipped") and "content" in nvram:
        files["nvram.fd"] = nvram["content"]
    for r in (tpm or {}).get("results") or []:
        if not r.get("skipped") and "content" in r:
            files["tpm-%s" % r["item"]] = r["content"]
    return files


def disk_modes(manifest):
    """{target: {mode, reason}} of a written manifest's disks."""
    return dict((d.get("target"), {"mode": d.get("mode"), "reason": d.get("reason")})
                for d in (manifest or {}).get("disks") or [])


def _removed_partials(removed):
    return ["removed partial backup %s" % r for r in removed or []]


def repaired(kvm=None, lvm=None, rbd=None):
    """What repair.yml did: kvm_snapshot state=repaired's and lvm_snapshot's ``actions``, and the
    RBD snapshots that the loop of rbd_export state=pruned removed."""
    rbd_removed = [name for r in (rbd or {}).get("results") or [] for name in r.get("removed") or []]
    return (list((kvm or {}).get("actions") or []) + list((lvm or {}).get("actions") or [])
            + ["removed RBD snapshot %s" % name for name in rbd_removed])


def result_cleanup(run):
    """The cleanup playbook's record of a VM. ``run``: vm, clean (backup_repo action=clean), repaired."""
    return {"vm": run.get("vm"),
            "repaired": _removed_partials((run.get("clean") or {}).get("removed")) + list(run.get("repaired") or [])}


def result_ok(run):
    """The record of a complete backup. ``run``: vm, hypervisor, begin, commit, snapshot,
    repaired, prune (else commit's), disk_plan (else plan) - the registered results of those steps."""
    begin = run.get("begin") or {}
    manifest = (run.get("commit") or {}).get("manifest") or {}
    prune = run.get("prune") or (run.get("commit") or {}).get("prune") or {}
    return {
        "vm": run.get("vm"), "hypervisor": run.get("hypervisor"), "result": "ok",
        "backup_id": begin.get("backup_id"), "type": manifest.get("type"),
        "parent": manifest.get("parent"),
        "bytes_sent": manifest.get("bytes_sent"), "bytes_stored": manifest.get("bytes_stored"),
        "disks": [d.get("target") for d in manifest.get("disks") or []],
        "disk_modes": disk_modes(manifest),
        "repaired": (_removed_partials(begin.get("removed"))
                     + list((run.get("snapshot") or {}).get("repaired") or [])
                     + list(run.get("repaired") or [])),
        "pruned": [r.get("backup_id") for r in prune.get("removed") or []],
        "excluded": manifest.get("excluded"),
        "warnings": list((run.get("disk_plan") or run.get("plan") or {}).get("warnings") or []),
        "started": begin.get("started"), "finished": manifest.get("finished"),
        "duration_seconds": duration(begin.get("started"), manifest.get("finished")),
    }


def failure_cause(failed_result):
    """What failed: a loop's failed items' messages (command, rc, stderr), or the task's msg."""
    failed_result = failed_result or {}
    msgs = [str(r.get("msg", "")) for r in failed_result.get("results") or [] if r.get("failed")]
    joined = "; ".join(msgs)
    return joined or failed_result.get("msg") or "failed"


def _done(result):
    """Whether a registered result is of a step that ran and succeeded."""
    result = result or {}
    return bool(result) and not result.get("failed") and not result.get("skipped")


def committed(commit):
    """Whether backup_repo action=commit wrote the manifest (the backup is complete)."""
    return _done(commit) and bool((commit or {}).get("manifest"))


def steps_left(steps):
    """What the VM's rescue and always sections still have to do, from the registered results of
    its steps so far (the role's set_fact resets them to {} for each VM; a step that never ran
    stays {}). No stage variable: where a backup stands is read from what its steps returned.

    ``steps``: begin, info (vm_info, with its ``lock``), plan, snapshot (kvm_snapshot state=present,
    ok or failed: overlays may exist once it ran), commit, abort, keep (kvm_snapshot kept / merged).
    """
    begin, info, plan_ = (steps.get(k) or {} for k in ("begin", "info", "plan"))
    commit, abort, keep = (steps.get(k) or {} for k in ("commit", "abort", "keep"))
    begun = _done(begin) and bool(begin.get("backup_id"))
    complete = committed(commit)
    block = (plan_.get("backends") or {}).get("block") or []
    repository_lock = (begin.get("lock") or {}).get("path")
    return {
        "begun": begun,
        "complete": complete,
        # Put the VM back on its chain and drop this backup's RBD snapshots: once the snapshot step ran.
        "rollback": bool(steps.get("snapshot")) and not complete,
        "abort": begun and not complete,
        "remove_lvm": begun and bool(block),
        "lvm_volumes": [d.get("source") for d in block],
        # vm_info took the lock (its failed result says whether it still holds it); kvm_snapshot
        # kept / merged gives it back for file-only VMs.
        "unlock_hypervisor": begun and bool(info) and (info.get("lock") or {}).get("held", True)
        and "unlock" not in keep,
        # begin took the repository's lock; commit and abort give it back.
        "unlock_repository": begun and bool(repository_lock) and not commit.get("unlocked")
        and not abort.get("unlocked"),
        "repository_lock": repository_lock,
    }


def result_failed(run):
    """The record of a failed backup. ``run``: vm, hypervisor, backup_id (else begin's), commit (or
    stage, as before), disk_plan (else plan), failed_task (ansible_failed_task), failed_result
    (ansible_failed_result), rollback."""
    rollback = run.get("rollback") or {}
    complete = committed(run.get("commit")) if "commit" in run else run.get("stage") == "complete"
    backup_id = run.get("backup_id") or (run.get("begin") or {}).get("backup_id") or ""
    return {
        "vm": run.get("vm"), "hypervisor": run.get("hypervisor"), "result": "failed",
        "backup_id": backup_id, "complete": complete,
        "warnings": list((run.get("disk_plan") or run.get("plan") or {}).get("warnings") or []),
        "error": "%s: %s" % ((run.get("failed_task") or {}).get("name") or "", failure_cause(run.get("failed_result"))),
        "rollback": ("failed: %s" % rollback.get("msg")) if rollback.get("failed") else "ok",
        "started": (run.get("begin") or {}).get("started"),
    }


def record(run, result="ok"):
    """The record that ``result`` (ok, failed, cleanup, repaired) names, from the run's facts."""
    if result == "ok":
        return result_ok(run)
    if result == "failed":
        return result_failed(run)
    if result == "cleanup":
        return result_cleanup(run)
    if result == "repaired":
        return repaired(**run)
    raise ValueError("backup_result: result must be ok, failed, cleanup or repaired, not %r" % (result,))


def cleanup_errors(cleanups):
    """'cleanup: MSG' for each failed cleanup step (registered results; loops count per item)."""
    out = []
    for r in cleanups or []:
        r = r or {}
        items = r.get("results") if isinstance(r.get("results"), list) else [r]
        out.extend("cleanup: %s" % (i.get("msg") or "failed") for i in items if i.get("failed"))
    return out


def with_cleanup_warnings(results, cleanups):
    """The run's results with what the cleanup could not do added to the last record's warnings."""
    results = list(results or [])
    errors = cleanup_errors(cleanups)
    if not errors or not results:
        return results
    last = dict(results[-1])
    last["warnings"] = list(last.get("warnings") or []) + errors
    return results[:-1] + [last]
