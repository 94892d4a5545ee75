# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the vm_info module."""

from __future__ import annotations

import base64
import os

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lock
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._domain import Domain
from ansible_collections.vmbackup.libvirt.plugins.module_utils._images import image_chain
from ansible_collections.vmbackup.libvirt.plugins.module_utils._tpm import describe as describe_tpm
from ansible_collections.vmbackup.libvirt.plugins.module_utils._virsh import RUNNING_STATES, URI_ARGSPEC, Virsh

# The VM's lock on the hypervisor, taken before the VM is read: backup_lock's options, as the
# backup role passed them to it (one module run less per backup).
LOCK_OPTIONS = dict(
    path=dict(type="path", required=True),
    owner=dict(type="str", required=True),
    purpose=dict(type="str", default=""),
    node=dict(type="str", default=""),
    repository=dict(type="str", default=""),
    break_from=dict(type="str", default=""),
    wait=dict(type="int", default=0),
)

ARGUMENT_SPEC = dict(
    name=dict(type="str"),
    lock=dict(type="dict", options=LOCK_OPTIONS),
    agent_timeout=dict(type="int", default=5),
    include_xml=dict(type="bool", default=False),
    include_files=dict(type="bool", default=False),
    details=dict(type="bool", default=True),
    missing=dict(type="str", default="fail", choices=["fail", "ignore"]),
    **URI_ARGSPEC
)


def describe_vm(virsh, name, agent_timeout=5, include_xml=False, include_files=False):
    """Everything vm_info reports about one VM (also used by the other modules)."""
    virsh.require(name)
    info = virsh.dominfo(name)
    state = virsh.state(name)
    running = state in RUNNING_STATES
    domain = Domain(virsh.dumpxml(name), what="VM %s on host %s" % (name, virsh.runner.host))
    disks = []
    for disk in domain.disks:
        entry = disk.as_dict()
        entry["virtual_size"] = None
        entry["allocated_size"] = None
        entry["chain"] = []
        if disk.supported and (running or disk.backend == "file"):
            try:
                blk = virsh.domblkinfo(name, disk.target)
                entry["virtual_size"] = blk.get("capacity")
                entry["allocated_size"] = blk.get("allocation")
            except VmbackupError:
                pass  # libvirt cannot size some inactive disks; not an error for a report
        if disk.backend == "file":
            chain = image_chain(virsh.runner, disk.source, disk.format)
            entry["chain"] = [{"filename": c.get("filename"), "format": c.get("format")} for c in chain]
            if entry["virtual_size"] is None:
                entry["virtual_size"] = chain[0].get("virtual-size")
        disks.append(entry)
    agent = None
    if running and agent_timeout > 0:
        agent = virsh.agent_ping(name, timeout=agent_timeout)
    vm = {
        "name": name,
        "uuid": domain.uuid,
        "state": state,
        "running": running,
        "persistent": info.get("persistent") == "yes",
        "autostart": info.get("autostart") in ("enable", "yes"),
        "agent": agent,
        "hypervisor": domain.hypervisor_type,
        "nvram": domain.nvram,
        "tpm": describe_tpm(domain.root, domain.uuid),
        "disks": disks,
        "unsupported_disks": [d["target"] for d in disks if not d["supported"]],
        "metadata": domain.all_metadata(),
    }
    if include_xml:
        # The persistent definition, with secrets such as VNC passwords, as a restore needs it.
        vm["xml"] = virsh.dumpxml(name, inactive=True, security_info=True)
    if include_files:
        vm["files"] = vm_files(name, vm, virsh.runner.host)
    return vm


def _read_b64(path, what, name, host):
    try:
        with open(path, "rb") as fh:
            return base64.b64encode(fh.read()).decode("ascii")
    except OSError as exc:
        raise VmbackupError("cannot read the %s of VM %s on host %s (%s): %s; nothing was written. Check that the "
                            "file exists (a UEFI guest writes its NVRAM on its first start) and is readable by root"
                            % (what, name, host, path, exc.strerror or exc))


def vm_files(name, vm, host):
    """The VM's files that a backup keeps beside its XML, base64: the NVRAM as ``nvram.fd``, each
    TPM state file as ``tpm-NAME`` (the names backup_repo commit stores them under)."""
    files = {}
    if vm.get("nvram"):
        files["nvram.fd"] = _read_b64(vm["nvram"], "NVRAM", name, host)
    tpm = vm.get("tpm") or {}
    for state_file in tpm.get("files") or []:
        files["tpm-%s" % state_file] = _read_b64(os.path.join(tpm["state_dir"], state_file), "TPM state file",
                                                 name, host)
    return files


def summarize_vm(virsh, name):
    """Name, state and vmbackup metadata only: cheap, and safe for VMs with broken disks."""
    state = virsh.state(name)
    return {
        "name": name,
        "state": state,
        "running": state in RUNNING_STATES,
        "metadata": Domain(virsh.dumpxml(name), what="VM %s on host %s" % (name, virsh.runner.host)).all_metadata(),
    }


def _still_there(virsh, name, listed, read, *args):
    """``read(*args)``, or None when a VM of the listing was undefined meanwhile (by someone else,
    between ``virsh list`` and reading it): one VM going away must not fail a whole hypervisor's
    listing. A VM asked for by name, or one still there, keeps its error."""
    try:
        return read(*args)
    except VmbackupError:
        if listed and not virsh.exists(name):
            return None
        raise


def lock_params(lock):
    """backup_lock's parameters (exclusive, no slots) from the O(lock) option."""
    params = _lock.lock_params(lock["path"], lock["owner"], lock.get("purpose") or "", lock.get("node") or "",
                               lock.get("wait") or 0, repository=lock.get("repository") or "")
    params["break_from"] = lock.get("break_from") or ""
    return params


def gather(module):
    """vm_info's result; with O(lock), the VM's lock first, given back if the VM cannot be described."""
    p = module.params
    if not p["lock"]:
        return _gather(module)
    if not p["name"]:
        raise VmbackupError("vm_info: lock needs name (the one VM it locks)")
    params = lock_params(p["lock"])
    try:
        lock = _lock.acquire(module, params)
    except VmbackupError as exc:
        exc.details.setdefault("lock", {"held": False, "path": params["path"]})
        raise
    try:
        out = _gather(module)
    except BaseException as exc:
        # Nothing of this run may keep the VM locked once it fails (a lock this owner held
        # before the task stays: its run gives it back).
        if lock["changed"] and not module.check_mode:
            _lock.release(module, params)
        if isinstance(exc, VmbackupError):
            exc.details.setdefault("lock", {"held": not lock["changed"], "path": params["path"]})
        raise
    out["lock"] = lock
    out["changed"] = bool(lock["changed"])
    return out


def _gather(module):
    p = module.params
    runner = CommandRunner(module)
    virsh = Virsh(runner, p["uri"])
    if p["name"]:
        if p["missing"] == "ignore" and not virsh.exists(p["name"]):
            return {"changed": False, "vms": []}
        names = [p["name"]]
    else:
        names = virsh.list_names()
    listed = not p["name"]
    if not p["details"]:
        return {"changed": False, "vms": [vm for vm in (_still_there(virsh, n, listed, summarize_vm, virsh, n)
                                                        for n in names) if vm is not None]}
    vms = []
    secrets = set()
    try:
        for n in names:
            vm = _still_there(virsh, n, listed, describe_vm, virsh, n, p["agent_timeout"], p["include_xml"],
                              p["include_files"])
            if vm is None:
                continue
            if "xml" in vm:
                secrets.update(Domain(vm["xml"], what="VM %s on host %s" % (n, runner.host)).secrets())
            vms.append(vm)
    except VmbackupError:
        # A failure stays visible (the task has no no_log), with the secrets read so far masked.
        module.no_log_values.update(secrets)
        raise
    # With the XML, the result holds the domain's secrets (VNC/SPICE passwords) as a restore
    # needs them: the action plugin hides a successful result's output (never a failure's).
    # The TPM's state is what the guest sealed in it: hidden alike.
    return {"changed": False, "vms": vms, "secrets_returned": bool((p["include_xml"] or p["include_files"]) and vms)}
