"""LVM full backup benchmark on the test bed's LVM hypervisor (run with the project venv).

Fills a 256 MiB LV with 128 MiB of random data (the rest zeroes), snapshots it, then times
(a) our transfer (the disk_transfer code: qemu-nbd on the host, its socket forwarded by
OpenSSH, qemu-img convert into a sparse qcow2 on this machine) and (b) ``ssh lvmhost dd
if=SNAPSHOT bs=1M | cat > file`` through OpenSSH, and prints one line:

    lvm full backup: ours X.XX s, dd over ssh Y.YY s, ratio Z.ZZ, peak RSS N MB

The ratio is ours / dd (below 1: ours is faster). Peak RSS is the largest of our processes
(the Python driver, ssh, qemu-img) on this machine. The test bed's host is a TCG guest, so
compare ratios, not absolute times. Everything it creates is removed afterwards.

Usage: .venv/bin/python tests/bench/bench_lvm.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TB = os.environ.get("VMBACKUP_TESTBED", "/var/tmp/vmbackup-testbed")
SSH_CONFIG = os.path.join(TB, "lvmhost", "ssh_config")
KEY = os.path.join(TB, "ssh", "id_ed25519")
KNOWN_HOSTS = os.path.join(TB, "lvmhost", "known_hosts")
PORT = int(os.environ.get("VMBACKUP_LVMHOST_PORT", "2299"))
COLLECTIONS = os.path.join(ROOT, "build", "collections")
MiB = 1 << 20


def on_host(cmd, timeout=600):
    cp = subprocess.run(["ssh", "-F", SSH_CONFIG, "lvmhost", cmd], capture_output=True, text=True, timeout=timeout,
                        check=False)
    if cp.returncode != 0:
        raise RuntimeError("on the LVM host, %r failed (rc=%s): %s" % (cmd, cp.returncode, cp.stderr.strip()))
    return cp.stdout


class _Module:
    """The little of AnsibleModule that CommandRunner needs, outside Ansible."""

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", "")] + list(opt_dirs or [])))

    def run_command(self, argv, data=None, environ_update=None, binary_data=False):
        env = dict(os.environ, **(environ_update or {}))
        cp = subprocess.run(argv, input=data.encode() if isinstance(data, str) else data,
                            capture_output=True, env=env, check=False)
        return cp.returncode, cp.stdout.decode(errors="replace"), cp.stderr.decode(errors="replace")


def measure_ours(image, dest):
    """Child process: our full transfer of ``image`` into ``dest``; prints JSON."""
    link = os.path.join(COLLECTIONS, "ansible_collections", "vmbackup", "libvirt")
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)
    sys.path.insert(0, COLLECTIONS)
    from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner
    from ansible_collections.vmbackup.libvirt.plugins.module_utils import _ssh, _transfer as transfer

    runner = CommandRunner(_Module(), host="backup-node")
    hv = _ssh.Hypervisor(runner, {"transport": "ssh", "ssh_host": "127.0.0.1", "ssh_port": PORT,
                                  "ssh_user": "root", "ssh_private_key": KEY, "known_hosts": KNOWN_HOSTS,
                                  "ssh_options": [], "ready_timeout": 120})
    t0 = time.time()
    result = transfer.pull_full(runner, hv, image, "raw", dest)
    seconds = time.time() - t0
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"seconds": seconds, "peak_rss_kb": peak, "bytes_sent": result["bytes_sent"],
                      "stored": os.stat(dest).st_blocks * 512}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--ours", nargs=2, metavar=("IMAGE", "DEST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ours:
        measure_ours(*args.ours)
        return 0

    subprocess.run(["bash", os.path.join(ROOT, "tests", "testbed", "lvmhost.sh"), "up"], check=True,
                   stdout=subprocess.DEVNULL)
    lv = "bench%s" % uuid.uuid4().hex[:6]
    snap = "%s-snap" % lv
    tmp = tempfile.mkdtemp(prefix="vmbackup-bench-lvm-")
    try:
        on_host("lvcreate -q -y -L 256m -n {lv} vg0 && "
                "dd if=/dev/urandom of=/dev/vg0/{lv} bs=1M count=128 oflag=direct status=none && "
                "dd if=/dev/zero of=/dev/vg0/{lv} bs=1M seek=128 count=128 oflag=direct status=none && "
                "lvcreate -q -y -s -L 64m -n {snap} vg0/{lv}".format(lv=lv, snap=snap))
        image = "/dev/vg0/%s" % snap
        for _run in range(args.runs):
            dest = os.path.join(tmp, "ours.qcow2")
            cp = subprocess.run([sys.executable, os.path.abspath(__file__), "--ours", image, dest],
                                capture_output=True, text=True, timeout=1200, check=False)
            if cp.returncode != 0:
                raise RuntimeError("our transfer failed: %s%s" % (cp.stdout, cp.stderr))
            ours = json.loads(cp.stdout.strip().splitlines()[-1])
            os.unlink(dest)

            raw = os.path.join(tmp, "dd.raw")
            t0 = time.time()
            subprocess.run("ssh -F %s lvmhost dd if=%s bs=1M status=none | cat > %s" % (SSH_CONFIG, image, raw),
                           shell=True, check=True, timeout=1200)
            dd_s = time.time() - t0
            dd_bytes = os.path.getsize(raw)
            os.unlink(raw)
            assert dd_bytes == 256 * MiB, dd_bytes
            print("lvm full backup: ours %.2f s, dd over ssh %.2f s, ratio %.2f, peak RSS %d MB"
                  % (ours["seconds"], dd_s, ours["seconds"] / dd_s, ours["peak_rss_kb"] // 1024))
            print("  (256 MiB LV, 128 MiB random data; ours stored %.1f MiB, dd read %d MiB)"
                  % (ours["stored"] / MiB, dd_bytes // MiB), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["ssh", "-F", SSH_CONFIG, "lvmhost", "lvremove -q -f vg0/%s vg0/%s" % (snap, lv)],
                       capture_output=True, timeout=300, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
