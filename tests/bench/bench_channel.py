"""``make bench`` section ``channel`` (issue 13): the data channels alone, without guests.

One qcow2 (``--channel-data-mib`` of AES-CTR data in 64 places, virtual size 4x that) is
copied by ``_transfer.pull_full`` over each data channel from hv1 and written back by
``_transfer.push`` into a new qcow2 on hv1, beside the references run in the same invocation:
``qemu-img convert`` locally (backup and restore) and through an ``ssh -L`` forwarded
qemu-nbd socket (backup). insecure-tcp is refused for restores, so it has a backup row only.
Each row runs ``--channel-rounds`` times (default 2); the table shows the best and all runs.
"""

from __future__ import annotations

import os
import tempfile

import benchlib as B
from benchlib import GiB, MiB, log

import bench_file


def _best(runs):
    return min(r["seconds"] for r in runs)


def run_section(opts, results):
    data = opts.channel_data_mib * MiB
    wd = tempfile.mkdtemp(prefix="vmbackup-bench-ch-", dir="/var/tmp")
    os.chmod(wd, 0o711)
    res = {"data_mib": opts.channel_data_mib, "size_mib": 4 * opts.channel_data_mib, "rows": {}}
    results["channel"] = res
    try:
        _run(opts, res, wd, data)
    finally:
        B.run(["sh", "-c", "kill $(cat /tmp/vmbackup-bench-ref-%d.sock.pid 2>/dev/null) 2>/dev/null; "
                           "rm -f /tmp/vmbackup-bench-ref-%d.sock*" % (os.getpid(), os.getpid())], check=False)
        B.rmtree(wd)
    return res


def _run(opts, res, wd, data):
    runner = B.direct_runner()
    from ansible_collections.vmbackup.libvirt.plugins.module_utils import _ssh, _transfer as transfer
    src = os.path.join(wd, "src.qcow2")
    bench_file.make_image(wd, 4 * data, data, 64, src)
    res["allocated_bytes"] = B.allocated_bytes(src)
    hvs = {ch: _ssh.Hypervisor(runner, dict(B.hv_params(), data_channel=ch, data_address=B.HV1["address"]))
           for ch in ("ssh", "tls", "insecure-tcp")}
    out = os.path.join(wd, "out.qcow2")
    target = os.path.join(wd, "target.qcow2")

    def rec(key, run):
        res["rows"].setdefault(key, []).append({"seconds": round(run["seconds"], 3)})
        log("channel: %s %.2fs" % (key, run["seconds"]))

    for _round in range(opts.channel_rounds):
        rec("backup local", B.measure(["qemu-img", "convert", "-U", "-t", "writeback", "-f", "qcow2", "-O", "qcow2",
                                       src, out], 1800, "local convert"))
        os.unlink(out)
        rec("backup ssh -L ref", bench_file.ref_forwarded_nbd(src, "qcow2", out, wd))
        os.unlink(out)
        for ch in ("ssh", "tls", "insecure-tcp"):
            rec("backup " + ch, B.measure_call(lambda h=hvs[ch]: transfer.pull_full(runner, h, src, "qcow2", out),
                                               "pull_full over " + ch, hv_rss=False))
            os.unlink(out)
        rec("restore local", B.measure(["qemu-img", "convert", "-U", "-t", "writeback", "-f", "qcow2", "-O",
                                        "qcow2", src, out], 1800, "local convert"))
        for ch in ("ssh", "tls"):
            def push(h=hvs[ch]):
                B.run(["qemu-img", "create", "-q", "-f", "qcow2", target, str(4 * data)])
                transfer.push(runner, h, out, target, "qcow2", target_is_zero=True)
            rec("restore " + ch, B.measure_call(push, "push over " + ch, hv_rss=False))
            rc, _o, _e = B.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", out, target],
                               timeout=900, check=False)
            res.setdefault("identical", []).append(rc == 0)
            os.unlink(target)
        os.unlink(out)


def report(res):
    rows = []
    for what in ("backup", "restore"):
        local = res["rows"].get(what + " local")
        for key in [k for k in res["rows"] if k.startswith(what + " ")]:
            runs = res["rows"][key]
            ratio = "%.2fx" % (_best(runs) / _best(local)) if local else ""
            rows.append([what, key[len(what) + 1:], B.fmt_s(_best(runs)), ratio,
                         ", ".join("%.2f" % r["seconds"] for r in runs)])
    return ("Data channels (issue 13): %s MiB of data in a %s MiB qcow2, hv1 over SSH on this machine; "
            "restores equal: %s\n" % (res["data_mib"], res["size_mib"], all(res.get("identical", [False])))
            + B.table(rows, ["", "channel", "best", "x local", "all runs (s)"]))


def targets(res):
    out = []
    for what in ("backup", "restore"):
        tls, local = res["rows"].get(what + " tls"), res["rows"].get(what + " local")
        if tls and local:
            out.append(bench_file._at_most("TLS channel <= 2.0x local qemu-img convert (%s, best of runs)" % what,
                                           _best(tls), _best(local), 2.0))
    return out


__all__ = ["run_section", "report", "targets", "GiB"]
