"""A VM with an emulated TPM (Debian's swtpm under libvirt): its TPM state is backed up with the
domain XML and restored under the same name and under a new name (new UUID), and the VM starts."""

from __future__ import annotations

import glob
import hashlib
import json
import os

import pytest

from conftest import local_inventory

import domains  # tests/testbed/domains.py

BACKUP = "vmbackup.libvirt.backup"
RESTORE = "vmbackup.libvirt.restore"
SWTPM = "/var/lib/libvirt/swtpm"
VM = "it-tpm1"
IMAGE_GLOB = "/var/lib/libvirt/images/*"
TPM_XML = "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"

pytestmark = pytest.mark.usefixtures("libvirt")


def state_of(uuid):
    """{file name: sha256} of a domain's swtpm state files (the .lock excluded)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(SWTPM, uuid, "tpm2", "*"))):
        with open(path, "rb") as fh:
            out[os.path.basename(path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def uuid_of(name):
    return domains.virsh("domuuid", name).stdout.strip()


def remove_vm(name):
    if domains.domain_exists(name):
        sources = [s for _t, s in domains.domblklist(name) if s and s != "-"]
        domains.virsh("destroy", name, check=False)
        domains.virsh("undefine", name, "--nvram", "--tpm", check=False)
        for path in sources:
            if os.path.exists(path) and name != VM:
                os.unlink(path)


@pytest.fixture(scope="module")
def tpm_guest():
    """A running guest with an emulated TPM 2.0 whose state swtpm has written."""
    if not os.path.exists("/usr/bin/swtpm"):
        pytest.fail("swtpm is missing: scripts/install-deps.sh installs it (Debian: swtpm swtpm-tools)")
    for name in (VM, VM + "-r"):
        remove_vm(name)
    domains.define_guest(VM, [{"target": "vda", "format": "qcow2", "size_mib": 16}], running=False, replace=True)
    xml = domains.virsh("dumpxml", "--inactive", VM).stdout.replace("</devices>", TPM_XML + "</devices>")
    path = os.path.join("/var/tmp", "%s.xml" % VM)
    with open(path, "w") as fh:
        fh.write(xml)
    domains.virsh("define", path)
    os.unlink(path)
    domains.virsh("start", VM)
    domains.wait_agent(VM, timeout=300)
    yield VM
    domains.destroy_guest(VM)  # while it is defined: it removes the files define_guest made
    for name in (VM + "-r", VM):
        remove_vm(name)
    for path in glob.glob(os.path.join(os.path.dirname(IMAGE_GLOB), "%s-*" % VM)):
        os.unlink(path)  # the restores' images and the kept overlays


def test_tpm_state_backed_up_and_restored_same_name_and_renamed(tpm_guest, playbook, tmp_path):
    repo = str(tmp_path / "repo")
    inv = playbook.inventory(local_inventory())
    source_uuid = uuid_of(VM)
    before = state_of(source_uuid)
    assert "tpm2-00.permall" in before, before  # swtpm wrote its state when the VM started

    playbook.run(BACKUP, inv, {"vmbackup_vms": VM, "vmbackup_repository": repo})
    (manifest_path,) = glob.glob(os.path.join(repo, VM, "*", "manifest.json"))
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    assert manifest["tpm"] == {"model": "tpm-crb", "version": "2.0", "files": sorted(before)}
    bdir = os.path.dirname(manifest_path)
    stored = {}
    for name in before:
        with open(os.path.join(bdir, "tpm-" + name), "rb") as fh:
            stored[name] = hashlib.sha256(fh.read()).hexdigest()
    assert stored == before
    assert set(manifest["files_sha256"]) >= {"tpm-" + n for n in before}

    # Renamed: a new UUID, so the state must be found under it before the VM first starts.
    renamed = VM + "-r"
    playbook.run(RESTORE, inv, {"vmbackup_vm": VM, "vmbackup_restore_name": renamed, "vmbackup_repository": repo})
    new_uuid = uuid_of(renamed)
    assert new_uuid != source_uuid
    assert state_of(new_uuid) == stored
    # A second identical restore changes nothing.
    again = playbook.run(RESTORE, inv, {"vmbackup_vm": VM, "vmbackup_restore_name": renamed,
                                        "vmbackup_repository": repo})
    assert again.changed("hv-local") == 0
    domains.virsh("start", renamed)
    assert domains.domstate(renamed) == "running"
    remove_vm(renamed)

    # Same name: the VM is gone, and with it (virsh undefine deletes it) its TPM state.
    domains.virsh("destroy", VM)
    image = dict(domains.domblklist(VM))["vda"]
    domains.virsh("undefine", VM)
    assert state_of(source_uuid) == {}
    os.unlink(image)  # the kept overlay: the restore writes the whole disk again
    # No VM of that name is defined any more to vouch for its old disk file, so the user names the
    # target (a path from the repository alone is never replaced: issue 13, tampered repositories).
    manifest = sorted(glob.glob(os.path.join(repo, VM, "*", "manifest.json")))[-1]
    with open(manifest) as fh:
        base = [d["source"] for d in json.load(fh)["disks"] if d["target"] == "vda"][0]
    playbook.run(RESTORE, inv, {"vmbackup_vm": VM, "vmbackup_repository": repo, "vmbackup_restore_force": True,
                                "vmbackup_restore_disk_map": {"vda": {"path": base, "format": "qcow2"}}})
    assert uuid_of(VM) == source_uuid
    assert state_of(source_uuid) == stored
    domains.virsh("start", VM)
    assert domains.domstate(VM) == "running"
