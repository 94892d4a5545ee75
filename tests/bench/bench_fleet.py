"""``make bench``, section fleet (issue 14): a nightly incremental of 8 running VMs on 2
hypervisors, one ansible-playbook run, against a loop of ``virtnbdbackup -l inc`` over the same
VMs one after the other (its documentation backs up one domain per call).

hv1 and hv2 are two sshd endpoints of this machine in front of the one local libvirtd, four VMs
each (as the parallel section). Each VM is a TCG guest on a qcow2 of ``--fleet-size-mib`` with
``--fleet-data-mib`` of data. Ours first: a full of all 8 (untimed), the guests write
``--fleet-write-mib`` each, then the timed incremental with the default limits (1 per
hypervisor), the guests write again, and the timed incremental with the documented fleet setting
(``vmbackup_limit_per_hypervisor=4``, forks 9). Then virtnbdbackup on the same VMs (its
checkpoints start on the overlay our backups kept, which it reads as one disk): a full of each
(untimed), the same writes, and the timed loop of incrementals. Printed: each wall time, ours
against the loop (target: at most 0.5x), the bytes each incremental carried and peak RSS.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import textwrap
import time

import bench_file
import benchlib as B
from benchlib import MiB, log

HYPERVISORS = {"hv1": "127.0.0.11", "hv2": "127.0.0.12"}
VMS_PER_HYPERVISOR = 4
FORKS = 9  # 8 per-VM hosts and localhost, which keeps the play alive


def _doms():
    return {hv: ["vmb-bench-fleet%d" % (i * VMS_PER_HYPERVISOR + j + 1) for j in range(VMS_PER_HYPERVISOR)]
            for i, hv in enumerate(HYPERVISORS)}


def _inventory(path, doms):
    key = os.path.join(B.SSH_DIR, "id_ed25519")
    known = os.path.join(B.SSH_DIR, "known_hosts")
    hosts = [" ".join([
        name, "ansible_host=%s" % HYPERVISORS[name], "ansible_user=root", "ansible_ssh_private_key_file=%s" % key,
        "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes'" % known,
        "vmbackup_ssh_private_key=%s" % key, "vmbackup_known_hosts=%s" % known, "vmbackup_vms=%s" % ",".join(vms)])
        for name, vms in doms.items()]
    with open(path, "w") as fh:
        fh.write(textwrap.dedent("""\
            [hypervisors]
            %s

            [all:vars]
            ansible_python_interpreter=%s
            """) % ("\n".join(hosts), B.HV_PYTHON))


def _write_all(names, mib, round_no):
    """Each guest writes ``mib`` MiB of random data (real guest I/O, O_DIRECT) in 4 places."""
    piece = max(1, mib // 4) * MiB
    t = time.monotonic()
    for name in names:
        bench_file.guest_writes(name, [(k * 4 + round_no) * piece for k in range(4)], piece)
    return time.monotonic() - t


def _our_run(ans, repo, label, per_hypervisor, doms, backup_type="auto"):
    extra = {"vmbackup_repository": repo, "vmbackup_backup_type": backup_type,
             "vmbackup_limit_per_hypervisor": per_hypervisor, "vmbackup_slot_dir": os.path.join(os.path.dirname(repo), "slots")}
    m = ans.playbook("vmbackup.libvirt.backup", extra, label, timeout=1800)
    sent = 0
    for hv in doms:
        with open(os.path.join(repo, "report-%s-latest.json" % hv)) as fh:
            for r in json.load(fh)["results"]:
                if r["result"] != "ok":
                    raise B.BenchError("%s: backup of %s on %s failed: %s" % (label, r["vm"], hv, r.get("error")))
    for vm in sum(doms.values(), []):
        newest = sorted(d for d in glob.glob(os.path.join(repo, vm, "2*")) if os.path.isdir(d))[-1]
        with open(os.path.join(newest, "manifest.json")) as fh:
            man = json.load(fh)
        if backup_type != "full" and man.get("type") != "incremental":
            raise B.BenchError("%s: the backup of %s is %s, expected incremental" % (label, vm, man.get("type")))
        sent += sum(d.get("bytes_sent") or 0 for d in man.get("disks", []))
    return {"seconds": round(m["seconds"], 3), "peak_rss_mb": round(m["peak_mb"], 1), "bytes_sent": sent,
            "module_runs": m.get("module_runs", {})}


def run_section(opts, results):
    import domains
    doms = _doms()
    names = sum(doms.values(), [])
    wd = tempfile.mkdtemp(prefix="vmbackup-bench-fleet-", dir="/var/tmp")
    os.chmod(wd, 0o711)
    res = {"vms": len(names), "hypervisors": len(doms), "size_mib": opts.fleet_size_mib,
           "data_mib": opts.fleet_data_mib, "write_mib": opts.fleet_write_mib}
    results["fleet"] = res
    made = []
    try:
        for i, name in enumerate(names):
            path = os.path.join(wd, "%s.qcow2" % name)
            B.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "%dM" % opts.fleet_size_mib])
            write = "write -P %d %dM %dM" % (0x31 + i, opts.fleet_size_mib // 2, opts.fleet_data_mib)
            B.run(["qemu-io", "-f", "qcow2", "-c", write, path])
            made.append(name)
            domains.define_guest(name, [{"target": "vda", "format": "qcow2", "path": path}], replace=True,
                                 memory_mib=192)
        t = time.monotonic()
        for name in names:
            domains.wait_agent(name, timeout=600)
        log("fleet: %d guests answer their agents (%.0fs)" % (len(names), time.monotonic() - t))

        ans = B.Ansible(wd)
        ans.env["ANSIBLE_FORKS"] = str(FORKS)
        ans.inventory = os.path.join(wd, "inventory-fleet.ini")
        _inventory(ans.inventory, doms)
        repo = os.path.join(wd, "repo")
        log("fleet: our full backup of the %d VMs (untimed)" % len(names))
        _our_run(ans, repo, "fleet full", VMS_PER_HYPERVISOR, doms, "full")
        res["write_seconds"] = _write_all(names, opts.fleet_write_mib, 0)
        log("fleet: our incremental, default limits (1 per hypervisor)")
        res["ours_default"] = _our_run(ans, repo, "fleet incremental, limit 1 per hypervisor", 1, doms)
        _write_all(names, opts.fleet_write_mib, 1)
        log("fleet: our incremental, %d per hypervisor, forks %d" % (VMS_PER_HYPERVISOR, FORKS))
        res["ours_fleet"] = _our_run(ans, repo, "fleet incremental, limit %d per hypervisor" % VMS_PER_HYPERVISOR,
                                     VMS_PER_HYPERVISOR, doms)
        for k in ("ours_default", "ours_fleet"):
            log("fleet: %s %.1fs" % (k, res[k]["seconds"]))

        vnb = os.path.join(wd, "vnb")
        scratch = os.path.join(wd, "vnb-scratch")
        os.makedirs(scratch)
        log("fleet: virtnbdbackup -l full of each VM (untimed)")
        for name in names:
            B.run(["virtnbdbackup", "-d", name, "-l", "full", "-o", os.path.join(vnb, name), "-n", "-S", scratch],
                  timeout=900)
        _write_all(names, opts.fleet_write_mib, 2)
        log("fleet: the loop of virtnbdbackup -l inc over the %d VMs, one after the other" % len(names))
        script = "set -e; " + "; ".join(
            "virtnbdbackup -d %s -l inc -o %s -n -S %s" % (name, os.path.join(vnb, name), scratch) for name in names)
        loop = B.measure(["sh", "-c", script], 1800, "virtnbdbackup -l inc loop")
        res["ref_loop"] = {"seconds": round(loop["seconds"], 3), "peak_rss_mb": round(loop["peak_mb"], 1)}
        log("fleet: virtnbdbackup loop %.1fs" % loop["seconds"])
    finally:
        log("fleet: cleaning up (domains %s, %s)" % (", ".join(made) or "none", wd))
        for name in made:
            try:
                for cp in domains.virsh("checkpoint-list", name, "--name", check=False).stdout.split():
                    domains.virsh("checkpoint-delete", name, cp, "--metadata", check=False)
                domains.destroy_guest(name, delete_storage=True)
            except Exception as exc:  # keep cleaning
                log("fleet: could not remove domain %s: %s" % (name, exc))
        B.rmtree(wd)
    return res


def _runs_per_vm(measured):
    """'6' when every VM took 6 module runs, '6-8' otherwise, '-' when not counted."""
    runs = sorted(e["runs"] for e in (measured.get("module_runs") or {}).values())
    if not runs:
        return "-"
    return str(runs[0]) if runs[0] == runs[-1] else "%d-%d" % (runs[0], runs[-1])


def report(res):
    loop = (res.get("ref_loop") or {}).get("seconds")
    if not loop:
        return "Fleet: no result"
    rows = []
    for key, label in (("ours_default", "ours: one playbook, default limits (1 per hypervisor)"),
                       ("ours_fleet", "ours: one playbook, %d per hypervisor, forks %d" % (VMS_PER_HYPERVISOR, FORKS))):
        x = res.get(key)
        if x:
            rows.append([label, B.fmt_s(x["seconds"]), "%.2fx" % (x["seconds"] / loop), B.fmt_b(x["bytes_sent"]),
                         _runs_per_vm(x), B.fmt_mb(x["peak_rss_mb"])])
    rows.append(["ref: virtnbdbackup -l inc, one VM after the other", B.fmt_s(loop), "1.00x", "", "",
                 B.fmt_mb(res["ref_loop"]["peak_rss_mb"])])
    head = ("Fleet (issue 14): nightly incremental of %d running VMs on %d hypervisors (%d MiB disks, %d MiB of data, "
            "%d MiB written by each guest before each incremental)"
            % (res["vms"], res["hypervisors"], res["size_mib"], res["data_mib"], res["write_mib"]))
    return head + "\n" + B.table(rows, ["run", "wall time", "vs loop", "sent", "module runs", "peak RSS"])


def targets(res):
    loop = (res.get("ref_loop") or {}).get("seconds")
    out = []
    for key, label in (("ours_default", "default limits"), ("ours_fleet", "%d per hypervisor" % VMS_PER_HYPERVISOR)):
        x = res.get(key)
        if loop and x:
            out.append(("8 VMs / 2 hypervisors incremental <= 0.5x a virtnbdbackup loop (%s)" % label,
                        "%.2fx (%.1fs vs %.1fs)" % (x["seconds"] / loop, x["seconds"], loop),
                        x["seconds"] <= 0.5 * loop))
    return out
