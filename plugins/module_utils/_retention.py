# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention of a vmbackup repository: which backups to keep, prune, synthetic fulls.

The policy works like restic's and borg's ``forget``/``prune``: the backups of a VM
are points in time (the UTC time in the backup ID); ``keep_last`` keeps the newest N
points, ``keep_daily``/``weekly``/``monthly``/``yearly`` keep the newest point of each
of the newest N days/ISO weeks/months/years that have one. On top of the policy:

- the newest backup of a VM is always kept: the overlay kept on the hypervisor names
  it, and the next incremental is written on top of it;
- a backup younger than ``min_age`` is always kept;
- a kept backup keeps every backup it needs: its manifest's ``parent`` chain back to
  the full backup (what ``backup_repo select`` follows for a restore), and, per disk,
  the backing file of each qcow2 delta (read from the qcow2 header, so even a
  hand-made or damaged repository never loses a base that an image still names).
  A disk can be full inside an incremental backup (a new disk); the manifest chain
  is still kept as a whole, because a restore walks it.

A synthetic full (``synthesize``) merges a backup's chain into a new, standalone full
backup of the same point in time, ID ``BACKUP_ID-N`` (``N`` the next free suffix), with
``synthesized_from: BACKUP_ID``. The source backup is not modified: backups are never
rewritten in place (a restore may be reading them; their checksums are recorded). For
retention the synthetic full stands for its point in time instead of the source, so
the source and the chain below it go unless the policy keeps them for other points.
"""

from __future__ import annotations

import datetime
import json
import os
import contextlib
import re
import shutil
import time

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _lock
from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils._transfer import qcow2_output
from ansible_collections.vmbackup.libvirt.plugins.module_utils._repository import (
    DELETING_PREFIX,
    ID_RE,
    PARTIAL_PREFIX,
    ManifestError,
    Repository,
    parse_time,
    entry_id,
    qcow2_backing,
)

BUCKETS = (
    ("daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", lambda t: "%04d-W%02d" % t.isocalendar()[:2]),
    ("monthly", lambda t: t.strftime("%Y-%m")),
    ("yearly", lambda t: t.strftime("%Y")),
)
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# The policy's options: backup_prune's and backup_repo action=commit's (one meaning, one check).
POLICY_ARGSPEC = dict(
    keep_last=dict(type="int", default=0),
    keep_daily=dict(type="int", default=0),
    keep_weekly=dict(type="int", default=0),
    keep_monthly=dict(type="int", default=0),
    keep_yearly=dict(type="int", default=0),
    min_age=dict(type="str", default="0"),
)
PARTIAL_MAX_AGE = "1d"

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    vms=dict(type="list", elements="str", default=[]),
    action=dict(type="str", default="prune", choices=["prune", "synthesize"]),
    partial_max_age=dict(type="str", default=PARTIAL_MAX_AGE),
    backup=dict(type="str", default="latest"),
    verify=dict(type="bool", default=True),
    now=dict(type="str"),
    lock_owner=dict(type="str"),
    lock_wait=dict(type="int", default=0),
    lock_progress_file=dict(type="path"),
    fail_on_locked=dict(type="bool", default=True),
    **POLICY_ARGSPEC
)


# --------------------------------------------------------------------------
# pure decisions

def parse_duration(value, name="duration"):
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w``; ``never``/``off`` -> None."""
    if value is None:
        return 0
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    if text in ("never", "off", "none", "false"):
        return None
    match = DURATION_RE.match(text)
    if not match:
        raise VmbackupError("%s %r is not a duration: use seconds or a number with s, m, h, d or w "
                            "(for example 36h or 7d)" % (name, value))
    return float(match.group(1)) * UNITS[match.group(2)]


def point_of(backup_id):
    """The point in time of a backup: its ID without the ``-N`` suffix."""
    return backup_id.split("-", 1)[0]


def parents_of(manifest, backing=None):
    """The backups a backup needs directly: its manifest parent and its deltas' backing backups."""
    out = set()
    if manifest.get("parent"):
        out.add(manifest["parent"])
    out.update((backing or {}).get(manifest["backup_id"], ()))
    out.discard(manifest["backup_id"])
    return out


def plan(manifests, policy, now, backing=None):
    """Decide, for one VM's complete backups (any order), what stays and what goes.

    ``policy``: keep_last/daily/weekly/monthly/yearly (ints), min_age (seconds).
    ``backing``: {backup_id: {backup ids its images' backing files are in}}.
    Returns (kept, removed, warnings): kept/removed are lists of
    {backup_id, type, reasons}, newest first; removed is in deletion order.
    """
    if not manifests:
        return [], [], []
    by_id = {m["backup_id"]: m for m in manifests}
    ids = sorted(by_id, reverse=True)  # newest first: IDs are UTC times
    reasons = {i: [] for i in ids}

    # One representative per point in time: a synthetic full stands for its point (it
    # needs no chain); otherwise the newest backup of that point.
    points = {}
    for i in ids:
        points.setdefault(point_of(i), []).append(i)
    reps = []
    for point in sorted(points, reverse=True):
        members = points[point]
        synthetic = [i for i in members if by_id[i].get("synthesized_from")]
        reps.append((synthetic or members)[0])

    def keep(i, why):
        if why not in reasons[i]:
            reasons[i].append(why)

    keep(ids[0], "newest backup (the next incremental builds on it)")
    for n, i in enumerate(reps):
        if n < (policy.get("keep_last") or 0):
            keep(i, "keep_last %d" % (n + 1))
    for name, key in BUCKETS:
        limit = policy.get("keep_" + name) or 0
        seen = []
        for i in reps:
            if len(seen) >= limit:
                break
            bucket = key(parse_time(i))
            if bucket not in seen:
                seen.append(bucket)
                keep(i, "keep_%s %s" % (name, bucket))
    min_age = policy.get("min_age") or 0
    if min_age:
        for i in ids:
            if (now - parse_time(i)).total_seconds() < min_age:
                keep(i, "younger than min_age")

    # Everything a kept backup needs, back to its full backup, stays too.
    warnings = []
    pending = [i for i in ids if reasons[i]]
    while pending:
        child = pending.pop()
        for parent in sorted(parents_of(by_id[child], backing)):
            if parent not in by_id:
                warnings.append("backup %s needs backup %s, which is not in the repository (or incomplete): "
                                "%s cannot be restored; run verify" % (child, parent, child))
                continue
            if not reasons[parent]:
                pending.append(parent)
            keep(parent, "needed by %s" % child)

    kept, removed = [], []
    for i in ids:
        entry = {"backup_id": i, "type": by_id[i].get("type"), "parent": by_id[i].get("parent"),
                 "synthesized_from": by_id[i].get("synthesized_from")}
        if reasons[i]:
            kept.append(dict(entry, reasons=reasons[i]))
        else:
            why = ["not kept by the policy"]
            rep = next(r for r in reps if point_of(r) == point_of(i))
            if rep != i:
                label = " (synthetic full)" if by_id[rep].get("synthesized_from") else ""
                why = ["same point in time as %s%s" % (rep, label)]
            removed.append(dict(entry, reasons=why))
    # Deletion order: newest first. A parent is always older than its children, so every
    # incremental goes before the backups it builds on. If the run stops half-way (crash,
    # full disk, killed job), what is left is still a set of whole chains: the oldest
    # backups, with their bases, remain restorable, and no delta is left whose parent is
    # gone. Deleting oldest first would leave exactly that: manifests that look complete
    # on top of a missing full.
    return kept, removed, warnings


def full_due(manifests, every_n=0, every_days=0, now=None):
    """Whether the next backup of a VM must be full: (due, reason).

    ``manifests``: the VM's complete backups (any order). ``every_n``: a full backup
    every N backups (a full, then N-1 incrementals; 0 = no limit). ``every_days``: a
    full backup when the newest full is D days old or older (0 = no limit). A
    synthetic full counts as a full: its chain is as short as a real one.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not manifests:
        return True, "no previous backup"
    by_id = {m["backup_id"]: m for m in manifests}
    latest = by_id[max(by_id)]
    length = 0
    current = latest
    while current is not None and current.get("type") != "full":
        length += 1
        current = by_id.get(current.get("parent") or "")
    if current is None:
        return True, "the chain of the newest backup %s does not reach a full backup" % latest["backup_id"]
    if every_n and every_n > 0 and length + 1 >= every_n:
        return True, ("%d backups since the full backup %s (a full every %d)"
                      % (length + 1, current["backup_id"], every_n))
    if every_days and every_days > 0:
        age = now - parse_time(current["backup_id"])
        if age.total_seconds() >= every_days * 86400:
            return True, ("the full backup %s is %.1f days old (a full every %s days)"
                          % (current["backup_id"], age.total_seconds() / 86400, every_days))
    return False, "%d incremental(s) since the full backup %s" % (length, current["backup_id"])


# --------------------------------------------------------------------------
# the repository

def backing_map(repo, vm, manifests):
    """{backup_id: {backup ids whose images the backup's qcow2 deltas are backed by}}.

    Read from the image headers (never through a symlink out of the repository); only backing
    names of backups of the same VM count, anything else keeps nothing.
    """
    vdir = repo.vm_dir(vm)
    out = {}
    for m in manifests:
        if m.get("unreadable"):
            continue
        bdir = os.path.join(vdir, m["backup_id"])
        for disk in m.get("disks", []):
            name = disk.get("file") or ""
            if not name.endswith(".qcow2"):
                continue
            try:
                path = repo.image_path(vm, m["backup_id"], disk)
            except ManifestError:
                continue
            backing = qcow2_backing(path)
            if not backing:
                continue
            full = os.path.normpath(os.path.join(bdir, backing))
            if os.path.dirname(os.path.dirname(full)) == vdir and ID_RE.match(os.path.basename(os.path.dirname(full))):
                out.setdefault(m["backup_id"], set()).add(os.path.basename(os.path.dirname(full)))
    return out


def _newest_mtime(path):
    newest = os.lstat(path).st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest


def stale_dirs(repo, vm, max_age, now_ts):
    """Partial backups untouched for ``max_age`` seconds, and leftovers of interrupted deletions."""
    vdir = repo.vm_dir(vm)
    out = []
    if not os.path.isdir(vdir):
        return out
    for entry in sorted(os.listdir(vdir)):
        path = os.path.join(vdir, entry)
        if not os.path.isdir(path):
            continue
        if entry.startswith(DELETING_PREFIX):
            out.append({"dir": entry, "reason": "left over from an interrupted prune"})
        elif entry.startswith(PARTIAL_PREFIX) and max_age is not None:
            age = now_ts - _newest_mtime(path)
            if age >= max_age:
                out.append({"dir": entry, "reason": "partial backup untouched for %ds (partial_max_age %ds)"
                            % (age, max_age)})
    return out


def remove_backup(repo, vm, backup_id):
    """Remove one backup: first make it invisible at once (rename), then delete its files."""
    gone = repo.deleting_dir(vm, backup_id)
    _files.rename_durably(repo.backup_dir(vm, backup_id), gone)  # gone for good before any of its files is
    shutil.rmtree(gone)


def policy_of(p):
    """The policy from the module's POLICY_ARGSPEC options, checked (VmbackupError naming the option)."""
    policy = {k: p[k] or 0 for k in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")}
    for k, v in policy.items():
        if v < 0:
            raise VmbackupError("%s must be 0 or more, not %s" % (k, v))
    policy["min_age"] = parse_duration(p["min_age"], "min_age") or 0
    return policy


def has_rules(policy):
    """Whether any keep_* rule is set (with none, a prune would keep only the newest backup)."""
    return any(policy[k] for k in policy if k.startswith("keep_"))


def _now(p):
    if p.get("now"):
        return parse_time(p["now"])
    return datetime.datetime.now(datetime.timezone.utc)


def vm_lock(module, repo, vm, purpose):
    """The VM's lock in the repository, exclusive: no restore reads, no backup writes meanwhile."""
    p = module.params
    owner = p.get("lock_owner") or getattr(module, "_vmbackup_lock_owner", None)
    if not owner:
        owner = "%s-%s" % (purpose.split(" ", 1)[0], os.urandom(6).hex())
        module._vmbackup_lock_owner = owner
    return _lock.lock_params(repo.lock_path(vm), owner, "%s of VM %s" % (purpose, vm), wait=p.get("lock_wait") or 0,
                             repository=repo.path, progress_file=p.get("lock_progress_file"))


@contextlib.contextmanager
def holding(module, params):
    """Hold a lock for the block (released afterwards, unless this owner held it before)."""
    got = _lock.acquire(module, params)
    try:
        yield got
    finally:
        if got["changed"] and not module.check_mode:
            _lock.release(module, params)


def prune_vm(module, repo, vm, policy, now, partial_max_age):
    """Plan and remove one VM's backups (hold its lock): a result fragment."""
    manifests = repo.backups(vm)
    unreadable = [m for m in manifests if m.get("unreadable")]
    manifests = [m for m in manifests if not m.get("unreadable")]
    backing = backing_map(repo, vm, manifests)
    kept, removed, warnings = plan(manifests, policy, now, backing)
    for m in unreadable:
        warnings.append("backup %s is damaged and left alone (%s); remove it by hand when it is not needed"
                        % (m["backup_id"], "; ".join(m["problems"])))
    stale = stale_dirs(repo, vm, partial_max_age, time.time())
    if not module.check_mode:
        if removed or stale:
            # Nothing older is deleted before everything kept (the newest backup above all) is on
            # stable storage, whoever wrote it.
            os.sync()
        for entry in removed:  # newest first: see plan()
            remove_backup(repo, vm, entry["backup_id"])
        for entry in stale:
            shutil.rmtree(os.path.join(repo.vm_dir(vm), entry["dir"]))
    return {"kept": kept, "removed": removed, "warnings": warnings, "stale": stale, "unreadable": unreadable,
            "before": sorted(m["backup_id"] for m in manifests + unreadable),
            "after": sorted([k["backup_id"] for k in kept] + [m["backup_id"] for m in unreadable])}


def empty_result():
    """backup_prune's result fields (action=prune), before any VM is pruned."""
    return {"changed": False, "removed": [], "kept": [], "partials_removed": [], "broken_chains": [],
            "damaged": [], "locked": []}


def add_vm(result, vm, got):
    """Add prune_vm()'s fragment for ``vm`` to ``result``."""
    result["kept"] += [dict(k, vm=vm) for k in got["kept"]]
    result["removed"] += [dict(r, vm=vm) for r in got["removed"]]
    result["broken_chains"] += ["VM %s: %s" % (vm, w) for w in got["warnings"]]
    result["partials_removed"] += [dict(s, vm=vm) for s in got["stale"]]
    result["damaged"] += [{"vm": vm, "backup_id": m["backup_id"], "problems": m["problems"]}
                          for m in got["unreadable"]]
    if got["removed"] or got["stale"]:
        result["changed"] = True


def locked_message(result):
    return ("prune left %d VM(s) alone because another run holds them (nothing of theirs was removed): %s"
            % (len(result["locked"]), "; ".join("VM %s: %s" % (x["vm"], x["msg"]) for x in result["locked"])))


def prune_held(module, repo, vm, policy, lock=None):
    """Retention for one VM inside a backup's commit: backup_prune's result fields.

    ``lock``: the VM's lock that the committing run holds (append mode). It is made exclusive
    in place (no other lock dance); while a restore reads the VM (a shared lock), nothing is
    removed and RV(locked) / a warning say who holds it, as backup_prune with fail_on_locked=false
    does: the next prune catches up. Without ``lock``, the VM's lock is taken exclusively for the
    prune, as backup_prune does. In check mode nothing is locked or removed.
    """
    result = empty_result()
    partial_max_age = parse_duration(PARTIAL_MAX_AGE, "partial_max_age")
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        if module.check_mode:
            got = prune_vm(module, repo, vm, policy, now, partial_max_age)
        elif lock:
            _lock.make_exclusive(module, dict(lock, purpose="prune of VM %s" % vm))
            got = prune_vm(module, repo, vm, policy, now, partial_max_age)
        else:
            with holding(module, vm_lock(module, repo, vm, "prune")):
                got = prune_vm(module, repo, vm, policy, now, partial_max_age)
    except VmbackupError as exc:
        if "is locked by" not in exc.msg:
            raise
        result["locked"].append({"vm": vm, "msg": exc.msg})
        module.warn(locked_message(result) + "; the next backup or prune catches up")
        return result
    add_vm(result, vm, got)
    for w in result["broken_chains"]:
        module.warn(w)
    return result


def prune(module):
    p = module.params
    repo = Repository(p["path"])
    if not os.path.isdir(repo.path):
        raise VmbackupError("repository %s does not exist on the backup node" % repo.path)
    policy = policy_of(p)
    if not has_rules(policy):
        raise VmbackupError("no retention rule given (keep_last, keep_daily, keep_weekly, keep_monthly, "
                            "keep_yearly are all 0); refusing to prune: that would keep only the newest backup")
    partial_max_age = parse_duration(p["partial_max_age"], "partial_max_age")
    now = _now(p)
    vms = p["vms"] or repo.vms()
    result = empty_result()
    before, after = {}, {}
    for vm in vms:
        repo.vm_dir(vm)  # a valid name, before any lock
        try:
            # Under the VM's exclusive lock: no restore is reading what goes, no backup is adding.
            with holding(module, vm_lock(module, repo, vm, "prune")):
                got = prune_vm(module, repo, vm, policy, now, partial_max_age)
        except VmbackupError as exc:
            if "is locked by" not in exc.msg:
                raise
            result["locked"].append({"vm": vm, "msg": exc.msg})
            continue
        add_vm(result, vm, got)
        before[vm], after[vm] = got["before"], got["after"]
    for w in result["broken_chains"]:
        module.warn(w)
    if module._diff:
        result["diff"] = {"before": json.dumps(before, indent=2, sort_keys=True) + "\n",
                          "after": json.dumps(after, indent=2, sort_keys=True) + "\n",
                          "before_header": "%s (backups per VM)" % repo.path,
                          "after_header": "%s (backups per VM)" % repo.path}
    if result["locked"]:
        msg = locked_message(result)
        if p["fail_on_locked"]:
            module.fail_json(msg=msg + ". Run the prune again later, or give it a longer lock_wait.", **result)
        module.warn(msg)
    return result


# --------------------------------------------------------------------------
# synthetic full

def _next_id(repo, vm, backup_id):
    base = point_of(backup_id)
    taken = set(os.listdir(repo.vm_dir(vm)))
    n = 1
    for entry in taken:
        name = entry_id(entry)
        if point_of(name) == base and "-" in name:
            try:
                n = max(n, int(name.split("-", 1)[1]) + 1)
            except ValueError:
                pass
    return "%s-%d" % (base, n)


def synthesize_argv(src, dest, compression=None):
    """qemu-img convert of a backup's chain into one standalone qcow2, its output flushed; a disk
    whose backup was compressed (its manifest's ``compression``) gets a compressed synthetic full."""
    if compression in (None, "none"):
        return ["qemu-img", "convert", "-t", "writeback", "-f", "qcow2", "-O", "qcow2", src, dest]
    return (["qemu-img", "convert", "-t", "writeback", "-f", "qcow2"] + qcow2_output(compression) + [src, dest])


def synthesize(module):
    p = module.params
    repo = Repository(p["path"])
    if len(p["vms"]) != 1:
        raise VmbackupError("action=synthesize works on one VM: give exactly one name in vms")
    vm = p["vms"][0]
    with holding(module, vm_lock(module, repo, vm, "synthetic full")):
        return _synthesize(module, repo, vm)


def _synthesize(module, repo, vm):
    """The synthetic full of one VM's backup (the caller holds the VM's lock)."""
    p = module.params
    source = repo.select(vm, p["backup"])
    sid = source["backup_id"]
    existing = [m for m in repo.backups(vm) if m.get("synthesized_from") == sid]
    if source.get("type") == "full":
        return {"changed": False, "backup_id": sid, "msg": "backup %s is already a full backup" % sid}
    if existing:
        return {"changed": False, "backup_id": existing[-1]["backup_id"],
                "msg": "backup %s already has the synthetic full %s" % (sid, existing[-1]["backup_id"])}
    chain = repo.chain(vm, sid)
    for disk in source.get("disks", []):
        if not disk.get("file", "").endswith(".qcow2"):
            raise VmbackupError(
                "backup %s of VM %s has disk %s stored as %s: synthetic fulls are made of qcow2 images only "
                "(RBD diffs are not merged yet); nothing was written" % (sid, vm, disk.get("target"), disk.get("file")))
    new_id = _next_id(repo, vm, sid)
    if module.check_mode:
        return {"changed": True, "backup_id": new_id, "synthesized_from": sid,
                "chain": [m["backup_id"] for m in chain]}
    sdir = repo.backup_dir(vm, sid)
    if p["verify"]:
        for link in chain:
            ldir = repo.backup_dir(vm, link["backup_id"])
            for disk in link.get("disks", []):
                path = os.path.join(ldir, disk["file"])
                if disk.get("sha256") and _files.sha256_file(path) != disk["sha256"]:
                    raise VmbackupError("backup image %s is damaged: its sha256 differs from the manifest's; "
                                        "no synthetic full was made" % path)
    runner = CommandRunner(module)
    partial = repo.begin(vm, new_id)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat()
    try:
        disks = []
        for disk in source.get("disks", []):
            src = os.path.join(sdir, disk["file"])
            dest = os.path.join(partial, disk["file"])
            t0 = time.time()
            # qemu-img follows the delta's backing chain (../PARENT/TARGET.qcow2 ...) and writes
            # one standalone, sparse image with the guest-visible content of the backup.
            # -t writeback: flushed when qemu-img closes it (convert's default, unsafe, never
            # flushes); the umask makes it 0600 from creation on; commit fsyncs it again.
            with _files.private_umask():
                runner.run(synthesize_argv(src, dest + ".part", disk.get("compression")),
                           what="merging the chain of disk %s of backup %s" % (disk["target"], sid))
            runner.run(["qemu-img", "check", "-q", "-f", "qcow2", dest + ".part"],
                       what="checking the synthetic full image of disk %s" % disk["target"])
            _files.commit_part(dest + ".part", dest)
            stat = os.stat(dest)
            disks.append(dict(disk, mode="full", sha256=_files.sha256_file(dest), bytes_sent=0,
                              stored_bytes=stat.st_blocks * 512, duration=round(time.time() - t0, 3)))
        # The domain XML and NVRAM go in through commit, which writes them 0600 and fsynced.
        extra = {}
        for name in [source.get("domain_xml", "domain.xml")] + list(source.get("files") or []):
            if os.path.exists(os.path.join(sdir, name)):
                with open(os.path.join(sdir, name), "rb") as fh:
                    extra[name] = fh.read()
        manifest = dict(source)
        manifest.update({
            "backup_id": new_id,
            "type": "full",
            "parent": None,
            "disks": disks,
            "synthesized_from": sid,
            "synthesized_chain": [m["backup_id"] for m in chain],
            "synthesized": started,
            "bytes_sent": 0,
            "bytes_stored": sum(d["stored_bytes"] for d in disks),
        })
        # The manifest is written last (commit), so a crash leaves only a partial directory.
        repo.commit(vm, new_id, manifest, extra)
    except BaseException:
        repo.abort(vm, new_id)
        raise
    return {"changed": True, "backup_id": new_id, "synthesized_from": sid,
            "chain": [m["backup_id"] for m in chain], "manifest": manifest,
            "dir": repo.backup_dir(vm, new_id)}


def run(module):
    if module.params["action"] == "synthesize":
        return synthesize(module)
    return prune(module)
