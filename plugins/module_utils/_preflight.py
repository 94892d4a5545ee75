# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the hypervisor_preflight module: what a hypervisor has, and what it lacks.

Every check reports what it found (``detail``), whether it passed (``ok``: true,
false, or null when it could not tell), whether the collection needs it on this
host (``required``) and, when it fails, what to do (``fix``). The module never
fails on a missing piece: it reports, and the prep role turns the required
failures into one clear error.
"""

from __future__ import annotations

import grp
import os
import platform
import pwd
import re
import sys

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils._virsh import DEFAULT_URI

DEFAULT_COMMANDS = {
    "virsh": "virsh",
    "qemu_img": "qemu-img",
    "qemu_nbd": "qemu-nbd",
    "lvs": "lvs",
    "lvm": "lvm",
    "vgs": "vgs",
    "dmsetup": "dmsetup",
    "rbd": "rbd",
}

# Distribution packages, for the fix texts (the prep role installs the same ones).
PACKAGES = {
    "virsh": ("libvirt-clients", "libvirt-client"),
    "qemu_img": ("qemu-utils", "qemu-img"),
    "qemu_nbd": ("qemu-utils", "qemu-img"),
    "lvs": ("lvm2", "lvm2"),
    "lvm": ("lvm2", "lvm2"),
    "vgs": ("lvm2", "lvm2"),
    "dmsetup": ("dmsetup", "device-mapper"),
    "rbd": ("ceph-common", "ceph-common"),
    "lxml": ("python3-lxml", "python3-lxml"),
}

# Active-layer block commit (virsh blockcommit --active --pivot): QEMU 2.0 added the
# block-commit job on the active layer, libvirt 1.2.7 the --active/--pivot flags.
# The base qemu-kvm of RHEL/CentOS 7 (1.5.3) lacks it; qemu-kvm-rhev/-ev has it.
MIN_QEMU_ACTIVE_COMMIT = (2, 0)
MIN_LIBVIRT_ACTIVE_COMMIT = (1, 2, 7)
# lvm2 gained --reportformat json in 2.02.158 (RHEL/CentOS 7.3).
MIN_LVM_JSON = (2, 2, 158)

ARGUMENT_SPEC = dict(
    uri=dict(type="str", default=DEFAULT_URI),
    images_dir=dict(type="path", default="/var/lib/libvirt/images"),
    min_free_mb=dict(type="int", default=1024),
    image_owner=dict(type="str", default="qemu:qemu"),
    lvm=dict(type="str", default="auto", choices=["auto", "required", "skip"]),
    rbd=dict(type="str", default="auto", choices=["auto", "required", "skip"]),
    ceph_conf=dict(type="path", default="/etc/ceph/ceph.conf"),
    ceph_id=dict(type="str", default="admin"),
    ceph_keyring=dict(type="path"),
    require_live_blockcommit=dict(type="bool", default=True),
    commands=dict(type="dict", default={}),
    timeout=dict(type="int", default=30),
)


def version_tuple(text):
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not match:
        return None
    return tuple(int(g) for g in match.groups() if g is not None)


def vstr(vt):
    return ".".join(str(v) for v in vt) if vt else None


def parse_virsh_version(out):
    """'Using library: libvirt 9.0.0' / 'Running hypervisor: QEMU 7.2.22' -> dict."""
    info = {"libvirt": None, "hypervisor": None, "hypervisor_version": None}
    for line in out.splitlines():
        key, _sep, value = line.partition(":")
        key = key.strip().lower()
        value = value.strip()
        if key == "using library":
            info["libvirt"] = vstr(version_tuple(value))
        elif key == "running hypervisor":
            parts = value.split()
            if parts:
                info["hypervisor"] = parts[0]
                info["hypervisor_version"] = vstr(version_tuple(value))
    return info


def blockcommit_verdict(uri, libvirt_version, hypervisor, hypervisor_version, emulator_version_text):
    """Whether live (active-layer) blockcommit is available, and why we think so.

    A version rule, stated as such: a trial job would need a running VM to test on.
    """
    basis = []
    if uri.startswith(("xen", "libxl")) or (hypervisor or "").lower().startswith("xen"):
        return False, ("libvirt's Xen (libxl) driver has no block commit; running Xen VMs can only "
                       "be backed up through the offline path (shut off, or no overlays).")
    lv = version_tuple(libvirt_version)
    qv = version_tuple(hypervisor_version)
    if lv is None or qv is None:
        return None, "could not read the libvirt or QEMU version"
    text = (emulator_version_text or "").lower()
    if "qemu-kvm-1." in text or ("qemu-kvm" in text and qv < MIN_QEMU_ACTIVE_COMMIT and "rhev" not in text):
        return False, ("the emulator is the base RHEL/CentOS 7 qemu-kvm (%s), which has no live "
                       "blockcommit" % emulator_version_text.strip())
    ok = True
    if lv < MIN_LIBVIRT_ACTIVE_COMMIT:
        ok = False
        basis.append("libvirt %s < %s (no blockcommit --active)" % (vstr(lv), vstr(MIN_LIBVIRT_ACTIVE_COMMIT)))
    else:
        basis.append("libvirt %s >= %s" % (vstr(lv), vstr(MIN_LIBVIRT_ACTIVE_COMMIT)))
    if qv < MIN_QEMU_ACTIVE_COMMIT:
        ok = False
        basis.append("QEMU %s < %s (no active-layer block-commit)" % (vstr(qv), vstr(MIN_QEMU_ACTIVE_COMMIT)))
    else:
        basis.append("QEMU %s >= %s" % (vstr(qv), vstr(MIN_QEMU_ACTIVE_COMMIT)))
    return ok, "; ".join(basis) + " (judged by version, not by a trial job)"


def parse_proc_misc(text):
    return any(line.split()[1:2] == ["device-mapper"] for line in text.splitlines() if line.strip())


def detect_image_owner(qemu_conf_text, user_exists, group_exists):
    """The qemu user:group libvirt uses here: qemu.conf's user/group, else the distribution's."""
    user = group = None
    for line in (qemu_conf_text or "").splitlines():
        match = re.match(r'^\s*(user|group)\s*=\s*"([^"]+)"', line)
        if match:
            if match.group(1) == "user":
                user = match.group(2)
            else:
                group = match.group(2)
    if user and group:
        return "%s:%s" % (user.lstrip("+"), group.lstrip("+")), "/etc/libvirt/qemu.conf"
    for cand_user, cand_group, source in (("libvirt-qemu", "kvm", "Debian/Ubuntu default"),
                                          ("qemu", "qemu", "RHEL/Fedora default"),
                                          ("qemu", "kvm", "SUSE default")):
        if user_exists(cand_user) and group_exists(cand_group):
            return "%s:%s" % (cand_user, cand_group), source
    return None, None


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


class Preflight:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.runner = CommandRunner(module)
        self.cmds = dict(DEFAULT_COMMANDS)
        self.cmds.update({k: v for k, v in (self.params.get("commands") or {}).items() if v})
        self.checks = {}
        self.facts = {}
        self.family = "debian" if os.path.exists("/etc/debian_version") else "redhat"

    def pkg(self, key):
        deb, rpm = PACKAGES[key]
        return "%s (Debian/Ubuntu) or %s (RHEL-family); prep_install_packages: true installs it" % (deb, rpm)

    def add(self, name, ok, required, detail, fix=None, **extra):
        entry = {"ok": ok, "required": bool(required), "detail": detail, "fix": fix if ok is not True else None}
        entry.update(extra)
        self.checks[name] = entry
        return entry

    def find(self, key):
        """Path of a configured command, or None (the check says what to install)."""
        try:
            return self.runner.binary(self.cmds[key])
        except VmbackupError:
            return None

    def missing_fix(self, key):
        return "Install %s, or fix the command name (prep_commands.%s: %s)." % (self.pkg(key), key, self.cmds[key])

    def run(self, argv, timeout=None):
        try:
            return self.runner.run(argv, check_rc=False, timeout=timeout or self.params["timeout"])
        except VmbackupError as exc:
            return 127, "", exc.msg

    # ---- the checks

    def check_python(self):
        detail = "python %s at %s" % (platform.python_version(), sys.executable)
        try:
            import lxml.etree  # noqa: F401  pylint: disable=unused-import
            have_lxml = True
            detail += ", lxml %s" % ".".join(str(v) for v in lxml.etree.LXML_VERSION[:3])
        except ImportError:
            have_lxml = False
            detail += ", no lxml"
        self.facts["python"] = {"version": platform.python_version(), "executable": sys.executable,
                                "lxml": have_lxml}
        self.add("python_lxml", have_lxml, True, detail,
                 "Install %s for the interpreter the modules use (ansible_python_interpreter)." % self.pkg("lxml"))

    def check_libvirt(self):
        uri = self.params["uri"]
        virsh = self.find("virsh")
        self.facts["libvirt"] = {"uri": uri, "reachable": False, "version": None,
                                 "hypervisor": None, "hypervisor_version": None}
        if not virsh:
            self.add("libvirt", False, True, "'%s' not found" % self.cmds["virsh"], self.missing_fix("virsh"))
            return False
        rc, out, err = self.run([self.cmds["virsh"], "-c", uri, "version"])
        if rc != 0:
            self.add("libvirt", False, True,
                     "libvirt at URI %s does not answer: virsh -c %s version exited with rc=%s: %s"
                     % (uri, uri, rc, (err or out).strip()),
                     "Start the libvirt daemon (systemctl enable --now libvirtd, or virtqemud.socket on "
                     "modular daemons), check the URI (vmbackup_libvirt_uri: qemu:///system for KVM, "
                     "xen:///system for Xen, qemu:///session for a user's session) and that the SSH "
                     "user may use it (root, or member of the libvirt group).")
            return False
        info = parse_virsh_version(out)
        self.facts["libvirt"].update(reachable=True, version=info["libvirt"], hypervisor=info["hypervisor"],
                                     hypervisor_version=info["hypervisor_version"])
        self.add("libvirt", True, True, "libvirt %s at %s, hypervisor %s %s"
                 % (info["libvirt"], uri, info["hypervisor"], info["hypervisor_version"]))
        return True

    def check_emulator(self, reachable):
        uri = self.params["uri"]
        emulator = None
        text = None
        if reachable and not uri.startswith(("xen", "libxl")):
            rc, out, _err = self.run([self.cmds["virsh"], "-c", uri, "domcapabilities"])
            match = re.search(r"<path>([^<]+)</path>", out or "") if rc == 0 else None
            if match:
                emulator = match.group(1)
        if emulator and os.access(emulator, os.X_OK):
            rc, out, _err = self.run([emulator, "--version"])
            if rc == 0 and out.strip():
                text = out.strip().splitlines()[0]
        lib = self.facts["libvirt"]
        self.facts["qemu"] = {"emulator": emulator, "version_text": text,
                              "version": lib.get("hypervisor_version") or vstr(version_tuple(text))}
        if not reachable:
            self.add("live_blockcommit", None, False, "unknown: libvirt does not answer")
            self.facts["blockcommit"] = {"live": None, "basis": "libvirt does not answer"}
            return
        live, basis = blockcommit_verdict(uri, lib.get("version"), lib.get("hypervisor"),
                                          self.facts["qemu"]["version"], text)
        self.facts["blockcommit"] = {"live": live, "basis": basis}
        self.add("live_blockcommit", live, self.params["require_live_blockcommit"], basis,
                 "Live merges of the backup overlays (virsh blockcommit --active --pivot) need QEMU >= 2.0 "
                 "and libvirt >= 1.2.7: on RHEL/CentOS 7 install qemu-kvm-ev (or -rhev) instead of the base "
                 "qemu-kvm. Or set prep_require_live_blockcommit: false and back up running VMs only "
                 "through the offline path (shut them off first).")

    def check_tool(self, key, required, version_args=("--version",)):
        path = self.find(key)
        if not path:
            return self.add(key, False, required, "'%s' not found" % self.cmds[key], self.missing_fix(key))
        rc, out, err = self.run([self.cmds[key]] + list(version_args))
        first = ((out or err).strip().splitlines() or [""])[0]
        return self.add(key, rc == 0, required, "%s: %s" % (path, first or "rc=%s" % rc),
                        "'%s %s' fails (rc=%s): %s" % (path, " ".join(version_args), rc, (err or out).strip()),
                        version=vstr(version_tuple(first)), path=path)

    def disks(self, reachable):
        """Counts of disk backends over all domains, and the block device paths."""
        found = {"file": 0, "block": 0, "rbd": 0, "other": 0, "block_sources": [], "domains": 0}
        self.facts["disks"] = found
        if not reachable:
            return found
        try:
            from ansible_collections.vmbackup.libvirt.plugins.module_utils._domain import Domain
        except ImportError:
            return found
        uri = self.params["uri"]
        rc, out, _err = self.run([self.cmds["virsh"], "-q", "-c", uri, "list", "--all", "--name"])
        if rc != 0:
            return found
        for name in [n.strip() for n in out.splitlines() if n.strip()]:
            rc, xml, _err = self.run([self.cmds["virsh"], "-c", uri, "dumpxml", "--inactive", name])
            if rc != 0:
                continue
            found["domains"] += 1
            try:
                for disk in Domain(xml).disks:
                    key = disk.backend if disk.backend in found else "other"
                    found[key] += 1
                    if disk.backend == "block" and disk.source:
                        found["block_sources"].append(disk.source)
            except Exception:  # a domain we cannot parse does not stop the report
                continue
        return found

    def check_device_mapper(self, required):
        misc = _read("/proc/misc") or ""
        dm = {
            "proc_misc": parse_proc_misc(misc),
            "dm_mod_loaded": os.path.isdir("/sys/module/dm_mod"),
            "control_node": os.path.exists("/dev/mapper/control"),
            "targets": [],
        }
        if self.find("dmsetup"):
            rc, out, _err = self.run([self.cmds["dmsetup"], "targets"])
            if rc == 0:
                dm["targets"] = sorted(line.split()[0] for line in out.splitlines() if line.strip())
        dm["available"] = bool(dm["proc_misc"] and dm["control_node"])
        self.facts["device_mapper"] = dm
        detail = ("device-mapper %s (/proc/misc: %s, /sys/module/dm_mod: %s, /dev/mapper/control: %s, "
                  "targets: %s)" % ("available" if dm["available"] else "NOT available",
                                    "yes" if dm["proc_misc"] else "no", "yes" if dm["dm_mod_loaded"] else "no",
                                    "yes" if dm["control_node"] else "no", ", ".join(dm["targets"]) or "none"))
        self.add("device_mapper", dm["available"], required, detail,
                 "Load the kernel modules (modprobe dm_mod dm_snapshot dm_thin_pool); in a container, the "
                 "host must provide device-mapper and expose /dev/mapper/control. Without it LVM "
                 "snapshots cannot be made on this host.")

    def lv_disks(self, disks):
        """Block disk sources that are logical volumes (by lvs), and whether lvs could tell."""
        if not disks["block_sources"] or not self.find("lvs"):
            return [], bool(disks["block_sources"])
        import json
        rc, out, _err = self.run([self.cmds["lvs"], "--reportformat", "json", "-o", "lv_path,lv_dm_path"])
        if rc != 0:
            return [], True
        try:
            lvs = json.loads(out)["report"][0]["lv"]
        except (ValueError, KeyError, IndexError):
            return [], True
        paths = set()
        for lv in lvs:
            for key in ("lv_path", "lv_dm_path"):
                if lv.get(key):
                    paths.add(os.path.realpath(lv[key]))
        return [s for s in disks["block_sources"] if os.path.realpath(s) in paths], False

    def check_lvm(self, disks):
        mode = self.params["lvm"]
        lv_sources, unsure = self.lv_disks(disks)
        wanted = mode == "required" or (mode == "auto" and bool(lv_sources))
        self.facts["lvm"] = {"mode": mode, "needed": wanted, "lv_disks": lv_sources, "version": None,
                             "json_reports": None, "volume_groups": []}
        if mode == "skip":
            self.add("lvm2", None, False, "not checked (prep_lvm: skip)")
            self.check_device_mapper(False)
            return
        if not self.find("lvs"):
            self.add("lvm2", False, wanted, "'%s' not found%s" % (
                self.cmds["lvs"], "; block disks exist that may be LVs" if unsure else ""), self.missing_fix("lvs"))
            self.check_device_mapper(wanted)
            return
        version = None
        if self.find("lvm"):
            rc, out, _err = self.run([self.cmds["lvm"], "version"])
            match = re.search(r"LVM version:\s*(\S+)", out or "")
            version = match.group(1) if match else None
        import json
        rc, out, err = self.run([self.cmds["lvs"], "--reportformat", "json", "-o", "vg_name,lv_name"])
        vgs = []
        json_ok = False
        if rc == 0:
            try:
                report = json.loads(out)["report"]
                json_ok = True
                vgs = sorted({lv["vg_name"] for lv in report[0].get("lv", [])})
            except (ValueError, KeyError, IndexError):
                json_ok = False
        if json_ok and self.find("vgs"):
            rc2, out2, _err2 = self.run([self.cmds["vgs"], "--reportformat", "json", "-o", "vg_name"])
            if rc2 == 0:
                try:
                    vgs = sorted({vg["vg_name"] for vg in json.loads(out2)["report"][0].get("vg", [])})
                except (ValueError, KeyError, IndexError):
                    pass
        self.facts["lvm"].update(version=version, json_reports=json_ok, volume_groups=vgs)
        detail = "lvm2 %s, JSON reports %s, volume groups: %s, VM disks on LVs: %s" % (
            version, "work" if json_ok else "FAIL", ", ".join(vgs) or "none", ", ".join(lv_sources) or "none")
        self.add("lvm2", json_ok, wanted, detail,
                 "VG scanning needs lvm2 >= %s (RHEL/CentOS 7.3) for 'lvs --reportformat json'; "
                 "'lvs --reportformat json' said: %s. Upgrade lvm2." % (vstr(MIN_LVM_JSON), (err or out).strip()[:300]))
        self.check_device_mapper(wanted)

    def check_rbd(self, disks):
        mode = self.params["rbd"]
        wanted = mode == "required" or (mode == "auto" and disks["rbd"] > 0)
        keyring = self.params["ceph_keyring"] or "/etc/ceph/ceph.client.%s.keyring" % self.params["ceph_id"]
        conf = self.params["ceph_conf"]
        self.facts["rbd"] = {"mode": mode, "needed": wanted, "rbd_disks": disks["rbd"], "conf": conf,
                             "keyring": keyring}
        if mode == "skip" or (mode == "auto" and not wanted):
            self.add("rbd", None, False, "not checked (%s)" % (
                "prep_rbd: skip" if mode == "skip" else "no RBD disks on this host"))
            return
        tool = self.check_tool("rbd", wanted)
        self.facts["rbd"]["version"] = tool.get("version")
        conf_ok = os.access(conf, os.R_OK)
        key_ok = os.access(keyring, os.R_OK)
        state = {True: "readable", False: "MISSING or unreadable"}
        self.add("ceph_config", conf_ok and key_ok, wanted,
                 "ceph config %s: %s; keyring %s: %s" % (conf, state[conf_ok], keyring, state[key_ok]),
                 "Copy the cluster's ceph.conf and a keyring for client.%s (with rbd caps on the VM pools) to "
                 "this host, or set prep_ceph_conf / prep_ceph_id / prep_ceph_keyring." % self.params["ceph_id"])

    def check_free_space(self):
        path = self.params["images_dir"]
        need = self.params["min_free_mb"] * 1024 * 1024
        if not os.path.isdir(path):
            self.facts["free_space"] = {"path": path, "free_bytes": None, "required_bytes": need}
            self.add("free_space", False, True, "%s does not exist" % path,
                     "Create it, or set prep_images_dir to the directory that holds the VM images "
                     "(the backup overlays are created next to the disks).")
            return
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
        self.facts["free_space"] = {"path": path, "free_bytes": free, "required_bytes": need}
        self.add("free_space", free >= need, True,
                 "%s has %d MiB free (minimum %d MiB)" % (path, free // 1048576, need // 1048576),
                 "Free space in %s (overlays grow with the writes during a backup), or lower "
                 "prep_min_free_mb if the VMs write little." % path)

    def check_image_owner(self):
        wanted = self.params["image_owner"]
        user, _sep, group = wanted.partition(":")
        group = group or user
        qemu_conf = _read("/etc/libvirt/qemu.conf")
        detected, source = detect_image_owner(qemu_conf, _user_exists, _group_exists)
        ok = _user_exists(user) and _group_exists(group)
        self.facts["image_owner"] = {"configured": wanted, "exists": ok, "detected": detected,
                                     "detected_from": source}
        missing = [what for what, there in (("user %s" % user, _user_exists(user)),
                                            ("group %s" % group, _group_exists(group))) if not there]
        detail = "%s %s; this host's qemu user:group is %s" % (
            wanted, "exists" if ok else "is missing (%s)" % ", ".join(missing),
            "%s (%s)" % (detected, source) if detected else "unknown")
        if detected and detected != wanted and ok:
            detail += " (restored images will be owned by %s, not %s)" % (wanted, detected)
        self.add("image_owner", ok, True, detail,
                 "Set vmbackup_image_owner: %s for this host (in its host_vars); restored disk images are "
                 "chowned to it." % (detected or "<user>:<group> that libvirt runs QEMU as"))

    def report(self):
        self.check_python()
        reachable = self.check_libvirt()
        self.check_emulator(reachable)
        self.check_tool("qemu_img", True)
        self.check_tool("qemu_nbd", True)
        disks = self.disks(reachable)
        self.check_lvm(disks)
        self.check_rbd(disks)
        self.check_free_space()
        self.check_image_owner()
        failures = [name for name, c in self.checks.items() if c["required"] and c["ok"] is False]
        warnings = [name for name, c in self.checks.items() if not c["required"] and c["ok"] is False]
        report = {
            "host": self.runner.host,
            "ok": not failures,
            "failures": failures,
            "warnings": warnings,
            "checks": self.checks,
            "os_family": self.family,
        }
        report.update(self.facts)
        return report


def gather(module):
    return {"changed": False, "preflight": Preflight(module).report()}
