"""``make bench``: speed and memory of the collection against reference tools, measured in one
invocation on this machine's test bed (issues 3 and 6). Prints ratios against references run in
the same invocation, and peak memory; writes build/bench/results.json.

    .venv/bin/python tests/bench/run.py [file] [rbd] [lvm] [parallel] [channel] [fleet] [compression] [--size-gib 16] ...

Sections (default all): file (issue 3), rbd (issue 6), lvm (tests/bench/bench_lvm.py, if present),
parallel (issue 8: four VMs on two hypervisors, one at a time and two per hypervisor), channel (issue 13:
the data channels alone, backup and restore, against local qemu-img convert and ssh -L), fleet (issue 14:
8 running VMs on 2 hypervisors against a virtnbdbackup loop), compression (issue 18: zstd's cost and ratio).
ansible-playbook runs use ANSIBLE_PIPELINING=1. See tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as B  # noqa: E402
from benchlib import log  # noqa: E402

SECTIONS = ("file", "rbd", "lvm", "parallel", "channel", "fleet", "compression")
# The sections whose module has run_section(opts, results), report(res) and targets(res).
UNIFORM = ("file", "rbd", "parallel", "channel", "fleet", "compression")


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sections", nargs="*", help="file, rbd, lvm or all (default all)")
    ap.add_argument("--file", action="store_true", help="run the file section")
    ap.add_argument("--rbd", action="store_true", help="run the rbd section")
    ap.add_argument("--lvm", action="store_true", help="run the lvm section (tests/bench/bench_lvm.py)")
    ap.add_argument("--parallel", action="store_true", help="run the parallel section (4 VMs, 2 hypervisors)")
    ap.add_argument("--channel", action="store_true", help="run the channel section (issue 13: data channels alone)")
    ap.add_argument("--channel-data-mib", type=int, default=1024, help="data in the channel section's image (default 1024)")
    ap.add_argument("--channel-rounds", type=int, default=2, help="runs of each channel row (default 2)")
    ap.add_argument("--fleet", action="store_true", help="run the fleet section (8 running VMs, 2 hypervisors)")
    ap.add_argument("--compression", action="store_true", help="run the compression section (zstd, two kinds of data)")
    ap.add_argument("--comp-data-mib", type=int, default=512, help="data in each compression image (default 512)")
    ap.add_argument("--fleet-size-mib", type=int, default=1024, help="disk of each fleet VM (default 1024)")
    ap.add_argument("--fleet-data-mib", type=int, default=128, help="data in each fleet VM's disk (default 128)")
    ap.add_argument("--fleet-write-mib", type=int, default=64, help="each fleet guest's writes (default 64)")
    ap.add_argument("--par-data-mib", type=int, default=512, help="data in each VM of the parallel section (default 512)")
    ap.add_argument("--size-gib", type=int, default=16, help="virtual size of the file disk (default 16)")
    ap.add_argument("--data-gib", type=int, default=4, help="random data in it (default 4)")
    ap.add_argument("--write-mib", type=int, default=256, help="guest writes before the incremental (default 256)")
    ap.add_argument("--big", action="store_true", help="also back up a 64 GiB disk with the same data (memory)")
    ap.add_argument("--big-gib", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--rbd-size-mib", type=int, default=1024, help="RBD image size (default 1024)")
    ap.add_argument("--rbd-data-mib", type=int, default=256, help="data in the RBD image (default 256)")
    ap.add_argument("--from-json", metavar="PATH", help="print the tables of an earlier results.json and exit")
    ap.add_argument("--output", default=os.path.join(B.ROOT, "build", "bench", "results.json"))
    opts = ap.parse_args(argv)
    chosen = set()
    for s in opts.sections:
        if s == "all":
            chosen.update(SECTIONS)
        elif s in SECTIONS:
            chosen.add(s)
        else:
            ap.error("unknown section %r (choose from %s or all)" % (s, ", ".join(SECTIONS)))
    for s in SECTIONS:
        if getattr(opts, s):
            chosen.add(s)
    opts.chosen = [s for s in SECTIONS if s in chosen] or list(SECTIONS)
    return opts


_TERMINATED = []


def _sigterm(_signo, _frame):
    _TERMINATED.append(_signo)
    raise SystemExit("bench: terminated")  # so every section's clean-up (finally) runs


def main(argv=None):
    opts = parse(sys.argv[1:] if argv is None else argv)
    if opts.from_json:
        return reprint(opts.from_json)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)
    t0 = time.monotonic()
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "cpus": os.cpu_count(),
               "sections": opts.chosen, "ansible_pipelining": True, "errors": {}}
    reports = []
    verdicts = []
    if os.geteuid() != 0:
        print("bench: must run as root (libvirt, qemu-nbd, the test bed)", file=sys.stderr)
        return 2
    log("sections: %s; ANSIBLE_PIPELINING=1 for every ansible-playbook run" % ", ".join(opts.chosen))
    # the pieces make bench does not start itself
    try:
        B.testbed("libvirt.sh", "up")
        B.testbed("guest-image.sh", "build", timeout=900)
        B.testbed("sshd.sh", "up")
    except B.BenchError as exc:
        print("bench: the test bed did not come up:\n%s" % exc, file=sys.stderr)
        return 2

    for section in opts.chosen:
        st = time.monotonic()
        try:
            if section in UNIFORM:  # bench_SECTION.py: run_section, report, targets
                mod = importlib.import_module("bench_" + section)
                res = mod.run_section(opts, results)
                reports.append(mod.report(res))
                verdicts += [(section, *v) for v in mod.targets(res)]
            elif section == "lvm":
                path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_lvm.py")
                if not os.path.exists(path):
                    log("lvm: skipped: tests/bench/bench_lvm.py is not there (yet)")
                    results["lvm"] = {"skipped": "tests/bench/bench_lvm.py not present"}
                    reports.append("LVM: skipped (tests/bench/bench_lvm.py not present)")
                    continue
                mod = importlib.import_module("bench_lvm")
                log("lvm: running bench_lvm.main() (it prints its own lines)")
                saved = sys.argv
                sys.argv = [path]  # its own defaults: our options are not its options
                try:
                    rc = mod.main()
                except SystemExit as exc:  # its argparse or sys.exit: a result, not our end
                    rc = exc.code
                finally:
                    sys.argv = saved
                if rc not in (0, None):
                    raise B.BenchError("bench_lvm.main() returned %r" % (rc,))
                results["lvm"] = {"rc": rc}
                reports.append("LVM: see bench_lvm's lines above (main() returned %r)" % (rc,))
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            detail = getattr(exc, "msg", None) or str(exc)
            results["errors"][section] = detail
            print("\n*** bench section %s FAILED: %s\n%s" % (section, detail, traceback.format_exc()),
                  file=sys.stderr, flush=True)
            if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and _TERMINATED):
                _write(opts, results)
                raise
        finally:
            results.setdefault("section_seconds", {})[section] = round(time.monotonic() - st, 1)

    results["total_seconds"] = round(time.monotonic() - t0, 1)
    results["targets"] = [{"section": s, "target": t, "value": v, "pass": p} for s, t, v, p in verdicts]
    print()
    print("=" * 100)
    print("vmbackup.libvirt benchmark (%s, %d CPUs; ansible-playbook with ANSIBLE_PIPELINING=1; "
          "hypervisor hv1 reached over SSH on this machine)" % (platform.node(), os.cpu_count() or 0))
    print("=" * 100)
    for rep in reports:
        print(rep)
        print()
    if verdicts:
        print("Targets:")
        print(B.table([[s, t, v, "info" if p is None else ("PASS" if p else "MISS")] for s, t, v, p in verdicts],
                      ["section", "target", "value", "result"]))
    for section, err in results["errors"].items():
        print("section %s FAILED: %s" % (section, err.splitlines()[0] if err else ""))
    print("total %.0fs; results in %s" % (results["total_seconds"], opts.output))
    _write(opts, results)
    return 1 if results["errors"] else 0


def reprint(path):
    import bench_file
    import bench_rbd
    with open(path) as fh:
        results = json.load(fh)
    verdicts = []
    if results.get("file", {}).get("full"):
        print(bench_file.report(results["file"]))
        print()
        verdicts += [("file", *v) for v in bench_file.targets(results["file"])]
    if results.get("rbd", {}).get("full"):
        print(bench_rbd.report(results["rbd"]))
        print()
        verdicts += [("rbd", *v) for v in bench_rbd.targets(results["rbd"])]
    if verdicts:
        print("Targets:")
        print(B.table([[s, t, v, "info" if p is None else ("PASS" if p else "MISS")] for s, t, v, p in verdicts],
                      ["section", "target", "value", "result"]))
    for section, err in results.get("errors", {}).items():
        print("section %s FAILED: %s" % (section, (err or "").splitlines()[0] if err else ""))
    return 0


def _write(opts, results):
    os.makedirs(os.path.dirname(opts.output), exist_ok=True)
    tmp = opts.output + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, opts.output)


if __name__ == "__main__":
    sys.exit(main())
