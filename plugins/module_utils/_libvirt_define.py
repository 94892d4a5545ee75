# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the libvirt_define module.

libvirt fills in defaults when it defines a domain (addresses, controllers,
machine type), so the XML it returns never equals the XML given. Idempotence
therefore compares a sha256 of the normalized desired definition, recorded in
the domain's <metadata>, with the one the existing domain carries.
"""

from __future__ import annotations

import hashlib
import os

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils._domain import (
    Domain,
    derived_mac,
    derived_uuid,
)
from ansible_collections.vmbackup.libvirt.plugins.module_utils._tpm import (
    emulator_tpm,
    plan_writes,
    state_dir,
    write_state,
)
from ansible_collections.vmbackup.libvirt.plugins.module_utils._virsh import URI_ARGSPEC, Virsh

EMULATOR_CANDIDATES = (
    "/usr/bin/qemu-system-x86_64",
    "/usr/libexec/qemu-kvm",
    "/usr/bin/qemu-kvm",
    "/usr/bin/kvm",
)

ARGUMENT_SPEC = dict(
    xml=dict(type="str", required=True),
    name=dict(type="str"),
    uuid=dict(type="str", default="auto"),
    macs=dict(type="str", default="auto", choices=["auto", "keep", "derive", "remove"]),
    disks=dict(type="list", elements="dict", default=[]),
    nvram=dict(type="str"),
    emulator=dict(type="str", default="auto"),
    metadata=dict(type="dict", default={}),
    autostart=dict(type="bool"),
    force=dict(type="bool", default=False),
    sandbox=dict(type="bool", default=False),
    # What the guest sealed in its TPM: secret, so masked in every output.
    tpm_state=dict(type="dict", no_log=True),
    **URI_ARGSPEC
)


def desired_domain(params, emulator_exists=os.path.exists, removed=None):
    """The definition to make; with ``sandbox``, what was removed is appended to ``removed``."""
    domain = Domain(params["xml"], what="the VM to define%s" % (" as %s" % params["name"] if params["name"] else ""))
    original_name = domain.name
    original_uuid = domain.uuid
    name = params["name"] or original_name
    renamed = name != original_name
    domain.set_name(name)
    if renamed:
        domain.rename_device_paths(original_name, name)
    uuid = params["uuid"]
    if uuid == "auto":
        uuid = "derive" if renamed else "keep"
    if uuid == "derive":
        domain.set_uuid(derived_uuid(original_uuid, name))
    elif uuid != "keep":
        domain.set_uuid(uuid)
    macs = params["macs"]
    if macs == "auto":
        macs = "derive" if renamed else "keep"
    if macs == "derive":
        domain.set_macs([derived_mac(domain.uuid, i) for i in range(len(domain.macs) or 16)])
    elif macs == "remove":
        domain.remove_interfaces()
    for spec in params["disks"]:
        target = spec.get("target")
        if not target:
            raise VmbackupError("each entry of disks needs a target")
        disk = domain.disk(target)
        kind = spec.get("type", "file")
        if kind == "file":
            disk.set_file_source(spec["path"], spec.get("format", "qcow2"))
        elif kind == "block":
            disk.set_block_source(spec["path"], spec.get("format", "raw"))
        elif kind in ("rbd", "network"):
            disk.set_rbd_source(spec.get("name") or spec["path"], spec.get("hosts"), spec.get("auth"))
        else:
            raise VmbackupError("disk %s: unknown type %r (file, block, rbd)" % (target, kind))
    if params.get("sandbox"):
        dropped = domain.sandbox([spec["target"] for spec in params["disks"]])
        if removed is not None:
            removed.extend(dropped)
    if params["nvram"]:
        domain.set_nvram(params["nvram"])
    emulator = params["emulator"]
    if emulator == "auto":
        current = domain.emulator
        if current and not emulator_exists(current):
            found = [c for c in EMULATOR_CANDIDATES if emulator_exists(c)]
            if not found:
                raise VmbackupError("the emulator %s of the backed-up VM does not exist on this host, "
                                    "and none of %s does; set emulator" % (current, ", ".join(EMULATOR_CANDIDATES)))
            domain.set_emulator(found[0])
    elif emulator:
        domain.set_emulator(emulator)
    domain.strip_runtime()
    return domain


def definition_hash(domain):
    return hashlib.sha256(domain.normalized().encode("utf-8")).hexdigest()


def run(module):
    p = module.params
    # The XML's passwords never show in a result, a diff or an error; the rest stays visible.
    module.no_log_values.update(Domain(p["xml"], what="the VM to define").secrets())
    runner = CommandRunner(module)
    virsh = Virsh(runner, p["uri"])
    removed = []
    domain = desired_domain(p, removed=removed)
    name = domain.name
    digest = definition_hash(domain)
    meta = dict(p["metadata"])
    meta["definition_sha256"] = digest
    domain.set_metadata(meta)

    exists = virsh.exists(name)
    before = ""
    if exists:
        current = Domain(virsh.dumpxml(name, inactive=True, security_info=True),
                         what="VM %s on host %s" % (name, runner.host))
        module.no_log_values.update(current.secrets())
        before = current.to_xml()
        unchanged = current.metadata("definition_sha256") == digest
        if not unchanged:
            if not p["force"]:
                raise VmbackupError(
                    "VM %s already exists on host %s with another definition%s; nothing was changed. "
                    "Choose another name, or set force=true to replace its definition."
                    % (name, runner.host, " (restored from backup %s)" % current.metadata("restored_from")
                       if current.metadata("restored_from") else ""))
            state = virsh.state(name)
            if state not in ("shut off", "crashed"):
                raise VmbackupError("VM %s on host %s is %s; stop it before its definition is replaced"
                                    % (name, runner.host, state))
    else:
        unchanged = False

    changed = not unchanged
    result = {"changed": changed, "name": name, "uuid": domain.uuid, "macs": domain.macs,
              "definition_sha256": digest, "removed": removed}
    if module._diff:
        result["diff"] = {"before": before, "after": domain.to_xml() if changed else before}
    if changed and not module.check_mode:
        with _files.temp_text(domain.to_xml(), "vmbackup-define-", ".xml") as tmp:
            virsh.run(["define", tmp], what="defining VM %s" % name,
                      hint="Check the backed-up XML against this host (emulator, machine type, networks, "
                           "and that no other VM has UUID %s)." % domain.uuid)
    if p["tpm_state"]:
        _restore_tpm_state(module, virsh, domain, exists and not changed, result)
    if p["autostart"] is not None and (exists or changed) and not module.check_mode:
        info = virsh.dominfo(name)
        is_on = info.get("autostart") in ("enable", "yes")
        if is_on != p["autostart"]:
            virsh.run(["autostart", name] + ([] if p["autostart"] else ["--disable"]),
                      what="setting autostart of VM %s" % name)
            result["changed"] = True
    return result


def _restore_tpm_state(module, virsh, domain, defined_before, result):
    """Put the backed-up swtpm state files under the defined domain's UUID."""
    tpm = emulator_tpm(domain.root)
    name = domain.name
    if tpm is None:
        raise VmbackupError("tpm_state was given, but VM %s has no emulated TPM (<tpm><backend "
                            "type='emulator'/>) in its definition; nothing was written" % name)
    directory = state_dir(domain.uuid, tpm["version"])
    writes, removals = plan_writes(directory, module.params["tpm_state"], name)
    result["tpm_state_dir"] = directory
    result["tpm_state_written"] = sorted(writes)
    result["tpm_state_removed"] = removals
    if not writes and not removals:
        return
    if defined_before and virsh.state(name) not in ("shut off", "crashed"):
        raise VmbackupError("VM %s on host %s is running; its TPM state in %s cannot be replaced under "
                            "a running swtpm. Stop the VM and run the restore again."
                            % (name, virsh.runner.host, directory))
    result["changed"] = True
    if module.check_mode:
        return
    try:
        write_state(directory, writes, removals)
    except OSError as exc:
        raise VmbackupError("writing the TPM state of VM %s into %s on host %s failed: %s. Check that "
                            "%s is writable by root and has room."
                            % (name, directory, virsh.runner.host, exc, directory))
