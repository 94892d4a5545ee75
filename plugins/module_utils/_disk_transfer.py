# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the disk_transfer module (runs on the backup node)."""

from __future__ import annotations

import os
import time

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _nbd_export, _ssh, _stream
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _transfer as transfer

# What one disk's transfer needs: given at the top level for one disk, or per entry of ``disks``.
DISK_SPEC = dict(
    image=dict(type="str"),
    format=dict(type="str", default="raw", choices=["raw", "qcow2"]),
    mode=dict(type="str", default="full", choices=["full", "delta"]),
    repo_image=dict(type="path"),
    parent_image=dict(type="path"),
    create=dict(type="bool", default=True),
    size=dict(type="int"),
    force=dict(type="bool", default=False),
    verify=dict(type="list", elements="dict", default=[]),
)
DISK_KEYS = tuple(DISK_SPEC)

ARGUMENT_SPEC = dict(
    direction=dict(type="str", required=True, choices=["backup", "restore"]),
    # all disks of a VM in one run: one module start, one connection set-up (not one run per disk)
    disks=dict(type="list", elements="dict", options=dict(
        DISK_SPEC, image=dict(type="str", required=True), repo_image=dict(type="path", required=True)),
        required_if=[("mode", "delta", ["parent_image"])]),
    compare=dict(type="bool", default=True),
    compression=dict(type="str", default="none", choices=list(transfer.COMPRESSIONS)),
    progress_file=dict(type="path"),
    **dict(DISK_SPEC, **dict(_ssh.CONNECTION_ARGSPEC, **_ssh.DATA_CHANNEL_ARGSPEC))
)

REQUIRED_IF = [
    ("mode", "delta", ["parent_image"]),
    ("transport", "ssh", ["ssh_host"]),
]
REQUIRED_ONE_OF = [("image", "disks")]
MUTUALLY_EXCLUSIVE = [("image", "disks"), ("repo_image", "disks")]
REQUIRED_TOGETHER = [("image", "repo_image")]


def backup(module, runner, hv, p):
    dest = p["repo_image"]
    if os.path.exists(dest):
        return {"changed": False, "file": dest, "sha256": _files.sha256_file(dest),
                "stored_bytes": _stream.stored_bytes(dest), "bytes_sent": 0, "mode": p["mode"],
                "msg": "already transferred"}
    if module.check_mode:
        return {"changed": True, "file": dest, "mode": p["mode"]}
    if not os.path.isdir(os.path.dirname(dest)):
        raise VmbackupError("repository directory %s does not exist on the backup node" % os.path.dirname(dest))
    start = time.time()
    if p["mode"] == "full":
        result = transfer.pull_full(runner, hv, p["image"], p["format"], dest, p["progress_file"], p["compression"])
    else:
        if not os.path.exists(p["parent_image"]):
            raise VmbackupError("parent image %s of the delta is not in the repository" % p["parent_image"])
        result = transfer.pull_delta(runner, hv, p["image"], dest, p["parent_image"], p["progress_file"],
                                     p["compression"])
    # The transfer's own time; reading the image back for its checksum is reported apart.
    duration = round(time.time() - start, 3)
    checked = time.time()
    result.update({
        "changed": True,
        "file": dest,
        "sha256": _files.sha256_file(dest),
        "stored_bytes": _stream.stored_bytes(dest),
        "duration": duration,
    })
    result["checksum_duration"] = round(time.time() - checked, 3)
    return result


def create_private(hv, target, fmt, size):
    """``qemu-img create`` under umask 077: the new image is 0600 from its first moment."""
    hv.run(["sh", "-c", 'umask 077 && mkdir -p -- "$1" && shift && exec "$@"', "vmbackup-create",
            os.path.dirname(target), "qemu-img", "create", "-q", "-f", fmt, "--", target, str(size)],
           "creating %s (mode 0600)" % target)


def check_backup_file(path, expected, kind="image"):
    """VmbackupError unless the repository file ``path`` has the sha256 its manifest records."""
    actual = _files.sha256_file(path)
    if actual != expected:
        raise VmbackupError(
            "backup %s %s is damaged: its sha256 is %s, the manifest says %s. Nothing was written to "
            "the hypervisor; restore an older backup or run verify." % (kind, path, actual, expected))


def restore(module, runner, hv, p):
    target = p["image"]
    _nbd_export.refuse_insecure_restore(hv, target)
    for item in p["verify"]:
        check_backup_file(item["path"], item["sha256"])
    exists = hv.exists(target)
    if exists and not p["force"]:
        raise VmbackupError(
            "restore target %s already exists on hypervisor %s; nothing was written. Choose another "
            "target or set force=true to overwrite it." % (target, hv.label))
    if module.check_mode:
        return {"changed": True, "target": target, "created": not exists}
    start = time.time()
    created = False
    is_file = p["create"] and p["format"] in ("qcow2", "raw") and not target.startswith("/dev/")
    if is_file:
        if not p["size"]:
            raise VmbackupError("size is required to create %s" % target)
        create_private(hv, target, p["format"], p["size"])
        created = True
    try:
        transfer.push(runner, hv, p["repo_image"], target, p["format"], target_is_zero=created,
                      progress_file=p["progress_file"])
        if p["compare"]:
            cut = None
            if not is_file and p["size"]:
                _rc, out, _err = hv.run(["blockdev", "--getsize64", target], "reading the size of %s" % target)
                if int(out.strip() or 0) > p["size"]:
                    cut = p["size"]
            transfer.compare(runner, hv, p["repo_image"], target, p["format"], size=cut)
        if is_file:
            # the data is flushed (qemu-img -t writeback, qemu-nbd); the new name in its directory too
            hv.run(["sync", "--", target, os.path.dirname(target)], "flushing %s" % target)
    except Exception:
        if created:  # an incomplete target of ours must not look like a restored disk
            hv.run(["rm", "-f", "--", target], "removing the incomplete %s" % target, check_rc=False)
        raise
    return {"changed": True, "target": target, "created": created, "compared": p["compare"],
            "duration": round(time.time() - start, 3)}


def disk_params(params):
    """One set of parameters per disk: each entry of ``disks`` with the run's shared options, or
    the top-level disk options when ``disks`` is not given."""
    shared = {k: v for k, v in params.items() if k not in DISK_KEYS and k != "disks"}
    if params.get("disks") is None:
        return [dict(shared, **{k: params.get(k) for k in DISK_KEYS})]
    return [dict(shared, **{k: disk.get(k) for k in DISK_KEYS}) for disk in params["disks"]]


def run(module):
    runner = CommandRunner(module)
    hv = _ssh.Hypervisor(runner, module.params)
    step = backup if module.params["direction"] == "backup" else restore
    results = []
    for p in disk_params(module.params):
        try:
            results.append(step(module, runner, hv, p))
        except VmbackupError as exc:
            if results:  # say what was already done: the caller's cleanup relies on it
                exc.details.setdefault("disks", results)
            raise
    if module.params.get("disks") is None:
        return results[0]
    return {"changed": any(r["changed"] for r in results), "disks": results,
            "duration": round(sum(r.get("duration") or 0 for r in results), 3)}
