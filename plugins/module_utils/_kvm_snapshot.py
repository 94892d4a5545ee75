# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""External disk-only snapshots of a VM's file disks (the kvm_snapshot module).

A backup point is an overlay per disk, named ``<base file name>.vmbackup-<ID>.<target>.qcow2``
beside the base (``data.raw.vmbackup-ID.vdb.qcow2``), or ``<VM>.<base file name>.vmbackup-<ID>.<target>.qcow2``
under ``overlay_dir``: the whole base name and the disk's target make it unique per disk, the VM's
name per VM in a shared directory. Overlays made by older versions (``<base stem>.vmbackup-<ID>.qcow2``,
the base's extension dropped) are still recognised, so kept chains carry on.
Creating it freezes the image below it (the "frozen" image that the backup
reads). Between backups exactly one overlay of ours is kept: it holds the
clusters written since its backup, so the next backup's delta is that file.

States:
- ``present``: overlays for snapshot ID exist and are the VM's active images.
- ``kept``: the chain is ``base <- overlay(ID)``; older overlays of ours merged down.
- ``absent``: overlay ID is merged into the image below it (undo of ``present``).
- ``merged``: every overlay of ours is merged; the VM runs on its original files.
- ``repaired``: after a dead run, every overlay of ours whose backup is not complete is merged
  into the image below it (it holds the guest's writes since then), then older ones, so the
  chain is ``base <- overlay(newest complete backup)`` or just ``base``.

Running VMs use ``virsh snapshot-create-as --disk-only --atomic --no-metadata``
and ``virsh blockcommit``; shut-off VMs use ``qemu-img create``/``commit``/``rebase``
and ``virsh define`` of the changed source.
"""

from __future__ import annotations

import os
import re
import time

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import (
    CommandError,
    CommandRunner,
    VmbackupError,
)
from ansible_collections.vmbackup.libvirt.plugins.module_utils._domain import Domain
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lock
from ansible_collections.vmbackup.libvirt.plugins.module_utils._images import backing_path, image_chain
from ansible_collections.vmbackup.libvirt.plugins.module_utils._virsh import RUNNING_STATES, URI_ARGSPEC, Virsh

# Any overlay of ours, both forms: its "id" group is ID (older versions) or ID.TARGET (this version);
# overlay_id() tells them apart.
OVERLAY_RE = re.compile(r"\.vmbackup-(?P<id>[A-Za-z0-9][A-Za-z0-9._-]*)\.qcow2$")
# The new form with a disk target (targets are letters and digits: vda, sdb, xvda, hdc).
OVERLAY_TARGET_RE = re.compile(r"\.vmbackup-(?P<id>[A-Za-z0-9][A-Za-z0-9_-]*)\.(?P<target>[A-Za-z][A-Za-z0-9]*)\.qcow2$")
SNAPSHOT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    snapshot=dict(type="str"),
    state=dict(type="str", default="present", choices=["present", "kept", "absent", "merged", "repaired"]),
    valid_snapshots=dict(type="list", elements="str", default=[]),
    repair=dict(type="bool", default=False),
    disks=dict(type="list", elements="str"),
    quiesce=dict(type="str", default="off", choices=["required", "preferred", "off"]),
    overlay_dir=dict(type="path"),
    commit_timeout=dict(type="int", default=3600),
    # The VM's lock on the hypervisor (backup_lock's path and owner), given back after kept / merged.
    unlock=dict(type="dict", options=dict(path=dict(type="path", required=True),
                                          owner=dict(type="str", required=True))),
    **URI_ARGSPEC
)

# How often a batch of merges is checked: virsh blockcommit --wait checks every 500 ms, which
# was most of the time of the small merge an incremental backup ends with.
COMMIT_POLL = 0.05

BLOCKCOMMIT_HINT = (
    "The hypervisor's libvirt/QEMU could not run blockcommit. Some builds (for example "
    "CentOS 7's base qemu-kvm) lack live block commit: install the full QEMU "
    "(qemu-kvm-ev or a current qemu-kvm) or back this VM up while it is shut off. The VM "
    "keeps running on the overlay; run the vmbackup.libvirt.cleanup playbook once fixed."
)


def overlay_id(path, target=None):
    """The backup ID an overlay of ours names, or None for any other file.

    Both forms: ``BASE.vmbackup-ID.TARGET.qcow2`` (this version) and ``STEM.vmbackup-ID.qcow2`` (older
    versions, whose kept overlays the next backup, its merge and repair must still recognise). With
    ``target`` (the disk the image belongs to; every caller here knows it) a name ending in
    ``.TARGET.qcow2`` is the new form and any other the old one, whatever the ID holds; without, the new
    form is recognised for IDs without a dot (the repository's IDs never have one: ``20261122T010000Z``
    or ``20261122T010000Z-2``).
    """
    name = os.path.basename(path or "")
    m = OVERLAY_RE.search(name)
    if not m:
        return None
    sid = m.group("id")
    if target:
        if sid.endswith("." + target) and len(sid) > len(target) + 1:
            return sid[: -len(target) - 1]
        return sid
    m = OVERLAY_TARGET_RE.search(name)
    return m.group("id") if m else sid


def overlay_path_for(base, snapshot, target, overlay_dir=None, vm=None):
    """Where the overlay of ``snapshot`` on disk ``target`` goes (see the module docstring).

    Unique per disk: the base's whole file name (``data.qcow2`` and ``data.raw`` differ) and the target
    (two disks with one file name under ``overlay_dir`` differ); under ``overlay_dir`` the VM's name too.
    """
    name = "%s.vmbackup-%s.%s.qcow2" % (os.path.basename(base), snapshot, target)
    if overlay_dir:
        return os.path.join(overlay_dir, "%s.%s" % (vm, name) if vm else name)
    return os.path.join(os.path.dirname(base), name)


def plan_overlays(disks, snapshot, overlay_dir=None, vm=None):
    """{target: overlay path} for ``disks``, a list of (target, base path).

    A pure function, run before anything is created: two disks whose overlays would be one file, or an
    overlay that would be one of the disks' own images, are refused, so a collision changes nothing.
    """
    planned = {}
    owner = {}
    images = {os.path.normpath(base): target for target, base in disks}
    for target, base in disks:
        path = overlay_path_for(base, snapshot, target, overlay_dir, vm)
        key = os.path.normpath(path)
        clash = owner.get(key) or images.get(key)
        if clash:
            raise VmbackupError(
                "disks %s and %s would both use %s as overlay (or image) for snapshot %s; nothing was "
                "created. Give the disks different file names." % (clash, target, path, snapshot))
        owner[key] = target
        planned[target] = path
    return planned


class DiskChain:
    """A file disk's chain split into our overlays (top first) and the base below them."""

    def __init__(self, target, chain):
        self.target = target
        self.images = chain  # qemu-img info entries, top first
        self.ours = []
        self.base = None
        for info in chain:
            if self.base is None and info.get("format") == "qcow2" and overlay_id(info["filename"], target) \
                    and backing_path(info):
                self.ours.append(info)
                continue
            self.base = info
            break
        if self.base is None:  # cannot happen: an overlay of ours always has a backing file
            raise VmbackupError("disk %s: no base image found below %s" % (target, chain[-1]["filename"]))

    @property
    def active(self):
        return self.images[0]

    def describe(self):
        return {
            "target": self.target,
            "active": self.active["filename"],
            "base": self.base["filename"],
            "base_format": self.base.get("format"),
            "overlays": [i["filename"] for i in self.ours],
            "chain": [{"filename": i["filename"], "format": i.get("format")} for i in self.images],
        }


class KvmSnapshot:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.runner = CommandRunner(module)
        self.virsh = Virsh(self.runner, self.params["uri"])
        self.name = self.params["name"]
        self.changed = False
        self.actions = []
        self.warnings = []

    # --- discovery -----------------------------------------------------------------
    def load(self):
        self.virsh.require(self.name)
        self.running = self.virsh.state(self.name) in RUNNING_STATES
        self.domain = Domain(self.virsh.dumpxml(self.name))
        wanted = self.params["disks"]
        self.disks = []
        self.excluded = []
        for disk in self.domain.disks:
            if wanted is not None and disk.target not in wanted:
                reason = "not selected"
            elif disk.backend == "file":
                reason = None
            elif disk.supported:
                reason = "%s disk: snapshot by its own backend (lvm_snapshot, rbd_export)" % disk.backend
            else:
                reason = disk.skip_reason
            if reason:
                self.excluded.append({"target": disk.target, "reason": reason})
            else:
                self.disks.append(disk)
        if wanted:
            missing = set(wanted) - set(d.target for d in self.domain.disks)
            if missing:
                raise VmbackupError("VM %s on host %s has no disk %s (it has %s)" % (
                    self.name, self.runner.host, ", ".join(sorted(missing)),
                    ", ".join(d.target for d in self.domain.disks)))
        if self.virsh.is_xen and self.running and self.params["state"] == "present" and self.disks:
            raise VmbackupError(
                "VM %s on host %s is a running Xen guest: libvirt's Xen driver offers no disk-only "
                "snapshots, so its file disks (%s) cannot be frozen while it runs. Put its disks on "
                "LVM or Ceph RBD (storage-level snapshots), or back it up shut off."
                % (self.name, self.runner.host, ", ".join(d.target for d in self.disks))
            )
        self.chains = {}
        for disk in self.disks:
            self.chains[disk.target] = DiskChain(disk.target, image_chain(self.runner, disk.source, disk.format))

    def note(self, action):
        self.changed = True
        self.actions.append(action)

    # --- present --------------------------------------------------------------------
    def present(self, snapshot):
        todo = {}
        try:
            planned = plan_overlays([(d.target, self.chains[d.target].base["filename"]) for d in self.disks],
                                    snapshot, self.params["overlay_dir"], self.name)
        except VmbackupError as exc:
            raise VmbackupError("VM %s on host %s: %s" % (self.name, self.runner.host, exc.msg))
        for disk in self.disks:
            chain = self.chains[disk.target]
            if overlay_id(chain.active["filename"], disk.target) == snapshot:
                continue
            overlay = planned[disk.target]
            if os.path.exists(overlay):
                raise VmbackupError(
                    "overlay %s for disk %s of VM %s on host %s already exists but the VM does not "
                    "use it: a run that died left it. Nothing was changed. Run the "
                    "vmbackup.libvirt.cleanup playbook, or delete the file if nothing uses it."
                    % (overlay, disk.target, self.name, self.runner.host)
                )
            todo[disk.target] = overlay
        if not todo:
            return
        if len(todo) != len(self.disks) and self.running:
            # Some disks are frozen at ID and some not: a dead run. Freezing the rest now
            # would not be one instant; refuse rather than make an inconsistent backup.
            raise VmbackupError(
                "VM %s on host %s: only some disks run on overlays of snapshot %s; a backup "
                "point must cover all disks at one instant. Run the vmbackup.libvirt.cleanup "
                "playbook (or kvm_snapshot state=absent) and retry." % (self.name, self.runner.host, snapshot))
        self.note("create overlays %s" % ", ".join(sorted(todo.values())))
        if self.module.check_mode:
            return
        if self.running:
            self._snapshot_running(snapshot, todo)
        else:
            self._snapshot_offline(todo)

    def _snapshot_running(self, snapshot, todo):
        base = ["snapshot-create-as", self.name, "--name", "vmbackup-%s" % snapshot,
                "--disk-only", "--atomic", "--no-metadata"]
        for disk in self.domain.disks:
            if disk.target in todo:
                spec = "%s,snapshot=external,driver=qcow2,file=%s" % (disk.target, todo[disk.target].replace(",", ",,"))
            else:
                spec = "%s,snapshot=no" % disk.target
            base += ["--diskspec", spec]
        policy = self.params["quiesce"]
        if policy == "off":
            self._create(base)
            return
        try:
            self._create(base + ["--quiesce"])
        except CommandError as exc:
            if policy == "required":
                raise VmbackupError(
                    "quiesced snapshot of VM %s on host %s failed (quiesce=required): %s. Make the "
                    "guest agent answer (qemu-guest-agent running, org.qemu.guest_agent.0 channel), "
                    "or set quiesce to preferred or off." % (self.name, self.runner.host, (exc.stderr or "").strip()),
                    cmd=exc.argv, rc=exc.rc, stderr=exc.stderr)
            self.warnings.append(
                "VM %s: quiesced snapshot failed (%s); took a crash-consistent one instead (quiesce=preferred)"
                % (self.name, (exc.stderr or "").strip()))
            self._create(base)

    def _create(self, argv):
        try:
            self.virsh.run(argv, what="creating the snapshot of VM %s" % self.name)
        except CommandError:
            # --atomic promises all or nothing; check anyway, as the seed advises.
            self._verify_untouched()
            raise

    def _verify_untouched(self):
        domain = Domain(self.virsh.dumpxml(self.name))
        for disk in domain.disks:
            if disk.target in self.chains and disk.source != self.chains[disk.target].active["filename"]:
                self.warnings.append("disk %s of VM %s changed source to %s after a failed snapshot"
                                     % (disk.target, self.name, disk.source))

    def _snapshot_offline(self, todo):
        created = []
        try:
            for disk in self.disks:
                if disk.target not in todo:
                    continue
                chain = self.chains[disk.target]
                # The overlay receives the VM's writes: 0600 from creation on (umask 077 around
                # qemu-img; libvirt gives its own overlays of running VMs 0600 too), and libvirt
                # hands it to the qemu user when the VM starts.
                with _files.private_umask():
                    self.runner.run(overlay_create_argv(chain.active["filename"], chain.active["format"],
                                                        todo[disk.target]),
                                    what="creating overlay for disk %s of VM %s" % (disk.target, self.name))
                created.append(todo[disk.target])
            self._redefine({t: (p, "qcow2") for t, p in todo.items()})
        except Exception:
            for path in created:
                _remove(path)
            raise

    def _redefine(self, sources):
        """Point a shut-off VM's disks at other files: {target: (path, format)}."""
        domain = Domain(self.virsh.dumpxml(self.name, inactive=True, security_info=True))
        for target, (path, fmt) in sources.items():
            domain.disk(target).set_file_source(path, fmt)
        with _files.temp_text(domain.to_xml(), "vmbackup-", ".xml") as tmp:
            self.virsh.run(["define", tmp], what="redefining VM %s with new disk sources" % self.name)

    # --- merging ---------------------------------------------------------------------
    def _commit_active(self, target, top, base):
        """Merge a running VM's active image down into ``base`` and pivot the disk onto it."""
        argv = ["blockcommit", self.name, target, "--wait", "--verbose",
                "--timeout", str(self.params["commit_timeout"]), "--active", "--pivot", "--base", base]
        try:
            self.virsh.run(argv, what="merging %s into %s (disk %s of VM %s)" % (top, base, target, self.name),
                           hint=BLOCKCOMMIT_HINT)
        except CommandError as exc:
            # A job that timed out or failed must not stay behind half done.
            self.virsh.run(["blockjob", self.name, target, "--abort"], check_rc=False)
            raise exc

    def _commit_batch(self, batch):
        """Merge older overlays of a running VM, one disk each, all at once.

        ``batch``: (target, top, base, doomed). The jobs start together and are watched every
        COMMIT_POLL seconds; a job that ends without taking ``top`` out of the disk's chain failed.
        Files are removed only for merges that are seen to be done.
        """
        deadline = time.time() + self.params["commit_timeout"]
        running = []
        try:
            for target, top, base, _doomed in batch:
                self.virsh.run(["blockcommit", self.name, target, "--top", top, "--base", base],
                               what="starting to merge %s into %s (disk %s of VM %s)" % (top, base, target, self.name),
                               hint=BLOCKCOMMIT_HINT)
                running.append(target)
            while running:
                running = [t for t in running if self._job_running(t)]
                if running:
                    if time.time() > deadline:
                        raise VmbackupError(
                            "merging overlays of VM %s on host %s (disks %s) took longer than %ss; the merges "
                            "were cancelled and the VM runs on its unchanged chain. Raise commit_timeout or "
                            "run the vmbackup.libvirt.cleanup playbook when the host is less busy."
                            % (self.name, self.runner.host, ", ".join(running), self.params["commit_timeout"]))
                    time.sleep(COMMIT_POLL)
        except (VmbackupError, CommandError):
            for target in running:
                self.virsh.run(["blockjob", self.name, target, "--abort"], check_rc=False)
            raise
        for target, top, base, doomed in batch:
            if not self._merged_away(target, top):
                raise VmbackupError(
                    "merging %s into %s (disk %s of VM %s) failed on host %s: the block job ended but the image "
                    "is still in the disk's chain. The VM runs on that unchanged chain; see libvirtd's log for "
                    "QEMU's reason. %s" % (top, base, target, self.name, self.runner.host, BLOCKCOMMIT_HINT))
            for path in doomed:
                _remove(path)

    def _merged_away(self, target, top, tries=5):
        """Whether ``top`` has left the disk's chain (re-read a few times: the job's end may be
        seen a moment before QEMU has rewritten the image above it)."""
        for attempt in range(tries):
            self._reload_chain(target)
            if top not in [i["filename"] for i in self.chains[target].images]:
                return True
            if attempt + 1 < tries:
                time.sleep(COMMIT_POLL * 4)
        return False

    def _job_running(self, target):
        # --raw prints " type=... cur=... end=..." on stdout while a job runs, and nothing (with -q)
        # once it has ended; --info would print its progress on stderr.
        out = self.virsh.run(["blockjob", self.name, target, "--raw"],
                             what="watching the merge of disk %s of VM %s" % (target, self.name))[1]
        return "type=" in out

    def _merge(self, target, merge_from, into, batch=None):
        """Merge the images from ``merge_from`` (inclusive, top first) down into ``into``.

        A running VM's merge below the active image goes through _commit_batch: with ``batch``
        (a list) it is only added to it, so that several disks merge at once; without, at once.
        """
        chain = self.chains[target]
        names = [i["filename"] for i in chain.images]
        top = names.index(merge_from)
        base = names.index(into)
        if top >= base:
            return
        doomed = names[top:base]
        active = top == 0
        self.note("merge %s into %s" % (", ".join(doomed), into))
        if self.module.check_mode:
            return
        if self.running and not active:
            if batch is not None:
                batch.append((target, merge_from, into, doomed))
            else:
                self._commit_batch([(target, merge_from, into, doomed)])
            return
        if self.running:
            self._commit_active(target, merge_from, into)
        else:
            if active:
                self.runner.run(["qemu-img", "commit", "-q", "-d", "-b", into, merge_from],
                                what="committing %s into %s" % (merge_from, into))
                self._redefine({target: (into, chain.images[base]["format"])})
            else:
                self.runner.run(["qemu-img", "commit", "-q", "-d", "-b", into, merge_from],
                                what="committing %s into %s" % (merge_from, into))
                # The image above the merged ones now reads the same through ``into``.
                above = chain.images[top - 1]["filename"]
                self.runner.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", into, "-F",
                                 chain.images[base]["format"], above],
                                what="pointing %s at %s" % (above, into))
        for path in doomed:
            _remove(path)

    def kept(self, snapshot):
        batch = []
        for disk in self.disks:
            chain = self.chains[disk.target]
            if overlay_id(chain.active["filename"], disk.target) != snapshot:
                raise VmbackupError(
                    "disk %s of VM %s on host %s does not run on an overlay of snapshot %s (it runs on %s); "
                    "create it first with state=present" % (disk.target, self.name, self.runner.host, snapshot,
                                                            chain.active["filename"]))
            if len(chain.ours) > 1:
                self._merge(disk.target, chain.ours[1]["filename"], chain.base["filename"], batch)
        if batch:
            self._commit_batch(batch)

    def absent(self, snapshot):
        for disk in self.disks:
            chain = self.chains[disk.target]
            for idx, info in enumerate(chain.ours):
                if overlay_id(info["filename"], disk.target) == snapshot:
                    below = chain.images[idx + 1]["filename"]
                    self._merge(disk.target, info["filename"], below)
                    break

    def _reload_chain(self, target):
        source = Domain(self.virsh.dumpxml(self.name)).disk(target)
        self.chains[target] = DiskChain(target, image_chain(self.runner, source.source, source.format))

    def repaired(self, valid):
        for disk in self.disks:
            while True:
                chain = self.chains[disk.target]
                bad = [i for i in chain.ours if overlay_id(i["filename"], disk.target) not in valid]
                if not bad:
                    break
                below = chain.images[chain.images.index(bad[0]) + 1]["filename"]
                self._merge(disk.target, bad[0]["filename"], below)
                if self.module.check_mode:
                    chain.images.remove(bad[0])
                    chain.ours.remove(bad[0])
                else:
                    self._reload_chain(disk.target)
            chain = self.chains[disk.target]
            if len(chain.ours) > 1:
                self._merge(disk.target, chain.ours[1]["filename"], chain.base["filename"])
                if not self.module.check_mode:
                    self._reload_chain(disk.target)

    def merged(self):
        for disk in self.disks:
            chain = self.chains[disk.target]
            if chain.ours:
                self._merge(disk.target, chain.ours[0]["filename"], chain.base["filename"])

    # --- result ----------------------------------------------------------------------
    def result(self, before):
        if self.changed and not self.module.check_mode:
            self.load()
        disks = []
        for disk in self.disks:
            chain = self.chains[disk.target]
            info = chain.describe()
            # What a backup at this point reads: the image right below the active overlay.
            frozen = chain.images[1] if len(chain.ours) and len(chain.images) > 1 else None
            info["frozen"] = frozen["filename"] if frozen else None
            info["frozen_format"] = frozen.get("format") if frozen else None
            info["frozen_is_overlay"] = bool(frozen and frozen in chain.ours)
            info["parent_snapshot"] = overlay_id(frozen["filename"], disk.target) if info["frozen_is_overlay"] else None
            info["virtual_size"] = chain.active.get("virtual-size")
            disks.append(info)
        out = {
            "changed": self.changed,
            "running": self.running,
            "actions": self.actions,
            "disks": disks,
            "excluded": self.excluded,
        }
        if self.warnings:
            out["warnings"] = self.warnings
        if self.module._diff:
            out["diff"] = {"before": before, "after": "\n".join(
                "%s: %s" % (d["target"], " <- ".join(c["filename"] for c in reversed(d["chain"]))) for d in disks) + "\n"}
        return out


def _remove(path):
    _files.unlink_quietly(path, missing_only=True)


def _chains_text(snap):
    return "\n".join(
        "%s: %s" % (t, " <- ".join(i["filename"] for i in reversed(c.images))) for t, c in sorted(snap.chains.items())
    ) + "\n"


def run(module):
    state = module.params["state"]
    snapshot = module.params["snapshot"]
    if module.params["unlock"] and state not in ("kept", "merged"):
        module.fail_json(msg="unlock goes with state=kept or state=merged, not state=%s" % state)
    if state not in ("merged", "repaired") and not snapshot:
        module.fail_json(msg="snapshot (the backup point's ID) is required with state=%s" % state)
    if snapshot and not SNAPSHOT_ID_RE.match(snapshot):
        module.fail_json(msg="snapshot %r may contain only letters, digits, '.', '_' and '-'" % snapshot)
    snap = KvmSnapshot(module)
    snap.load()
    before = _chains_text(snap)
    repaired = []
    if state == "present" and module.params["repair"]:
        # What state=repaired does, first, in the same run (one module run less per backup).
        snap.repaired(set(module.params["valid_snapshots"]))
        repaired = list(snap.actions)
        if snap.changed and not module.check_mode:
            snap.load()
    if state == "present":
        snap.present(snapshot)
    elif state == "kept":
        snap.kept(snapshot)
    elif state == "absent":
        snap.absent(snapshot)
    elif state == "repaired":
        snap.repaired(set(module.params["valid_snapshots"]))
    else:
        snap.merged()
    out = snap.result(before)
    if state == "present":
        out["repaired"] = repaired
    if module.params["unlock"]:
        # Only after the chain is what the next backup expects (a failure above keeps the lock
        # for the caller's cleanup); also when there was nothing to merge.
        unlock = module.params["unlock"]
        out["unlock"] = _lock.release(module, _lock.lock_params(unlock["path"], unlock["owner"]))
        out["changed"] = out["changed"] or out["unlock"]["changed"]
    return out


def overlay_create_argv(backing, backing_format, overlay):
    """qemu-img create of the overlay of a shut-off VM's disk (run under a 077 umask)."""
    return ["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, overlay]
