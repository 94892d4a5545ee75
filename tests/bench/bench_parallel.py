"""``make bench``, section parallel (issue 8): four VMs on two hypervisors in one run.

hv1 and hv2 are two sshd endpoints of this machine in front of the one local libvirtd; each is
given two VMs (vmbackup_vms as a host variable). The VMs are shut off, each on a qcow2 with
``--par-data-mib`` of data. The same full backup runs twice, in one invocation: one VM at a time
(limits 1 per hypervisor, 1 per node: the sum of their times), then with a limit of 2 per
hypervisor. Printed: both wall times and their ratio, how many backups ran at once (per
hypervisor and in all, from the reports' begin/commit times), and peak RSS.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import textwrap

import benchlib as B
from benchlib import log

DOMS = {"hv1": ["vmb-bench-par1", "vmb-bench-par2"], "hv2": ["vmb-bench-par3", "vmb-bench-par4"]}
ADDRESSES = {"hv1": "127.0.0.11", "hv2": "127.0.0.12"}
MiB = 1024 * 1024


def _inventory(path):
    key = os.path.join(B.SSH_DIR, "id_ed25519")
    known = os.path.join(B.SSH_DIR, "known_hosts")
    hosts = []
    for name, vms in DOMS.items():
        hosts.append(" ".join([
            name, "ansible_host=%s" % ADDRESSES[name], "ansible_user=root", "ansible_ssh_private_key_file=%s" % key,
            "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes'" % known,
            "vmbackup_ssh_private_key=%s" % key, "vmbackup_known_hosts=%s" % known, "vmbackup_vms=%s" % ",".join(vms)]))
    with open(path, "w") as fh:
        fh.write(textwrap.dedent("""\
            [hypervisors]
            %s

            [all:vars]
            ansible_python_interpreter=%s
            """) % ("\n".join(hosts), B.HV_PYTHON))


def _spans(repo):
    spans = []
    for host in DOMS:
        with open(os.path.join(repo, "report-%s-latest.json" % host)) as fh:
            for r in json.load(fh)["results"]:
                if r["result"] != "ok":
                    raise B.BenchError("backup of %s on %s failed: %s" % (r["vm"], host, r.get("error")))
                spans.append((datetime.datetime.fromisoformat(r["started"]).timestamp(),
                              datetime.datetime.fromisoformat(r["finished"]).timestamp(), host))
    return spans


def most_at_once(spans):
    events = sorted([(s, 1) for s, _e in spans] + [(e, -1) for _s, e in spans])
    now = peak = 0
    for _t, step in events:
        now += step
        peak = max(peak, now)
    return peak


def _one_run(ans, wd, label, per_hypervisor, per_node):
    repo = os.path.join(wd, "repo-%s" % label)
    extra = {"vmbackup_repository": repo, "vmbackup_backup_type": "full",
             "vmbackup_limit_per_hypervisor": per_hypervisor, "vmbackup_limit_per_node": per_node,
             "vmbackup_slot_dir": os.path.join(wd, "slots")}
    log("parallel: %s run (limit %s per hypervisor, %s per node)" % (label, per_hypervisor, per_node or "no limit"))
    m = ans.playbook("vmbackup.libvirt.backup", extra, "%s backup of 4 VMs" % label)
    spans = _spans(repo)
    out = {"seconds": m["seconds"], "peak_rss_mb": m["peak_mb"], "rss_mb": m["rss"],
           "vm_seconds": [e - s for s, e, _h in spans],
           "most_at_once": most_at_once([(s, e) for s, e, _h in spans]),
           "most_per_hypervisor": max(most_at_once([(s, e) for s, e, h in spans if h == host]) for host in DOMS)}
    log("parallel: %s run %.1fs, at most %d backups at once (%d per hypervisor)"
        % (label, out["seconds"], out["most_at_once"], out["most_per_hypervisor"]))
    B.rmtree(repo)
    return out


def run_section(opts, results):
    import domains
    wd = tempfile.mkdtemp(prefix="vmbackup-bench-par-", dir="/var/tmp")
    os.chmod(wd, 0o711)
    res = {"data_mib": opts.par_data_mib, "vms": sum(len(v) for v in DOMS.values()), "hypervisors": len(DOMS)}
    results["parallel"] = res
    made = []
    try:
        for i, name in enumerate(sum(DOMS.values(), [])):
            path = os.path.join(wd, "%s.qcow2" % name)
            B.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "%dM" % (4 * opts.par_data_mib)])
            # A byte pattern, not random data: nothing on the way compresses (qcow2 uncompressed, SSH
            # without compression), so it costs the transfer what random data would.
            B.run(["qemu-io", "-f", "qcow2", "-c", "write -P %d 0 %dM" % (0x21 + i, opts.par_data_mib), path])
            domains.define_guest(name, [{"target": "vda", "format": "qcow2", "path": path}], running=False,
                                 replace=True)
            made.append(name)
        ans = B.Ansible(wd)
        ans.inventory = os.path.join(wd, "inventory-parallel.ini")
        _inventory(ans.inventory)
        res["sequential"] = _one_run(ans, wd, "sequential", 1, 1)
        res["parallel"] = _one_run(ans, wd, "parallel", 2, 0)
    finally:
        log("parallel: cleaning up (domains %s, %s)" % (", ".join(made) or "none", wd))
        for name in made:
            try:
                domains.virsh("undefine", name, check=False)
            except Exception as exc:  # keep cleaning
                log("parallel: could not remove domain %s: %s" % (name, exc))
        B.rmtree(wd)
    return res


def report(res):
    seq, par = res.get("sequential"), res.get("parallel")
    if not seq or not par:
        return "Parallel: no result"
    rows = [
        ["one at a time (limits 1/1)", B.fmt_s(seq["seconds"]), "1.00x", B.fmt_s(sum(seq["vm_seconds"])),
         str(seq["most_at_once"]), str(seq["most_per_hypervisor"]), B.fmt_mb(seq["peak_rss_mb"])],
        ["parallel (2 per hypervisor)", B.fmt_s(par["seconds"]), "%.2fx" % (par["seconds"] / seq["seconds"]),
         B.fmt_s(sum(par["vm_seconds"])), str(par["most_at_once"]), str(par["most_per_hypervisor"]),
         B.fmt_mb(par["peak_rss_mb"])],
    ]
    head = ("Parallel (issue 8): %d VMs on %d hypervisors, %d MiB of data each, full backups; whole playbook "
            "runs. 'VM time' sums each VM's begin-to-commit time." % (res["vms"], res["hypervisors"], res["data_mib"]))
    return head + "\n" + B.table(rows, ["run", "wall time", "vs one at a time", "VM time (sum)", "most at once",
                                        "most per hypervisor", "peak RSS"])


def targets(res):
    seq, par = res.get("sequential"), res.get("parallel")
    if not seq or not par:
        return []
    ratio = par["seconds"] / seq["seconds"]
    return [
        ("4 VMs, limit 2 per hypervisor: wall time vs one at a time (well below 1)", "%.2fx" % ratio, ratio <= 0.75),
        ("backups at once per hypervisor (limit 2)", str(par["most_per_hypervisor"]),
         1 < par["most_per_hypervisor"] <= 2),
    ]
