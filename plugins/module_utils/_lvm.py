# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LVM snapshots and volumes on a hypervisor (the lvm_snapshot and lvm_volume modules).

A backup point of a VM's LV disks is one snapshot LV per disk, named
``<lv>-vmbackup-<ID>`` and tagged ``vmbackup``: only LVs with both the name and the
tag (and the right origin) are ever treated as ours, so nothing else is removed.
Thick LVs get a classic copy-on-write snapshot of a given size (absolute or a
percentage of the origin), checked against the VG's free space for all volumes
together before anything is created; thin LVs get a thin snapshot in their pool,
activated at once (``--setactivationskip n``) so that its device exists.

Everything is read with one ``lvs --reportformat json`` call (LV and VG fields
together); lvm2 older than 2.02.158 has no JSON reports and gets a clear error.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import (
    CommandError,
    CommandRunner,
    VmbackupError,
)
from ansible_collections.vmbackup.libvirt.plugins.module_utils._units import human_size

TAG = "vmbackup"
RESTORE_TAG = "vmbackup_restored"
MARK = "-vmbackup-"
MIN_EXTENTS = 2
# NAME_LEN in lvm2 is 128 bytes with the NUL; device-mapper names (DM_NAME_LEN) too, and
# LVM doubles every '-' of VG and LV in them and adds '-cow' / '-real' for thick snapshots.
NAME_MAX = 127
DM_SUFFIX = len("-cow")

LVS_FIELDS = [
    "lv_name", "vg_name", "lv_path", "lv_dm_path", "lv_attr", "lv_size", "origin", "origin_size",
    "pool_lv", "segtype", "data_percent", "snap_percent", "lv_tags", "lv_active",
    "lv_snapshot_invalid", "lv_health_status", "lv_device_open", "vg_extent_size", "vg_free", "vg_size",
]

ID_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$")
LV_NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$")
RESERVED = ("_cdata", "_cmeta", "_corig", "_iorig", "_mlog", "_mimage", "_pmspare", "_rimage",
            "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig")
SIZE_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[bBsSkKmMgGtTpP]?)(?:i?[bB])?\s*$")
PCT_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*%(?:ORIGIN)?\s*$", re.I)
UNITS = {"": 1, "b": 1, "s": 512, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

TOO_OLD_HINT = ("lvm2 on host %s is too old for JSON reports ('lvs --reportformat json' needs lvm2 "
                "2.02.158 or later; the host has %s). Upgrade lvm2 (any distribution since 2017 has it).")

SNAPSHOT_ARGSPEC = dict(
    volumes=dict(type="list", elements="str", required=True),
    snapshot=dict(type="str", required=True),
    state=dict(type="str", default="present", choices=["present", "absent", "checked"]),
    size=dict(type="str", default="10%"),
)

VOLUME_ARGSPEC = dict(
    vg=dict(type="str", required=True),
    name=dict(type="str", required=True),
    size=dict(type="int"),
    thin_pool=dict(type="str"),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    force=dict(type="bool", default=False),
)


# --- names and sizes ---------------------------------------------------------------
def human(num):
    """Bytes as LVM would print them (binary units), with the exact number."""
    return "%s (%d bytes)" % (human_size(num, digits=2, whole_bytes=True), num)


def round_up(value, step):
    return int(math.ceil(float(value) / step)) * step if step else int(value)


def dm_len(vg, lv):
    return len(vg.replace("-", "--")) + 1 + len(lv.replace("-", "--"))


def check_lv_name(name, what="LV name"):
    if (not name or name in (".", "..") or not LV_NAME_RE.match(name) or len(name) > NAME_MAX
            or any(r in name for r in RESERVED) or name.startswith(("snapshot", "pvmove"))):
        raise VmbackupError(
            "%s %r is not valid for LVM: use letters, digits and '+_.-', not starting with '-', "
            "'snapshot' or 'pvmove', without %s, at most %d characters"
            % (what, name, "/".join(RESERVED), NAME_MAX))


def check_snapshot_id(snapshot):
    if not ID_RE.match(snapshot or "") or any(r in snapshot for r in RESERVED):
        raise VmbackupError(
            "snapshot %r cannot be part of an LVM name: use letters, digits and '+_.-' (not "
            "starting with '-', without %s)" % (snapshot, "/".join(RESERVED)))


def _hash(lv):
    return hashlib.sha1(lv.encode("utf-8")).hexdigest()[:8]


def snapshot_name(vg, lv, snapshot):
    """``<lv>-vmbackup-<id>``; a long LV name is cut and marked with a hash of it to fit LVM's limits."""
    def fits(name):
        return len(name) <= NAME_MAX and dm_len(vg, name) + DM_SUFFIX <= NAME_MAX
    name = "%s%s%s" % (lv, MARK, snapshot)
    if fits(name):
        return name
    tail = ".%s%s%s" % (_hash(lv), MARK, snapshot)
    for keep in range(len(lv) - 1, -1, -1):
        name = lv[:keep] + tail
        if fits(name) and keep > 0:
            return name
    raise VmbackupError(
        "snapshot %r is too long for an LVM snapshot name of %s/%s (LVM allows %d characters for "
        "the device-mapper name, where every '-' counts twice): use a shorter backup ID"
        % (snapshot, vg, lv, NAME_MAX))


def name_is_for(name, lv):
    """Whether an LV name is one of our snapshot names for origin ``lv`` (any ID)."""
    if name.startswith(lv + MARK):
        return True
    m = re.match(r"^(?P<head>.*)\.(?P<hash>[0-9a-f]{8})" + re.escape(MARK), name)
    return bool(m and m.group("hash") == _hash(lv) and lv.startswith(m.group("head")))


def parse_size(text, origin_size, extent):
    """Bytes of a thick snapshot's COW space: ``512M``, ``1073741824``, ``20%`` (of the origin).

    Rounded up to whole extents, at least MIN_EXTENTS, and not more than the most a full
    overwrite of the origin can use (origin + its exception table, as LVM itself caps it).
    """
    m = PCT_RE.match(text or "")
    if m:
        pct = float(m.group("num"))
        if pct <= 0:
            raise VmbackupError("size %r must be more than 0%%" % text)
        wanted = origin_size * pct / 100.0
    else:
        m = SIZE_RE.match(text or "")
        if not m:
            raise VmbackupError(
                "size %r is neither a size (512M, 2G, 1073741824) nor a percentage of the origin (20%%)" % text)
        wanted = float(m.group("num")) * UNITS[m.group("unit").lower()]
        if wanted <= 0:
            raise VmbackupError("size %r must be more than 0" % text)
    size = max(round_up(wanted, extent), MIN_EXTENTS * extent)
    # 4 KiB chunks, 16 bytes per exception: a table chunk per 256 data chunks, plus the header.
    cap = round_up(origin_size + round_up(origin_size, 1 << 20) // 256 + (1 << 20), extent)
    return min(size, max(cap, MIN_EXTENTS * extent))


def parse_volume(text):
    """``/dev/VG/LV``, ``VG/LV`` or ``/dev/mapper/VG-LV`` as (VG, LV)."""
    path = (text or "").strip()
    if path.startswith("/dev/mapper/"):
        dm = path[len("/dev/mapper/"):]
        parts = re.split(r"(?<!-)-(?!-)", dm)
        if len(parts) == 2:
            return parts[0].replace("--", "-"), parts[1].replace("--", "-")
    elif path.startswith("/dev/"):
        parts = path[len("/dev/"):].split("/")
        if len(parts) == 2 and all(parts):
            return parts[0], parts[1]
    else:
        parts = path.split("/")
        if len(parts) == 2 and all(parts):
            return parts[0], parts[1]
    raise VmbackupError("volume %r is not an LV: give /dev/VG/LV, VG/LV or /dev/mapper/VG-LV" % text)


def _pct(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- reading LVM ----------------------------------------------------------------------
class Lvm:
    """lvs/lvcreate/lvremove through the collection's command runner."""

    def __init__(self, module):
        self.module = module
        self.runner = CommandRunner(module)
        self.host = self.runner.host

    def report(self, vgs):
        """{vg: {"vg": {size, free, extent_size}, "lvs": {name: row}}} of the given VGs."""
        argv = ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                "-o", ",".join(LVS_FIELDS)] + sorted(set(vgs))
        rc, out, err = self.runner.run(argv, check_rc=False)
        if rc != 0:
            text = (err or "") + (out or "")
            if "reportformat" in text or "nrecogni" in text:
                _rc, vout, verr = self.runner.run(["lvm", "version"], check_rc=False)
                version = (vout or verr or "").strip().splitlines()
                raise VmbackupError(TOO_OLD_HINT % (self.host, version[0].strip() if version else "an unknown version"),
                                    cmd=argv, rc=rc, stderr=err)
            missing = re.findall(r'Volume group "([^"]+)" not found', text)
            if missing:
                raise VmbackupError("volume group %s not found on host %s (lvs: %s). Check the VM's disk paths "
                                    "and that the VG is active there." % (", ".join(missing), self.host, err.strip()),
                                    cmd=argv, rc=rc, stderr=err)
            raise CommandError(self.runner.argv(argv), rc, out, err, what="reading the logical volumes", host=self.host)
        try:
            rows = [row for part in json.loads(out)["report"] for row in part.get("lv", [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise VmbackupError("could not parse the JSON of 'lvs --reportformat json' on host %s (%s): %s"
                                % (self.host, exc, (out or "")[:500]))
        result = {vg: {"vg": None, "lvs": {}} for vg in vgs}
        for row in rows:
            entry = result.setdefault(row["vg_name"], {"vg": None, "lvs": {}})
            entry["lvs"][row["lv_name"]] = row
            entry["vg"] = {"size": _int(row.get("vg_size")), "free": _int(row.get("vg_free")),
                           "extent_size": _int(row.get("vg_extent_size"))}
        return result

    def vg_info(self, vg):
        """VG size/free/extent for a VG that may hold no LV yet (lvs then has no row for it)."""
        argv = ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
                "-o", "vg_name,vg_size,vg_free,vg_extent_size", vg]
        rc, out, err = self.runner.run(argv, check_rc=False)
        if rc != 0:
            if "not found" in (err or ""):
                raise VmbackupError("volume group %s not found on host %s" % (vg, self.host), cmd=argv, rc=rc, stderr=err)
            raise CommandError(self.runner.argv(argv), rc, out, err, what="reading volume group %s" % vg, host=self.host)
        row = json.loads(out)["report"][0]["vg"][0]
        return {"size": int(row["vg_size"]), "free": int(row["vg_free"]), "extent_size": int(row["vg_extent_size"])}

    def run(self, argv, what, hint=None):
        return self.runner.run(argv, what=what, hint=hint)


def is_thin(row):
    return row.get("segtype") == "thin"


def is_thick_snapshot(row):
    return row.get("lv_attr", " ")[0] in ("s", "S")


def is_invalid(row):
    attr = row.get("lv_attr") or "          "
    if is_thick_snapshot(row):
        return (row.get("lv_snapshot_invalid") == "snapshot invalid" or attr[4] in ("I", "S")
                or (_pct(row.get("snap_percent")) or 0) >= 100.0)
    return row.get("lv_health_status") in ("failed", "partial")


def has_tag(row, tag):
    return tag in (row.get("lv_tags") or "").split(",")


# --- lvm_snapshot ------------------------------------------------------------------------
class Volume:
    def __init__(self, given, vg, lv):
        self.given = given
        self.vg = vg
        self.lv = lv
        self.row = None
        self.snap_name = None
        self.snap_row = None
        self.cow_size = None  # planned, thick only

    @property
    def ref(self):
        return "%s/%s" % (self.vg, self.lv)


class LvmSnapshot:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.lvm = Lvm(module)
        self.host = self.lvm.host
        self.snapshot = self.params["snapshot"]
        self.state = self.params["state"]
        self.changed = False
        self.actions = []
        self.warnings = []
        self.window = None
        seen = set()
        self.volumes = []
        for given in self.params["volumes"]:
            vg, lv = parse_volume(given)
            if (vg, lv) in seen:
                continue
            seen.add((vg, lv))
            self.volumes.append(Volume(given, vg, lv))
        if not self.volumes:
            raise VmbackupError("volumes is empty: give the VM's LV disks")
        self.all = self.snapshot == "all"
        if self.all and self.state != "absent":
            raise VmbackupError("snapshot=all is only for state=absent (remove every vmbackup snapshot of the volumes)")
        if not self.all:
            check_snapshot_id(self.snapshot)
            for vol in self.volumes:
                vol.snap_name = snapshot_name(vol.vg, vol.lv, self.snapshot)

    def load(self):
        self.report = self.lvm.report([v.vg for v in self.volumes])
        for vol in self.volumes:
            lvs = self.report[vol.vg]["lvs"]
            vol.row = lvs.get(vol.lv)
            vol.snap_row = lvs.get(vol.snap_name) if vol.snap_name else None

    def ours(self, vol):
        """Our snapshots of a volume (all IDs), as rows."""
        found = []
        for name, row in sorted(self.report[vol.vg]["lvs"].items()):
            if name == vol.lv or not has_tag(row, TAG) or not name_is_for(name, vol.lv):
                continue
            if row.get("origin") == vol.lv or (is_thin(row) and not row.get("origin")):
                found.append(row)
        return found

    def note(self, action):
        self.changed = True
        self.actions.append(action)

    def _require_origins(self):
        missing = [v for v in self.volumes if v.row is None]
        if missing:
            raise VmbackupError(
                "logical volume %s not found on host %s. Check the VM's disk paths (lvs lists the LVs there)."
                % (", ".join(v.ref for v in missing), self.host))
        for vol in self.volumes:
            if is_thick_snapshot(vol.row) or vol.row.get("segtype") in ("thin-pool", "cache-pool", "vdo-pool"):
                raise VmbackupError(
                    "%s on host %s is a %s, not a VM disk LV that can be snapshotted"
                    % (vol.ref, self.host, "snapshot" if is_thick_snapshot(vol.row) else vol.row.get("segtype")))

    def _check_existing(self, vol):
        """An LV with our snapshot name: ours (True), or someone else's (error)."""
        row = vol.snap_row
        if row is None:
            return False
        if not has_tag(row, TAG) or row.get("origin") != vol.lv:
            raise VmbackupError(
                "an LV named %s/%s already exists on host %s but it is not a vmbackup snapshot of %s "
                "(origin %r, tags %r); nothing was changed. Rename or remove it, or use another backup ID."
                % (vol.vg, vol.snap_name, self.host, vol.ref, row.get("origin"), row.get("lv_tags")))
        if is_invalid(row):
            raise VmbackupError(
                "snapshot %s/%s of %s on host %s exists but is invalid (its copy-on-write space overflowed). "
                "Remove it with state=absent and take a new one with a larger size."
                % (vol.vg, vol.snap_name, vol.ref, self.host))
        return True

    # --- present ------------------------------------------------------------
    def present(self):
        self._require_origins()
        todo = [v for v in self.volumes if not self._check_existing(v)]
        if todo and len(todo) < len(self.volumes):
            # Some volumes are frozen at this ID and some not: a run died half way. Snapshotting
            # the rest now would not be one instant; refuse rather than make an inconsistent backup.
            raise VmbackupError(
                "only some volumes have snapshot %s on host %s (%s have it, %s do not); a backup point must "
                "cover all disks at one instant. Nothing was changed. Remove them with state=absent and retry."
                % (self.snapshot, self.host, ", ".join(v.ref for v in self.volumes if v not in todo),
                   ", ".join(v.ref for v in todo)))
        if not todo:
            self.activate()
        for vol in self.volumes:
            others = [r["lv_name"] for r in self.ours(vol) if r["lv_name"] != vol.snap_name]
            if others:
                self.warnings.append(
                    "%s on host %s still has other vmbackup snapshots (%s): a failed run left them? Thick "
                    "snapshots slow writes and use space; remove them with state=absent and snapshot=all."
                    % (vol.ref, self.host, ", ".join(others)))
        if not todo:
            return
        # Free space for all thick snapshots together, per VG, before anything is created.
        needed = {}
        for vol in todo:
            if is_thin(vol.row):
                pool = self.report[vol.vg]["lvs"].get(vol.row.get("pool_lv")) or {}
                fill = _pct(pool.get("data_percent"))
                if fill is not None and fill >= 90.0:
                    self.warnings.append(
                        "thin pool %s/%s on host %s is %.1f%% full: writes to %s during the backup may "
                        "fill it" % (vol.vg, vol.row.get("pool_lv"), self.host, fill, vol.ref))
                continue
            vg = self.report[vol.vg]["vg"]
            vol.cow_size = parse_size(self.params["size"], int(vol.row["lv_size"]), vg["extent_size"])
            needed.setdefault(vol.vg, []).append(vol)
        short = []
        for vg_name, vols in sorted(needed.items()):
            total = sum(v.cow_size for v in vols)
            free = self.report[vg_name]["vg"]["free"]
            if total > free:
                short.append("volume group %s needs %s for %s but has %s free" % (
                    vg_name, human(total),
                    ", ".join("%s %s" % (v.ref, human(v.cow_size)) for v in vols), human(free)))
        if short:
            raise VmbackupError(
                "not enough free space on host %s for the snapshots of backup %s (size %s): %s. Nothing was "
                "created. Use a smaller size, free space in the volume group (vgextend, or remove unused "
                "LVs), or move the disks to thin LVs." % (self.host, self.snapshot, self.params["size"],
                                                          "; ".join(short)))
        self.note("create snapshots %s" % ", ".join(
            "%s/%s (%s)" % (v.vg, v.snap_name, "thin" if v.cow_size is None else "%d bytes" % v.cow_size)
            for v in todo))
        if self.module.check_mode:
            return
        created = []
        start = time.time()
        try:
            for vol in todo:
                if vol.cow_size is None:
                    argv = ["lvcreate", "--snapshot", "--setactivationskip", "n", "--addtag", TAG,
                            "--name", vol.snap_name, vol.ref]
                else:
                    argv = ["lvcreate", "--snapshot", "--size", "%db" % vol.cow_size, "--addtag", TAG,
                            "--name", vol.snap_name, vol.ref]
                self.lvm.run(argv, what="creating snapshot %s/%s of %s" % (vol.vg, vol.snap_name, vol.ref))
                created.append("%s/%s" % (vol.vg, vol.snap_name))
        except CommandError as exc:
            if created:
                try:
                    self.lvm.run(["lvremove", "--force", "--yes"] + created,
                                 what="removing the snapshots created before the failure")
                    exc.msg += ". The snapshots created before it (%s) were removed again" % ", ".join(created)
                except CommandError as exc2:
                    exc.msg += (". The snapshots created before it (%s) could not be removed (%s): remove them with "
                                "state=absent" % (", ".join(created), exc2.msg))
            raise
        self.window = round(time.time() - start, 3)
        self.load()
        self.activate()

    def activate(self):
        """Snapshots of ours that exist but are inactive (thin ones after a reboot) get activated."""
        inactive = ["%s/%s" % (v.vg, v.snap_name) for v in self.volumes
                    if v.snap_row is not None and v.snap_row.get("lv_active") != "active"]
        if not inactive:
            return
        self.note("activate %s" % ", ".join(inactive))
        if self.module.check_mode:
            return
        self.lvm.run(["lvchange", "--activate", "y", "--ignoreactivationskip"] + inactive,
                     what="activating snapshots %s" % ", ".join(inactive))
        self.load()

    # --- absent -------------------------------------------------------------
    def absent(self):
        doomed = []
        for vol in self.volumes:
            if vol.row is None and not self.all and vol.snap_row is None:
                continue
            if self.all:
                rows = self.ours(vol)
            else:
                rows = [r for r in self.ours(vol) if r["lv_name"] == vol.snap_name]
                if vol.snap_row is not None and not rows:
                    self.warnings.append(
                        "%s/%s on host %s has the name of a vmbackup snapshot but is not one (no tag %s or "
                        "another origin): left alone" % (vol.vg, vol.snap_name, self.host, TAG))
            doomed += ["%s/%s" % (vol.vg, r["lv_name"]) for r in rows]
        doomed = sorted(set(doomed))
        if not doomed:
            return
        self.note("remove snapshots %s" % ", ".join(doomed))
        if not self.module.check_mode:
            self.lvm.run(["lvremove", "--force", "--yes"] + doomed, what="removing snapshots %s" % ", ".join(doomed))

    # --- checked ------------------------------------------------------------
    def checked(self):
        problems = []
        for vol in self.volumes:
            row = vol.snap_row
            if row is None or not has_tag(row, TAG):
                problems.append("%s has no snapshot %s" % (vol.ref, vol.snap_name))
            elif is_invalid(row):
                problems.append("snapshot %s/%s of %s is invalid: its copy-on-write space (%s) overflowed "
                                "(%s%% used), so what was read from it is not the state at the snapshot"
                                % (vol.vg, vol.snap_name, vol.ref, human(int(row["lv_size"])),
                                   row.get("snap_percent") or "100"))
            elif not is_thin(row) and (_pct(row.get("snap_percent")) or 0) >= 80.0:
                self.warnings.append("snapshot %s/%s of %s is %s%% full: use a larger size next time"
                                     % (vol.vg, vol.snap_name, vol.ref, row.get("snap_percent")))
        return problems

    # --- result -------------------------------------------------------------
    def describe(self, vol):
        row = vol.snap_row
        thin = is_thin(vol.row) if vol.row else bool(row and is_thin(row))
        info = {
            "volume": vol.given,
            "origin": vol.ref,
            "origin_path": (vol.row or {}).get("lv_path") or "/dev/%s/%s" % (vol.vg, vol.lv),
            "vg": vol.vg,
            "thin": thin,
            "pool": ((vol.row or row or {}).get("pool_lv") or None) if thin else None,
            "virtual_size": _int((vol.row or {}).get("lv_size")),
            "name": vol.snap_name,
            "snapshot": "%s/%s" % (vol.vg, vol.snap_name) if vol.snap_name else None,
            "path": "/dev/%s/%s" % (vol.vg, vol.snap_name) if vol.snap_name else None,
            "device": None,
            "exists": row is not None,
            "active": bool(row and row.get("lv_active") == "active"),
            "cow_size": vol.cow_size if (row is None and not thin) else None,
            "data_percent": None,
            "snap_percent": None,
            "invalid": False,
        }
        if row is not None:
            info["path"] = row.get("lv_path") or info["path"]
            info["device"] = row.get("lv_dm_path") or None
            info["data_percent"] = _pct(row.get("data_percent"))
            info["invalid"] = is_invalid(row)
            if not thin:
                info["cow_size"] = _int(row.get("lv_size"))
                info["snap_percent"] = _pct(row.get("snap_percent"))
        return info

    def listing(self):
        lines = []
        for vol in self.volumes:
            lines += ["%s/%s" % (vol.vg, r["lv_name"]) for r in self.ours(vol)]
        return "\n".join(sorted(set(lines))) + ("\n" if lines else "")

    def result(self, before):
        if self.changed and not self.module.check_mode and self.state != "present":
            self.load()
        vgs = {}
        for vg_name, entry in sorted(self.report.items()):
            if entry["vg"]:
                vgs[vg_name] = dict(entry["vg"])
        out = {
            "changed": self.changed,
            "actions": self.actions,
            "volumes": [self.describe(v) for v in self.volumes] if not self.all else [],
            "vgs": vgs,
        }
        if self.all:
            out["volumes"] = [{"volume": v.given, "origin": v.ref, "vg": v.vg,
                               "snapshots": ["%s/%s" % (v.vg, r["lv_name"]) for r in self.ours(v)]}
                              for v in self.volumes]
        if self.window is not None:
            out["snapshot_window"] = self.window
        for warning in self.warnings:
            self.module.warn(warning)
        if self.module._diff and self.state != "checked":
            after = before if self.module.check_mode else self.listing()
            if self.module.check_mode:
                names = set(before.split())
                for action in self.actions:
                    if action.startswith("create"):
                        names |= set("%s/%s" % (v.vg, v.snap_name) for v in self.volumes)
                    elif action.startswith("remove"):
                        names -= set(action[len("remove snapshots "):].split(", "))
                after = "\n".join(sorted(names)) + ("\n" if names else "")
            out["diff"] = {"before": before, "after": after}
        return out


def run_snapshot(module):
    snap = LvmSnapshot(module)
    snap.load()
    before = snap.listing()
    state = snap.state
    if state == "present":
        snap.present()
    elif state == "absent":
        snap.absent()
    else:
        problems = snap.checked()
        if problems:
            result = snap.result(before)
            raise VmbackupError("snapshot check of backup %s failed on host %s: %s. The backup must not be "
                                "marked complete; remove the snapshots (state=absent) and back up again, with a "
                                "larger size if the space overflowed." % (snap.snapshot, snap.host, "; ".join(problems)),
                                volumes=result["volumes"], vgs=result["vgs"])
    return snap.result(before)


# --- lvm_volume ----------------------------------------------------------------------------
def run_volume(module):
    p = module.params
    lvm = Lvm(module)
    host = lvm.host
    vg, name, pool = p["vg"], p["name"], p["thin_pool"]
    check_lv_name(name)
    if p["state"] == "present" and not p["size"]:
        raise VmbackupError("size (bytes) is required with state=present")
    report = lvm.report([vg])[vg]
    vginfo = report["vg"] or lvm.vg_info(vg)
    row = report["lvs"].get(name)
    ref = "%s/%s" % (vg, name)
    out = {"changed": False, "vg": vg, "name": name, "lv_path": "/dev/%s/%s" % (vg, name), "created": False,
           "removed": False}
    warnings = []
    before = _vol_text(row)

    if p["state"] == "absent":
        if row is None:
            out["diff"] = {"before": before, "after": before} if module._diff else None
            return _clean(module, out, warnings)
        if not has_tag(row, RESTORE_TAG) and not p["force"]:
            raise VmbackupError(
                "%s on host %s was not created by vmbackup (no tag %s): it is left alone. Set force=true "
                "to remove it anyway." % (ref, host, RESTORE_TAG))
        if row.get("lv_device_open") == "open":
            raise VmbackupError("%s on host %s is open (a running VM or a mount uses it): it is not removed. "
                                "Stop what uses it first." % (ref, host))
        kind = row.get("segtype")
        if kind in ("thin-pool", "cache-pool", "vdo-pool") or is_thick_snapshot(row) or row.get("lv_attr", " ")[0] == "o" \
                or any(r.get("origin") == name for r in report["lvs"].values()):
            raise VmbackupError("%s on host %s is a %s or has snapshots: lvm_volume removes only plain volumes"
                                % (ref, host, kind))
        out.update(changed=True, removed=True, actions=["remove %s" % ref])
        if not module.check_mode:
            lvm.run(["lvremove", "--force", "--yes", ref], what="removing %s" % ref)
        if module._diff:
            out["diff"] = {"before": before, "after": ""}
        return _clean(module, out, warnings)

    size = p["size"]
    extent = vginfo["extent_size"]
    want = round_up(size, extent)
    if row is not None:
        have = _int(row.get("lv_size")) or 0
        if not p["force"]:
            raise VmbackupError(
                "%s already exists on host %s (%s); nothing was changed. Restores never overwrite a volume "
                "unless told: choose another name or set force=true to reuse it." % (ref, host, human(have)))
        if have < size:
            raise VmbackupError(
                "%s exists on host %s but is %s, smaller than the %s needed; nothing was changed. Extend it "
                "(lvextend -L %db %s) or remove it, or choose another name." % (ref, host, human(have), human(size), want, ref))
        if pool and (not is_thin(row) or row.get("pool_lv") != pool):
            warnings.append("%s exists and is kept, but it is not a thin volume of pool %s" % (ref, pool))
        elif not pool and is_thin(row):
            warnings.append("%s exists and is kept; it is a thin volume of pool %s" % (ref, row.get("pool_lv")))
        if have > size:
            warnings.append("%s exists and is kept; it is %s, larger than the %s restored into it"
                            % (ref, human(have), human(size)))
        if row.get("lv_active") != "active":
            out["changed"] = True
            out["actions"] = ["activate %s" % ref]
            if not module.check_mode:
                lvm.run(["lvchange", "--activate", "y", "--ignoreactivationskip", ref], what="activating %s" % ref)
                row = lvm.report([vg])[vg]["lvs"].get(name) or row
        out.update(_vol_facts(row))
        return _clean(module, out, warnings)

    if pool:
        prow = report["lvs"].get(pool)
        if prow is None or prow.get("segtype") != "thin-pool":
            raise VmbackupError("thin pool %s/%s not found on host %s%s" % (
                vg, pool, host, "" if prow is None else " (%s/%s is a %s)" % (vg, pool, prow.get("segtype"))))
        argv = ["lvcreate", "--yes", "--virtualsize", "%db" % want, "--thin",
                "--addtag", RESTORE_TAG, "--name", name, "%s/%s" % (vg, pool)]
        fill = _pct(prow.get("data_percent"))
        if fill is not None and fill >= 90.0:
            warnings.append("thin pool %s/%s is %.1f%% full" % (vg, pool, fill))
    else:
        if want > vginfo["free"]:
            raise VmbackupError(
                "not enough free space in volume group %s on host %s for %s: it needs %s, the VG has %s free. "
                "Nothing was created. Free space, restore into another VG, or into a thin pool."
                % (vg, host, ref, human(want), human(vginfo["free"])))
        argv = ["lvcreate", "--yes", "--size", "%db" % want, "--wipesignatures", "y",
                "--addtag", RESTORE_TAG, "--name", name, vg]
    out.update(changed=True, created=True, actions=["create %s (%d bytes%s)" % (ref, want, ", thin in %s" % pool if pool else "")],
               size=want, thin=bool(pool), pool=pool)
    if not module.check_mode:
        lvm.run(argv, what="creating %s" % ref)
        row = lvm.report([vg])[vg]["lvs"].get(name)
        if row is None:
            raise VmbackupError("lvcreate said it created %s on host %s but lvs does not list it" % (ref, host))
        out.update(_vol_facts(row))
    if module._diff:
        out["diff"] = {"before": before, "after": "%s %d bytes%s\n" % (ref, want, " thin %s" % pool if pool else "")}
    return _clean(module, out, warnings)


def _vol_facts(row):
    return {"lv_path": row.get("lv_path") or "/dev/%s/%s" % (row["vg_name"], row["lv_name"]),
            "device": row.get("lv_dm_path") or None,
            "size": _int(row.get("lv_size")), "thin": is_thin(row), "pool": row.get("pool_lv") or None,
            "active": row.get("lv_active") == "active", "tags": [t for t in (row.get("lv_tags") or "").split(",") if t]}


def _vol_text(row):
    if row is None:
        return ""
    return "%s/%s %s bytes%s\n" % (row["vg_name"], row["lv_name"], row.get("lv_size"),
                                   " thin %s" % row.get("pool_lv") if is_thin(row) else "")


def _clean(module, out, warnings):
    for warning in warnings:
        module.warn(warning)
    if out.get("diff") is None:
        out.pop("diff", None)
    return out
