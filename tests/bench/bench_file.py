"""File-disk section of ``make bench`` (issue 3: "Speed and memory").

One invocation, on a running TCG guest whose 16 GiB qcow2 disk holds 4 GiB of random data in
64 places: our full backup (whole playbook over SSH, and the transfer alone) against
``qemu-img convert`` locally, ``qemu-img convert`` through an OpenSSH-forwarded qemu-nbd socket,
and virtnbdbackup (on a separate copy of the domain, so its checkpoints and our overlays do not
meet); an incremental after the guests write 256 MiB in 8 places; a restore of the chain;
bytes sent and stored; the peak RSS of every process of ours. ``--big`` adds the same full
backup of a 64 GiB disk with the same data.
"""

from __future__ import annotations

import glob
import json
import os
import select
import shlex
import subprocess
import tempfile
import time

import benchlib as B
from benchlib import GiB, MiB, log

DOM = "vmb-bench"
DOM_VNB = "vmb-bench-vnb"
DOM_BIG = "vmb-bench-big"
DOM_RESTORED = "vmb-bench-r"
EXTENTS = 64
WRITES = 8


# --------------------------------------------------------------------------
# set-up

def make_image(workdir, size, data, extents, path):
    """A qcow2 of ``size`` with ``data`` bytes of pseudo-random (AES-CTR, incompressible)
    data in ``extents`` equal pieces spread over the disk, built on the host: a sparse raw
    file written at the extents' offsets, then ``qemu-img convert -O qcow2``."""
    raw = os.path.join(workdir, "prep.raw")
    piece = data // extents
    stride = size // extents
    with open(raw, "wb") as fh:
        fh.truncate(size)
    key = os.urandom(16).hex()
    gen = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-K", key, "-iv", "0",
                            "-in", "/dev/zero"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    offsets = []
    try:
        fd = os.open(raw, os.O_WRONLY)
        try:
            for i in range(extents):
                # spread, and not aligned to the stride, so extents straddle qcow2 L2 tables
                off = i * stride + ((i * 7) % 13) * MiB
                offsets.append(off)
                left = piece
                pos = off
                while left:
                    block = gen.stdout.read(min(left, 8 * MiB))
                    if not block:
                        raise B.BenchError("openssl stopped producing data")
                    os.pwrite(fd, block, pos)
                    pos += len(block)
                    left -= len(block)
        finally:
            os.close(fd)
    finally:
        gen.kill()
        gen.wait()
    B.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path], timeout=900)
    os.unlink(raw)
    return offsets


def copy_image(src, dst):
    B.run(["cp", "--sparse=always", src, dst], timeout=900)


def guest_writes(dom, offsets, length):
    """Random data written inside the guest (real guest I/O), O_DIRECT, then synced."""
    import domains
    script = "; ".join(
        "dd if=/dev/urandom of=/dev/vda bs=1M count=%d seek=%d oflag=direct conv=notrunc status=none || exit 1"
        % (length // MiB, off // MiB) for off in offsets) + "; sync"
    domains.guest_exec(dom, ["/bin/sh", "-c", script], timeout=900, check=True)


def back_on_base(dom, base):
    """Merge the overlay an earlier repository's backups kept (untimed): each full row then
    measures a first full backup of a VM on its own image, as virtnbdbackup's does."""
    import domains
    for target, source in domains.domblklist(dom):
        if source != base and ".vmbackup-" in source:
            domains.virsh("blockcommit", dom, target, "--active", "--pivot", "--wait", "--base", base, timeout=600)
            os.unlink(source)


def latest_manifest(repo, vm):
    dirs = sorted(d for d in glob.glob(os.path.join(repo, vm, "2*")) if os.path.isdir(d))
    if not dirs:
        raise B.BenchError("no backup of %s in %s" % (vm, repo))
    with open(os.path.join(dirs[-1], "manifest.json")) as fh:
        return dirs[-1], json.load(fh)


def manifest_bytes(man):
    sent = man.get("bytes_sent")
    stored = man.get("bytes_stored")
    if sent is None:
        sent = sum(d.get("bytes_sent") or 0 for d in man["disks"])
    if stored is None:
        stored = sum(d.get("stored_bytes") or 0 for d in man["disks"])
    duration = sum(d.get("duration") or 0 for d in man["disks"])
    return sent, stored, duration


# --------------------------------------------------------------------------
# references

class ForwardedNbd:
    """The reference path, by hand: qemu-nbd (read-only) on hv1 serving IMAGE on a unix socket,
    that socket forwarded to this machine by OpenSSH (aes128-gcm)."""

    def __init__(self, image, fmt, workdir):
        self.image = image
        self.fmt = fmt
        self.local = os.path.join(workdir, "ref-nbd.sock")
        self.remote = "/tmp/vmbackup-bench-ref-%d.sock" % os.getpid()
        self.proc = None

    def __enter__(self):
        sock = shlex.quote(self.remote)
        script = ("trap 'kill $(cat %s.pid 2>/dev/null) 2>/dev/null; rm -f %s %s.pid' EXIT; "
                  "qemu-nbd --fork --pid-file=%s.pid --read-only -f %s -k %s %s || exit $?; "
                  "echo READY; read _x || true"
                  % (sock, sock, sock, sock, self.fmt, sock, shlex.quote(self.image)))
        argv = B.hv_ssh_argv(["-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                              "-L", "%s:%s" % (self.local, self.remote)]) + ["--", script]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 60
        buf = b""
        while time.monotonic() < deadline:
            r, _w, _x = select.select([self.proc.stdout], [], [], 0.5)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                if b"READY" in buf:
                    for _i in range(200):
                        if os.path.exists(self.local):
                            return self
                        time.sleep(0.05)
                    break
            elif self.proc.poll() is not None:
                break
        self.__exit__()
        raise B.BenchError("reference qemu-nbd over ssh -L did not come up: %s"
                           % self.proc.stderr.read().decode(errors="replace"))

    @property
    def url(self):
        return "nbd+unix:///?socket=%s" % self.local

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        try:
            os.unlink(self.local)
        except OSError:
            pass
        return False


def ref_forwarded_nbd(image, fmt, out, workdir):
    """ssh -L + qemu-nbd on hv1 + qemu-img convert on this side; the time includes setting up
    the forward and qemu-nbd (as our transfer's does)."""
    def call():
        with ForwardedNbd(image, fmt, workdir) as nbd:
            B.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", nbd.url, out], timeout=1800)
    return B.measure_call(call, "qemu-img convert through a forwarded qemu-nbd socket", hv_rss=True)


def virtnbdbackup(dom, level, outdir, scratch):
    argv = ["virtnbdbackup", "-d", dom, "-l", level, "-o", outdir, "-n", "-S", scratch]
    return B.measure(argv, 1800, "virtnbdbackup -l %s" % level)


# --------------------------------------------------------------------------
# the section

def run_section(opts, results):
    import domains
    size = opts.size_gib * GiB
    data = opts.data_gib * GiB
    wd = tempfile.mkdtemp(prefix="vmbackup-bench-", dir="/var/tmp")
    os.chmod(wd, 0o711)  # qemu (libvirt-qemu) must reach the images
    images = os.path.join(wd, "images")
    repo = os.path.join(wd, "repo")
    refs = os.path.join(wd, "refs")
    for d in (images, repo, refs):
        os.makedirs(d)
    os.chmod(images, 0o711)
    res = {"size_gib": opts.size_gib, "data_gib": opts.data_gib, "workdir": wd, "ansible_pipelining": True}
    results["file"] = res
    doms = []
    try:
        _run(opts, res, wd, images, repo, refs, size, data, doms)
    finally:
        log("file: cleaning up (domains %s, %s)" % (", ".join(doms) or "none", wd))
        for name in doms + [DOM_RESTORED]:
            try:
                domains.destroy_guest(name, delete_storage=True)
            except Exception as exc:  # keep cleaning
                log("file: could not remove domain %s: %s" % (name, exc))
        B.run(["sh", "-c", "kill $(cat /tmp/vmbackup-bench-ref-%d.sock.pid 2>/dev/null) 2>/dev/null; "
                           "rm -f /tmp/vmbackup-bench-ref-%d.sock*" % (os.getpid(), os.getpid())], check=False)
        B.rmtree(wd)
    return res


def _run(opts, res, wd, images, repo, refs, size, data, doms):
    import domains
    ans = B.Ansible(wd)
    runner = B.direct_runner()
    from ansible_collections.vmbackup.libvirt.plugins.module_utils import _ssh, _transfer as transfer
    hv = _ssh.Hypervisor(runner, B.hv_params())

    # ---- the disks, prepared on the host before the domains start
    src = os.path.join(images, "vda.qcow2")
    src_vnb = os.path.join(images, "vda-vnb.qcow2")
    t = time.monotonic()
    make_image(wd, size, data, EXTENTS, src)
    copy_image(src, src_vnb)
    src_big = None
    if opts.big:
        src_big = os.path.join(images, "vda-big.qcow2")
        copy_image(src, src_big)
        B.run(["qemu-img", "resize", "-q", "-f", "qcow2", src_big, "%dG" % opts.big_gib])
    allocated = B.allocated_bytes(src)
    res["allocated_bytes"] = allocated
    log("file: %s GiB qcow2 with %s of data in %d places made in %.0fs"
        % (opts.size_gib, B.fmt_b(allocated), EXTENTS, time.monotonic() - t))

    # ---- two running guests: ours, and a copy for virtnbdbackup
    for name, path in ((DOM, src), (DOM_VNB, src_vnb)):
        doms.append(name)
        domains.define_guest(name, [{"target": "vda", "format": "qcow2", "path": path}], replace=True)
    for name in (DOM, DOM_VNB):
        waited = domains.wait_agent(name, timeout=240)
        log("file: %s answers its guest agent (%.0fs)" % (name, waited))

    extra = {"vmbackup_vms": DOM, "vmbackup_repository": repo}

    # ---- full: ours
    log("file: our full backup (ansible-playbook vmbackup.libvirt.backup, hv1 over SSH)")
    full = ans.playbook("vmbackup.libvirt.backup", extra, "our full backup")
    full_dir, full_man = latest_manifest(repo, DOM)
    sent, stored, mod_duration = manifest_bytes(full_man)
    if full_man.get("type") != "full":
        raise B.BenchError("first backup is %s, expected full" % full_man.get("type"))
    res["full"] = {"ours_playbook": _m(full), "ours_module_duration": mod_duration,
                   "bytes_sent": sent, "bytes_stored": stored}
    log("file: full backup %.1fs (disk_transfer duration %.1fs), sent %s, stored %s"
        % (full["seconds"], mod_duration, B.fmt_b(sent), B.fmt_b(stored)))

    # the frozen image is now the base under the kept overlay: read-only from here on
    frozen = src
    out = os.path.join(refs, "direct.qcow2")
    log("file: the transfer alone (_transfer.pull_full called directly)")
    direct = B.measure_call(lambda: transfer.pull_full(runner, hv, frozen, "qcow2", out),
                            "pull_full", hv_rss=True)
    res["full"]["ours_transfer"] = _m(direct)
    res["full"]["ours_transfer"]["stored"] = B.disk_usage(out)
    os.unlink(out)

    log("file: the transfer alone over the TLS data channel (NBD over TLS, pre-shared key; set up through SSH)")
    hv_tls = _ssh.Hypervisor(runner, dict(B.hv_params(), data_channel="tls", data_address=B.HV1["address"]))
    direct_tls = B.measure_call(lambda: transfer.pull_full(runner, hv_tls, frozen, "qcow2", out),
                                "pull_full over tls", hv_rss=True)
    res["full"]["ours_transfer_tls"] = dict(_m(direct_tls), stored=B.disk_usage(out))
    os.unlink(out)

    log("file: the transfer alone over the insecure-tcp data channel (plain NBD, the reference of TLS's cost)")
    hv_tcp = _ssh.Hypervisor(runner, dict(B.hv_params(), data_channel="insecure-tcp", data_address=B.HV1["address"]))
    direct_tcp = B.measure_call(lambda: transfer.pull_full(runner, hv_tcp, frozen, "qcow2", out),
                                "pull_full over insecure-tcp", hv_rss=True)
    res["full"]["ours_transfer_tcp"] = dict(_m(direct_tcp), stored=B.disk_usage(out))
    os.unlink(out)

    log("file: reference qemu-img convert, local")
    out = os.path.join(refs, "local.qcow2")
    local = B.measure(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", frozen, out], 1800,
                      "qemu-img convert local")
    res["full"]["ref_local"] = dict(_m(local), stored=B.disk_usage(out))
    os.unlink(out)

    log("file: reference qemu-img convert through an OpenSSH-forwarded qemu-nbd socket")
    out = os.path.join(refs, "fwd.qcow2")
    fwd = ref_forwarded_nbd(frozen, "qcow2", out, wd)
    res["full"]["ref_forwarded_nbd"] = dict(_m(fwd), stored=B.disk_usage(out))
    os.unlink(out)

    log("file: reference virtnbdbackup -l full (on its own copy of the domain)")
    vnb_dir = os.path.join(wd, "vnb")
    scratch = os.path.join(wd, "vnb-scratch")
    os.makedirs(scratch)
    vfull = virtnbdbackup(DOM_VNB, "full", vnb_dir, scratch)
    res["full"]["ref_virtnbdbackup"] = dict(_m(vfull), stored=B.disk_usage(vnb_dir))

    # ---- incremental: the guests write 256 MiB in 8 places
    wlen = opts.write_mib * MiB // WRITES
    woffsets = [(i * (size // WRITES) + 3 * size // (WRITES * 4)) // MiB * MiB for i in range(WRITES)]
    t = time.monotonic()
    guest_writes(DOM, woffsets, wlen)
    guest_writes(DOM_VNB, woffsets, wlen)
    res["guest_write_seconds"] = time.monotonic() - t
    # what the guest wrote (distinct, 1 MiB-aligned ranges): the allocated data of the change.
    # (qemu-img map of the live overlay from outside is not it: QEMU still caches its L2 tables)
    written = WRITES * wlen
    res["incremental_written_bytes"] = written
    log("file: guests wrote %d x %s (%.0fs)" % (WRITES, B.fmt_b(wlen), res["guest_write_seconds"]))

    log("file: our incremental backup")
    inc = ans.playbook("vmbackup.libvirt.backup", extra, "our incremental backup")
    inc_dir, inc_man = latest_manifest(repo, DOM)
    if inc_dir == full_dir or inc_man.get("type") != "incremental":
        raise B.BenchError("second backup is %s, expected incremental" % inc_man.get("type"))
    sent, stored, mod_duration = manifest_bytes(inc_man)
    res["incremental"] = {"ours_playbook": _m(inc), "ours_module_duration": mod_duration,
                          "bytes_sent": sent, "bytes_stored": stored,
                          "delta_data_bytes": B.allocated_bytes(os.path.join(inc_dir, "vda.qcow2"), depth0=True)}
    log("file: reference virtnbdbackup -l inc")
    before = B.disk_usage(vnb_dir)
    vinc = virtnbdbackup(DOM_VNB, "inc", vnb_dir, scratch)
    res["incremental"]["ref_virtnbdbackup"] = dict(_m(vinc), stored=B.disk_usage(vnb_dir) - before)

    # ---- restore of the chain (full + incremental)
    restored = os.path.join(wd, "restored")
    os.makedirs(restored)
    os.chmod(restored, 0o711)
    log("file: our restore (ansible-playbook vmbackup.libvirt.restore of the chain)")
    rest = ans.playbook("vmbackup.libvirt.restore",
                        {"vmbackup_vm": DOM, "vmbackup_repository": repo, "vmbackup_restore_name": DOM_RESTORED,
                         "vmbackup_restore_directory": restored}, "our restore")
    res["restore"] = {"ours_playbook": _m(rest)}
    top = os.path.join(inc_dir, "vda.qcow2")
    target = os.path.join(restored, "push.qcow2")

    def push():
        hv.run(["qemu-img", "create", "-q", "-f", "qcow2", target, str(size)], "creating %s" % target)
        transfer.push(runner, hv, top, target, "qcow2", target_is_zero=True)
    log("file: the restore transfer alone (_transfer.push called directly)")
    direct_push = B.measure_call(push, "push", hv_rss=True)
    res["restore"]["ours_transfer"] = _m(direct_push)
    res["restore"]["restored_allocated"] = B.allocated_bytes(target)
    _rc, _o, _e = B.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", top, target], timeout=900, check=False)
    res["restore"]["push_identical"] = _rc == 0
    os.unlink(target)

    def push_tls():
        hv.run(["qemu-img", "create", "-q", "-f", "qcow2", target, str(size)], "creating %s" % target)
        transfer.push(runner, hv_tls, top, target, "qcow2", target_is_zero=True)
    log("file: the restore transfer alone over the TLS data channel")
    res["restore"]["ours_transfer_tls"] = _m(B.measure_call(push_tls, "push over tls", hv_rss=True))
    out = os.path.join(refs, "chain.qcow2")
    log("file: reference qemu-img convert of the chain, local")
    rlocal = B.measure(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", top, out], 1800,
                       "qemu-img convert of the chain")
    res["restore"]["ref_local"] = dict(_m(rlocal), stored=B.disk_usage(out))
    # virtnbdbackup's own restore of its chain (full + inc) of the same data, into local files:
    # the peer's figure for the same job (its guest wrote other random bytes, the same amount).
    vnb_out = os.path.join(wd, "vnb-restored")
    log("file: reference virtnbdrestore of virtnbdbackup's chain (full + inc), local")
    vrest = B.measure(["virtnbdrestore", "-i", vnb_dir, "-o", vnb_out, "-n", "-L", os.path.join(wd, "vnbr.log")],
                      1800, "virtnbdrestore")
    res["restore"]["ref_virtnbdrestore"] = dict(_m(vrest), stored=B.disk_usage(vnb_out))
    B.rmtree(vnb_out)
    # the restored disks hold what the chain holds
    _rc, cmp_out, _err = B.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", top, target],
                               timeout=900, check=False)
    res["restore"]["push_identical"] = res["restore"]["push_identical"] and _rc == 0
    for p in (out, target):
        os.unlink(p)
    try:
        domains.destroy_guest(DOM_RESTORED)
    except Exception as exc:
        log("file: could not remove %s: %s" % (DOM_RESTORED, exc))
    for p in glob.glob(os.path.join(restored, "*")):
        os.unlink(p)

    # ---- virtnbdbackup's topology: it runs on the hypervisor, so here the backup node is the
    # hypervisor too (transport local), into a second repository: a full, then the guest writes
    # the same amount again elsewhere, then an incremental.
    local_repo = os.path.join(wd, "repo-local")
    ssh_inventory = ans.inventory
    ans.inventory = os.path.join(wd, "inventory-local.ini")
    with open(ans.inventory, "w") as fh:
        fh.write("[hypervisors]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % B.HV_PYTHON)
    try:
        back_on_base(DOM, src)
        log("file: our full backup with the backup node on the hypervisor (transport local)")
        lfull = ans.playbook("vmbackup.libvirt.backup", {"vmbackup_vms": DOM, "vmbackup_repository": local_repo},
                             "our full backup, node = hypervisor")
        res["full"]["ours_playbook_local"] = _m(lfull)
        guest_writes(DOM, [o + size // (WRITES * 8) for o in woffsets], wlen)
        log("file: our incremental backup with the backup node on the hypervisor")
        linc = ans.playbook("vmbackup.libvirt.backup", {"vmbackup_vms": DOM, "vmbackup_repository": local_repo},
                            "our incremental backup, node = hypervisor")
        _d, linc_man = latest_manifest(local_repo, DOM)
        if linc_man.get("type") != "incremental":
            raise B.BenchError("local second backup is %s, expected incremental" % linc_man.get("type"))
        res["incremental"]["ours_playbook_local"] = _m(linc)
    finally:
        ans.inventory = ssh_inventory
        B.rmtree(local_repo)

    # ---- the TLS data channel (SSH for control only; NBD over TLS, as virtnbdbackup's remote
    # mode sends NBD, but authenticated): a full into a third repository.
    tls_repo = os.path.join(wd, "repo-tls")
    try:
        back_on_base(DOM, src)
        log("file: our full backup over the TLS data channel")
        tls_extra = dict(extra, vmbackup_repository=tls_repo, vmbackup_data_channel="tls")
        tfull = ans.playbook("vmbackup.libvirt.backup", tls_extra, "our full backup, tls data channel")
        res["full"]["ours_playbook_tls"] = _m(tfull)
    finally:
        B.rmtree(tls_repo)

    # ---- --big: the same full backup of a 64 GiB disk with the same data
    if opts.big:
        for name in (DOM, DOM_VNB):  # fewer TCG guests competing for the 2 cores
            domains.destroy_guest(name, delete_storage=True)
            doms.remove(name)
        doms.append(DOM_BIG)
        domains.define_guest(DOM_BIG, [{"target": "vda", "format": "qcow2", "path": src_big}], replace=True)
        domains.wait_agent(DOM_BIG, timeout=240)
        log("file: our full backup of the %d GiB disk" % opts.big_gib)
        big = ans.playbook("vmbackup.libvirt.backup", {"vmbackup_vms": DOM_BIG, "vmbackup_repository": repo},
                           "our full backup, big disk")
        _d, big_man = latest_manifest(repo, DOM_BIG)
        sent, stored, mod_duration = manifest_bytes(big_man)
        out = os.path.join(refs, "direct-big.qcow2")
        direct_big = B.measure_call(lambda: transfer.pull_full(runner, hv, src_big, "qcow2", out),
                                    "pull_full (big)", hv_rss=True)
        os.unlink(out)
        res["big"] = {"size_gib": opts.big_gib, "ours_playbook": _m(big), "ours_module_duration": mod_duration,
                      "ours_transfer": _m(direct_big), "bytes_sent": sent, "bytes_stored": stored}


def _m(m):
    return {"seconds": round(m["seconds"], 3), "peak_rss_mb": round(m["peak_mb"], 1),
            "peak_total_rss_mb": round(m["peak_total_mb"], 1),
            "rss_mb": {k: round(v, 1) for k, v in m["rss"].items()}, "module_runs": m.get("module_runs", {})}


# --------------------------------------------------------------------------
# report

def report(res):
    lines = []
    full, inc, rest = res.get("full", {}), res.get("incremental", {}), res.get("restore", {})
    alloc = res.get("allocated_bytes")
    fwd = full.get("ref_forwarded_nbd", {}).get("seconds")

    def ratio(a, b):
        return None if not a or not b else a / b

    def r(x):
        return "-" if x is None else "%.2fx" % x

    rows = []
    if full:
        pb, tr = full["ours_playbook"], full["ours_transfer"]
        vnb = full["ref_virtnbdbackup"]
        rows += [
            ["full", "ours: whole playbook", B.fmt_s(pb["seconds"]), r(ratio(pb["seconds"], vnb["seconds"])) + " vnb",
             B.fmt_b(full["bytes_sent"]), B.fmt_b(full["bytes_stored"]), r(ratio(full["bytes_stored"], alloc)),
             B.fmt_mb(pb["peak_rss_mb"])],
            ["full", "ours: disk_transfer (module's transfer duration)", B.fmt_s(full["ours_module_duration"]),
             r(ratio(full["ours_module_duration"], fwd)) + " fwd", "", "", "", ""],
            ["full", "ours: transfer alone (pull_full)", B.fmt_s(tr["seconds"]), r(ratio(tr["seconds"], fwd)) + " fwd",
             "", B.fmt_b(tr["stored"]), r(ratio(tr["stored"], alloc)), B.fmt_mb(tr["peak_rss_mb"])],
        ]
        loc_s = full.get("ref_local", {}).get("seconds")
        for key, label in (("ours_transfer_tls", "tls"), ("ours_transfer_tcp", "insecure-tcp")):
            if full.get(key):
                ch = full[key]
                rows += [["full", "ours: transfer alone, %s data channel" % label, B.fmt_s(ch["seconds"]),
                          r(ratio(ch["seconds"], loc_s)) + " local, " + r(ratio(ch["seconds"], tr["seconds"])) + " ssh",
                          "", B.fmt_b(ch["stored"]), r(ratio(ch["stored"], alloc)), B.fmt_mb(ch["peak_rss_mb"])]]
        if full.get("ours_playbook_tls"):
            tpb = full["ours_playbook_tls"]
            rows += [["full", "ours: whole playbook, tls data channel", B.fmt_s(tpb["seconds"]),
                      r(ratio(tpb["seconds"], vnb["seconds"])) + " vnb", "", "", "", B.fmt_mb(tpb["peak_rss_mb"])]]
        if full.get("ours_playbook_local"):
            loc = full["ours_playbook_local"]
            rows += [["full", "ours: whole playbook, node = hypervisor (local)", B.fmt_s(loc["seconds"]),
                      r(ratio(loc["seconds"], vnb["seconds"])) + " vnb", "", "", "", B.fmt_mb(loc["peak_rss_mb"])]]
        rows += [
            ["full", "ref: qemu-img convert, local", B.fmt_s(full["ref_local"]["seconds"]), "", "",
             B.fmt_b(full["ref_local"]["stored"]), r(ratio(full["ref_local"]["stored"], alloc)),
             B.fmt_mb(full["ref_local"]["peak_rss_mb"])],
            ["full", "ref: qemu-img convert via ssh -L qemu-nbd", B.fmt_s(fwd), "1.00x fwd", "",
             B.fmt_b(full["ref_forwarded_nbd"]["stored"]), r(ratio(full["ref_forwarded_nbd"]["stored"], alloc)),
             B.fmt_mb(full["ref_forwarded_nbd"]["peak_rss_mb"])],
            ["full", "ref: virtnbdbackup -l full (local)", B.fmt_s(vnb["seconds"]), "1.00x vnb", "",
             B.fmt_b(vnb["stored"]), r(ratio(vnb["stored"], alloc)), B.fmt_mb(vnb["peak_rss_mb"])],
        ]
    if inc:
        pb, vnb = inc["ours_playbook"], inc["ref_virtnbdbackup"]
        w = res.get("incremental_written_bytes")
        rows += [
            ["incr", "ours: whole playbook", B.fmt_s(pb["seconds"]), r(ratio(pb["seconds"], vnb["seconds"])) + " vnb",
             B.fmt_b(inc["bytes_sent"]), B.fmt_b(inc["bytes_stored"]), r(ratio(inc["bytes_stored"], w)),
             B.fmt_mb(pb["peak_rss_mb"])],
            ["incr", "ours: disk_transfer (module duration)", B.fmt_s(inc["ours_module_duration"]), "", "", "", "", ""],
        ] + ([["incr", "ours: whole playbook, node = hypervisor (local)", B.fmt_s(inc["ours_playbook_local"]["seconds"]),
               r(ratio(inc["ours_playbook_local"]["seconds"], vnb["seconds"])) + " vnb", "", "", "",
               B.fmt_mb(inc["ours_playbook_local"]["peak_rss_mb"])]] if inc.get("ours_playbook_local") else []) + [
            ["incr", "ref: virtnbdbackup -l inc (local)", B.fmt_s(vnb["seconds"]), "1.00x vnb", "",
             B.fmt_b(vnb["stored"]), r(ratio(vnb["stored"], w)), B.fmt_mb(vnb["peak_rss_mb"])],
        ]
    if rest:
        pb, tr, ref = rest["ours_playbook"], rest["ours_transfer"], rest["ref_local"]
        rows += [
            ["restore", "ours: whole playbook (chain of 2)", B.fmt_s(pb["seconds"]),
             r(ratio(pb["seconds"], ref["seconds"])) + " local", "", "", "", B.fmt_mb(pb["peak_rss_mb"])],
            ["restore", "ours: transfer alone (push)", B.fmt_s(tr["seconds"]),
             r(ratio(tr["seconds"], ref["seconds"])) + " local", "", "", "", B.fmt_mb(tr["peak_rss_mb"])],
        ] + ([["restore", "ours: transfer alone (push), tls data channel", B.fmt_s(rest["ours_transfer_tls"]["seconds"]),
               r(ratio(rest["ours_transfer_tls"]["seconds"], ref["seconds"])) + " local, "
               + r(ratio(rest["ours_transfer_tls"]["seconds"], tr["seconds"])) + " ssh", "", "", "",
               B.fmt_mb(rest["ours_transfer_tls"]["peak_rss_mb"])]] if rest.get("ours_transfer_tls") else []) + [
            ["restore", "ref: qemu-img convert of the chain, local", B.fmt_s(ref["seconds"]), "1.00x local", "",
             B.fmt_b(ref["stored"]), "", B.fmt_mb(ref["peak_rss_mb"])],
        ] + ([["restore", "ref: virtnbdrestore of its chain (local)", B.fmt_s(rest["ref_virtnbdrestore"]["seconds"]),
               r(ratio(rest["ref_virtnbdrestore"]["seconds"], ref["seconds"])) + " local", "",
               B.fmt_b(rest["ref_virtnbdrestore"]["stored"]), "", B.fmt_mb(rest["ref_virtnbdrestore"]["peak_rss_mb"])]]
             if rest.get("ref_virtnbdrestore") else [])
    big = res.get("big")
    if big:
        rows += [
            ["full %dG" % big["size_gib"], "ours: whole playbook", B.fmt_s(big["ours_playbook"]["seconds"]), "",
             B.fmt_b(big["bytes_sent"]), B.fmt_b(big["bytes_stored"]), r(ratio(big["bytes_stored"], alloc)),
             B.fmt_mb(big["ours_playbook"]["peak_rss_mb"])],
            ["full %dG" % big["size_gib"], "ours: transfer alone (pull_full)", B.fmt_s(big["ours_transfer"]["seconds"]),
             r(ratio(big["ours_transfer"]["seconds"], fwd)) + " fwd", "", "", "",
             B.fmt_mb(big["ours_transfer"]["peak_rss_mb"])],
        ]
    lines.append("File disks: %d GiB qcow2, %s allocated (random, %d places); incremental: guest wrote %s in %d places"
                 % (res["size_gib"], B.fmt_b(alloc), EXTENTS, B.fmt_b(res.get("incremental_written_bytes")), WRITES))
    lines.append(B.table(rows, ["step", "what", "time", "ratio", "sent", "stored", "stored/alloc", "peak RSS"]))
    lines.append("")
    lines.append("Peak RSS per program (MB; max over its processes, node = backup node, hypervisor = over SSH):")
    counted = [(label, B.module_runs_line(res.get(key, {}).get("ours_playbook")))
               for key, label in (("full", "full"), ("incremental", "incremental"), ("restore", "restore"))]
    if any(n for _l, n in counted):
        lines.append("Module runs per VM (file disks only; callbacks/module_runs.py): "
                     + ", ".join("%s %s" % (label, n or "-") for label, n in counted))
    for key, label in (("full", "full backup playbook"), ("incremental", "incremental playbook"),
                       ("restore", "restore playbook")):
        if key in res:
            lines.append("  %-22s %s" % (label, B.rss_line(res[key]["ours_playbook"]["rss_mb"], 9)))
    if full:
        lines.append("  %-22s %s" % ("pull_full (direct)", B.rss_line(full["ours_transfer"]["rss_mb"], 9)))
    if rest:
        lines.append("  %-22s %s" % ("push (direct)", B.rss_line(rest["ours_transfer"]["rss_mb"], 9)))
    if big:
        lines.append("  %-22s %s" % ("big full playbook", B.rss_line(big["ours_playbook"]["rss_mb"], 9)))
        lines.append("  %-22s %s" % ("big pull_full", B.rss_line(big["ours_transfer"]["rss_mb"], 9)))
    return "\n".join(lines)


def _at_most(target, ours, ref, factor=1.0):
    """A target row: ours against a reference time, met when ours <= factor x ref."""
    return (target, "%.2fx (%.1fs vs %.1fs)" % (ours / ref, ours, ref), ours <= factor * ref)


def targets(res):
    """[(target, value text, PASS/MISS)] from issue 3."""
    out = []
    full = res.get("full")
    if not full:
        return out
    fwd = full["ref_forwarded_nbd"]["seconds"]
    out.append(_at_most("transfer <= 1.25x forwarded-NBD reference (pull_full)", full["ours_transfer"]["seconds"],
                        fwd, 1.25))
    out.append(_at_most("  same, disk_transfer's own transfer duration (sha256 apart)", full["ours_module_duration"],
                        fwd, 1.25))
    for step, row in (("full", full), ("incremental", res.get("incremental"))):
        if not row:
            continue
        vnb = row["ref_virtnbdbackup"]["seconds"]
        out.append(_at_most("whole %s backup no slower than virtnbdbackup (ours over SSH)" % step,
                            row["ours_playbook"]["seconds"], vnb))
        if row.get("ours_playbook_tls"):
            out.append(_at_most("  same, data over the TLS channel", row["ours_playbook_tls"]["seconds"], vnb))
        if row.get("ours_playbook_local"):
            out.append(_at_most("  same, node = hypervisor as virtnbdbackup's (local)",
                                row["ours_playbook_local"]["seconds"], vnb))
    # issue 14: the whole playbook against virtnbdbackup (full 1.5x, incremental 2.0x over SSH)
    for step, row, factor in (("full", full, 1.5), ("incremental", res.get("incremental"), 2.0)):
        if row:
            out.append(_at_most("whole %s playbook <= %.1fx virtnbdbackup (issue 14)" % (step, factor),
                                row["ours_playbook"]["seconds"], row["ref_virtnbdbackup"]["seconds"], factor))
    runs = list(((res.get("incremental") or {}).get("ours_playbook") or {}).get("module_runs", {}).values())
    if len(runs) == 1:
        out.append(("file-only incremental in <= 5 module runs per VM (issue 14)", str(runs[0]["runs"]),
                    runs[0]["runs"] <= 5))
    # issue 13: the authenticated channel costs at most 2x a local qemu-img convert
    if full.get("ours_transfer_tls"):
        out.append(_at_most("TLS channel <= 2.0x local qemu-img convert (full backup, pull_full)",
                            full["ours_transfer_tls"]["seconds"], full["ref_local"]["seconds"], 2.0))
    rest = res.get("restore") or {}
    if rest.get("ours_transfer"):
        out.append(_at_most("whole restore playbook <= 1.5x its own transfer (push; issue 14)",
                            rest["ours_playbook"]["seconds"], rest["ours_transfer"]["seconds"], 1.5))
    if rest.get("ours_transfer_tls"):
        out.append(_at_most("TLS channel <= 2.0x local qemu-img convert (restore, push)",
                            rest["ours_transfer_tls"]["seconds"], rest["ref_local"]["seconds"], 2.0))
    inc = res.get("incremental")
    alloc = res["allocated_bytes"]
    out.append(("stored <= 1.05x allocated (full)", "%.3fx" % (full["bytes_stored"] / alloc),
                full["bytes_stored"] <= 1.05 * alloc))
    w = res.get("incremental_written_bytes")
    if inc and w:
        out.append(("stored <= 1.05x allocated (incremental)", "%.3fx" % (inc["bytes_stored"] / w),
                    inc["bytes_stored"] <= 1.05 * w))
    peaks = [full["ours_playbook"], full["ours_transfer"]] + [
        full[k] for k in ("ours_playbook_local", "ours_playbook_tls", "ours_transfer_tls", "ours_transfer_tcp")
        if full.get(k)]
    if inc:
        peaks.append(inc["ours_playbook"])
    if res.get("restore"):
        peaks += [res["restore"][k] for k in ("ours_playbook", "ours_transfer", "ours_transfer_tls")
                  if res["restore"].get(k)]
    worst = max(p["peak_rss_mb"] for p in peaks)
    out.append(("peak RSS of every process of ours < 150 MB (%d GiB)" % res["size_gib"], "%.0f MB" % worst,
                worst < 150))
    big = res.get("big")
    if big:
        bworst = max(big["ours_playbook"]["peak_rss_mb"], big["ours_transfer"]["peak_rss_mb"])
        same = max(full["ours_playbook"]["peak_rss_mb"], full["ours_transfer"]["peak_rss_mb"])
        out.append(("peak RSS < 150 MB and the same for %d GiB" % big["size_gib"],
                    "%.0f MB (vs %.0f MB at %d GiB)" % (bworst, same, res["size_gib"]),
                    bworst < 150 and bworst <= same * 1.10 + 5))
    return out
