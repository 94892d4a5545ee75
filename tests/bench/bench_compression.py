"""``make bench``, section compression (issue 18): what zstd compression of the stored qcow2
costs and saves, on incompressible data and on text.

Two qcow2 images are made on the host, each with ``--comp-data-mib`` of data in twice that size:
random bytes (/dev/urandom) and text (the Python standard library's
sources, repeated). Each is pulled into the repository by ``_transfer.pull_full`` over SSH from
hv1, as a full backup's transfer is, with ``compression=none`` and ``compression=zstd``, in the
same invocation. Printed: the time, the rate over the data, the stored bytes and the ratio of
stored to data, and peak RSS; zstd's time against none's on the same data.
"""

from __future__ import annotations

import glob
import os
import tempfile

import benchlib as B
from benchlib import MiB, log


def _text_source():
    """Text: the standard library's .py files (about 4:1 for zstd per 64 KiB cluster)."""
    files = sorted(glob.glob("/usr/lib/python3*/**/*.py", recursive=True))
    if not files:
        raise B.BenchError("no Python sources found under /usr/lib/python3* for the text image")
    return files


def _make(path, kind, data):
    raw = path + ".raw"
    with open(raw, "wb") as out:
        if kind == "random":
            with open("/dev/urandom", "rb") as rnd:
                left = data
                while left:
                    chunk = rnd.read(min(left, 4 * MiB))
                    out.write(chunk)
                    left -= len(chunk)
        else:
            left = data
            files = _text_source()
            while left > 0:
                for name in files:
                    with open(name, "rb") as fh:
                        chunk = fh.read(left)
                    out.write(chunk)
                    left -= len(chunk)
                    if left <= 0:
                        break
        out.truncate(2 * data)
    B.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path], timeout=900)
    os.unlink(raw)


def run_section(opts, results):
    runner = B.direct_runner()
    from ansible_collections.vmbackup.libvirt.plugins.module_utils import _ssh, _transfer as transfer
    hv = _ssh.Hypervisor(runner, B.hv_params())
    data = opts.comp_data_mib * MiB
    wd = tempfile.mkdtemp(prefix="vmbackup-bench-comp-", dir="/var/tmp")
    os.chmod(wd, 0o711)
    res = {"data_mib": opts.comp_data_mib, "rows": []}
    results["compression"] = res
    try:
        for kind in ("random", "text"):
            image = os.path.join(wd, "%s.qcow2" % kind)
            _make(image, kind, data)
            for compression in ("none", "zstd"):
                out = os.path.join(wd, "out-%s-%s.qcow2" % (kind, compression))
                log("compression: pull_full of the %s image, compression=%s" % (kind, compression))
                m = B.measure_call(lambda: transfer.pull_full(runner, hv, image, "qcow2", out, compression=compression),
                                   "pull_full %s %s" % (kind, compression), hv_rss=True)
                res["rows"].append({"data": kind, "compression": compression, "seconds": round(m["seconds"], 3),
                                    "stored": B.disk_usage(out), "peak_rss_mb": round(m["peak_mb"], 1)})
                _rc, _o, _e = B.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", image, out], timeout=900,
                                    check=False)
                res["rows"][-1]["identical"] = _rc == 0
                os.unlink(out)
            os.unlink(image)
    finally:
        B.rmtree(wd)
    return res


def _row(res, kind, compression):
    for r in res.get("rows", []):
        if r["data"] == kind and r["compression"] == compression:
            return r
    return None


def report(res):
    data = res["data_mib"] * MiB
    rows = []
    for r in res.get("rows", []):
        base = _row(res, r["data"], "none")
        rows.append([r["data"], r["compression"], B.fmt_s(r["seconds"]),
                     "%.0f MiB/s" % (data / MiB / r["seconds"]) if r["seconds"] else "-",
                     "%.2fx" % (r["seconds"] / base["seconds"]) if base and base["seconds"] else "-",
                     B.fmt_b(r["stored"]), "%.3f" % (r["stored"] / data), "yes" if r["identical"] else "NO",
                     B.fmt_mb(r["peak_rss_mb"])])
    head = ("Compression (issue 18): pull_full over SSH from hv1 of %d MiB of data (in a %d MiB qcow2), "
            "stored as is and with qcow2 zstd compression" % (res["data_mib"], 2 * res["data_mib"]))
    return head + "\n" + B.table(rows, ["data", "compression", "time", "rate", "vs none", "stored", "stored/data",
                                        "equal", "peak RSS"])


def targets(res):
    out = []
    for kind in ("random", "text"):
        none, zstd = _row(res, kind, "none"), _row(res, kind, "zstd")
        if none and zstd:
            out.append(("zstd on %s data: time vs none, stored/data (measured; no target set)" % kind,
                        "%.2fx, %.3f" % (zstd["seconds"] / none["seconds"], zstd["stored"] / (res["data_mib"] * MiB)),
                        None))
            out.append(("zstd on %s data: the stored image reads back equal" % kind, str(zstd["identical"]),
                        zstd["identical"]))
    return out
