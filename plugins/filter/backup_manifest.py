# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os

DOCUMENTATION = r"""
name: backup_manifest
short_description: Build a backup manifest from the results of a backup's tasks
version_added: 0.1.0
description:
  - Combines the VM's facts (from M(vmbackup.libvirt.vm_info)), the snapshot
    (from M(vmbackup.libvirt.kvm_snapshot)) and the registered loop of
    M(vmbackup.libvirt.disk_transfer) results into the manifest that
    M(vmbackup.libvirt.backup_repo) writes.
positional: snapshot, transfers, parent
options:
  _input:
    description: The VM entry of M(vmbackup.libvirt.vm_info)'s RV(vmbackup.libvirt.vm_info#module:vms).
    type: dict
    required: true
  snapshot:
    description:
      - The registered result of M(vmbackup.libvirt.kvm_snapshot)
        O(vmbackup.libvirt.kvm_snapshot#module:state=present).
    type: dict
    required: true
  transfers:
    description:
      - The registered loop results of disk_transfer (file and block disks) and rbd_transfer
        (RBD disks), as a list of them, or one of them.
      - Each loop item is an entry of P(vmbackup.libvirt.backup_transfers#filter) (its C(target), C(size)
        and C(reason) go into the manifest), or the older shapes - an (LVM disk, snapshot volume) pair
        or an rbd_export result.
    type: raw
    required: true
  parent:
    description: The parent backup's ID, or null.
    type: str
"""

EXAMPLES = r"""
- name: Manifest of this backup
  ansible.builtin.set_fact:
    manifest: "{{ vm | vmbackup.libvirt.backup_manifest(snap, transfers, parent_id) }}"
"""

RETURN = r"""
_value:
  description: The manifest (type, parent, disks, state, autostart, excluded disks).
  type: dict
"""


def _results(transfers):
    if isinstance(transfers, dict):
        transfers = [transfers]
    for registered in transfers:
        for result in (registered or {}).get("results", []):
            if not result.get("skipped"):
                yield result


def backup_manifest(vm, snapshot, transfers, parent=None):
    chains = {d["target"]: d for d in snapshot.get("disks", [])}
    vm_disks = {d["target"]: d for d in vm.get("disks", [])}
    disks = []
    for result in _results(transfers):
        item = result["item"]
        if isinstance(item, (list, tuple)):  # LVM: (disk, snapshot) pairs
            item = dict(item[0], size=item[1].get("virtual_size"))
        elif "target" not in item:  # an rbd_transfer loops over rbd_export results
            item = dict(item["item"], size=item.get("size"))
        target = item["target"]
        chain = chains.get(target, {})
        known = vm_disks.get(target, {})
        backend = known.get("backend", "file")
        entry = {
            "target": target,
            "backend": backend,
            "source": chain.get("base", known.get("source")),
            "format": chain.get("base_format", known.get("format") or "raw"),
            "virtual_size": chain.get("virtual_size") or known.get("virtual_size") or item.get("size"),
            "file": os.path.basename(result.get("file") or "%s.qcow2" % target),
            "mode": result.get("mode"),
            "sha256": result.get("sha256"),
            "stored_bytes": result.get("stored_bytes"),
            "bytes_sent": result.get("bytes_sent"),
            "duration": result.get("duration"),
        }
        # Why the disk was copied this way (backup_transfers): an RBD transfer that fell back to
        # a full export says why itself.
        reason = result.get("fallback_reason") if result.get("mode") == "full" else None
        reason = reason or item.get("reason")
        if reason:
            entry["reason"] = reason
        if backend == "rbd":
            entry["hosts"] = known.get("hosts")
            entry["auth"] = known.get("auth")
            if result.get("fallback_reason"):
                entry["fallback_reason"] = result["fallback_reason"]
        disks.append(entry)
    delta = any(d["mode"] in ("delta", "incremental") for d in disks)
    backed_up = set(d["target"] for d in disks)
    return {
        "type": "incremental" if delta else "full",
        "parent": parent if delta else None,
        "state": vm.get("state"),
        "autostart": vm.get("autostart"),
        "persistent": vm.get("persistent"),
        "hypervisor_type": vm.get("hypervisor"),
        "nvram": vm.get("nvram"),
        # The emulated TPM's state files, stored as tpm-NAME beside the domain XML.
        "tpm": ({"model": vm["tpm"].get("model"), "version": vm["tpm"].get("version"),
                 "files": list(vm["tpm"].get("files") or [])} if vm.get("tpm") else None),
        "uuid": vm.get("uuid"),
        "disks": disks,
        "excluded": excluded_disks(vm, snapshot, backed_up),
    }


def excluded_disks(vm, snapshot, backed_up):
    """The disks this backup left out, each with its reason; never a disk it holds.

    kvm_snapshot also lists the disks it left to another backend (LVM, RBD): those are in
    ``disks`` when their own transfer carried them, and only a disk that no transfer carried
    is excluded. A disk of the VM that no step named is excluded too ("not backed up").
    """
    out = []
    named = set()
    for entry in snapshot.get("excluded", []):
        named.add(entry["target"])
        if entry["target"] not in backed_up:
            out.append({"target": entry["target"], "reason": entry["reason"]})
    for disk in vm.get("disks", []):
        target = disk.get("target")
        if target in backed_up or target in named:
            continue
        out.append({"target": target, "reason": disk.get("skip_reason") or "not backed up"})
    return out


class FilterModule:
    def filters(self):
        return {"backup_manifest": backup_manifest}
