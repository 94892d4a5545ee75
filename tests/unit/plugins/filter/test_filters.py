"""The backup_manifest and restore_plan filters: pure functions over registered results."""

from __future__ import annotations

import pytest

from ansible_collections.vmbackup.libvirt.plugins.filter.backup_manifest import backup_manifest
from ansible_collections.vmbackup.libvirt.plugins.filter.restore_plan import restore_plan

VM = {
    "name": "web1", "state": "running", "autostart": True, "persistent": True, "hypervisor": "kvm",
    "nvram": None, "uuid": "u-1",
    "disks": [
        {"target": "vda", "backend": "file", "source": "/img/web1.vmbackup-A.qcow2", "format": "qcow2", "virtual_size": 100},
        {"target": "vdb", "backend": "block", "source": "/dev/vg0/web1-data", "format": "raw", "virtual_size": None},
        {"target": "vdc", "backend": "rbd", "source": "rbd/web1-c", "format": "raw", "virtual_size": 300,
         "hosts": [{"name": "10.0.0.1", "port": "6789"}], "auth": {"username": "vm", "secret_uuid": "s-1"}},
    ],
}
SNAPSHOT = {"disks": [{"target": "vda", "base": "/img/web1.qcow2", "base_format": "qcow2", "virtual_size": 100}],
            "excluded": [{"target": "hdc", "reason": "device is a cdrom"}]}
FILE = {"results": [{"item": {"target": "vda"}, "mode": "delta", "file": "/r/.partial-B/vda.qcow2", "sha256": "a",
                     "stored_bytes": 10, "bytes_sent": 9}]}
LVM = {"results": [{"item": [{"target": "vdb"}, {"virtual_size": 200}], "mode": "full", "file": "/r/.partial-B/vdb.qcow2",
                    "sha256": "b", "stored_bytes": 20, "bytes_sent": 20}]}
RBD = {"results": [{"item": {"item": {"target": "vdc"}, "size": 300}, "mode": "full", "file": "/r/.partial-B/vdc.rbddiff",
                    "sha256": "c", "stored_bytes": 30, "bytes_sent": 30, "fallback_reason": "snapshot gone"}]}


def test_manifest_combines_all_backends():
    m = backup_manifest(VM, SNAPSHOT, [FILE, LVM, RBD, {"skipped": True, "results": []}], "A")
    disks = {d["target"]: d for d in m["disks"]}
    assert m["type"] == "incremental" and m["parent"] == "A"
    assert disks["vda"]["source"] == "/img/web1.qcow2"  # the base, not the kept overlay
    assert disks["vdb"] == dict(disks["vdb"], backend="block", virtual_size=200, file="vdb.qcow2", mode="full")
    assert disks["vdc"]["file"] == "vdc.rbddiff" and disks["vdc"]["fallback_reason"] == "snapshot gone"
    assert disks["vdc"]["auth"]["secret_uuid"] == "s-1"
    assert m["excluded"] == SNAPSHOT["excluded"]


def test_manifest_all_full_has_no_parent():
    m = backup_manifest(VM, SNAPSHOT, LVM, "A")
    assert m["type"] == "full" and m["parent"] is None


def _chain():
    full = {"backup_id": "A", "disks": [
        {"target": "vda", "mode": "full", "image": "/r/A/vda.qcow2", "sha256": "1"},
        {"target": "vdc", "mode": "full", "image": "/r/A/vdc.rbddiff", "sha256": "2"}]}
    inc = {"backup_id": "B", "vm": "web1", "disks": [
        {"target": "vda", "mode": "delta", "image": "/r/B/vda.qcow2", "sha256": "3", "backend": "file",
         "source": "/img/web1.qcow2", "format": "qcow2", "virtual_size": 100},
        {"target": "vdb", "mode": "full", "image": "/r/B/vdb.qcow2", "sha256": "4", "backend": "block",
         "source": "/dev/vg0/web1-data", "format": "raw", "virtual_size": 200},
        {"target": "vdc", "mode": "incremental", "image": "/r/B/vdc.rbddiff", "sha256": "5", "backend": "rbd",
         "source": "rbd/web1-c", "format": "raw", "virtual_size": 300}]}
    return inc, [full, inc]


def test_plan_same_name_goes_where_it_came_from():
    backup, chain = _chain()
    plan = {p["target"]: p for p in restore_plan(backup, chain, "web1")}
    assert plan["vda"]["path"] == "/img/web1.qcow2" and plan["vda"]["type"] == "file"
    assert plan["vdb"]["path"] == "/dev/vg0/web1-data" and plan["vdb"]["type"] == "block"
    assert plan["vdc"]["path"] == "rbd/web1-c" and plan["vdc"]["type"] == "rbd"
    # Each disk's chain starts at its own last full backup.
    assert [v["sha256"] for v in plan["vda"]["verify"]] == ["1", "3"]
    assert [v["sha256"] for v in plan["vdb"]["verify"]] == ["4"]
    assert [v["sha256"] for v in plan["vdc"]["verify"]] == ["2", "5"]


def test_plan_new_name_and_mapping():
    backup, chain = _chain()
    plan = {p["target"]: p for p in restore_plan(backup, chain, "web1-test", {"vdc": {"type": "file", "format": "qcow2"}},
                                                 "/restore")}
    assert plan["vda"]["path"] == "/restore/web1-test-vda.qcow2"
    assert plan["vdb"]["path"] == "/dev/vg0/web1-test-vdb"
    assert plan["vdc"] == dict(plan["vdc"], type="file", path="/restore/web1-test-vdc.qcow2", format="qcow2")


def test_plan_refuses_file_into_rbd():
    backup, chain = _chain()
    with pytest.raises(ValueError, match="not supported"):
        restore_plan(backup, chain, "x", {"vda": {"type": "rbd", "path": "rbd/x"}})


def test_backup_jobs_interleave_the_hypervisors():
    from ansible_collections.vmbackup.libvirt.plugins.filter.backup_jobs import backup_jobs
    jobs = backup_jobs({"hv1": ["a", "b", "c"], "hv2": ["d"], "hv3": [], "hv4": ["e", "f"]})
    assert [(j["hypervisor"], j["vm"]) for j in jobs] == [
        ("hv1", "a"), ("hv2", "d"), ("hv4", "e"), ("hv1", "b"), ("hv4", "f"), ("hv1", "c")]
    assert backup_jobs({}) == []


def test_backup_run_results_count_a_host_without_a_result_as_failed():
    from ansible_collections.vmbackup.libvirt.plugins.filter.backup_run_results import backup_run_results
    hostvars = {
        "a@hv1": {"_vmbackup_job": {"vm": "a", "hypervisor": "hv1"},
                  "_backup_results": [{"vm": "a", "hypervisor": "hv1", "result": "ok"}]},
        "b@hv2": {"_vmbackup_job": {"vm": "b", "hypervisor": "hv2"}},
    }
    results = backup_run_results(["a@hv1", "b@hv2"], hostvars)
    assert results[0] == {"vm": "a", "hypervisor": "hv1", "result": "ok"}
    assert results[1]["vm"] == "b" and results[1]["result"] == "failed"
    assert "stopped before it recorded a result" in results[1]["error"] and "b@hv2" in results[1]["error"]


def test_manifest_excludes_only_disks_it_left_out():
    """RBD and LVM disks that their own transfers carried are in disks, never under excluded."""
    vm = dict(VM, disks=VM["disks"] + [
        {"target": "vdd", "backend": "other", "shareable": True, "supported": False,
         "skip_reason": "disk is shareable (used by several domains)"},
        {"target": "hdc", "backend": "other", "device": "cdrom", "supported": False, "skip_reason": "device is a cdrom"},
    ])
    snapshot = dict(SNAPSHOT, excluded=[
        {"target": "vdb", "reason": "block disk: snapshot by its own backend (lvm_snapshot, rbd_export)"},
        {"target": "vdc", "reason": "rbd disk: snapshot by its own backend (lvm_snapshot, rbd_export)"},
        {"target": "vdd", "reason": "disk is shareable (used by several domains)"},
        {"target": "hdc", "reason": "device is a cdrom"},
    ])
    m = backup_manifest(vm, snapshot, [FILE, LVM, RBD], "A")
    assert [d["target"] for d in m["disks"]] == ["vda", "vdb", "vdc"]
    assert m["excluded"] == [{"target": "vdd", "reason": "disk is shareable (used by several domains)"},
                             {"target": "hdc", "reason": "device is a cdrom"}]
    # An RBD disk whose transfer did not run (none of its results) is left out, with a reason.
    m = backup_manifest(vm, snapshot, [FILE, LVM], "A")
    assert {"target": "vdc", "reason": "rbd disk: snapshot by its own backend (lvm_snapshot, rbd_export)"} in m["excluded"]
    # A disk of the VM that no step named is reported too.
    m = backup_manifest(dict(VM), {"disks": SNAPSHOT["disks"], "excluded": []}, [FILE], "A")
    assert [e["target"] for e in m["excluded"]] == ["vdb", "vdc"]


SHARED = {"target": "vdb", "supported": False, "shareable": True, "skip_reason": "disk is shareable"}
NBD = {"target": "vdc", "supported": False, "skip_reason": "network disk protocol 'nbd' is not supported"}
CDROM = {"target": "sda", "device": "cdrom", "supported": False, "readonly": True, "skip_reason": "device is a cdrom"}
RO_SHARED = {"target": "vde", "supported": False, "readonly": True, "shareable": True, "skip_reason": "disk is shareable"}
OK = {"target": "vda", "supported": True, "skip_reason": None}


@pytest.mark.parametrize("unsupported, shareable, blocking, skipped, warned", [
    ("fail", "skip", ["vdc"], ["vdb", "sda", "vde"], ["vdb"]),
    ("fail", "fail", ["vdb", "vdc"], ["sda", "vde"], []),
    ("skip", "skip", [], ["vdb", "vdc", "sda", "vde"], ["vdb", "vdc"]),
    ("skip", "fail", ["vdb"], ["vdc", "sda", "vde"], ["vdc"]),
])
def test_disk_plan(unsupported, shareable, blocking, skipped, warned):
    from ansible_collections.vmbackup.libvirt.plugins.filter.backup_disk_plan import backup_disk_plan
    plan = backup_disk_plan([OK, SHARED, NBD, CDROM, RO_SHARED], unsupported, shareable)
    assert [b["target"] for b in plan["blocking"]] == blocking
    assert sorted(s["target"] for s in plan["skipped"]) == sorted(skipped)
    assert [w.split()[1] for w in plan["warnings"]] == warned
    for b in plan["blocking"]:
        assert ("vmbackup_shareable_disks=skip" if b["target"] == "vdb" else "vmbackup_unsupported_disks=skip") in b["hint"]
    assert all("was not backed up: " in w for w in plan["warnings"])


def test_disk_plan_refuses_unknown_settings():
    from ansible_collections.vmbackup.libvirt.plugins.filter.backup_disk_plan import backup_disk_plan
    with pytest.raises(ValueError, match="shareable must be one of skip, fail"):
        backup_disk_plan([], "fail", "ignore")


def test_run_results_count_missing_vms_as_failed():
    from ansible_collections.vmbackup.libvirt.plugins.filter.backup_run_results import backup_run_results
    hostvars = {"a@hv1": {"_backup_results": [{"vm": "a", "hypervisor": "hv1", "result": "ok"}],
                          "_vmbackup_job": {"vm": "a", "hypervisor": "hv1"}},
                "b@hv1": {"_vmbackup_job": {"vm": "b", "hypervisor": "hv1"}},
                "hv1": {"_vmbackup_here": ["a", "b"]}, "hv2": {"_vmbackup_here": []}}
    got = backup_run_results(["a@hv1", "b@hv1"], hostvars, ["a", "b", "nosuchvm"], ["hv1", "hv2"])
    assert [(r["vm"], r["hypervisor"], r["result"]) for r in got] == [
        ("a", "hv1", "ok"), ("b", "hv1", "failed"), ("nosuchvm", "none", "failed")]
    assert "VM nosuchvm was not found on any hypervisor (searched: hv1, hv2)" in got[2]["error"]
    assert "virsh list --all" in got[2]["error"]
    assert backup_run_results([], {}) == []


DOWN = "hypervisor hv2 could not be reached (10.0.0.2): Connection refused"


@pytest.mark.parametrize("hypervisors, hostvars, errors", [
    (["hv1", "hv2"], {"hv1": {"_vmbackup_here": []}, "hv2": {"_vmbackup_here": ["x"]}}, {}),
    (["hv1", "hv2"], {"hv1": {"_vmbackup_here": []}, "hv2": {"_vmbackup_search_error": DOWN}}, {"hv2": DOWN}),
    # A hypervisor that stopped in play 1 without a record of its own still counts, with a pointer.
    (["hv1"], {"hv1": {}},
     {"hv1": "hypervisor hv1 stopped before its VMs were listed; no VM on it was backed up. "
             "See the task that failed for hv1 above."}),
    ([], {}, {}),
])
def test_hypervisor_errors(hypervisors, hostvars, errors):
    from ansible_collections.vmbackup.libvirt.plugins.filter.backup_hypervisor_errors import backup_hypervisor_errors
    assert backup_hypervisor_errors(hypervisors, hostvars) == errors


@pytest.mark.parametrize("requested, hostvars, unsearched, missing, says", [
    # Every hypervisor searched: a VM none has is "not found on any hypervisor".
    (["a", "z"], {"hv1": {"_vmbackup_here": ["a"]}, "hv2": {"_vmbackup_here": []}}, {}, ["z"],
     "VM z was not found on any hypervisor (searched: hv1, hv2)"),
    # hv2 could not be searched: z may be there, and the message says so.
    (["a", "z"], {"hv1": {"_vmbackup_here": ["a"]}, "hv2": {"_vmbackup_search_error": DOWN}}, {"hv2": DOWN}, ["z"],
     "VM z was not found on the hypervisors that were searched (hv1); it may be on hv2, which could not be searched"),
    # No hypervisor searched at all.
    (["z"], {"hv1": {"_vmbackup_search_error": "e1"}, "hv2": {"_vmbackup_search_error": "e2"}},
     {"hv1": "e1", "hv2": "e2"}, ["z"], "searched (none); it may be on hv1, hv2, which could not be searched"),
    # A VM found on a searched hypervisor is never missing; all VMs requested (empty): none missing.
    (["a"], {"hv1": {"_vmbackup_here": ["a"]}, "hv2": {"_vmbackup_search_error": DOWN}}, {"hv2": DOWN}, [], None),
    ([], {"hv1": {"_vmbackup_search_error": DOWN}, "hv2": {"_vmbackup_search_error": DOWN}},
     {"hv1": DOWN, "hv2": DOWN}, [], None),
])
def test_run_results_missing_vms_and_unsearched_hypervisors(requested, hostvars, unsearched, missing, says):
    from ansible_collections.vmbackup.libvirt.plugins.filter.backup_run_results import backup_run_results
    got = backup_run_results([], hostvars, requested, ["hv1", "hv2"], unsearched)
    assert [(r["vm"], r["hypervisor"], r["result"]) for r in got] == [(vm, "none", "failed") for vm in missing]
    if says:
        assert says in got[0]["error"], got[0]["error"]
        assert ("not found on any hypervisor" in got[0]["error"]) == (not unsearched)


@pytest.mark.parametrize("result, host, port, says, hint", [
    # Unreachable: the SSH error, where it was tried, what to check; ansible-core's prefix dropped.
    ({"unreachable": True, "msg": "Task failed: Failed to connect to the host via ssh: ssh: connect to host "
                                  "10.0.0.2 port 1: Connection refused"}, "10.0.0.2", 1,
     "hypervisor hv2 (10.0.0.2 port 1) could not be reached: Failed to connect to the host via ssh: ssh: connect to "
     "host 10.0.0.2 port 1: Connection refused. Check its ansible_host", None),
    # vm_info failed and said what to do: its message, no second hint.
    ({"failed": True, "msg": "libvirt at URI qemu:///system does not answer. Check that libvirtd runs there."}, "", "",
     "the VMs of hypervisor hv2 could not be listed at qemu:///system: libvirt at URI qemu:///system does not answer. "
     "Check that libvirtd runs there.", False),
    # The module did not start (no Python there): its stderr, and the hint.
    ({"failed": True, "msg": "MODULE FAILURE: No start of json char found\nSee stdout/stderr for the exact error",
      "module_stderr": "/bin/sh: 1: /usr/bin/python3: not found\n", "rc": 127}, "hv2", "",
     "(stderr: /bin/sh: 1: /usr/bin/python3: not found)", True),
    ({"failed": True}, "", "", "could not be listed at qemu:///system: failed.", True),
])
def test_hypervisor_error(result, host, port, says, hint):
    from ansible_collections.vmbackup.libvirt.plugins.filter.hypervisor_error import hypervisor_error
    got = hypervisor_error(result, "hv2", host, port)
    assert says in got, got
    if hint is not None:
        assert ("ansible_python_interpreter is a Python with the libvirt bindings" in got) == hint, got


def test_manifest_keeps_each_disks_reason_from_the_transfer_plan():
    """Loop items of backup_transfers: the plan's reason goes into the manifest; an RBD export
    that fell back to full at transfer time says its own reason."""
    file_ = {"results": [{"item": {"target": "vda", "mode": "delta", "reason": "changes since the parent backup A"},
                          "mode": "delta", "file": "/r/.partial-B/vda.qcow2"}]}
    lvm = {"results": [{"item": {"target": "vdb", "size": 200, "mode": "full", "reason": "LVM whole"},
                        "mode": "full", "file": "/r/.partial-B/vdb.qcow2"}]}
    rbd = {"results": [{"item": {"target": "vdc", "size": 300, "mode": "incremental", "reason": "changes since RBD snapshot"},
                        "mode": "full", "fallback_reason": "snapshot gone", "file": "/r/.partial-B/vdc.rbddiff"}]}
    m = backup_manifest(VM, SNAPSHOT, [file_, lvm, rbd], "A")
    disks = {d["target"]: d for d in m["disks"]}
    assert disks["vda"]["reason"] == "changes since the parent backup A"
    assert disks["vdb"]["reason"] == "LVM whole" and disks["vdb"]["virtual_size"] == 200
    assert disks["vdc"]["reason"] == "snapshot gone" and disks["vdc"]["virtual_size"] == 300
    assert "reason" not in backup_manifest(VM, SNAPSHOT, LVM, "A")["disks"][0]  # the older shapes: no reason
