# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Domain XML: disk classification, source remapping, name/uuid/macs."""

from __future__ import annotations

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils._domain import (
    METADATA_NS,
    Domain,
    DomainXMLError,
    derived_mac,
    derived_uuid,
)

UUID = "6f0d1c7e-3b9a-4c55-9a39-3c2b4c1e0a01"


def domain_xml(disks="", interfaces="", extra=""):
    return """<domain type='kvm' id='7'>
  <name>vm1</name>
  <uuid>%s</uuid>
  <memory unit='KiB'>524288</memory>
  <sysinfo type='smbios'><system><entry name='uuid'>%s</entry></system></sysinfo>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  %s
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    %s
    %s
  </devices>
</domain>""" % (UUID, UUID, extra, disks, interfaces)


# Each: (disk XML, expected fields of as_dict()). skip_reason: a substring, or None.
DISKS = {
    "file-qcow2": (
        """<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
           <source file='/var/lib/libvirt/images/vm1.qcow2'/><target dev='vda' bus='virtio'/></disk>""",
        {"target": "vda", "type": "file", "backend": "file", "format": "qcow2", "bus": "virtio",
         "source": "/var/lib/libvirt/images/vm1.qcow2", "supported": True, "skip_reason": None},
    ),
    "file-raw": (
        """<disk type='file' device='disk'><driver name='qemu' type='raw'/>
           <source file='/var/lib/libvirt/images/vm1-data.img'/><target dev='vdb' bus='virtio'/></disk>""",
        {"target": "vdb", "backend": "file", "format": "raw", "supported": True},
    ),
    "file-vmdk": (
        """<disk type='file' device='disk'><driver name='qemu' type='vmdk'/>
           <source file='/images/old.vmdk'/><target dev='vdc' bus='virtio'/></disk>""",
        {"backend": "other", "supported": False, "skip_reason": "format 'vmdk' is not supported"},
    ),
    "block-lvm": (
        """<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none' io='native'/>
           <source dev='/dev/vg0/vm1-disk'/><target dev='vdd' bus='virtio'/></disk>""",
        {"target": "vdd", "type": "block", "backend": "block", "format": "raw",
         "source": "/dev/vg0/vm1-disk", "supported": True, "skip_reason": None},
    ),
    "rbd-with-auth": (
        """<disk type='network' device='disk'><driver name='qemu' type='raw'/>
           <auth username='libvirt'><secret type='ceph' uuid='2a5b08e4-3dea-4ff5-9d5e-2d4b5a2a1b4e'/></auth>
           <source protocol='rbd' name='vms/vm1-root'>
             <host name='10.0.0.1' port='6789'/><host name='10.0.0.2'/>
           </source><target dev='sda' bus='scsi'/></disk>""",
        {"target": "sda", "type": "network", "backend": "rbd", "protocol": "rbd", "source": "vms/vm1-root",
         "hosts": [{"name": "10.0.0.1", "port": "6789"}, {"name": "10.0.0.2", "port": None}],
         "auth": {"username": "libvirt", "secret_type": "ceph",
                  "secret_uuid": "2a5b08e4-3dea-4ff5-9d5e-2d4b5a2a1b4e", "secret_usage": None},
         "supported": True, "skip_reason": None},
    ),
    "nbd-network": (
        """<disk type='network' device='disk'><driver name='qemu' type='raw'/>
           <source protocol='nbd' name='export'><host name='nbd1'/></source><target dev='sdb' bus='scsi'/></disk>""",
        {"backend": "other", "protocol": "nbd", "supported": False, "skip_reason": "protocol 'nbd' is not supported"},
    ),
    "cdrom": (
        """<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
           <source file='/isos/install.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>""",
        {"target": "hdc", "device": "cdrom", "backend": "other", "readonly": True, "supported": False,
         "skip_reason": "device is a cdrom"},
    ),
    "empty-cdrom": (
        """<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdd' bus='ide'/></disk>""",
        {"backend": "other", "source": None, "skip_reason": "device is a cdrom"},
    ),
    "floppy": (
        """<disk type='file' device='floppy'><source file='/isos/f.img'/><target dev='fda'/></disk>""",
        {"backend": "other", "skip_reason": "device is a floppy"},
    ),
    "shareable": (
        """<disk type='block' device='disk'><driver name='qemu' type='raw'/>
           <source dev='/dev/vg0/cluster-shared'/><target dev='vde' bus='virtio'/><shareable/></disk>""",
        {"backend": "other", "shareable": True, "supported": False, "skip_reason": "disk is shareable"},
    ),
    "transient": (
        """<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
           <source file='/images/scratch.qcow2'/><target dev='vdf' bus='virtio'/><transient/></disk>""",
        {"backend": "other", "skip_reason": "disk is transient"},
    ),
    "readonly-disk": (
        """<disk type='file' device='disk'><driver name='qemu' type='raw'/>
           <source file='/images/ro.img'/><target dev='vdg' bus='virtio'/><readonly/></disk>""",
        {"backend": "other", "readonly": True, "skip_reason": "disk is read-only"},
    ),
    "lun": (
        """<disk type='block' device='lun'><driver name='qemu' type='raw'/>
           <source dev='/dev/disk/by-id/wwn-0x5000c500a1b2c3d4'/><target dev='sdc' bus='scsi'/></disk>""",
        {"device": "lun", "backend": "other", "supported": False, "skip_reason": "direct LUN"},
    ),
    "volume": (
        """<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>
           <source pool='default' volume='vm1-vol.qcow2'/><target dev='vdh' bus='virtio'/></disk>""",
        {"type": "volume", "backend": "other", "source": "default/vm1-vol.qcow2", "supported": False,
         "skip_reason": "disk type 'volume' is not supported"},
    ),
    "dir": (
        """<disk type='dir' device='disk'><driver name='qemu' type='fat'/>
           <source dir='/srv/share'/><target dev='hdb' bus='ide'/></disk>""",
        {"type": "dir", "backend": "other", "source": "/srv/share", "skip_reason": "disk type 'dir' is not supported"},
    ),
}


@pytest.mark.parametrize("xml, expected", list(DISKS.values()), ids=list(DISKS))
def test_disk_classification(xml, expected):
    disk = Domain(domain_xml(disks=xml)).disks[0]
    info = disk.as_dict()
    for key, value in expected.items():
        if key == "skip_reason" and value is not None:
            assert value in info[key], info[key]
        else:
            assert info[key] == value, "%s: %r != %r" % (key, info[key], value)
    assert disk.supported is expected.get("supported", disk.backend in ("file", "block", "rbd"))


def test_disks_in_order_and_lookup():
    dom = Domain(domain_xml(disks=DISKS["file-qcow2"][0] + DISKS["cdrom"][0] + DISKS["block-lvm"][0]))
    assert [d.target for d in dom.disks] == ["vda", "hdc", "vdd"]
    assert dom.disk("vdd").backend == "block"
    with pytest.raises(DomainXMLError, match="no disk with target vdz"):
        dom.disk("vdz")


def test_domain_facts():
    dom = Domain(domain_xml(interfaces="<interface type='network'><mac address='52:54:00:aa:bb:cc'/></interface>"))
    assert dom.name == "vm1"
    assert dom.uuid == UUID
    assert dom.hypervisor_type == "kvm"
    assert dom.emulator == "/usr/bin/qemu-system-x86_64"
    assert dom.macs == ["52:54:00:aa:bb:cc"]


@pytest.mark.parametrize("xml, error", [
    ("<domain><name>x", "does not parse"),
    ("<network><name>default</name></network>", "expected a <domain> document"),
])
def test_bad_xml(xml, error):
    with pytest.raises(DomainXMLError, match=error):
        Domain(xml)


def test_remap_file_to_block_to_rbd_and_back():
    disk_xml = """<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/vm1.qcow2' index='2'><seclabel model='dac' relabel='no'/></source>
      <backingStore type='file' index='1'><format type='qcow2'/><source file='/var/lib/libvirt/images/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>"""
    dom = Domain(domain_xml(disks=disk_xml))

    dom.disk("vda").set_block_source("/dev/vg0/vm1-vda")
    disk = dom.disk("vda")
    assert (disk.type, disk.backend, disk.source, disk.format) == ("block", "block", "/dev/vg0/vm1-vda", "raw")
    el = disk.element
    assert el.find("source").get("file") is None
    assert el.find("source/seclabel") is not None, "per-source settings are kept"
    assert el.find("backingStore") is None, "the old backing chain is dropped"
    assert el.find("driver").get("cache") == "none", "driver settings other than type are kept"
    assert el.find("target").get("dev") == "vda"

    auth = {"username": "libvirt", "secret_uuid": "2a5b08e4-3dea-4ff5-9d5e-2d4b5a2a1b4e"}
    hosts = [{"name": "mon1", "port": 6789}, {"name": "mon2"}]
    dom.disk("vda").set_rbd_source("vms/vm1-vda", hosts=hosts, auth=auth)
    disk = dom.disk("vda")
    info = disk.as_dict()
    assert info["type"] == "network" and info["backend"] == "rbd" and info["protocol"] == "rbd"
    assert info["source"] == "vms/vm1-vda"
    assert info["format"] == "raw"
    assert info["hosts"] == [{"name": "mon1", "port": "6789"}, {"name": "mon2", "port": None}]
    assert info["auth"] == {"username": "libvirt", "secret_type": "ceph",
                            "secret_uuid": "2a5b08e4-3dea-4ff5-9d5e-2d4b5a2a1b4e", "secret_usage": None}
    assert disk.element.find("source").get("dev") is None

    # Another image in the same cluster: hosts and auth stay when not given.
    dom.disk("vda").set_rbd_source("vms/vm1-vda-restored")
    info = dom.disk("vda").as_dict()
    assert info["source"] == "vms/vm1-vda-restored"
    assert [h["name"] for h in info["hosts"]] == ["mon1", "mon2"]
    assert info["auth"]["username"] == "libvirt"

    # Back to a file: no hosts, no auth left behind.
    dom.disk("vda").set_file_source("/restore/vm1-vda.qcow2", "qcow2")
    disk = dom.disk("vda")
    assert (disk.type, disk.backend, disk.source, disk.format) == ("file", "file", "/restore/vm1-vda.qcow2", "qcow2")
    assert disk.hosts == [] and disk.auth is None
    assert disk.element.find("source").get("protocol") is None

    # The result still parses as the same domain with one disk.
    again = Domain(dom.to_xml())
    assert [d.as_dict()["source"] for d in again.disks] == ["/restore/vm1-vda.qcow2"]


def test_set_source_adds_missing_source_and_driver():
    dom = Domain(domain_xml(disks="<disk type='file' device='disk'><target dev='vdb' bus='virtio'/></disk>"))
    assert dom.disk("vdb").backend == "other"
    dom.disk("vdb").set_file_source("/images/new.raw", "raw")
    disk = dom.disk("vdb")
    assert (disk.backend, disk.source, disk.format, disk.driver_name) == ("file", "/images/new.raw", "raw", "qemu")


def test_set_name_uuid_macs():
    ifaces = ("<interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface>"
              "<interface type='bridge'><source bridge='br0'/></interface>")
    dom = Domain(domain_xml(interfaces=ifaces))
    dom.set_name("vm1-restored")
    new_uuid = derived_uuid(UUID, "vm1-restored")
    dom.set_uuid(new_uuid)
    macs = [derived_mac(new_uuid, i) for i in range(2)]
    dom.set_macs(macs)
    again = Domain(dom.to_xml())
    assert again.name == "vm1-restored"
    assert again.uuid == new_uuid
    assert again.root.find("sysinfo/system/entry[@name='uuid']").text == new_uuid, "sysinfo uuid follows"
    assert again.macs == macs, "an interface without <mac> gets one"
    dom.remove_interfaces()
    assert dom.macs == [] and dom.root.find("devices/interface") is None


def test_derived_values_are_stable():
    assert derived_uuid(UUID, "vm1-restored") == derived_uuid(UUID, "vm1-restored")
    assert derived_uuid(UUID, "vm1-restored") != derived_uuid(UUID, "vm1-other")
    # Restores of older backups must derive the same values: these are frozen.
    assert derived_uuid(UUID, "vm1-restored") == "02b9fb32-78b0-5ce4-bc73-77398939bf9e"
    assert derived_mac("seed", 0) == "52:54:00:b0:94:37"
    mac = derived_mac("seed", 0)
    assert mac == derived_mac("seed", 0) and mac != derived_mac("seed", 1)
    assert mac.startswith("52:54:00:") and len(mac) == 17


def test_metadata_and_strip_runtime():
    disk_xml = """<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/images/o.qcow2'/><backingStore type='file'><format type='qcow2'/><source file='/images/b.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>"""
    dom = Domain(domain_xml(disks=disk_xml, extra="<seclabel type='dynamic' model='apparmor' relabel='yes'/>"))
    dom.set_metadata({"restored_from": "20261122T010000Z", "definition_sha256": "ab" * 32})
    assert dom.metadata("restored_from") == "20261122T010000Z"
    assert dom.all_metadata() == {"definition_sha256": "ab" * 32, "restored_from": "20261122T010000Z"}
    assert METADATA_NS in dom.to_xml()
    dom.set_metadata({"restored_from": "B2"})
    assert dom.all_metadata() == {"restored_from": "B2"}, "metadata is replaced, not appended"

    before = dom.normalized()
    dom.strip_runtime()
    xml = dom.to_xml()
    assert "<alias" not in xml and "backingStore" not in xml and "dynamic" not in xml
    assert dom.root.get("id") is None
    assert dom.normalized() == before, "normalized() ignores runtime-only elements"


# --- secrets, sandbox, errors (issue 13: errors stay visible, restore tests touch no production storage)
SANDBOX_DEVICES = """
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/img/vm1.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/shared/quorum.img'/><target dev='vdb' bus='virtio'/><shareable/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <source protocol='nbd' name='export'><host name='192.0.2.9' port='10809'/></source>
      <target dev='vdc' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <source file='/iso/install.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sdb' bus='sata'/><readonly/></disk>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>
    <hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0xbeef'/></source></hostdev>
    <graphics type='vnc' port='-1' passwd='vnc-s3cret'/>
    <graphics type='spice' autoport='yes' passwd='spice-s3cret'/>
"""


@pytest.mark.parametrize("keep, removed_targets, kept_targets", [
    # Only the restored disk stays; the empty cdrom drive touches nothing and stays too.
    (["vda"], ["vdb", "vdc", "sda"], ["vda", "sdb"]),
    # A mapping for a disk keeps it (a test that restored the shared disk as its own copy).
    (["vda", "vdb"], ["vdc", "sda"], ["vda", "vdb", "sdb"]),
    ([], ["vda", "vdb", "vdc", "sda"], ["sdb"]),
])
def test_sandbox_keeps_only_restored_disks_and_drops_hostdevs(keep, removed_targets, kept_targets):
    d = Domain(domain_xml(SANDBOX_DEVICES))
    removed = d.sandbox(keep)
    assert [r["target"] for r in removed if r["device"] == "disk"] == removed_targets
    assert [r["device"] for r in removed].count("hostdev") == 2
    assert [disk.target for disk in d.disks] == kept_targets
    assert d.root.findall("devices/hostdev") == []
    reasons = {r["target"]: r["reason"] for r in removed}
    if "vdb" in reasons:
        assert "shareable" in reasons["vdb"]
    assert "'nbd' is not supported" in reasons["vdc"]
    assert "0x03" in [r["target"] for r in removed if r["device"] == "hostdev"][0]
    # What stays is a valid definition with everything else (graphics) intact.
    again = Domain(d.to_xml())
    assert len(again.root.findall("devices/graphics")) == 2


def test_secrets_are_the_passwd_attributes():
    assert Domain(domain_xml(SANDBOX_DEVICES)).secrets() == ["spice-s3cret", "vnc-s3cret"]
    assert Domain(domain_xml("<graphics type='vnc' passwd=''/>")).secrets() == []
    assert Domain(domain_xml()).secrets() == []


@pytest.mark.parametrize("xml, what, expected", [
    ("<domain><name>x", "VM web1 on host hv1", r"the domain XML of VM web1 on host hv1 does not parse: .*virsh dumpxml"),
    ("", None, r"the domain XML does not parse"),
    ("<network/>", "backup B of VM web1", r"of backup B of VM web1 is not what was expected.*found <network>"),
])
def test_xml_errors_are_the_collections_errors(xml, what, expected):
    from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError
    with pytest.raises(VmbackupError, match=expected):
        Domain(xml, what=what)
