"""What a new user hits: bad input ends in a clear message, a summary and a report; secrets stay
out of the output while errors stay in it; a restore test touches no production storage.

Real libvirtd, real qemu-img, real ansible-playbook runs (-vvv where the output is checked for
secrets), a real read-only mount. Every name carries the tag h6.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET

import pytest

from conftest import image_sha256, local_inventory

import domains  # tests/testbed/domains.py

BACKUP = "vmbackup.libvirt.backup"
RESTORE = "vmbackup.libvirt.restore"
RESTORE_TEST = "vmbackup.libvirt.restore_test"
IMAGES = "/var/lib/libvirt/images"
VM = "h6-nu1"          # shut off: a qcow2 disk, a shareable raw disk, a VNC password
BROKEN = "h6-nupw"     # shut off: a VNC password and a disk file that is gone
RTVM = "h6-rtlive"     # the restore test's VM: one backed-up disk, a shareable and a network disk
RT_PREFIX = "h6rt-"
PASSWORD = "h6Vq7Zx9"  # VNC passwords are at most 8 characters
SHARED = os.path.join(IMAGES, "h6-shared-quorum.raw")

pytestmark = pytest.mark.usefixtures("libvirt")


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _add_devices(name, xml_snippets):
    """Add devices to a defined domain's persistent XML (and define it again)."""
    root = ET.fromstring(domains.virsh("dumpxml", "--inactive", "--security-info", name).stdout)
    devices = root.find("devices")
    for snippet in xml_snippets:
        devices.append(ET.fromstring(snippet))
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="h6-") as fh:
        fh.write(ET.tostring(root, encoding="unicode"))
        fh.flush()
        domains.virsh("define", fh.name)


def _shared_disk(target):
    return ("<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>"
            "<source file='%s'/><target dev='%s' bus='virtio'/><shareable/></disk>" % (SHARED, target))


def _vnc():
    return "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' passwd='%s'/>" % PASSWORD


def _make_shared():
    if not os.path.exists(SHARED):
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", SHARED, "32M"], check=True)
        with open(SHARED, "r+b") as fh:
            fh.write(domains.pattern_bytes("h6-shared", 1 << 20))


def _cleanup(*names):
    for name in names:
        domains.destroy_guest(name)
        for path in glob.glob(os.path.join(IMAGES, "%s-*.vmbackup-*.qcow2" % name)):
            os.unlink(path)


@pytest.fixture(scope="module", autouse=True)
def _shared_file():
    yield
    if os.path.exists(SHARED):
        os.unlink(SHARED)


def _json(path):
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def vm():
    """A shut-off VM with a qcow2 disk, a shareable disk and a VNC password: no boot needed."""
    _cleanup(VM, BROKEN)
    _make_shared()
    info = domains.define_guest(VM, [{"target": "vda", "format": "qcow2", "size_mib": 32}], running=False)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", info.paths[0]], check=True,
                   capture_output=True)
    _add_devices(VM, [_shared_disk("vdb"), _vnc()])
    gone = domains.define_guest(BROKEN, [{"target": "vda", "format": "qcow2", "size_mib": 32}], running=False)
    _add_devices(BROKEN, [_vnc()])
    os.unlink(gone.paths[0])  # the disk file is gone: vm_info cannot read its chain
    yield info
    _cleanup(VM, BROKEN)


@pytest.fixture
def pb(playbook, tmp_path):
    playbook.env["ANSIBLE_SHOW_CUSTOM_STATS"] = "true"
    playbook.fallback = str(tmp_path / "fallback")
    return playbook


def _backup(pb, repo, vms=VM, expect_rc=2, verbose=False, **extra):
    inv = pb.inventory(local_inventory())
    args = ("-vvv",) if verbose else ()
    return pb.run(BACKUP, inv, dict({"vmbackup_vms": vms, "vmbackup_repository": repo,
                                     "vmbackup_report_fallback_dir": pb.fallback}, **extra),
                  expect_rc=expect_rc, args=args)


def _assert_summary_and_stats(res, backed_up, total):
    assert "%d of %d VMs backed up" % (backed_up, total) in res.output, res.output[-6000:]
    assert "CUSTOM STATS" in res.output and "vmbackup_backups" in res.output, res.output[-3000:]
    assert "PLAY [Report the run]" in res.output


def test_repository_path_is_a_file(vm, pb, tmp_path):
    repo = str(tmp_path / "repo-file")
    with open(repo, "w") as fh:
        fh.write("not a repository\n")
    res = _backup(pb, repo)
    assert "Errno 20" not in res.output and "unexpected error" not in res.output, res.output[-6000:]
    assert "backup repository %s on backup node localhost is a file; nothing was written" % repo in res.output
    _assert_summary_and_stats(res, 0, 1)
    # The repository cannot take the report: it is on the controller, and the summary says where.
    fallback = os.path.join(pb.fallback, "report-hv-local-latest.json")
    report = _json(fallback)
    assert report["repository"] == repo and "is a file" in report["repository_error"]
    assert report["results"][0]["vm"] == VM and report["results"][0]["result"] == "failed"
    assert "is a file" in report["results"][0]["error"]
    assert "written on the controller to %s instead" % fallback in res.output
    with open(repo) as fh:
        assert fh.read() == "not a repository\n"


def test_repository_not_writable(vm, pb, tmp_path):
    """Root passes every mode check: a read-only mount is what really refuses writes."""
    repo = str(tmp_path / "repo-ro")
    os.makedirs(repo)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "h6-ro", repo], check=True)
    try:
        with pytest.raises(OSError):
            open(os.path.join(repo, "probe"), "w").close()
        res = _backup(pb, repo)
        assert "unexpected error" not in res.output, res.output[-6000:]
        assert ("backup repository %s on backup node localhost is not writable: %s cannot take a file "
                "(Read-only file system)" % (repo, repo)) in res.output
        _assert_summary_and_stats(res, 0, 1)
        report = _json(os.path.join(pb.fallback, "report-hv-local-latest.json"))
        assert "not writable" in report["results"][0]["error"]
    finally:
        subprocess.run(["umount", repo], check=True)


def test_missing_vm_and_shareable_disk_and_secrets(vm, pb, tmp_path):
    """A VM name that no hypervisor has fails in the summary while the other VM is backed up; the
    shareable disk is left out with a warning; the VNC password is in the backup, nowhere in -vvv."""
    repo = str(tmp_path / "repo")
    shared_before = _sha256_file(SHARED)
    res = _backup(pb, repo, vms="%s,h6-nosuchvm" % VM, verbose=True)
    assert PASSWORD not in res.output
    assert "h6-nosuchvm was not found on any hypervisor (searched: hv-local)" in res.output
    _assert_summary_and_stats(res, 1, 2)
    assert "disk vdb was not backed up: disk is shareable" in res.output
    # The reports: the VM's result carries the warning; the missing VM is under hypervisor none.
    ours = _json(os.path.join(repo, "report-hv-local-latest.json"))["results"][0]
    assert ours["result"] == "ok" and ours["disks"] == ["vda"]
    assert any("disk vdb was not backed up: disk is shareable" in w for w in ours["warnings"])
    missing = _json(os.path.join(repo, "report-none-latest.json"))["results"][0]
    assert missing["vm"] == "h6-nosuchvm" and missing["result"] == "failed"
    # The manifest: vdb excluded with its reason; the domain XML keeps the password for a restore.
    (bdir,) = [d for d in glob.glob(os.path.join(repo, VM, "2*")) if os.path.isdir(d)]
    manifest = _json(os.path.join(bdir, "manifest.json"))
    assert [d["target"] for d in manifest["disks"]] == ["vda"]
    assert [e["target"] for e in manifest["excluded"]] == ["vdb"] and "shareable" in manifest["excluded"][0]["reason"]
    with open(os.path.join(bdir, "domain.xml")) as fh:
        assert PASSWORD in fh.read()
    assert _sha256_file(SHARED) == shared_before

    # Failing on shareable disks instead is a setting.
    res = _backup(pb, repo, vmbackup_shareable_disks="fail")
    assert "vdb: disk is shareable" in res.output and "set vmbackup_shareable_disks=skip" in res.output
    _assert_summary_and_stats(res, 0, 1)

    # A backup ID that does not exist, on restore: a clear message naming the usable ones.
    inv = pb.inventory(local_inventory())
    res = pb.run(RESTORE, inv, {"vmbackup_vm": VM, "vmbackup_repository": repo, "vmbackup_backup": "20990101T000000Z",
                                "vmbackup_restore_name": "h6-nu1-restored"}, expect_rc=2)
    assert ("backup 20990101T000000Z of VM %s is not in repository %s (usable backups: %s)"
            % (VM, repo, os.path.basename(bdir))) in res.output, res.output[-4000:]
    assert not domains.domain_exists("h6-nu1-restored")


def test_failed_task_with_secrets_shows_its_error(vm, pb, tmp_path):
    """vm_info include_xml on a VM whose disk is gone: the error shows, the password does not."""
    repo = str(tmp_path / "repo")
    res = _backup(pb, repo, vms=BROKEN, verbose=True)
    assert PASSWORD not in res.output
    task = res.output.index("TASK [vmbackup.libvirt.backup : Lock and describe VM %s]" % BROKEN)
    start = res.output.index("fatal: [%s@hv-local]" % BROKEN, task)
    failed = res.output[start:res.output.index("TASK [", start)]  # the task's failure, as -vvv prints it
    assert "hidden due to" not in failed and "censored" not in failed, failed
    assert "qemu-img" in failed and "rc=" in failed and BROKEN in failed, failed
    _assert_summary_and_stats(res, 0, 1)


@pytest.fixture(scope="module")
def rtvm():
    """A VM with one disk to back up, a shareable disk and an NBD disk on a port nobody serves."""
    _cleanup(RTVM, RT_PREFIX + RTVM)
    _make_shared()
    info = domains.define_guest(RTVM, [{"target": "vda", "format": "qcow2", "size_mib": 32}], running=False)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 1M", info.paths[0]], check=True,
                   capture_output=True)
    _add_devices(RTVM, [
        _shared_disk("vdb"),
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<source protocol='nbd' name='h6-export'><host name='127.0.0.1' port='9'/></source>"
        "<target dev='vdc' bus='virtio'/></disk>",
        "<hostdev mode='subsystem' type='usb' managed='no'><source><vendor id='0x1d6b'/>"
        "<product id='0x0fe6'/></source></hostdev>",
    ])
    yield info
    _cleanup(RTVM, RT_PREFIX + RTVM)


def test_restore_test_sandbox_without_unrestored_disks(rtvm, pb, tmp_path):
    repo = str(tmp_path / "repo")
    inv = pb.inventory(local_inventory())
    pb.run(BACKUP, inv, {"vmbackup_vms": RTVM, "vmbackup_repository": repo, "vmbackup_unsupported_disks": "skip"})
    live_xml = domains.virsh("dumpxml", "--inactive", RTVM).stdout
    before = (_sha256_file(SHARED), image_sha256(rtvm.paths[0], "qcow2"))

    report = str(tmp_path / "rt.json")
    check = ["/bin/sh", "-c", "ls /sys/block; test -e /sys/block/vda && ! test -e /sys/block/vdb "
                              "&& ! test -e /sys/block/vdc"]
    res = pb.run(RESTORE_TEST, inv, {"vmbackup_vms": RTVM, "vmbackup_repository": repo,
                                     "vmbackup_restore_test_prefix": RT_PREFIX,
                                     "vmbackup_restore_test_wait_agent": 600,
                                     "vmbackup_restore_test_command": check,
                                     "vmbackup_restore_test_junit": str(tmp_path / "rt.xml"),
                                     "vmbackup_restore_test_report": report}, expect_rc=None)
    data = _json(report)
    result = data["results"][0]
    assert result["result"] == "passed", (result, res.output[-6000:])
    removed = {(r["device"], r["target"]) for r in result["sandbox_removed"]}
    assert {("disk", "vdb"), ("disk", "vdc")} <= removed and any(device == "hostdev" for device, _target in removed), removed
    # The live VM and its disks are as they were; the sandbox is gone.
    assert (_sha256_file(SHARED), image_sha256(rtvm.paths[0], "qcow2")) == before
    assert domains.virsh("dumpxml", "--inactive", RTVM).stdout == live_xml
    assert not domains.domain_exists(RT_PREFIX + RTVM)
    assert glob.glob(os.path.join(IMAGES, RT_PREFIX + RTVM + "*")) == []


# A hypervisor nobody answers for: nothing listens on port 1, so SSH is refused at once.
DOWN = "hv-down ansible_host=127.0.0.1 ansible_port=1 ansible_user=root"
ELSEWHERE = "h2-elsewhere"  # a requested VM that the reachable hypervisor does not have


def _says_refused(message):
    """Ansible reports a refused SSH connection in one of two ways, by timing: ssh's own
    "Connection refused", or, when ssh has already exited before Ansible writes the pipelined
    module to its stdin, that write's "[Errno 32] Broken pipe" (ssh's stderr then unread)."""
    return "Connection refused" in message or "[Errno 32] Broken pipe" in message


def _assert_down_reported(res, repo, unsearched="hv-down"):
    """The run fails at its end, after its summary; hv-down's report and set_stats carry its error."""
    assert res.rc == 2, res.output[-6000:]
    assert "PLAY [Report the run]" in res.output
    assert "Hypervisors not searched: hypervisor hv-down (127.0.0.1 port 1) could not be reached: " in res.output
    assert "CUSTOM STATS" in res.output and "vmbackup_hypervisor_errors" in res.output, res.output[-3000:]
    report = _json(os.path.join(repo, "report-hv-down-latest.json"))
    assert report["hypervisor"] == "hv-down" and report["results"] == []
    assert "could not be reached" in report["error"] and _says_refused(report["error"]), report
    # The requested VM that no searched hypervisor has may be on hv-down: not "not found on any".
    missing = _json(os.path.join(repo, "report-none-latest.json"))["results"]
    assert [(m["vm"], m["result"]) for m in missing] == [(ELSEWHERE, "failed")]
    assert "it may be on %s, which could not be searched" % unsearched in missing[0]["error"], missing
    assert "not found on any hypervisor" not in res.output, res.output[-6000:]
    assert "NO MORE HOSTS LEFT" not in res.output


def test_every_hypervisor_unreachable_or_failing(pb, tmp_path):
    """Every hypervisor of play 1 lost (one unreachable, one whose libvirt does not answer): the
    run still reaches its summary and report, and each report says why."""
    repo = str(tmp_path / "repo")
    inv = pb.inventory("""
    [hypervisors]
    %s
    hv-nolibvirt ansible_connection=local vmbackup_libvirt_uri='qemu:///system?socket=/nonexistent/h2.sock'
    """ % DOWN)
    res = pb.run(BACKUP, inv, {"vmbackup_vms": ELSEWHERE, "vmbackup_repository": repo,
                               "vmbackup_report_fallback_dir": pb.fallback}, expect_rc=2)
    assert "0 of 1 VMs backed up" in res.output, res.output[-6000:]
    _assert_down_reported(res, repo, unsearched="hv-down, hv-nolibvirt")
    nolibvirt = _json(os.path.join(repo, "report-hv-nolibvirt-latest.json"))
    assert nolibvirt["results"] == [] and "/nonexistent/h2.sock" in nolibvirt["error"], nolibvirt
    assert "the VMs of hypervisor hv-nolibvirt could not be listed at qemu:///system?socket=/nonexistent/h2.sock: " in nolibvirt["error"]


def test_one_of_two_hypervisors_unreachable(vm, pb, tmp_path):
    """The reachable hypervisor's VM is backed up; the other is reported, and so is what may be on it."""
    repo = str(tmp_path / "repo")
    inv = pb.inventory(local_inventory().replace("[hypervisors]\n", "[hypervisors]\n    %s\n" % DOWN))
    res = pb.run(BACKUP, inv, {"vmbackup_vms": "%s,%s" % (VM, ELSEWHERE), "vmbackup_repository": repo,
                               "vmbackup_report_fallback_dir": pb.fallback}, expect_rc=2)
    assert "1 of 2 VMs backed up" in res.output, res.output[-6000:]
    ours = _json(os.path.join(repo, "report-hv-local-latest.json"))["results"]
    assert [(r["vm"], r["result"]) for r in ours] == [(VM, "ok")]
    assert len([d for d in glob.glob(os.path.join(repo, VM, "2*")) if os.path.isdir(d)]) == 1
    _assert_down_reported(res, repo)


def test_role_argument_error_is_the_vms_result(vm, pb, tmp_path):
    """A setting the backup role refuses (its argument spec, before any change) is the VM's error
    in the summary and the report, not "stopped before it recorded a result"."""
    repo = str(tmp_path / "repo")
    res = _backup(pb, repo, vmbackup_quiesce="sometimes")
    assert "stopped before it recorded a result" not in res.output, res.output[-6000:]
    _assert_summary_and_stats(res, 0, 1)
    report = _json(os.path.join(repo, "report-hv-local-latest.json"))
    (result,) = report["results"]
    assert result["vm"] == VM and result["result"] == "failed"
    assert "backup_quiesce" in result["error"] and "sometimes" in result["error"], result


def test_restore_test_target_unreachable(vm, pb, tmp_path):
    """The restore test's hypervisor is unreachable: the JUnit and JSON reports it promises are
    still written, with the failure and its message, and the run fails."""
    repo = str(tmp_path / "repo")
    pb.run(BACKUP, pb.inventory(local_inventory()), {"vmbackup_vms": VM, "vmbackup_repository": repo})
    report, junit = str(tmp_path / "rt.json"), str(tmp_path / "rt.xml")
    inv = pb.inventory("""
    [hypervisors]
    %s
    """ % DOWN)
    res = pb.run(RESTORE_TEST, inv, {"vmbackup_vms": VM, "vmbackup_repository": repo, "vmbackup_restore_test_prefix": RT_PREFIX,
                                     "vmbackup_restore_test_junit": junit, "vmbackup_restore_test_report": report},
                 expect_rc=2)
    assert res.rc == 2, res.output[-6000:]
    data = _json(report)
    assert (data["tests"], data["failed"]) == (1, 1), data
    (result,) = data["results"]
    assert result["vm"] == VM and result["hypervisor"] == "hv-down" and result["result"] == "failed"
    assert "hypervisor hv-down (127.0.0.1 port 1) could not be reached" in result["reason"], result
    assert _says_refused(result["reason"]), result
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "1" and "could not be reached" in root.find(".//failure").get("message")
    assert "Restore test failed for %s" % VM in res.output
