"""restore_test end to end: two real guests backed up, one deliberately broken, JUnit/JSON reports, cleanup."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import local_inventory

import domains  # tests/testbed/domains.py

MARKER = 64 * 1024
GOOD, BAD = "it-rtgood", "it-rtbad"
PREFIX = "rt-"
IMAGES = "/var/lib/libvirt/images"

pytestmark = pytest.mark.usefixtures("libvirt")


def _check_command():
    """A guest command that passes only on a disk whose first 64 KiB are the good guest's marker."""
    want = hashlib.sha256(domains.pattern_bytes(11, MARKER)).hexdigest()
    code = ("import hashlib,sys;"
            "h=hashlib.sha256(open('/dev/vda','rb').read(%d)).hexdigest();"
            "sys.exit(0 if h=='%s' else 'marker mismatch on /dev/vda: '+h)" % (MARKER, want))
    return ["/usr/bin/python3", "-c", code]


def _cleanup(name):
    if domains.domain_exists(name):
        domains.destroy_guest(name)
    # The overlays the backups kept on the live VM's disks are not define_guest's files.
    for path in glob.glob("/var/lib/libvirt/images/%s-*.vmbackup-*.qcow2" % name):
        os.unlink(path)


def test_restore_test_one_pass_one_failure(playbook, tmp_path):
    repo = str(tmp_path / "repo")
    for name in (GOOD, BAD, PREFIX + GOOD, PREFIX + BAD):
        _cleanup(name)
    try:
        for name, seed in ((GOOD, 11), (BAD, 12)):
            info = domains.define_guest(name, [{"target": "vda", "format": "qcow2", "size_mib": 16}],
                                        running=False, replace=True)
            # The guest's root is a tmpfs: the marker goes onto its disk, which the backup carries.
            with open(str(tmp_path / ("marker-%s" % name)), "wb") as fh:
                fh.write(domains.pattern_bytes(seed, MARKER))
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -s %s 0 %d" % (fh.name, MARKER), info.paths[0]],
                           check=True, capture_output=True)
            domains.virsh("start", name)  # live and running during the backup and the tests
        inv = playbook.inventory(local_inventory())
        playbook.run("vmbackup.libvirt.backup", inv,
                     {"vmbackup_vms": "%s,%s" % (GOOD, BAD), "vmbackup_repository": repo,
                      "vmbackup_quiesce": "off"})
        live = {name: (domains.domstate(name), domains.domblklist(name)) for name in (GOOD, BAD)}

        junit = str(tmp_path / "out" / "junit.xml")
        report = str(tmp_path / "out" / "report.json")
        os.makedirs(os.path.dirname(junit))
        extra = {"vmbackup_vms": [GOOD, BAD], "vmbackup_repository": repo,
                 "vmbackup_restore_test_wait_agent": 240,
                 "vmbackup_restore_test_command": _check_command(),
                 "vmbackup_restore_test_junit": junit, "vmbackup_restore_test_report": report}
        res = playbook.run("vmbackup.libvirt.restore_test", inv, extra, expect_rc=2)
        assert "Restore test failed for %s" % BAD in res.output

        # JUnit: two cases, the bad one failed with the reason.
        root = ET.parse(junit).getroot()
        suite = root.find("testsuite")
        assert suite.get("tests") == "2" and suite.get("failures") == "1"
        cases = {c.get("name"): c for c in suite.findall("testcase")}
        assert cases[GOOD].find("failure") is None
        failure = cases[BAD].find("failure")
        assert failure is not None and failure.get("type") == "checks"
        assert "exited with rc=1" in failure.get("message")
        assert "marker mismatch on /dev/vda" in failure.text
        # JSON: the same, with timings.
        with open(report) as fh:
            data = json.load(fh)
        assert (data["tests"], data["passed"], data["failed"]) == (2, 1, 1)
        by_vm = {r["vm"]: r for r in data["results"]}
        assert by_vm[GOOD]["result"] == "passed" and by_vm[GOOD]["cleanup"] == "ok"
        assert by_vm[GOOD]["restore_seconds"] > 0 and by_vm[GOOD]["backup_id"]
        assert by_vm[BAD]["result"] == "failed" and by_vm[BAD]["cleanup"] == "ok"

        # Everything the test created is gone; the live VMs are untouched.
        for name in (GOOD, BAD):
            assert not domains.domain_exists(PREFIX + name)
            assert glob.glob(os.path.join(IMAGES, PREFIX + name + "*")) == []
            assert (domains.domstate(name), domains.domblklist(name)) == live[name]

        # With restore_test_fail=false the play passes and still reports the failure; a sandbox
        # name that is taken is refused and left alone.
        squatter = os.path.join(IMAGES, PREFIX + GOOD + "-vda.qcow2")
        with open(squatter, "w") as fh:
            fh.write("not ours")
        try:
            res = playbook.run("vmbackup.libvirt.restore_test", inv,
                               dict(extra, vmbackup_vms=GOOD, vmbackup_restore_test_fail=False,
                                    vmbackup_restore_test_wait_agent=0))
            with open(report) as fh:
                data = json.load(fh)
            assert data["failed"] == 1 and "already exists" in data["results"][0]["reason"]
            with open(squatter) as fh:
                assert fh.read() == "not ours"
        finally:
            os.unlink(squatter)
    finally:
        for name in (GOOD, BAD, PREFIX + GOOD, PREFIX + BAD):
            _cleanup(name)
