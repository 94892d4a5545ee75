"""Which restore targets a backup's manifest may name (_restore_targets), and where origins come from."""

from __future__ import annotations

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _restore_targets as rt
from ansible_collections.vmbackup.libvirt.plugins.filter.restore_plan import restore_plan

DIRS = ["/var/lib/libvirt/images", "/var/lib/libvirt/qemu/nvram", "/srv/vms"]
# The hypervisor vouches for web1's disks (a file, an LV, an RBD image) and its NVRAM.
WEB1 = {"vm": "web1", "defined": True, "dirs": DIRS,
        "keys": ["/srv/vms/web1.qcow2", "lv:vg0/web1-data", "rbd:rbd/web1-c",
                 "/var/lib/libvirt/qemu/nvram/web1_VARS.fd"]}
NOVM = {"vm": "web1", "defined": False, "dirs": DIRS, "keys": []}


def disk(path, kind="file", origin="repository"):
    return {"target": "vda", "type": kind, "path": path, "origin": origin}


def there(path, kind=None, keys=None, real=None):
    """What inspect() and names() say about a target: ``kind`` None means it does not exist."""
    return {"exists": kind is not None, "kind": kind, "keys": keys or [path, real or path], "real": real or path}


# (case, entry, found, vouched, None or a piece of the reason)
CASES = [
    ("user-named file anywhere, existing, is the user's call", disk("/etc/x", origin="user"),
     there("/etc/x", "file"), NOVM, None),
    ("user-named existing LV", disk("/dev/vg0/root", "block", origin="user"),
     there("/dev/vg0/root", "lv", ["/dev/vg0/root", "lv:vg0/root"]), NOVM, None),
    ("new file in /var/lib/libvirt/images", disk("/var/lib/libvirt/images/web1.qcow2"),
     there("/var/lib/libvirt/images/web1.qcow2"), NOVM, None),
    ("new file in a pool or allowed dir", disk("/srv/vms/sub/web1.qcow2"), there("/srv/vms/sub/web1.qcow2"), NOVM, None),
    ("new file outside: refused", disk("/etc/cron.d/x"), there("/etc/cron.d/x"), NOVM,
     "new file outside the allowed directories (/var/lib/libvirt/images, /var/lib/libvirt/qemu/nvram, /srv/vms)"),
    ("a directory name is not a prefix", disk("/srv/vms-evil/x.qcow2"), there("/srv/vms-evil/x.qcow2"), NOVM,
     "outside the allowed directories"),
    ("new file whose parent is a symlink out of the allowed dir", disk("/srv/vms/link/x.qcow2"),
     there("/srv/vms/link/x.qcow2", real="/etc/x.qcow2"), NOVM, "new file (/etc/x.qcow2) outside"),
    ("'..' is refused before anything", disk("/var/lib/libvirt/images/../../../etc/x"),
     there("/etc/x"), NOVM, "not a plain absolute path"),
    ("a relative path is refused", disk("images/x.qcow2"), there("images/x.qcow2"), NOVM, "not a plain absolute path"),
    ("existing file of the live VM: vouched", disk("/srv/vms/web1.qcow2"),
     there("/srv/vms/web1.qcow2", "file"), WEB1, None),
    ("existing file of the live VM by another name (symlink)", disk("/images/web1.qcow2"),
     there("/images/web1.qcow2", "file", real="/srv/vms/web1.qcow2"), WEB1, None),
    ("existing file in an allowed dir that is not the VM's: refused", disk("/srv/vms/other.qcow2"),
     there("/srv/vms/other.qcow2", "file"), WEB1, "not a disk of VM web1, which is defined on this host"),
    ("existing file outside, no VM: refused even forced", disk("/var/tmp/victim.img"),
     there("/var/tmp/victim.img", "file"), NOVM, "exists and no VM web1 is defined on this host to vouch for it"),
    ("the host's root LV: refused", disk("/dev/mapper/vg0-root", "block"),
     there("/dev/mapper/vg0-root", "lv", ["/dev/mapper/vg0-root", "/dev/dm-0", "lv:vg0/root"]), WEB1,
     "this logical volume exists"),
    ("the VM's LV by its mapper path: vouched", disk("/dev/mapper/vg0-web1--data", "block"),
     there("/dev/mapper/vg0-web1--data", "lv", ["/dev/mapper/vg0-web1--data", "/dev/dm-3", "lv:vg0/web1-data"]),
     WEB1, None),
    ("an existing non-LV block device: refused", disk("/dev/sda", "block"), there("/dev/sda", "device"), NOVM,
     "this block device exists"),
    ("a file path that is a block device: refused", disk("/var/lib/libvirt/images/x.qcow2"),
     there("/var/lib/libvirt/images/x.qcow2", "device", real="/dev/sda"), NOVM, "this block device exists"),
    ("a new LV destroys nothing", disk("/dev/vg0/web1-data", "block"),
     there("/dev/vg0/web1-data", None, ["/dev/vg0/web1-data", "lv:vg0/web1-data"]), NOVM, None),
    ("a new RBD image destroys nothing", disk("rbd/web1-c", "rbd"), there("rbd/web1-c", None, ["rbd:rbd/web1-c"]),
     NOVM, None),
    ("an existing RBD image of the VM: vouched", disk("rbd/web1-c", "rbd"),
     there("rbd/web1-c", "rbd", ["rbd:rbd/web1-c"]), WEB1, None),
    ("an existing RBD image of another VM: refused", disk("rbd/db1", "rbd"),
     there("rbd/db1", "rbd", ["rbd:rbd/db1"]), WEB1, "this RBD image exists"),
    ("the VM's NVRAM: vouched", disk("/var/lib/libvirt/qemu/nvram/web1_VARS.fd"),
     there("/var/lib/libvirt/qemu/nvram/web1_VARS.fd", "file"), WEB1, None),
    ("an entry without origin is the repository's", {"target": "vda", "type": "file", "path": "/etc/x"},
     there("/etc/x"), NOVM, "outside the allowed directories"),
]


@pytest.mark.parametrize("entry, found, vouched, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refusal(entry, found, vouched, expected):
    why = rt.refusal(entry, found, vouched)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why


@pytest.mark.parametrize("path, directory, expected", [
    ("/srv/vms/x", "/srv/vms", True),
    ("/srv/vms", "/srv/vms/", True),
    ("/srv/vmsx/y", "/srv/vms", False),
    ("/anything", "/", True),
])
def test_inside(path, directory, expected):
    assert rt.inside(path, directory) is expected


def test_allowed_dirs_resolves_and_keeps_each_once():
    real = {"/pool": "/data/pool", "/mine/": "/mine", "/var/lib/libvirt/images": "/var/lib/libvirt/images",
            "/var/lib/libvirt/qemu/nvram": "/var/lib/libvirt/qemu/nvram"}
    got = rt.allowed_dirs(["/pool", "/var/lib/libvirt/images"], ["/mine/", "relative", ""], resolve=real.get)
    assert got == ["/data/pool", "/var/lib/libvirt/images", "/var/lib/libvirt/qemu/nvram", "/mine"]


def test_refusal_message_names_vm_host_disks_and_fixes():
    msg = rt.refusal_message("web1", "hv1", ["disk vda: target /etc/x, from the backup's manifest: why"])
    for part in ("restore of VM web1 on host hv1 refused", "disk vda: target /etc/x", "nothing was written",
                 "vmbackup_restore_disk_map", "vmbackup_restore_allowed_dirs"):
        assert part in msg


BACKUP = {"vm": "web1", "backup_id": "20261201T000000Z", "disks": [
    {"target": "vda", "backend": "file", "source": "/srv/vms/web1.qcow2", "format": "qcow2",
     "image": "a/vda.qcow2", "sha256": "0", "mode": "full"},
    {"target": "vdb", "backend": "block", "source": "/dev/vg0/web1-data", "format": "raw",
     "image": "a/vdb.raw", "sha256": "1", "mode": "full"},
]}


@pytest.mark.parametrize("name, disk_map, directory, expected", [
    ("web1", {}, "", {"vda": ("/srv/vms/web1.qcow2", "repository"), "vdb": ("/dev/vg0/web1-data", "repository")}),
    ("web1-t", {}, "", {"vda": ("/srv/vms/web1-t-vda.qcow2", "repository"), "vdb": ("/dev/vg0/web1-t-vdb", "repository")}),
    ("web1", {}, "/restore", {"vda": ("/restore/web1-vda.qcow2", "user"), "vdb": ("/dev/vg0/web1-data", "repository")}),
    ("web1", {"vdb": {"type": "block", "path": "/dev/vg1/x"}}, "",
     {"vda": ("/srv/vms/web1.qcow2", "repository"), "vdb": ("/dev/vg1/x", "user")}),
    ("web1", {"vdb": {"type": "file", "format": "qcow2"}}, "",
     {"vda": ("/srv/vms/web1.qcow2", "repository"), "vdb": ("/var/lib/libvirt/images/web1-vdb.qcow2", "repository")}),
])
def test_restore_plan_says_who_named_each_target(name, disk_map, directory, expected):
    chain = [BACKUP]
    plan = {p["target"]: (p["path"], p["origin"]) for p in restore_plan(BACKUP, chain, name, disk_map, directory)}
    assert plan == expected


@pytest.mark.parametrize("target", ["../../etc/cron.d/x", "vda/../x", "", "a b", "-vda"])
def test_restore_plan_refuses_a_target_that_is_not_a_device_name(target):
    backup = {"vm": "web1", "backup_id": "b", "disks": [dict(BACKUP["disks"][0], target=target)]}
    with pytest.raises(ValueError, match="not a device name"):
        restore_plan(backup, [backup], "web1-t", {}, "/restore")
