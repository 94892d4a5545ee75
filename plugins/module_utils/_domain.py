# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A libvirt domain's XML, read and changed with lxml.

Disks are classified by backend so that each can go to the tool that handles
it: ``file`` (qcow2/raw images), ``block`` (a block device, usually an LVM
logical volume), ``rbd`` (a Ceph network disk); everything else (cdrom,
floppy, lun, shareable, transient, dir, volume, other network protocols) is
reported with the reason it is skipped.
"""

from __future__ import annotations

import copy
import hashlib
import uuid as uuidlib

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import VmbackupError

try:
    from lxml import etree
    HAS_LXML = True
    LXML_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by the modules
    HAS_LXML = False
    LXML_IMPORT_ERROR = exc

METADATA_NS = "https://vmbackup.libvirt/xmlns/1"

SUPPORTED_BACKENDS = ("file", "block", "rbd")

# Elements that libvirt adds to a running domain's XML and that a definition must not carry.
RUNTIME_XPATHS = (
    "./devices/*/alias",
    "./seclabel[@type='dynamic']",
)


class DomainXMLError(VmbackupError, ValueError):
    """The collection's error for XML it cannot read or change: the module fails with its message."""

    def __init__(self, msg, **details):
        VmbackupError.__init__(self, msg, **details)


# A shareable disk is used by several domains at once (cluster file systems, quorum disks).
SHAREABLE_REASON = ("disk is shareable (used by several domains); a snapshot of one domain would not be "
                    "consistent. Back it up with the storage or cluster that owns it")


class Disk:
    """One <disk> element of a domain."""

    def __init__(self, element):
        self.element = element
        self.type = element.get("type", "file")
        self.device = element.get("device", "disk")
        target = element.find("target")
        self.target = target.get("dev") if target is not None else None
        self.bus = target.get("bus") if target is not None else None
        driver = element.find("driver")
        self.driver_name = driver.get("name") if driver is not None else None
        self.format = driver.get("type") if driver is not None else None
        source = element.find("source")
        self.source = None
        self.protocol = None
        self.hosts = []
        if source is not None:
            if self.type == "file":
                self.source = source.get("file")
            elif self.type == "block":
                self.source = source.get("dev")
            elif self.type == "dir":
                self.source = source.get("dir")
            elif self.type == "network":
                self.protocol = source.get("protocol")
                self.source = source.get("name")
                self.hosts = [
                    {"name": h.get("name"), "port": h.get("port")} for h in source.findall("host")
                ]
            elif self.type == "volume":
                self.source = "%s/%s" % (source.get("pool"), source.get("volume"))
        auth = element.find("auth")
        self.auth = None
        if auth is not None:
            secret = auth.find("secret")
            self.auth = {
                "username": auth.get("username"),
                "secret_type": secret.get("type") if secret is not None else None,
                "secret_uuid": secret.get("uuid") if secret is not None else None,
                "secret_usage": secret.get("usage") if secret is not None else None,
            }
        self.readonly = element.find("readonly") is not None
        self.shareable = element.find("shareable") is not None
        self.transient = element.find("transient") is not None
        self.backend, self.skip_reason = self._classify()

    def _classify(self):
        if self.device in ("cdrom", "floppy"):
            return "other", "device is a %s" % self.device
        if self.device == "lun":
            return "other", "device is a direct LUN (pass-through SCSI); back it up on the storage side"
        if self.source is None:
            return "other", "disk has no source"
        if self.shareable:
            return "other", SHAREABLE_REASON
        if self.transient:
            return "other", "disk is transient; libvirt refuses snapshots of transient disks"
        if self.readonly:
            return "other", "disk is read-only; it holds nothing the VM writes"
        if self.type == "file":
            if self.format not in ("qcow2", "raw"):
                return "other", "file disk format %r is not supported (qcow2 and raw are)" % self.format
            return "file", None
        if self.type == "block":
            return "block", None
        if self.type == "network" and self.protocol == "rbd":
            return "rbd", None
        if self.type == "network":
            return "other", "network disk protocol %r is not supported (rbd is)" % self.protocol
        return "other", "disk type %r is not supported (file, block and rbd are)" % self.type

    @property
    def supported(self):
        return self.backend in SUPPORTED_BACKENDS

    def as_dict(self):
        return {
            "target": self.target,
            "device": self.device,
            "type": self.type,
            "backend": self.backend,
            "format": self.format,
            "source": self.source,
            "protocol": self.protocol,
            "hosts": self.hosts,
            "auth": self.auth,
            "bus": self.bus,
            "readonly": self.readonly,
            "shareable": self.shareable,
            "supported": self.supported,
            "skip_reason": self.skip_reason,
        }

    def set_file_source(self, path, fmt):
        """Point the disk at a file image of format ``fmt``."""
        self._reset_source("file")
        self.element.find("source").set("file", path)
        self._set_format(fmt)

    def set_block_source(self, dev, fmt="raw"):
        self._reset_source("block")
        self.element.find("source").set("dev", dev)
        self._set_format(fmt)

    def set_rbd_source(self, name, hosts=None, auth=None):
        """Point the disk at an RBD image; ``hosts`` and ``auth`` keep the old ones when None."""
        old_hosts = [copy.deepcopy(h) for h in self.element.findall("source/host")]
        self._reset_source("network")
        source = self.element.find("source")
        source.set("protocol", "rbd")
        source.set("name", name)
        if hosts is None:
            for h in old_hosts:
                source.append(h)
        else:
            for h in hosts:
                he = etree.SubElement(source, "host", name=str(h["name"]))
                if h.get("port"):
                    he.set("port", str(h["port"]))
        if auth is not None:
            for a in self.element.findall("auth"):
                self.element.remove(a)
            ae = etree.Element("auth", username=auth["username"])
            etree.SubElement(ae, "secret", type="ceph", uuid=auth["secret_uuid"])
            self.element.insert(0, ae)
        self._set_format("raw")

    def _reset_source(self, disk_type):
        self.element.set("type", disk_type)
        old = self.element.find("source")
        new = etree.Element("source")
        if old is not None:
            # Keep per-source settings that do not name the storage (seclabel, reservations).
            for child in old:
                if child.tag != "host":
                    new.append(copy.deepcopy(child))
            old.addprevious(new)
            self.element.remove(old)
        else:
            driver = self.element.find("driver")
            if driver is not None:
                driver.addnext(new)
            else:
                self.element.insert(0, new)
        # A backing chain recorded by a running domain does not belong to the new source.
        for bs in self.element.findall("backingStore"):
            self.element.remove(bs)
        if disk_type != "network":
            for a in self.element.findall("auth"):
                self.element.remove(a)
        self.__init__(self.element)

    def _set_format(self, fmt):
        driver = self.element.find("driver")
        if driver is None:
            driver = etree.Element("driver", name="qemu")
            self.element.insert(0, driver)
        driver.set("type", fmt)
        self.format = fmt


class Domain:
    """A domain definition; ``xml`` is what ``virsh dumpxml`` printed."""

    def __init__(self, xml, what=None):
        """``what`` names the XML in errors (``VM web1 on host hv1``, ``backup X of VM web1``)."""
        where = " of %s" % what if what else ""
        if not HAS_LXML:
            raise DomainXMLError("the Python library lxml is required to read the domain XML%s: %s; install "
                                 "python3-lxml (or pip install lxml) for the interpreter Ansible uses there"
                                 % (where, LXML_IMPORT_ERROR))
        if isinstance(xml, str):
            xml = xml.encode("utf-8")
        try:
            parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
            self.root = etree.fromstring(xml, parser)
        except (etree.XMLSyntaxError, ValueError) as exc:
            raise DomainXMLError("the domain XML%s does not parse: %s. Check it with 'virsh dumpxml' (for a "
                                 "backup, its domain.xml in the repository)" % (where, exc))
        if self.root is None or self.root.tag != "domain":
            raise DomainXMLError("the domain XML%s is not what was expected: expected a <domain> document, found <%s>"
                                 % (where, getattr(self.root, "tag", None)))

    # --- reading -----------------------------------------------------------------
    def _text(self, path):
        el = self.root.find(path)
        return el.text.strip() if el is not None and el.text else None

    @property
    def name(self):
        return self._text("name")

    @property
    def uuid(self):
        return self._text("uuid")

    @property
    def hypervisor_type(self):
        return self.root.get("type")

    @property
    def nvram(self):
        return self._text("os/nvram")

    @property
    def emulator(self):
        return self._text("devices/emulator")

    @property
    def disks(self):
        return [Disk(e) for e in self.root.findall("devices/disk")]

    def disk(self, target):
        for d in self.disks:
            if d.target == target:
                return d
        raise DomainXMLError("domain %s has no disk with target %s" % (self.name, target))

    @property
    def macs(self):
        return [m.get("address") for m in self.root.findall("devices/interface/mac")]

    def metadata(self, key):
        el = self.root.find("metadata/{%s}backup/{%s}%s" % (METADATA_NS, METADATA_NS, key))
        return el.text if el is not None else None

    def all_metadata(self):
        """The facts vmbackup recorded in <metadata> (restored_from...), as a dict."""
        el = self.root.find("metadata/{%s}backup" % METADATA_NS)
        if el is None:
            return {}
        return {etree.QName(child).localname: child.text for child in el}

    def secrets(self):
        """The secret values the XML holds (VNC/SPICE/RDP passwords), to keep out of logs and results."""
        found = set()
        for el in self.root.xpath(".//*[@passwd]"):
            if el.get("passwd"):
                found.add(el.get("passwd"))
        return sorted(found)

    # --- changing ----------------------------------------------------------------
    def sandbox(self, keep_targets):
        """Make the definition safe to boot beside the live VM: only the disks in ``keep_targets``.

        Every other disk (shareable, network, cdroms and floppies with a host path, disks the
        backup left out) and every <hostdev> would be a live VM's storage or device; they are
        removed. Empty cdrom and floppy drives (no source) stay. Returns what was removed, each
        ``{"device": "disk"|"hostdev", "target": ..., "reason": ...}``.
        """
        keep = set(keep_targets)
        removed = []
        for disk in self.disks:
            if disk.target in keep:
                continue
            if disk.device in ("cdrom", "floppy") and disk.source is None:
                continue  # an empty drive touches nothing
            reason = disk.skip_reason or "not restored into the sandbox"
            removed.append({"device": "disk", "target": disk.target, "source": disk.source, "reason": reason})
            disk.element.getparent().remove(disk.element)
        for hostdev in self.root.findall("devices/hostdev"):
            address = hostdev.find("source/address")
            desc = (" ".join("%s=%s" % kv for kv in sorted(address.attrib.items()))
                    if address is not None else hostdev.get("type"))
            removed.append({"device": "hostdev", "target": desc, "source": None,
                            "reason": "a host device belongs to the live VM's host"})
            hostdev.getparent().remove(hostdev)
        return removed

    def set_name(self, name):
        self._set_text("name", name)

    def set_uuid(self, value):
        self._set_text("uuid", value)
        sysuuid = self.root.find("sysinfo/system/entry[@name='uuid']")
        if sysuuid is not None:
            sysuuid.text = value  # libvirt refuses a sysinfo uuid that differs

    def set_nvram(self, path):
        el = self.root.find("os/nvram")
        if el is None:
            raise DomainXMLError("domain %s has no <nvram> to relocate" % self.name)
        el.text = path

    def set_emulator(self, path):
        el = self.root.find("devices/emulator")
        if el is None:
            el = etree.SubElement(self.root.find("devices"), "emulator")
        el.text = path

    def set_macs(self, macs):
        elements = self.root.findall("devices/interface")
        for iface, mac in zip(elements, macs):
            m = iface.find("mac")
            if m is None:
                m = etree.Element("mac")
                iface.insert(0, m)
            m.set("address", mac)

    def rename_device_paths(self, old, new):
        """Re-point name-derived host paths (console logs, agent sockets) at the new name.

        Two domains cannot share them: libvirt refuses to start a domain whose log file
        another running domain holds open.
        """
        for el in self.root.xpath("./devices/*[self::serial or self::console or self::channel]/*[self::source or self::log]"):
            path = el.get("path")
            if path and old in path.rsplit("/", 1)[-1]:
                head, _sep, tail = path.rpartition("/")
                el.set("path", head + "/" + tail.replace(old, new))

    def remove_interfaces(self):
        for iface in self.root.findall("devices/interface"):
            iface.getparent().remove(iface)

    def set_metadata(self, values):
        """Record vmbackup facts (restored-from backup id...) in <metadata>."""
        meta = self.root.find("metadata")
        if meta is None:
            meta = etree.Element("metadata")
            anchor = self.root.find("uuid") if self.root.find("uuid") is not None else self.root.find("name")
            anchor.addnext(meta)
        for old in meta.findall("{%s}backup" % METADATA_NS):
            meta.remove(old)
        el = etree.SubElement(meta, "{%s}backup" % METADATA_NS, nsmap={"vmbackup": METADATA_NS})
        for key in sorted(values):
            etree.SubElement(el, "{%s}%s" % (METADATA_NS, key)).text = str(values[key])

    def strip_runtime(self):
        """Remove what only a running domain's XML carries."""
        for path in RUNTIME_XPATHS:
            for el in self.root.xpath(path):
                el.getparent().remove(el)
        self.root.attrib.pop("id", None)
        for disk in self.root.findall("devices/disk"):
            for bs in disk.findall("backingStore"):
                disk.remove(bs)
            for mirror in disk.findall("mirror"):
                disk.remove(mirror)

    def _set_text(self, path, value):
        el = self.root.find(path)
        if el is None:
            el = etree.SubElement(self.root, path)
        el.text = value

    def to_xml(self):
        return etree.tostring(self.root, pretty_print=True, encoding="unicode")

    def normalized(self):
        """A canonical form for comparing two definitions."""
        clone = Domain(etree.tostring(self.root))
        clone.strip_runtime()
        return etree.tostring(clone.root, method="c14n").decode("utf-8")


def derived_uuid(*parts):
    """A UUID that is the same for the same inputs, so that re-running a restore changes nothing."""
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, "vmbackup:" + "/".join(str(p) for p in parts)))


def derived_mac(seed, index, prefix="52:54:00"):
    digest = hashlib.sha256(("%s/%d" % (seed, index)).encode("utf-8")).digest()
    return prefix + ":" + ":".join("%02x" % b for b in digest[:3])
