# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restores that cannot destroy: where each disk is written, and the swap (runs on the hypervisor).

A restore writes only where it is trusted to (``_restore_targets``: the user's disk map, or what
the target hypervisor vouches for, never a path only the repository names), and only into
volumes it creates in this run:
- a target that does not exist is created and written in place;
- an existing target is refused, unless ``force``: then the restore writes into a NEW volume
  beside it (``staged``) and, once every new volume is complete and verified, swaps it in:
    file  PATH            new PATH.vmbackup-restore-RUN   old kept as PATH.vmbackup-old-RUN
    LV    VG/NAME         new VG/NAME-vmbr-RUN8           old kept as VG/NAME-vmbo-RUN8
    RBD   POOL/IMG        new POOL/IMG.vmbackup-restore-RUN   old kept as POOL/IMG.vmbackup-old-RUN
  (rename / lvrename / rbd rename). The domain is defined only after the swap; the old
  volumes are removed only after the definition succeeded (``finish``).
- a block device that is not an LV has no "beside": it is refused, and with ``force`` it is
  written in place (``in_place``), the one case where a failed restore leaves a damaged target.

Swap order, per disk in plan order: (1) old -> aside, (2) new -> final. Each step is one rename,
so at any instant every disk's old data is under FINAL or under its aside name, and its new
data under its staged name or FINAL; the names say which. A failure (or ``undo`` after a failed
definition) reverses the done steps in reverse order: FINAL -> staged, aside -> FINAL. If the run
itself dies in the middle, the same renames by hand restore the old state (docs/restore.md).
"""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
import re
import stat

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _rbd as rbdlib
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _restore_targets as targets
from ansible_collections.vmbackup.libvirt.plugins.module_utils._domain import Domain
from ansible_collections.vmbackup.libvirt.plugins.module_utils._files import fsync_dir, rename_durably, write_new
from ansible_collections.vmbackup.libvirt.plugins.module_utils._virsh import URI_ARGSPEC, Virsh

RESTORE_TAG = "vmbackup_restored"
RUN_ID_RE = re.compile(r"^[a-z0-9]{8,32}$")

ARGUMENT_SPEC = dict(
    action=dict(type="str", required=True, choices=["prepare", "write", "swap", "undo", "finish", "discard"]),
    disks=dict(type="list", elements="dict", default=[]),
    force=dict(type="bool", default=False),
    run_id=dict(type="str", required=True),
    vm=dict(type="str", default=""),
    path=dict(type="path"),
    content=dict(type="str", no_log=True),
    owner=dict(type="str"),
    group=dict(type="str"),
    allowed_dirs=dict(type="list", elements="path", default=[]),
    **dict(URI_ARGSPEC, **rbdlib.CEPH_ARGSPEC)
)


# --------------------------------------------------------------------------
# names and decisions (pure)

def check_run_id(run_id):
    if not run_id or not RUN_ID_RE.match(run_id):
        raise VmbackupError("invalid run_id %r: 8 to 32 lowercase letters and digits" % (run_id,))
    return run_id


def dm_split(name):
    """VG and LV of a device-mapper name (``vg--a-lv--b`` -> ``vg-a``, ``lv-b``), or None."""
    parts = re.split(r"(?<!-)-(?!-)", name)
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0].replace("--", "-"), parts[1].replace("--", "-")


def lv_of_path(path):
    """(VG, LV) named by ``/dev/VG/LV`` or ``/dev/mapper/VG-LV``, or None."""
    m = re.match(r"^/dev/mapper/([^/]+)$", path or "")
    if m:
        return dm_split(m.group(1))
    m = re.match(r"^/dev/([^/]+)/([^/]+)$", path or "")
    if m and m.group(1) not in ("mapper", "disk", "block", "by-id"):
        return m.group(1), m.group(2)
    return None


def staged_names(kind, path, run_id, vg=None, lv=None):
    """(staged, aside) names of a forced restore over an existing target."""
    if kind == "file":
        return "%s.vmbackup-restore-%s" % (path, run_id), "%s.vmbackup-old-%s" % (path, run_id)
    if kind == "lv":
        return "%s-vmbr-%s" % (lv, run_id[:8]), "%s-vmbo-%s" % (lv, run_id[:8])
    if kind == "rbd":
        return "%s.vmbackup-restore-%s" % (path, run_id), "%s.vmbackup-old-%s" % (path, run_id)
    raise VmbackupError("no staged name for a %s target" % kind)


def decide(entry, found, force, run_id):
    """Where one disk of the plan is written.

    ``found``: what the target is on the hypervisor now: {"exists": bool, "kind": "file" |
    "lv" | "device" | "rbd" | None, "vg", "lv", "size"}. Returns the entry with ``staged``
    (where the data is written), ``swap`` (a staged volume replaces the target afterwards),
    ``aside``, ``create_lv`` ({vg, name, size} or None), ``created`` (the target is new),
    ``in_place`` (an existing non-LV device written over). Raises when the target exists
    and ``force`` is not set.
    """
    out = dict(entry)
    path = entry["path"]
    kind = entry.get("type", "file")
    size = int(entry.get("size") or 0)
    out.update(staged=path, swap=False, aside=None, create_lv=None, created=False, in_place=False,
               lv_ref=None, found=found.get("kind"))
    if found.get("exists"):
        what = {"file": "file", "lv": "logical volume %s/%s" % (found.get("vg"), found.get("lv")),
                "device": "block device (not an LV)", "rbd": "RBD image"}.get(found.get("kind"), "target")
        if not force:
            raise VmbackupError("restore target %s of disk %s already exists (%s)" % (path, entry["target"], what),
                                refused=path)
        if found["kind"] == "lv":
            staged, aside = staged_names("lv", path, run_id, found["vg"], found["lv"])
            out.update(staged="/dev/%s/%s" % (found["vg"], staged), swap=True, aside=aside,
                       lv_ref={"vg": found["vg"], "name": found["lv"], "staged": staged, "aside": aside},
                       create_lv={"vg": found["vg"], "name": staged, "size": size})
        elif found["kind"] == "device":
            out.update(in_place=True)
        elif found["kind"] in ("file", "rbd"):
            staged, aside = staged_names(found["kind"], path, run_id)
            out.update(staged=staged, swap=True, aside=aside)
        else:
            raise VmbackupError("restore target %s of disk %s exists but is neither a file, an LV, a block "
                                "device nor an RBD image; nothing was written" % (path, entry["target"]))
        return out
    out["created"] = True
    if kind == "block":
        ref = lv_of_path(path)
        if ref is None:
            raise VmbackupError(
                "restore target %s of disk %s does not exist and is not an LV path (/dev/VG/LV or "
                "/dev/mapper/VG-LV), so it cannot be created; create it first or map the disk elsewhere"
                % (path, entry["target"]))
        out.update(staged="/dev/%s/%s" % ref, create_lv={"vg": ref[0], "name": ref[1], "size": size},
                   lv_ref={"vg": ref[0], "name": ref[1], "staged": ref[1], "aside": None})
    return out


# --------------------------------------------------------------------------
# the hypervisor

class Host:
    def __init__(self, module):
        self.module = module
        self.runner = CommandRunner(module)
        self.name = self.runner.host
        self._lvs = None
        p = module.params
        self.rbd = rbdlib.Rbd(lambda argv, what: self.runner.run(argv, what=what, check_rc=False),
                              p, self.name)

    def lvs(self):
        if self._lvs is None:
            try:
                self.runner.binary("lvs")
            except VmbackupError:
                self._lvs = []
                return self._lvs
            rc, out, err = self.runner.run(
                ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                 "-o", "vg_name,lv_name,lv_path,lv_dm_path,lv_size,lv_tags,lv_device_open"],
                what="listing logical volumes", check_rc=False)
            if rc != 0:
                raise VmbackupError("lvs failed on host %s (rc=%s): %s" % (self.name, rc, err.strip()))
            self._lvs = json.loads(out)["report"][0]["lv"]
        return self._lvs

    def find_lv(self, path):
        real = os.path.realpath(path) if os.path.exists(path) else None
        for row in self.lvs():
            for cand in (row.get("lv_path"), row.get("lv_dm_path")):
                if cand and (cand == path or (real and os.path.exists(cand) and os.path.realpath(cand) == real)):
                    return row
        ref = lv_of_path(path)
        if ref:
            for row in self.lvs():
                if (row["vg_name"], row["lv_name"]) == ref:
                    return row
        return None

    def inspect(self, entry):
        path, kind = entry["path"], entry.get("type", "file")
        if kind == "rbd":
            image = rbdlib.check_image(path)
            return {"exists": self.rbd.exists(image), "kind": "rbd"}
        if kind == "block":
            row = self.find_lv(path)
            if row is not None:
                return {"exists": True, "kind": "lv", "vg": row["vg_name"], "lv": row["lv_name"],
                        "size": int(row.get("lv_size") or 0)}
            if os.path.exists(path):
                return {"exists": True, "kind": "device" if stat.S_ISBLK(os.stat(path).st_mode) else "file"}
            return {"exists": False, "kind": None}
        if os.path.lexists(path):
            st = os.stat(path) if os.path.exists(path) else None
            if st is not None and stat.S_ISBLK(st.st_mode):
                row = self.find_lv(path)
                if row is not None:
                    return {"exists": True, "kind": "lv", "vg": row["vg_name"], "lv": row["lv_name"]}
                return {"exists": True, "kind": "device"}
            return {"exists": True, "kind": "file"}
        return {"exists": False, "kind": None}

    def names(self, entry, found):
        """The names a target (or a VM's disk source) is known by, and its resolved path."""
        path, kind = entry["path"], entry.get("type", "file")
        if kind == "rbd":
            return {"keys": ["rbd:" + path], "real": path}
        real = os.path.realpath(path)
        keys = [path, real]
        ref = (found.get("vg"), found.get("lv")) if found.get("kind") == "lv" else lv_of_path(path)
        if ref is None and kind == "block":
            row = self.find_lv(path)
            ref = (row["vg_name"], row["lv_name"]) if row else None
        if ref:
            keys.append("lv:%s/%s" % ref)
        return {"keys": keys, "real": real}

    def vouched(self, vm, uri, user_dirs):
        """What this hypervisor vouches for: the disk sources and NVRAM of VM ``vm`` defined here
        now (libvirt's definition, not the repository's), and the allowed directories."""
        virsh = Virsh(self.runner, uri)
        keys, defined = [], bool(vm) and virsh.exists(vm)
        if defined:
            domain = Domain(virsh.dumpxml(vm, inactive=True), what="VM %s on host %s" % (vm, self.name))
            sources = [({"type": "rbd" if d.protocol == "rbd" else ("block" if d.type == "block" else "file"),
                         "path": d.source}) for d in domain.disks if d.source and d.type in ("file", "block", "network")]
            if domain.nvram:
                sources.append({"type": "file", "path": domain.nvram})
            for src in sources:
                if src["type"] == "rbd" or src["path"].startswith("/"):
                    keys.extend(self.names(src, {})["keys"])
        pools = virsh.pool_paths(targets.POOL_TYPES)
        if pools is None:
            self.module.warn("libvirt at %s on host %s lists no storage pools; new files that only the backup's "
                             "manifest names may go into %s and restore_allowed_dirs only"
                             % (uri, self.name, ", ".join(targets.DEFAULT_ALLOWED_DIRS)))
        return {"vm": vm, "defined": defined, "keys": keys, "dirs": targets.allowed_dirs(pools, user_dirs)}

    def lvm(self, argv, what):
        self.runner.run(argv, what="%s on host %s" % (what, self.name))
        self._lvs = None


def _exists(host, kind, name):
    if kind == "file":
        return os.path.lexists(name)
    if kind == "rbd":
        return host.rbd.exists(name)
    vg, lv = name
    return any((r["vg_name"], r["lv_name"]) == (vg, lv) for r in host.lvs())


def _rename(host, kind, src, dst):
    if kind == "file":
        if os.path.lexists(dst):
            raise VmbackupError("cannot rename %s to %s on host %s: %s exists" % (src, dst, host.name, dst))
        try:
            rename_durably(src, dst)
        except OSError as exc:
            raise VmbackupError("renaming %s to %s on host %s failed: %s" % (src, dst, host.name, exc))
    elif kind == "rbd":
        host.rbd.run(src, "renaming it to %s" % dst, "rename", "--", src, dst)
    else:
        (vg, a), (_vg, b) = src, dst
        host.lvm(["lvrename", "--", vg, a, b], "renaming %s/%s to %s/%s" % (vg, a, vg, b))


def _names(disk):
    """(kind, final, staged, aside) in the form _rename takes."""
    if disk.get("lv_ref"):
        ref = disk["lv_ref"]
        vg = ref["vg"]
        return "lv", (vg, ref["name"]), (vg, ref["staged"]), (vg, ref["aside"]) if ref["aside"] else None
    kind = "rbd" if disk.get("type") == "rbd" else "file"
    return kind, disk["path"], disk["staged"], disk.get("aside")


def _show(name):
    return "%s/%s" % name if isinstance(name, tuple) else name


def swap(host, disks):
    """Put every staged volume in place of its target; on failure undo what was done."""
    for disk in disks:  # every new volume is there before anything is renamed
        if disk.get("swap"):
            kind, final, staged, aside = _names(disk)
            if not _exists(host, kind, staged):
                raise VmbackupError("the restored volume %s for %s is missing on host %s; nothing was swapped, "
                                    "the old disks are in place" % (_show(staged), _show(final), host.name))
    done = []
    for disk in disks:
        if not disk.get("swap"):
            continue
        kind, final, staged, aside = _names(disk)
        try:
            if _exists(host, kind, final):
                _rename(host, kind, final, aside)
                done.append((disk, "aside"))
            _rename(host, kind, staged, final)
            done.append((disk, "in"))
        except VmbackupError as exc:
            problems = undo_steps(host, done)
            raise VmbackupError(
                "swapping the restored %s in place of %s failed on host %s: %s. %s"
                % (_show(staged), _show(final), host.name, exc.msg,
                   "Every disk was put back as it was; the new volumes remain under their .vmbackup-restore "
                   "names until discarded." if not problems else
                   "Putting the disks back failed too (%s): rename by hand as docs/restore.md says."
                   % "; ".join(problems)))
    return [d["target"] for d, step in done if step == "in"]


def undo_steps(host, done):
    problems = []
    for disk, step in reversed(done):
        kind, final, staged, aside = _names(disk)
        try:
            if step == "in":
                _rename(host, kind, final, staged)
            else:
                _rename(host, kind, aside, final)
        except VmbackupError as exc:
            problems.append(exc.msg)
    return problems


def undo(host, disks):
    """Reverse a complete swap (after a failed definition): new -> staged, old -> final."""
    done = []
    for disk in disks:
        if not disk.get("swap"):
            continue
        kind, final, staged, aside = _names(disk)
        if aside and _exists(host, kind, aside):
            done.append((disk, "aside"))
            if _exists(host, kind, final) and not _exists(host, kind, staged):
                done.append((disk, "in"))
    problems = undo_steps(host, done)
    if problems:
        raise VmbackupError("putting the old disks back failed on host %s: %s. Rename by hand as "
                            "docs/restore.md says." % (host.name, "; ".join(problems)))
    return len([1 for _d, s in done if s == "aside"])


def _remove(host, kind, name, what):
    if not _exists(host, kind, name):
        return False
    if kind == "file":
        os.unlink(name)
        fsync_dir(os.path.dirname(name) or "/")
    elif kind == "rbd":
        host.rbd.remove(name)
    else:
        vg, lv = name
        row = next(r for r in host.lvs() if (r["vg_name"], r["lv_name"]) == (vg, lv))
        if row.get("lv_device_open") == "open":
            raise VmbackupError("%s %s/%s on host %s is open; it is not removed" % (what, vg, lv, host.name))
        host.lvm(["lvremove", "--force", "--yes", "%s/%s" % (vg, lv)], "removing %s/%s" % (vg, lv))
    return True


def finish(host, disks):
    """Remove the old volumes a completed restore put aside."""
    removed = []
    for disk in disks:
        if disk.get("swap"):
            kind, _final, _staged, aside = _names(disk)
            if aside and _remove(host, kind, aside, "the replaced volume"):
                removed.append(_show(aside))
    return removed


def discard(host, disks):
    """Remove what a failed restore created: staged volumes (never swapped in) and new targets.

    Staged names carry the run's ID, so nothing of another run or of the VM is touched; a new
    LV is removed only if it carries the restore tag (lvm_volume created it).
    """
    removed = []
    for disk in disks:
        if not (disk.get("swap") or disk.get("created")) or disk.get("in_place"):
            continue
        kind, final, staged, _aside = _names(disk)
        name = staged if (disk.get("swap") or kind == "lv") else final
        if kind == "lv":
            row = next((r for r in host.lvs() if (r["vg_name"], r["lv_name"]) == name), None)
            if row is None or RESTORE_TAG not in (row.get("lv_tags") or "").split(","):
                continue  # not there, or not created by a restore: left alone
        if _remove(host, kind, name, "the incomplete volume"):
            removed.append(_show(name))
    return removed


def write_file(module, path, content, owner, group):
    """Write ``content`` (base64) into a new file ``path``, 0600 from creation, fsynced, owned."""
    data = base64.b64decode(content)
    if os.path.lexists(path):
        raise VmbackupError("%s already exists on host %s; nothing was written" % (path, module.params.get("vm")))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    uid, gid = ids(owner, group)
    write_new(path, data, 0o600, uid, gid)
    return len(data)


# The account QEMU runs as: qemu (Fedora/RHEL, and Debian's own builds) or libvirt-qemu (Debian, Ubuntu).
QEMU_ACCOUNTS = ("qemu", "libvirt-qemu")


def image_owner(owner, group, lookup=pwd.getpwnam, group_name=lambda gid: grp.getgrgid(gid).gr_name):
    """(owner, group) names for restored images: as given, else the QEMU account and its primary group."""
    if not owner:
        owner = next((name for name in QEMU_ACCOUNTS if _account(name, lookup) is not None), None)
        if owner is None:
            raise VmbackupError("neither of the accounts QEMU runs as (%s) exists on this host: set "
                                "restore_image_owner (vmbackup_image_owner) to the account that owns VM images"
                                % ", ".join(QEMU_ACCOUNTS))
    if not group:
        entry = _existing_account(owner, lookup)
        try:
            group = group_name(entry.pw_gid)
        except KeyError:
            group = str(entry.pw_gid)
    return owner, group


def _account(name, lookup=pwd.getpwnam):
    """The passwd entry of a name or uid, or None."""
    try:
        return lookup(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        return None


def _existing_account(name, lookup=pwd.getpwnam):
    entry = _account(name, lookup)
    if entry is None:
        raise VmbackupError("owner %s does not exist on this host: set restore_image_owner "
                            "(vmbackup_image_owner) to the account QEMU runs as" % name)
    return entry


def transfers(planned):
    """The disk_transfer entries (O(disks)) of the disks written from qcow2 chains: all but RBD
    images (rbd_transfer applies their diffs) and the NVRAM (written by action=write)."""
    return [{"image": d["staged"], "repo_image": d.get("image"), "format": d.get("format", "raw"), "size": d.get("size"),
             # a block target is an LV created first, or a forced non-LV device written in place
             "create": d.get("type", "file") == "file", "force": d.get("type") == "block"}
            for d in planned if d.get("backend") not in ("rbd", "nvram")]


def give_to_owner(host, disks, owner, group):
    """Hand the restored image files to the VM's account, 0600, before they are swapped in.

    Only files this run wrote (``staged`` of a new or forced file target); opened with
    O_NOFOLLOW so that a symlink planted under a staged name changes nothing it points to.
    """
    uid, gid = ids(owner, group)
    given = []
    for disk in disks:
        if disk.get("type", "file") != "file" or disk.get("backend") == "nvram" or disk.get("in_place"):
            continue
        if not (disk.get("swap") or disk.get("created")):
            continue
        path = disk["staged"]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise VmbackupError("cannot give the restored image %s to %s:%s on host %s: %s; nothing was swapped, "
                                "the old disks are in place" % (path, owner, group, host.name, exc))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise VmbackupError("the restored image %s on host %s is not a regular file; nothing was swapped"
                                    % (path, host.name))
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        given.append(path)
    return given


def ids(owner, group):
    """uid and gid of an owner and group (names or numbers); the group defaults to the owner's primary one."""
    uid, gid = -1, -1
    if owner:
        entry = _existing_account(owner)
        uid, gid = entry.pw_uid, entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise VmbackupError("group %s does not exist on this host: set restore_image_group "
                                "(vmbackup_image_group)" % group)
    return uid, gid


def run(module):
    p = module.params
    check_run_id(p["run_id"])
    host = Host(module)
    disks = p["disks"]
    if p["action"] == "prepare":
        planned, refused, confined, vouched = [], [], [], None
        for entry in disks:
            found = host.inspect(entry)
            if entry.get("origin") != "user":  # named by the repository: the hypervisor must vouch for it
                vouched = vouched or host.vouched(p["vm"], p["uri"], p["allowed_dirs"])
                why = targets.refusal(entry, dict(found, **host.names(entry, found)), vouched)
                if why:
                    confined.append("disk %s: target %s, from the backup's manifest: %s"
                                    % (entry["target"], entry["path"], why))
                    continue
            try:
                planned.append(decide(entry, found, p["force"], p["run_id"]))
            except VmbackupError as exc:
                if "refused" not in exc.details:
                    raise
                refused.append(exc.msg)
        if confined:
            raise VmbackupError(targets.refusal_message(p["vm"], host.name, confined + refused), refused=confined)
        if refused:
            raise VmbackupError(
                "restore of VM %s on host %s refused: %s; nothing was written. Choose other targets "
                "(restore_name, restore_disk_map) or set restore_force=true: a forced restore writes new "
                "volumes beside these and replaces them only when all are complete and verified."
                % (p["vm"], host.name, "; ".join(refused)))
        for d in planned:
            if d["in_place"]:
                module.warn("disk %s: %s is a block device that is not an LV; with force it is written in "
                            "place (there is no volume beside it to write first)" % (d["target"], d["path"]))
        owner, group = image_owner(p["owner"], p["group"])
        ids(owner, group)  # a group that does not exist fails here, before anything is written
        return {"changed": False, "disks": planned, "transfers": transfers(planned), "owner": owner, "group": group}
    if module.check_mode:
        return {"changed": p["action"] != "prepare", "disks": disks}
    if p["action"] == "write":
        size = write_file(module, p["path"], p["content"], p["owner"], p["group"])
        return {"changed": True, "path": p["path"], "size": size}
    if p["action"] == "swap":
        given = give_to_owner(host, disks, p["owner"], p["group"]) if p["owner"] or p["group"] else []
        swapped = swap(host, disks)
        return {"changed": bool(swapped or given), "swapped": swapped, "owned": given}
    if p["action"] == "undo":
        count = undo(host, disks)
        return {"changed": bool(count), "restored": count}
    if p["action"] == "finish":
        removed = finish(host, disks)
        return {"changed": bool(removed), "removed": removed}
    removed = discard(host, disks)
    return {"changed": bool(removed), "removed": removed}
