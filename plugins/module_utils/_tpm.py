# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The state of a VM's emulated TPM (swtpm), as libvirt keeps it.

libvirt runs ``swtpm`` for ``<tpm><backend type='emulator'/></tpm>`` and keeps its state in
``/var/lib/libvirt/swtpm/UUID/tpm2/`` (``tpm1.2/`` for TPM 1.2), keyed by the domain's UUID:
a renamed restore (new UUID) needs the state under the new UUID. swtpm writes its state
files by temp file and rename, so a copy read at any moment is a whole version of each file.
``virsh undefine`` deletes the directory, so the backup is the only other copy of what the
guest sealed in its TPM (BitLocker keys, measured-boot secrets).

On start, libvirt gives the directory to its ``swtpm_user`` (qemu.conf), so restored files
need no owner of their own beyond root; they are written 0600 in a 0700 directory.
"""

from __future__ import annotations

import base64
import os
import re

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files

SWTPM_DIR = "/var/lib/libvirt/swtpm"
# swtpm's state files: tpm2-00.permall, tpm2-00.volatilestate, tpm-00.permall ...; never the
# .lock file, never a path.
STATE_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def emulator_tpm(root):
    """``{"model", "version"}`` of the domain's emulated TPM (an lxml root), or None."""
    tpm = root.find("devices/tpm")
    if tpm is None:
        return None
    backend = tpm.find("backend")
    if backend is None or backend.get("type") != "emulator":
        return None
    # libvirt writes the version it chose into the definition; without one it means 1.2 in
    # libvirt before 8.x and 2.0 since, so the directory that exists decides (state_dir()).
    return {"model": tpm.get("model", "tpm-tis"), "version": backend.get("version")}


def state_dir(uuid, version, base=None):
    """The directory of a domain's TPM state files."""
    base = base or SWTPM_DIR
    if version == "2.0":
        return os.path.join(base, uuid, "tpm2")
    if version == "1.2":
        return os.path.join(base, uuid, "tpm1.2")
    for sub in ("tpm2", "tpm1.2"):
        if os.path.isdir(os.path.join(base, uuid, sub)):
            return os.path.join(base, uuid, sub)
    return os.path.join(base, uuid, "tpm2")


def state_files(directory):
    """The state file names in ``directory`` (sorted; [] when the TPM never ran)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if STATE_FILE_RE.match(n) and os.path.isfile(os.path.join(directory, n)))


def describe(root, uuid, base=None):
    """What vm_info reports about the TPM: model, version, state directory and its files."""
    tpm = emulator_tpm(root)
    if tpm is None:
        return None
    directory = state_dir(uuid, tpm["version"], base)
    return dict(tpm, state_dir=directory, files=state_files(directory))


def _check_name(name, vm):
    if not STATE_FILE_RE.match(name or ""):
        raise VmbackupError("TPM state file name %r of VM %s is not a plain file name; the backup is "
                            "damaged or was tampered with, nothing was written" % (name, vm))


def plan_writes(directory, files, vm):
    """(writes, removals): the state files (name -> bytes) that differ from what ``directory``
    holds, and the state files there that the backup does not have (a stale volatile state
    must not survive a restore)."""
    out = {}
    for name, encoded in sorted(files.items()):
        _check_name(name, vm)
        try:
            data = base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise VmbackupError("TPM state file %s of VM %s is not valid base64 (%s); nothing was written"
                                % (name, vm, exc))
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as fh:
                if fh.read() == data:  # state files are small: compare the bytes themselves
                    continue
        except FileNotFoundError:
            pass
        out[name] = data
    removals = [n for n in state_files(directory) if n not in files]
    return out, removals


def write_state(directory, writes, removals=()):
    """Write the files: 0600, each by temp file, fsync and rename, then the directory fsynced."""
    parent = os.path.dirname(directory)
    for path, mode in ((os.path.dirname(parent), 0o711), (parent, 0o711), (directory, 0o700)):
        if not os.path.isdir(path):
            os.mkdir(path, mode)
    for name, data in writes.items():
        # A hidden temp name: "NAME.tmp" would pass for a state file (STATE_FILE_RE) after a crash.
        _files.write_atomic(os.path.join(directory, name), data, tmp=os.path.join(directory, ".%s.vmbackup-tmp" % name))
    for name in removals:
        os.unlink(os.path.join(directory, name))
    for path in (directory, parent):
        _files.fsync_dir(path)
