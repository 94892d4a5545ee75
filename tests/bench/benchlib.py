"""Shared pieces of the benchmark (``make bench``): commands with bounded waits, peak-RSS
sampling of process trees, ansible-playbook runs with the collection, a stand-in runner for
calling the transfer functions directly, and the result table.

Stdlib only (plus the collection itself for the direct transfer calls).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TESTBED_DIR = os.path.join(ROOT, "tests", "testbed")
TB = os.environ.get("VMBACKUP_TESTBED", "/var/tmp/vmbackup-testbed")
COLLECTIONS = os.path.join(ROOT, "build", "collections")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
HV_PYTHON = "/usr/bin/python3"
SSH_DIR = os.path.join(TB, "ssh")
HV1 = {"name": "hv1", "address": "127.0.0.11", "port": 22,
       "key": os.path.join(SSH_DIR, "id_ed25519"), "known_hosts": os.path.join(SSH_DIR, "known_hosts")}
CIPHER = "aes128-gcm@openssh.com"
MiB = 1 << 20
GiB = 1 << 30

sys.path.insert(0, TESTBED_DIR)


class BenchError(RuntimeError):
    pass


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def run(argv, timeout=600, check=True, input_data=None, env=None, cwd=None, quiet=False):
    """Run a command, bounded in time; on failure raise with its rc, stdout and stderr."""
    argv = [str(a) for a in argv]
    try:
        cp = subprocess.run(argv, capture_output=True, timeout=timeout, input=input_data, env=env, cwd=cwd,
                            check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError("timed out after %ss: %s" % (timeout, shlex.join(argv))) from exc
    out = cp.stdout.decode("utf-8", "replace")
    err = cp.stderr.decode("utf-8", "replace")
    if check and cp.returncode != 0:
        raise BenchError("command failed (rc=%s): %s\n--- stdout (tail) ---\n%s\n--- stderr (tail) ---\n%s"
                         % (cp.returncode, shlex.join(argv), out[-6000:], err[-4000:]))
    return cp.returncode, out, err


def testbed(script, *args, timeout=600):
    return run(["bash", os.path.join(TESTBED_DIR, script)] + list(args), timeout=timeout)[1]


def ensure_collection_link():
    link = os.path.join(COLLECTIONS, "ansible_collections", "vmbackup", "libvirt")
    if not os.path.islink(link) and not os.path.isdir(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)


def hv_ssh_argv(extra=()):
    return ["ssh", "-T", "-p", str(HV1["port"]), "-i", HV1["key"], "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", "UserKnownHostsFile=%s" % HV1["known_hosts"], "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "Compression=no", "-c", CIPHER] + list(extra) + ["root@%s" % HV1["address"]]


def hv_run(command, timeout=300, check=True):
    """Run a shell command line on hv1 over SSH."""
    return run(hv_ssh_argv() + ["--", command], timeout=timeout, check=check)


def allocated_bytes(path, depth0=False, fmt=None):
    """Bytes of data (not holes, not zero clusters) qemu-img map reports for an image
    (the whole chain, or only its own layer with depth0)."""
    argv = ["qemu-img", "map", "-U", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    _rc, out, _err = run(argv + [path], timeout=300)
    return sum(e["length"] for e in json.loads(out)
               if e.get("data") and not e.get("zero") and (not depth0 or e.get("depth", 0) == 0))


def disk_usage(path):
    """Bytes a file or a directory tree really occupies (st_blocks)."""
    if os.path.isfile(path):
        return os.stat(path).st_blocks * 512
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------
# peak RSS of process trees, sampled from /proc

def _proc_stat(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    rpar = data.rfind(")")
    comm = data[data.find("(") + 1:rpar]
    fields = data[rpar + 2:].split()
    return comm, int(fields[1])  # comm, ppid


def _status_kib(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        return None
    return out


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class RssMonitor:
    """Samples /proc every ``interval`` s while a measurement runs and keeps, per process,
    its VmHWM (the kernel's own peak-RSS counter for that process), so a peak between two
    samples is not lost as long as the process lives until the next sample.

    Processes of ours: descendants of ``roots`` (e.g. ansible-playbook), descendants of
    ``hv_roots`` (the hypervisor's sshd listener: the modules, virsh, qemu-nbd started over
    SSH) that appeared after the monitor started, and processes whose command line contains
    one of ``markers`` (qemu-nbd detaches with --fork, so it loses its parent).
    """

    def __init__(self, roots=(), hv_roots=(), markers=(), interval=0.1):
        self.roots = set(roots)
        self.hv_roots = set(hv_roots)
        self.markers = tuple(markers)
        self.interval = interval
        self.baseline = set(self._pids())
        self.seen = {}      # pid -> dict(label, hwm_kib, side)
        self.peak_total_kib = 0
        self.our_ports = set()
        self.session_ports = {}
        self.forwards = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _pids():
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]

    def add_root(self, pid):
        self.roots.add(pid)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._sample()
        self._stop.set()
        self._thread.join(timeout=10)
        return self

    def _loop(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sockets(self, pid):
        inodes = set()
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                try:
                    target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except OSError:
            pass
        return inodes

    @staticmethod
    def _tcp_table():
        """{inode: (local_port, remote_port)} of IPv4 TCP sockets."""
        out = {}
        try:
            with open("/proc/net/tcp") as fh:
                next(fh)
                for line in fh:
                    f = line.split()
                    out[int(f[9])] = (int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16))
        except (OSError, StopIteration, IndexError, ValueError):
            pass
        return out

    def _note_our_ports(self, ours, table):
        ssh_pids = [p for p in ours if table.get(p, ("",))[0] == "ssh"]
        if not ssh_pids:
            return
        for p in ssh_pids:
            args = _cmdline(p).split(" ")
            for i, a in enumerate(args[:-1]):
                if a == "-L" and ":" in args[i + 1]:
                    self.forwards.add(args[i + 1].split(":", 1)[1])
        tcp = self._tcp_table()
        for p in ssh_pids:
            for inode in self._sockets(p):
                ports = tcp.get(inode)
                if ports and ports[1] == 22:
                    self.our_ports.add(ports[0])

    def _session_port(self, pid):
        if pid not in self.session_ports:
            tcp = self._tcp_table()
            port = None
            for inode in self._sockets(pid):
                ports = tcp.get(inode)
                if ports and ports[0] == 22:
                    port = ports[1]
            if port is None:
                return None  # not yet known; look again next time
            self.session_ports[pid] = port
        return self.session_ports[pid]

    def _sample(self):
        table = {}
        for pid in self._pids():
            st = _proc_stat(pid)
            if st:
                table[pid] = st
        children = {}
        for pid, (_comm, ppid) in table.items():
            children.setdefault(ppid, []).append(pid)
        ours = {}

        def walk(start, side, new_only):
            stack = list(children.get(start, []))
            while stack:
                p = stack.pop()
                # a process that was there before (e.g. an SSH session kept by ControlPersist)
                # is not counted, but what it starts now is
                if not (new_only and p in self.baseline):
                    ours.setdefault(p, side)
                stack.extend(children.get(p, []))

        for r in self.roots:
            if r in table:
                ours.setdefault(r, "node")
            walk(r, "node", False)
        # processes of ours that lost their parent: ansible's ControlPersist ssh masters
        if self.markers:
            for pid in table:
                if pid in ours or pid in self.baseline:
                    continue
                if any(m in _cmdline(pid) for m in self.markers):
                    ours[pid] = "node"
                    walk(pid, "node", False)
        # hypervisor side: only the SSH sessions whose client is an ssh process of ours (matched
        # by TCP port), since other users of the same sshd may run at the same time
        self._note_our_ports(ours, table)
        for r in self.hv_roots:
            for session in children.get(r, []):
                if self._session_port(session) in self.our_ports:
                    if session not in self.baseline:
                        ours.setdefault(session, "hypervisor")
                    walk(session, "hypervisor", True)
        # qemu-nbd --fork detaches from its parent: ours if it serves a socket one of our ssh
        # processes forwards (-L local:REMOTE)
        if self.forwards:
            for pid, (comm, _ppid) in table.items():
                if pid not in ours and pid not in self.baseline and comm.startswith("qemu-nbd"):
                    cmd = _cmdline(pid)
                    if any(f in cmd for f in self.forwards):
                        ours[pid] = "hypervisor"
        total = 0
        for pid, side in ours.items():
            st = _status_kib(pid)
            if not st or "VmHWM" not in st:
                continue  # kernel threads, zombies
            total += st.get("VmRSS", 0)
            comm = table[pid][0]
            rec = self.seen.get(pid)
            if rec is None or rec["comm"] != comm:
                # a fork that exec'd: a new program; keep the old record under another key
                if rec is not None:
                    self.seen[(pid, rec["comm"])] = rec
                rec = {"comm": comm, "side": side, "hwm_kib": 0, "cmd": _cmdline(pid)[:200]}
                self.seen[pid] = rec
            rec["hwm_kib"] = max(rec["hwm_kib"], st["VmHWM"])
        self.peak_total_kib = max(self.peak_total_kib, total)

    def summary(self):
        """{label: peak MB} with label 'side:program', the max over its processes."""
        out = {}
        for rec in self.seen.values():
            label = "%s:%s" % (rec["side"], _label(rec))
            out[label] = max(out.get(label, 0.0), rec["hwm_kib"] / 1024.0)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def peak_mb(self):
        return max([rec["hwm_kib"] / 1024.0 for rec in self.seen.values()] or [0.0])

    def peak_total_mb(self):
        return self.peak_total_kib / 1024.0


def _label(rec):
    comm, cmd = rec["comm"], rec["cmd"]
    if "ansible-playbook" in cmd:
        return "ansible-playbook"
    if comm.startswith("python") or "AnsiballZ" in cmd or "ansible" in cmd:
        return "python3 (module)"
    if comm == "sshd" or comm.startswith("sshd"):
        return "sshd (session)"
    return comm


def measure(argv, timeout, label, env=None, cwd=None, hv_rss=False, markers=(), check=True):
    """Run argv under an RssMonitor; return dict(seconds, rss, peak_mb, rc, out, err)."""
    hv_roots = _hv_sshd_pids() if hv_rss else ()
    mon = RssMonitor(hv_roots=hv_roots, markers=markers).start()
    t0 = time.monotonic()
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=cwd, start_new_session=True)
    mon.add_root(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        mon.stop()
        raise BenchError("%s: timed out after %ss: %s" % (label, timeout, shlex.join(map(str, argv))))
    seconds = time.monotonic() - t0
    mon.stop()
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise BenchError("%s failed (rc=%s): %s\n--- stdout (tail) ---\n%s\n--- stderr (tail) ---\n%s"
                         % (label, proc.returncode, shlex.join(map(str, argv)), out[-8000:], err[-4000:]))
    return {"seconds": seconds, "rss": mon.summary(), "peak_mb": mon.peak_mb(),
            "peak_total_mb": mon.peak_total_mb(), "rc": proc.returncode, "out": out, "err": err}


def measure_call(func, label, hv_rss=True, markers=()):
    """Call func() in this process under an RssMonitor of this process's children (and the
    hypervisor side); return dict(seconds, rss, peak_mb, value)."""
    hv_roots = _hv_sshd_pids() if hv_rss else ()
    mon = RssMonitor(hv_roots=hv_roots, markers=markers)
    mon.baseline.discard(os.getpid())
    mon.start()
    me = os.getpid()
    # children of this process only (not this benchmark process itself)
    mon.roots = set()
    orig_sample = mon._sample

    def sample():
        mon.roots = set(_children_of(me))
        orig_sample()
    mon._sample = sample
    t0 = time.monotonic()
    try:
        value = func()
    except Exception as exc:
        mon.stop()
        raise BenchError("%s failed: %s" % (label, getattr(exc, "msg", None) or exc)) from exc
    seconds = time.monotonic() - t0
    mon.stop()
    return {"seconds": seconds, "rss": mon.summary(), "peak_mb": mon.peak_mb(),
            "peak_total_mb": mon.peak_total_mb(), "value": value}


def _children_of(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _hv_sshd_pids():
    pidfile = os.path.join(SSH_DIR, "hv1", "sshd.pid")
    try:
        with open(pidfile) as fh:
            return [int(fh.read().strip())]
    except (OSError, ValueError):
        return []


# --------------------------------------------------------------------------
# ansible-playbook with the collection, against hv1 over SSH

class Ansible:
    def __init__(self, workdir):
        ensure_collection_link()
        self.workdir = workdir
        os.makedirs(os.path.join(workdir, "ansible-tmp"), exist_ok=True)
        self.env = dict(os.environ)
        self.env.update({
            "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_HOST_KEY_CHECKING": "true",
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": os.path.join(workdir, "ansible-tmp"),
            "ANSIBLE_PYTHON_INTERPRETER": HV_PYTHON,
            "ANSIBLE_DEPRECATION_WARNINGS": "false",
            # one SSH round trip per task instead of several (sftp put, chmod, run, rm)
            "ANSIBLE_PIPELINING": "1",
        })
        self.inventory = os.path.join(workdir, "inventory.ini")
        host = " ".join([
            HV1["name"], "ansible_host=%s" % HV1["address"], "ansible_port=%s" % HV1["port"], "ansible_user=root",
            "ansible_ssh_private_key_file=%s" % HV1["key"],
            "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes'" % HV1["known_hosts"],
            "vmbackup_ssh_private_key=%s" % HV1["key"], "vmbackup_known_hosts=%s" % HV1["known_hosts"],
        ])
        with open(self.inventory, "w") as fh:
            fh.write(textwrap.dedent("""\
                [hypervisors]
                %s

                [backup_nodes]
                localhost ansible_connection=local ansible_python_interpreter=%s

                [all:vars]
                ansible_python_interpreter=%s
                """) % (host, HV_PYTHON, HV_PYTHON))

    def playbook(self, playbook, extra, label, timeout=1200):
        argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", self.inventory, playbook,
                "-e", json.dumps(extra)]
        counts = os.path.join(self.workdir, "module-runs.json")
        env = dict(self.env, VMBACKUP_BENCH_MODULE_RUNS=counts,
                   ANSIBLE_CALLBACK_PLUGINS=os.path.join(os.path.dirname(os.path.abspath(__file__)), "callbacks"),
                   ANSIBLE_CALLBACKS_ENABLED="module_runs")
        if os.path.exists(counts):
            os.unlink(counts)
        out = measure(argv, timeout, label, env=env, cwd=self.workdir, hv_rss=True, markers=("/.ansible/cp/",))
        out["module_runs"] = per_vm_module_runs(counts)
        return out


def per_vm_module_runs(path):
    """Module runs of each per-VM host of the backup / restore play (the callbacks/module_runs.py
    counts): {host: {runs, slots, modules}}; {} when the playbook wrote none."""
    try:
        with open(path) as fh:
            counts = json.load(fh)
    except (OSError, ValueError):
        return {}
    out = {}
    for play, hosts in counts.items():
        for host, entry in hosts.items():
            if host != "localhost" and ("Back up" in play or "Restore" in play):
                out[host] = entry
    return out


def module_runs_line(measured):
    """'6 (+2 slots)' for one per-VM host, or '' when not counted."""
    runs = list((measured or {}).get("module_runs", {}).values())
    if len(runs) != 1:
        return ""
    return "%d%s" % (runs[0]["runs"], " (+%d slots)" % runs[0]["slots"] if runs[0]["slots"] else "")


# --------------------------------------------------------------------------
# a stand-in for AnsibleModule, to call the collection's transfer functions directly

class DirectModule:
    """What CommandRunner needs of AnsibleModule: run_command and get_bin_path."""

    def __init__(self, params=None):
        self.params = params or {}
        self.check_mode = False

    def get_bin_path(self, name, required=False, opt_dirs=()):
        path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", "")] + list(opt_dirs)))
        if not path and required:
            raise BenchError("%s not found" % name)
        return path

    def run_command(self, argv, data=None, environ_update=None, binary_data=False, **_kw):
        env = dict(os.environ)
        env.update(environ_update or {})
        if data is not None and not isinstance(data, bytes):
            data = data.encode()
            if not binary_data:
                data += b"\n"
        cp = subprocess.run(argv, input=data, capture_output=True, env=env, check=False, timeout=3600)
        return cp.returncode, cp.stdout.decode("utf-8", "replace"), cp.stderr.decode("utf-8", "replace")


def direct_runner():
    ensure_collection_link()
    from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner
    return CommandRunner(DirectModule())


def hv_params():
    return {"transport": "ssh", "ssh_host": HV1["address"], "ssh_port": HV1["port"], "ssh_user": "root",
            "ssh_private_key": HV1["key"], "known_hosts": HV1["known_hosts"], "ssh_options": [],
            "ready_timeout": 60}


# --------------------------------------------------------------------------
# output

def fmt_s(x):
    return "-" if x is None else "%.2f s" % x


def fmt_b(x):
    if x is None:
        return "-"
    return "%.1f MiB" % (x / MiB) if x < 10 * GiB else "%.2f GiB" % (x / GiB)


def fmt_mb(x):
    return "-" if x is None else "%.0f MB" % x


def table(rows, headers):
    cols = [headers] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), line]
    for r in cols[1:]:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def rss_line(rss, limit=6):
    items = sorted(rss.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join("%s %.0f" % (k, v) for k, v in items)
