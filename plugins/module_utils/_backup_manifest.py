# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backup's manifest, from the registered results of its steps (pure: no Ansible, no I/O).

- ``manifest(vm, snapshot, transfers, parent)``: what backup_repo action=commit writes as the
  manifest (the repository adds the IDs, times and totals): the backup's type and parent, the
  VM's state and extra files, one entry per disk a transfer carried, and the disks left out.
- ``manifest_of_run(vm, plan, steps)``: the same from the backup role's plan and the registered
  results of its steps (one disk_transfer run for the file and LVM disks, the rbd_transfer loop),
  with the hypervisor, URI and start time the role records.
- ``excluded_disks(vm, snapshot, backed_up)``: the disks left out, each with its reason.

Inputs: vm_info's ``vms[0]``, kvm_snapshot state=present, and the registered loops of
disk_transfer (file and LVM disks) and rbd_transfer (RBD disks).
"""

from __future__ import annotations

import os

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_plan import transfers as planned_transfers


def transfer_results(transfers):
    """The loop items that ran, of one registered loop or of a list of them."""
    if isinstance(transfers, dict):
        transfers = [transfers]
    for registered in transfers:
        for result in (registered or {}).get("results", []):
            if not result.get("skipped"):
                yield result


def _loop_item(item):
    """A loop item as a backup_transfers entry (``target``, ``size``, ``reason``), from its older shapes too."""
    if isinstance(item, (list, tuple)):  # LVM: (disk, snapshot) pairs
        return dict(item[0], size=item[1].get("virtual_size"))
    if "target" not in item:  # an rbd_transfer loops over rbd_export results
        return dict(item["item"], size=item.get("size"))
    return item


def disk_entry(result, chain, known):
    """The manifest entry of one transferred disk: ``chain`` is its kvm_snapshot disk, ``known`` its vm_info disk."""
    item = _loop_item(result["item"])
    target = item["target"]
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
    if result.get("compression") not in (None, "none"):
        entry["compression"] = result["compression"]  # synthetic fulls of the chain keep it
    if backend == "rbd":
        entry["hosts"] = known.get("hosts")
        entry["auth"] = known.get("auth")
        if result.get("fallback_reason"):
            entry["fallback_reason"] = result["fallback_reason"]
    return entry


def manifest(vm, snapshot, transfers, parent=None):
    """The manifest of the backup of ``vm``; ``parent`` is kept only when a disk is a delta."""
    chains = {d["target"]: d for d in snapshot.get("disks", [])}
    vm_disks = {d["target"]: d for d in vm.get("disks", [])}
    disks = []
    for result in transfer_results(transfers):
        target = _loop_item(result["item"])["target"]
        disks.append(disk_entry(result, chains.get(target, {}), vm_disks.get(target, {})))
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


def manifest_of_run(vm, plan_, steps):
    """The manifest of one run of the backup role. ``steps``: begin, snapshot, lvm_snapshot,
    transfers (disk_transfer with ``disks``, in the order of backup_transfers('disk_transfer')),
    rbd_transfers (the loop of rbd_transfer), hypervisor, uri."""
    planned = (planned_transfers(plan_, "file", steps.get("snapshot"))
               + planned_transfers(plan_, "block", steps.get("lvm_snapshot")))
    done = (steps.get("transfers") or {}).get("disks") or []
    if len(done) != len(planned):  # a manifest must never name a disk for the wrong image
        raise ValueError("backup_manifest: disk_transfer moved %d disks, the plan has %d" % (len(done), len(planned)))
    carried = {"results": [dict(result, item=entry) for entry, result in zip(planned, done)]}
    begin = steps.get("begin") or {}
    parent = (begin.get("parent") or {}).get("backup_id")
    out = manifest(vm, steps.get("snapshot") or {}, [carried, steps.get("rbd_transfers")], parent)
    out.update(hypervisor=steps.get("hypervisor"), uri=steps.get("uri"), started=begin.get("started"))
    return out
