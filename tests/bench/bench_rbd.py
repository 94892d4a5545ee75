"""RBD section of ``make bench`` (issue 6): full and incremental backups of a Ceph RBD image
with the collection's rbd_export (snapshot, on hv1) and rbd_transfer (pull, on the backup node
over SSH), against ``rbd export`` and ``rbd export-diff`` piped through OpenSSH
(``ssh hv1 rbd export-diff ... - > file``), as ratios. The image: 1 GiB with 256 MiB of random
data, then 5% of it changed.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import tempfile
import time
import uuid

import benchlib as B
from benchlib import MiB, log

CEPH = os.path.join(B.TB, "ceph")
CONF = os.path.join(CEPH, "ceph.conf")
ADMIN_KEYRING = os.path.join(CEPH, "ceph.client.admin.keyring")
VMB_KEYRING = os.path.join(CEPH, "ceph.client.vmbackup.keyring")
CEPH_ARGS = {"ceph_conf": CONF, "ceph_id": "vmbackup", "ceph_keyring": VMB_KEYRING}
PIECE = 16 * MiB


def rbd(*args, timeout=300, check=True, input_data=None):
    return B.run(["timeout", str(timeout), "rbd", "--conf", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING]
                 + [str(a) for a in args], timeout=timeout + 30, check=check, input_data=input_data)[1]


def _rbd_remote(*args):
    """An rbd command line for hv1, with the same client id and keyring our modules use."""
    return " ".join(shlex.quote(str(a)) for a in
                    ["rbd", "--conf", CONF, "--id", "vmbackup", "--keyring", VMB_KEYRING] + list(args))


def ref_pipe(rbd_args, out, label):
    """ssh hv1 rbd ... - > out (OpenSSH, aes128-gcm)."""
    argv = ["sh", "-c", "exec %s -- %s > %s" % (shlex.join(B.hv_ssh_argv()), shlex.quote(_rbd_remote(*rbd_args)),
                                                shlex.quote(out))]
    m = B.measure(argv, 1800, label, hv_rss=True)
    m["bytes"] = os.path.getsize(out)
    m["stored"] = B.disk_usage(out)
    return m


def make_image(image, size, data, seed=1):
    """An image of ``size`` with ``data`` bytes of random data in 16 MiB pieces spread over it."""
    rng = random.Random(seed)
    pieces = data // PIECE
    stride = size // pieces
    with tempfile.NamedTemporaryFile(dir="/var/tmp", prefix="vmbackup-bench-rbd-", suffix=".raw") as fh:
        fh.truncate(size)
        for i in range(pieces):
            fh.seek(i * stride)
            fh.write(rng.randbytes(PIECE))
        fh.flush()
        rbd("import", "--no-progress", fh.name, image)


def change(image, fraction, size, data, seed=2):
    """Rewrite ``fraction`` of the image in 64 KiB random writes at distinct offsets inside its
    data (qemu-io through QEMU's rbd driver, one process), as a guest rewriting its files does;
    returns the bytes changed. (Writes into never-written objects make rbd export-diff send
    those whole objects, zeroes included: see README.md.)"""
    rng = random.Random(seed)
    n = int(size * fraction) // (64 * 1024)
    pieces = data // PIECE
    stride = size // pieces
    inside = [i * stride + k for i in range(pieces) for k in range(0, PIECE, 64 * 1024)]
    offsets = sorted(rng.sample(inside, n))
    argv = ["qemu-io", "-f", "raw"]
    for i, off in enumerate(offsets):
        argv += ["-c", "write -P %d %d 65536" % (1 + i % 250, off)]
    url = "rbd:%s:conf=%s:id=admin:keyring=%s" % (image, CONF, ADMIN_KEYRING)
    B.run(argv + [url], timeout=600)
    return n * 64 * 1024


class Plays:
    """One ansible-playbook run per backup: rbd_export (snapshot) on hv1, rbd_transfer (pull)
    delegated to the backup node, rbd_export state=rotated; as the backup role does it."""

    def __init__(self, ans, workdir):
        self.ans = ans
        self.dir = workdir
        self.n = 0

    def backup(self, image, bid, parent, repo_file, label):
        import yaml  # the venv has it (ansible-core depends on PyYAML)
        self.n += 1
        out = os.path.join(self.dir, "results-%d.json" % self.n)
        ssh = {"ssh_host": B.HV1["address"], "ssh_private_key": B.HV1["key"], "known_hosts": B.HV1["known_hosts"]}
        tasks = [
            {"name": "snapshot",
             "vmbackup.libvirt.rbd_export": dict(CEPH_ARGS, image=image, snapshot=bid, **({"parent": parent} if parent else {})),
             "register": "r_snap"},
            {"name": "pull", "vmbackup.libvirt.rbd_transfer": dict(
                CEPH_ARGS, direction="backup", image=image, snapshot=bid, repo_file=repo_file,
                from_snapshot="{{ r_snap.from_snapshot | default(omit, true) }}", **ssh),
             "delegate_to": "localhost", "register": "r_pull"},
            {"name": "rotate", "vmbackup.libvirt.rbd_export": dict(CEPH_ARGS, image=image, snapshot=bid, state="rotated"),
             "register": "r_rotate"},
            {"name": "collect", "ansible.builtin.copy": {
                "content": "{{ {'snap': r_snap, 'pull': r_pull, 'rotate': r_rotate} | to_json }}", "dest": out},
             "delegate_to": "localhost"},
        ]
        path = os.path.join(self.dir, "play-%d.yml" % self.n)
        with open(path, "w") as fh:
            yaml.safe_dump([{"name": "RBD backup (bench)", "hosts": "hv1", "gather_facts": False, "tasks": tasks}],
                           fh, sort_keys=False)
        m = self.ans.playbook(path, {}, label)
        with open(out) as fh:
            m["results"] = json.load(fh)
        return m


def run_section(opts, results):
    res = {"image_mib": opts.rbd_size_mib, "data_mib": opts.rbd_data_mib, "ansible_pipelining": True}
    results["rbd"] = res
    log("rbd: starting the test bed's Ceph cluster (ceph.sh up)")
    B.testbed("ceph.sh", "up", timeout=300)
    wd = tempfile.mkdtemp(prefix="vmbackup-bench-rbd-", dir="/var/tmp")
    image = "rbd/bench-%s" % uuid.uuid4().hex[:8]
    try:
        _run(opts, res, wd, image)
    finally:
        log("rbd: cleaning up (%s, %s)" % (image, wd))
        rbd("snap", "purge", "--no-progress", image, check=False)
        rbd("rm", "--no-progress", image, check=False)
        B.rmtree(wd)
    return res


def _run(opts, res, wd, image):
    size = opts.rbd_size_mib * MiB
    repo = os.path.join(wd, "repo")
    refs = os.path.join(wd, "refs")
    os.makedirs(repo)
    os.makedirs(refs)
    ans = B.Ansible(wd)
    plays = Plays(ans, wd)
    t = time.monotonic()
    make_image(image, size, opts.rbd_data_mib * MiB)
    res["allocated_bytes"] = sum(e["length"] for e in json.loads(rbd("diff", "--format", "json", image) or "[]"))
    log("rbd: %s: %d MiB with %s of data (%.0fs)"
        % (image, opts.rbd_size_mib, B.fmt_b(res["allocated_bytes"]), time.monotonic() - t))
    ids = ["20300101T000000Z", "20300101T010000Z"]

    # ---- full: references first, on a snapshot of their own taken now (same content)
    rbd("snap", "create", "--no-progress", image + "@bench-ref1")
    out = os.path.join(refs, "full.rbddiff")
    rdiff = ref_pipe(["export-diff", "--no-progress", image + "@bench-ref1", "-"], out, "ssh rbd export-diff")
    os.unlink(out)
    out = os.path.join(refs, "full.raw")
    rexp = ref_pipe(["export", "--no-progress", image + "@bench-ref1", "-"], out, "ssh rbd export")
    os.unlink(out)
    log("rbd: our full backup (rbd_export + rbd_transfer + rotate, one ansible-playbook)")
    os.makedirs(os.path.join(repo, ids[0]))
    full = plays.backup(image, ids[0], None, os.path.join(repo, ids[0], "vda.rbddiff"), "our RBD full backup")
    pull = full["results"]["pull"]
    if pull.get("mode") != "full":
        raise B.BenchError("our first RBD backup is %s, expected full" % pull.get("mode"))
    res["full"] = {"ours_playbook": _m(full), "ours_transfer_seconds": pull["duration"],
                   "bytes_sent": pull["bytes_sent"], "bytes_stored": pull["stored_bytes"],
                   "ref_export_diff": _r(rdiff), "ref_export": _r(rexp)}
    rbd("snap", "rm", "--no-progress", image + "@bench-ref1")

    # ---- incremental after 5% changed
    changed = change(image, 0.05, size, opts.rbd_data_mib * MiB)
    res["changed_bytes"] = changed
    rbd("snap", "create", "--no-progress", image + "@bench-ref2")
    out = os.path.join(refs, "inc.rbddiff")
    rinc = ref_pipe(["export-diff", "--no-progress", "--from-snap", "vmbackup-" + ids[0], image + "@bench-ref2", "-"],
                    out, "ssh rbd export-diff --from-snap")
    os.unlink(out)
    log("rbd: our incremental backup")
    os.makedirs(os.path.join(repo, ids[1]))
    inc = plays.backup(image, ids[1], ids[0], os.path.join(repo, ids[1], "vda.rbddiff"), "our RBD incremental")
    pull = inc["results"]["pull"]
    if pull.get("mode") != "incremental":
        raise B.BenchError("our second RBD backup is %s, expected incremental" % pull.get("mode"))
    res["incremental"] = {"ours_playbook": _m(inc), "ours_transfer_seconds": pull["duration"],
                          "bytes_sent": pull["bytes_sent"], "bytes_stored": pull["stored_bytes"],
                          "ref_export_diff": _r(rinc)}
    rbd("snap", "rm", "--no-progress", image + "@bench-ref2")
    _mixed_vm(res, wd, ans)
    # the fixed cost of one rbd command over SSH (the module lists the snapshots first)
    t = time.monotonic()
    B.hv_run(_rbd_remote("snap", "ls", "--format", "json", image), timeout=120)
    res["ssh_rbd_snap_ls_seconds"] = round(time.monotonic() - t, 3)


def _m(m):
    return {"seconds": round(m["seconds"], 3), "peak_rss_mb": round(m["peak_mb"], 1),
            "rss_mb": {k: round(v, 1) for k, v in m["rss"].items()}, "module_runs": m.get("module_runs", {})}


MIXED_VM = "vmb-bench-mixed"


def _mixed_vm(res, wd, ans):
    """A running VM with a qcow2 file disk and an RBD disk (cephx secret), backed up twice by the
    backup playbook (full, then incremental): the module runs per VM of a mixed VM (issue 14)."""
    import domains
    image = "rbd/bench-mixed-%s" % uuid.uuid4().hex[:8]
    qcow = os.path.join(wd, "mixed-vda.qcow2")
    secret = str(uuid.uuid4())
    os.chmod(wd, 0o711)
    rbd("create", "--no-progress", "--size", "64M", image)
    B.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow, "64M"])
    B.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 8M", qcow])
    key = B.run(["ceph", "--conf", CONF, "--id", "admin", "--keyring", ADMIN_KEYRING, "auth", "get-key",
                 "client.vmbackup"])[1].strip()
    domains.virsh("secret-define", "/dev/stdin", input_text=(
        "<secret ephemeral='no' private='yes'><uuid>%s</uuid><usage type='ceph'><name>client.vmbackup bench %s</name>"
        "</usage></secret>" % (secret, secret[:8])))
    keyfile = os.path.join(wd, "secret.key")
    with open(os.open(keyfile, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(key)
    try:
        domains.virsh("secret-set-value", "--secret", secret, "--file", keyfile)
        os.unlink(keyfile)
        domains.virsh("define", "/dev/stdin", input_text="""<domain type='kvm'><name>%s</name>
          <memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>
          <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>
            <target dev='vda' bus='virtio'/></disk>
          <disk type='network' device='disk'><driver name='qemu' type='raw'/>
            <auth username='vmbackup'><secret type='ceph' uuid='%s'/></auth>
            <source protocol='rbd' name='%s'><host name='127.0.0.1' port='6789'/></source>
            <target dev='vdb' bus='virtio'/></disk></devices></domain>""" % (MIXED_VM, qcow, secret, image))
        domains.virsh("start", MIXED_VM)
        extra = {"vmbackup_vms": MIXED_VM, "vmbackup_repository": os.path.join(wd, "repo-mixed"),
                 "vmbackup_ceph_conf": CONF, "vmbackup_ceph_id": "vmbackup", "vmbackup_ceph_keyring": VMB_KEYRING}
        log("rbd: a VM with a file disk and an RBD disk: full and incremental by the backup playbook")
        res["mixed_full"] = _m(ans.playbook("vmbackup.libvirt.backup", extra, "mixed VM full backup"))
        res["mixed_incremental"] = _m(ans.playbook("vmbackup.libvirt.backup", extra, "mixed VM incremental"))
    finally:
        domains.virsh("destroy", MIXED_VM, check=False)
        domains.virsh("undefine", MIXED_VM, check=False)
        domains.virsh("secret-undefine", secret, check=False)
        rbd("snap", "purge", "--no-progress", image, check=False)
        rbd("rm", "--no-progress", image, check=False)


def _r(m):
    return {"seconds": round(m["seconds"], 3), "bytes": m["bytes"], "stored": m["stored"],
            "peak_rss_mb": round(m["peak_mb"], 1)}


def report(res):
    rows = []

    def r(a, b):
        return "-" if not a or not b else "%.2fx" % (a / b)

    alloc = res.get("allocated_bytes")
    for key, label, base in (("full", "full", alloc), ("incremental", "incr (5%)", res.get("changed_bytes"))):
        x = res.get(key)
        if not x:
            continue
        ref = x["ref_export_diff"]
        rows.append([label, "ours: whole playbook (snapshot, pull, rotate)", B.fmt_s(x["ours_playbook"]["seconds"]),
                     r(x["ours_playbook"]["seconds"], ref["seconds"]), B.fmt_b(x["bytes_sent"]),
                     B.fmt_b(x["bytes_stored"]), r(x["bytes_stored"], base), B.fmt_mb(x["ours_playbook"]["peak_rss_mb"])])
        rows.append([label, "ours: rbd_transfer alone (its duration)", B.fmt_s(x["ours_transfer_seconds"]),
                     r(x["ours_transfer_seconds"], ref["seconds"]), "", "", "", ""])
        rows.append([label, "ref: ssh hv1 rbd export-diff > file", B.fmt_s(ref["seconds"]), "1.00x",
                     B.fmt_b(ref["bytes"]), B.fmt_b(ref["stored"]), r(ref["stored"], base), B.fmt_mb(ref["peak_rss_mb"])])
        if "ref_export" in x:
            e = x["ref_export"]
            rows.append([label, "ref: ssh hv1 rbd export > file", B.fmt_s(e["seconds"]),
                         r(e["seconds"], ref["seconds"]), B.fmt_b(e["bytes"]), B.fmt_b(e["stored"]),
                         r(e["stored"], base), B.fmt_mb(e["peak_rss_mb"])])
    head = ("RBD: %d MiB image, %s allocated; incremental after %s changed (64 KiB writes)"
            % (res["image_mib"], B.fmt_b(alloc), B.fmt_b(res.get("changed_bytes"))))
    if res.get("ssh_rbd_snap_ls_seconds") is not None:
        head += "; one 'ssh hv1 rbd snap ls' takes %.2f s" % res["ssh_rbd_snap_ls_seconds"]
    lines = [head, B.table(rows, ["step", "what", "time", "vs export-diff", "sent", "stored", "stored/alloc",
                                  "peak RSS"])]
    for key in ("full", "incremental"):
        if key in res:
            lines.append("  peak RSS, %s playbook: %s" % (key, B.rss_line(res[key]["ours_playbook"]["rss_mb"], 9)))
    mixed = [(label, B.module_runs_line(res.get(key))) for key, label in
             (("mixed_full", "full"), ("mixed_incremental", "incremental"))]
    if any(n for _l, n in mixed):
        lines.append("Module runs per VM, a VM with a file disk and an RBD disk (backup playbook): "
                     + ", ".join("%s %s (%s)" % (label, n or "-", B.fmt_s(res[key]["seconds"]))
                                 for (label, n), key in zip(mixed, ("mixed_full", "mixed_incremental"))))
    return "\n".join(lines)


def targets(res):
    out = []
    for key in ("full", "incremental"):
        x = res.get(key)
        if not x:
            continue
        ref = x["ref_export_diff"]["seconds"]
        out.append(("RBD %s: rbd_transfer vs ssh rbd export-diff (ratio; no target set)" % key,
                    "%.2fx (%.1fs vs %.1fs)" % (x["ours_transfer_seconds"] / ref, x["ours_transfer_seconds"], ref),
                    None))
        out.append(("RBD %s: peak RSS of every process of ours < 150 MB" % key,
                    "%.0f MB" % x["ours_playbook"]["peak_rss_mb"], x["ours_playbook"]["peak_rss_mb"] < 150))
    for key in ("mixed_full", "mixed_incremental"):
        runs = list((res.get(key) or {}).get("module_runs", {}).values())
        if len(runs) == 1:
            out.append(("mixed VM (file + RBD disk) %s in <= 8 module runs per VM (issue 14)" % key.split("_")[1],
                        str(runs[0]["runs"]), runs[0]["runs"] <= 8))
    x = res.get("incremental")
    if x and res.get("changed_bytes"):
        ch = res["changed_bytes"]
        out.append(("RBD incremental sent about the changed bytes (within 10% + 1 MiB)",
                    "%s for %s changed" % (B.fmt_b(x["bytes_sent"]), B.fmt_b(ch)),
                    abs(x["bytes_sent"] - ch) <= 0.10 * ch + MiB))
    return out
