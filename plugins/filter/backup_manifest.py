# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

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
    description: The VM entry of M(vmbackup.libvirt.vm_info)'s RV(vms).
    type: dict
    required: true
  snapshot:
    description: The registered result of kvm_snapshot O(state=present).
    type: dict
    required: true
  transfers:
    description: The registered loop result of disk_transfer.
    type: dict
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


def backup_manifest(vm, snapshot, transfers, parent=None):
    chains = {d["target"]: d for d in snapshot.get("disks", [])}
    disks = []
    for result in transfers.get("results", []):
        if result.get("skipped"):
            continue
        item = result["item"]
        chain = chains.get(item["target"], {})
        disks.append({
            "target": item["target"],
            "backend": item.get("backend", "file"),
            "source": chain.get("base", item.get("source")),
            "format": chain.get("base_format", item.get("format")),
            "virtual_size": chain.get("virtual_size", item.get("virtual_size")),
            "file": "%s.qcow2" % item["target"],
            "mode": result.get("mode"),
            "sha256": result.get("sha256"),
            "stored_bytes": result.get("stored_bytes"),
            "bytes_sent": result.get("bytes_sent"),
            "duration": result.get("duration"),
        })
    delta = any(d["mode"] == "delta" for d in disks)
    return {
        "type": "incremental" if delta else "full",
        "parent": parent if delta else None,
        "state": vm.get("state"),
        "autostart": vm.get("autostart"),
        "persistent": vm.get("persistent"),
        "hypervisor_type": vm.get("hypervisor"),
        "nvram": vm.get("nvram"),
        "uuid": vm.get("uuid"),
        "disks": disks,
        "excluded": snapshot.get("excluded", []),
    }


class FilterModule:
    def filters(self):
        return {"backup_manifest": backup_manifest}
