"""Test-bed libvirt guests for the vmbackup.libvirt collection.

Small helpers around ``virsh -c URI`` (subprocess only; stdlib) to define TCG
guests that boot the test-bed kernel/initramfs (tests/testbed/guest-image.sh),
run the host's root file system read-only over 9p with a tmpfs overlay, and
answer the QEMU guest agent.  Guest writes are done from inside the guest
through ``guest-exec`` so that they are real guest I/O.

Typical use::

    from domains import define_guest, wait_agent, guest_write, guest_sha256
    name, paths = define_guest("t1", [{"target": "vda", "format": "qcow2", "size_mib": 64},
                                      {"target": "vdb", "format": "raw", "size_mib": 32}],
                               replace=True)
    wait_agent(name)
    guest_write(name, "/dev/vda", 1 << 20, 4 << 20, seed=1)
    digest = guest_sha256(name, "/dev/vda")
    destroy_guest(name)

Run ``python3 domains.py selftest`` for an end-to-end check.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Iterable, NamedTuple, Optional, Sequence, Union

DEFAULT_URI = os.environ.get("VMBACKUP_LIBVIRT_URI", "qemu:///system")
TESTBED = os.environ.get("VMBACKUP_TESTBED", "/var/tmp/vmbackup-testbed")
GUEST_DIR = os.path.join(TESTBED, "guest")
DEFAULT_DIRECTORY = "/var/lib/libvirt/images"
CONSOLE_LOG = "/var/log/libvirt/qemu/{name}-console.log"
META_NS = "https://github.com/vmbackup/libvirt/testbed"
GUEST_PYTHON = "/usr/bin/python3"

__all__ = [
    "DEFAULT_URI", "GuestInfo", "TestbedError", "GuestExecError",
    "define_guest", "wait_agent", "guest_exec", "guest_write", "guest_sha256",
    "destroy_guest", "domblklist", "domstate", "shutdown_guest", "console_log",
    "pattern_bytes", "agent_command", "virsh",
]


class TestbedError(RuntimeError):
    """A test-bed operation failed."""

    __test__ = False  # not a pytest test class


class GuestExecError(TestbedError):
    """A command run inside the guest failed."""

    def __init__(self, msg: str, exitcode: Optional[int] = None, stdout: str = "", stderr: str = ""):
        super().__init__(msg)
        self.exitcode = exitcode
        self.stdout = stdout
        self.stderr = stderr


class GuestInfo(NamedTuple):
    name: str
    paths: list  # disk image paths, in the order of the ``disks`` argument


# --------------------------------------------------------------------------
# virsh plumbing

def virsh(*args: str, uri: str = DEFAULT_URI, check: bool = True, timeout: float = 120,
          input_text: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run ``virsh -c URI ARGS...``; raise TestbedError with virsh's message when check."""
    cmd = ["virsh", "-q", "-c", uri, *args]
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"timed out after {timeout}s: {shlex.join(cmd)}") from exc
    except FileNotFoundError as exc:
        raise TestbedError("virsh not found (install libvirt-clients)") from exc
    if check and cp.returncode != 0:
        raise TestbedError(f"{shlex.join(cmd)} failed (rc={cp.returncode}): "
                           f"{(cp.stderr or cp.stdout).strip()}")
    return cp


def domain_exists(name: str, uri: str = DEFAULT_URI) -> bool:
    return virsh("domuuid", name, uri=uri, check=False, timeout=30).returncode == 0


def domstate(name: str, uri: str = DEFAULT_URI) -> str:
    """'running', 'shut off', 'paused', ... ('' when the domain does not exist)."""
    cp = virsh("domstate", name, uri=uri, check=False, timeout=30)
    return cp.stdout.strip() if cp.returncode == 0 else ""


def console_log(name: str, tail: int = 40) -> str:
    """Last lines of the guest's serial console log (best effort)."""
    path = CONSOLE_LOG.format(name=name)
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no console log {path}: {exc})"
    lines = data.replace("\r", "").splitlines()
    return "\n".join(lines[-tail:])


# --------------------------------------------------------------------------
# define / destroy

def _hostname_for(name: str) -> str:
    h = re.sub(r"[^A-Za-z0-9-]", "-", name).strip("-")[:63]
    return h or "vmbackup-guest"


def _domain_xml(name: str, memory_mib: int, vcpus: int, kernel: str, initrd: str, cmdline: str,
                disks: Sequence[dict], created: Iterable[str], interface: bool) -> str:
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    meta = ET.SubElement(dom, "metadata")
    tb = ET.SubElement(meta, f"{{{META_NS}}}testbed")
    for path in created:
        ET.SubElement(tb, f"{{{META_NS}}}created").text = path
    ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = str(vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = kernel
    ET.SubElement(os_el, "initrd").text = initrd
    ET.SubElement(os_el, "cmdline").text = cmdline
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    dev = ET.SubElement(dom, "devices")
    for d in disks:
        disk = ET.SubElement(dev, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type=d["format"])
        ET.SubElement(disk, "source", file=d["path"])
        ET.SubElement(disk, "target", dev=d["target"], bus=d.get("bus", "virtio"))
    fs = ET.SubElement(dev, "filesystem", type="mount", accessmode="passthrough")
    ET.SubElement(fs, "source", dir="/")
    ET.SubElement(fs, "target", dir="hostroot")
    ET.SubElement(fs, "readonly")
    ch = ET.SubElement(dev, "channel", type="unix")
    ET.SubElement(ch, "target", type="virtio", name="org.qemu.guest_agent.0")
    serial = ET.SubElement(dev, "serial", type="file")
    ET.SubElement(serial, "source", path=CONSOLE_LOG.format(name=name))
    ET.SubElement(serial, "target", port="0")
    if interface:
        iface = ET.SubElement(dev, "interface", type="user")
        ET.SubElement(iface, "model", type="virtio")
    ET.SubElement(dev, "memballoon", model="none")
    ET.register_namespace("vmbtb", META_NS)
    return ET.tostring(dom, encoding="unicode")


def _created_files(name: str, uri: str) -> list:
    cp = virsh("dumpxml", "--inactive", name, uri=uri, check=False, timeout=30)
    if cp.returncode != 0:
        return []
    try:
        root = ET.fromstring(cp.stdout)
    except ET.ParseError:
        return []
    return [e.text for e in root.iter(f"{{{META_NS}}}created") if e.text]


def define_guest(name: str, disks: Sequence[dict], running: bool = True, uri: str = DEFAULT_URI,
                 directory: str = DEFAULT_DIRECTORY, memory_mib: int = 256, *,
                 replace: bool = False, roles: Sequence[str] = (), cmdline_extra: str = "",
                 interface: bool = False, vcpus: int = 1) -> GuestInfo:
    """Create disk images and define (and by default start) a TCG test guest.

    ``disks``: list of dicts with ``target`` (vda, vdb...), ``format`` (qcow2/raw,
    default qcow2) and either ``size_mib`` (a new file ``DIRECTORY/NAME-TARGET.FMT``
    is created) or ``path`` (an existing image is used as is; if it does not exist
    and ``size_mib`` is given it is created). Files created here are recorded in
    the domain's metadata and removed by destroy_guest(). Returns
    ``GuestInfo(name, paths)``.
    """
    kernel = os.path.join(GUEST_DIR, "vmlinuz")
    initrd = os.path.join(GUEST_DIR, "initrd.img")
    for f in (kernel, initrd):
        if not os.path.exists(f):
            raise TestbedError(f"{f} missing: run tests/testbed/guest-image.sh build")
    if domain_exists(name, uri):
        if not replace:
            raise TestbedError(f"domain {name!r} already exists on {uri} "
                               f"(pass replace=True to destroy and redefine it)")
        destroy_guest(name, delete_storage=True, uri=uri)

    norm = []
    targets = set()
    for d in disks:
        d = dict(d)
        if "target" not in d:
            raise TestbedError(f"disk {d!r} has no 'target'")
        if d["target"] in targets:
            raise TestbedError(f"duplicate disk target {d['target']}")
        targets.add(d["target"])
        d.setdefault("format", "qcow2")
        if d["format"] not in ("qcow2", "raw"):
            raise TestbedError(f"unsupported disk format {d['format']!r}")
        d["create"] = False
        if "path" not in d:
            if "size_mib" not in d:
                raise TestbedError(f"disk {d['target']}: give 'size_mib' or 'path'")
            d["path"] = os.path.join(directory, f"{name}-{d['target']}.{d['format']}")
            d["create"] = True
        elif not os.path.exists(d["path"]):
            if "size_mib" not in d:
                raise TestbedError(f"disk {d['target']}: {d['path']} does not exist and no 'size_mib'")
            d["create"] = True
        if d["create"] and os.path.exists(d["path"]):
            if not replace:
                raise TestbedError(f"{d['path']} already exists (left over?); pass replace=True "
                                   f"to overwrite it")
            os.unlink(d["path"])
        d["path"] = os.path.abspath(d["path"])
        norm.append(d)

    created = []
    try:
        for d in norm:
            if not d["create"]:
                continue
            os.makedirs(os.path.dirname(d["path"]), exist_ok=True)
            cmd = ["qemu-img", "create", "-q", "-f", d["format"], d["path"], f"{int(d['size_mib'])}M"]
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            if cp.returncode != 0:
                raise TestbedError(f"{shlex.join(cmd)} failed: {cp.stderr.strip()}")
            created.append(d["path"])

        cmdline = f"console=ttyS0 vmbackup.hostname={_hostname_for(name)}"
        if roles:
            cmdline += " vmbackup.role=" + ",".join(roles)
        if cmdline_extra:
            cmdline += " " + cmdline_extra
        xml = _domain_xml(name, memory_mib, vcpus, kernel, initrd, cmdline, norm, created, interface)
        with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix=f"vmbtb-{name}-") as tf:
            tf.write(xml)
            tf.flush()
            virsh("define", tf.name, uri=uri)
    except BaseException:
        for p in created:
            try:
                os.unlink(p)
            except OSError:
                pass
        raise
    try:
        os.unlink(CONSOLE_LOG.format(name=name))
    except OSError:
        pass
    if running:
        virsh("start", name, uri=uri)
    return GuestInfo(name, [d["path"] for d in norm])


def destroy_guest(name: str, delete_storage: bool = True, uri: str = DEFAULT_URI) -> None:
    """Destroy + undefine the domain; remove the files define_guest created.

    Does nothing if the domain does not exist.
    """
    if not domain_exists(name, uri):
        return
    created = _created_files(name, uri)
    if domstate(name, uri) not in ("shut off", ""):
        virsh("destroy", name, uri=uri, check=False)
    cp = virsh("undefine", name, "--nvram", "--snapshots-metadata", "--checkpoints-metadata",
               "--managed-save", uri=uri, check=False)
    if cp.returncode != 0 and domain_exists(name, uri):
        virsh("undefine", name, uri=uri)
    if delete_storage:
        for p in created:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    try:
        os.unlink(CONSOLE_LOG.format(name=name))
    except OSError:
        pass


def domblklist(name: str, uri: str = DEFAULT_URI) -> list:
    """[(target, source)] of the domain's disks (live definition when running).

    source is the file/block device path, the network image name, or None.
    """
    root = ET.fromstring(virsh("dumpxml", name, uri=uri).stdout)
    out = []
    for disk in root.findall("./devices/disk"):
        tgt = disk.find("target")
        src = disk.find("source")
        source = None
        if src is not None:
            source = src.get("file") or src.get("dev") or src.get("name") or src.get("volume")
        out.append((tgt.get("dev") if tgt is not None else None, source))
    return out


# --------------------------------------------------------------------------
# guest agent

def agent_command(name: str, command: dict, uri: str = DEFAULT_URI, timeout: int = 30) -> object:
    """Send one guest agent command; return its 'return' value."""
    cp = virsh("qemu-agent-command", "--timeout", str(int(timeout)), name, json.dumps(command),
               uri=uri, timeout=timeout + 30)
    return json.loads(cp.stdout).get("return")


def wait_agent(name: str, timeout: float = 120, uri: str = DEFAULT_URI) -> float:
    """Poll guest-ping until the agent answers; return the seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    last = ""
    while True:
        state = domstate(name, uri)
        if state in ("shut off", "crashed", ""):
            raise TestbedError(f"domain {name} is {state or 'undefined'}; console:\n{console_log(name)}")
        cp = virsh("qemu-agent-command", "--timeout", "5", name, '{"execute":"guest-ping"}',
                   uri=uri, check=False, timeout=30)
        if cp.returncode == 0:
            return time.monotonic() - start
        last = (cp.stderr or cp.stdout).strip()
        if time.monotonic() >= deadline:
            raise TestbedError(f"guest agent of {name} did not answer within {timeout}s "
                               f"(last: {last}); console:\n{console_log(name)}")
        time.sleep(1)


def guest_exec(name: str, argv: Sequence[str], timeout: float = 60, uri: str = DEFAULT_URI, *,
               input_data: Union[bytes, str, None] = None, text: bool = True, check: bool = False,
               env: Optional[Sequence[str]] = None):
    """Run argv in the guest (guest-exec, capture-output); return (exitcode, stdout, stderr).

    The command runs under ``timeout`` in the guest so it cannot outlive ``timeout``.
    Output is str (utf-8, errors replaced) unless text=False. check=True raises
    GuestExecError on a non-zero exit code.
    """
    full = ["/usr/bin/timeout", "-k", "5", str(int(max(1, timeout))), *argv]
    args = {"path": full[0], "arg": list(full[1:]), "capture-output": True}
    if env is not None:
        args["env"] = list(env)
    else:
        args["env"] = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "HOME=/root", "LANG=C.UTF-8"]
    if input_data is not None:
        if isinstance(input_data, str):
            input_data = input_data.encode()
        args["input-data"] = base64.b64encode(input_data).decode()
    ret = agent_command(name, {"execute": "guest-exec", "arguments": args}, uri=uri)
    pid = ret["pid"]
    deadline = time.monotonic() + timeout + 30
    delay = 0.05
    while True:
        st = agent_command(name, {"execute": "guest-exec-status", "arguments": {"pid": pid}}, uri=uri)
        if st.get("exited"):
            break
        if time.monotonic() >= deadline:
            raise GuestExecError(f"{shlex.join(argv)} in {name}: no exit after {timeout}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    out = base64.b64decode(st.get("out-data", ""))
    err = base64.b64decode(st.get("err-data", ""))
    code = st.get("exitcode")
    if code is None and "signal" in st:
        code = 128 + int(st["signal"])
    if text:
        out = out.decode("utf-8", "replace")
        err = err.decode("utf-8", "replace")
    if check and code != 0:
        raise GuestExecError(f"{shlex.join(argv)} in {name} exited {code}: "
                             f"{err if text else err.decode('utf-8', 'replace')}".strip(),
                             code, out, err)
    return code, out, err


# --------------------------------------------------------------------------
# deterministic guest I/O

# Shared by the guest-side scripts and pattern_bytes(): the data for a seed is
# the concatenation of 1 MiB blocks shake_256("vmbackup-testbed:SEED:I").
_PATTERN_SRC = r'''
import hashlib
BLOCK = 1 << 20
def _block(seed, i):
    if seed is None:
        return bytes(BLOCK)
    return hashlib.shake_256(("vmbackup-testbed:%s:%d" % (seed, i)).encode()).digest(BLOCK)
'''
_ns: dict = {}
exec(_PATTERN_SRC, _ns)  # noqa: S102 - our own constant source
_block = _ns["_block"]
_BLOCK = _ns["BLOCK"]

_WRITE_SRC = _PATTERN_SRC + r'''
import os, sys, mmap
dev, off, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seed = None if sys.argv[4] == "-" else sys.argv[4][1:]
direct = off % 512 == 0 and length % 512 == 0
fd = None
if direct:
    try:
        fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    except OSError:
        fd = None
if fd is None:
    fd = os.open(dev, os.O_WRONLY)
size = os.lseek(fd, 0, os.SEEK_END)
if off + length > size:
    sys.exit("write of %d bytes at %d goes past the end of %s (%d bytes)" % (length, off, dev, size))
buf = mmap.mmap(-1, BLOCK)
mv = memoryview(buf)
pos = 0
i = 0
while pos < length:
    n = min(BLOCK, length - pos)
    buf[:n] = _block(seed, i)[:n]
    done = 0
    while done < n:
        done += os.pwrite(fd, mv[done:n], off + pos + done)
    pos += n
    i += 1
os.fsync(fd)
os.close(fd)
'''

_SHA_SRC = r'''
import hashlib, os, sys, mmap
dev, off = sys.argv[1], int(sys.argv[2])
length = None if sys.argv[3] == "-" else int(sys.argv[3])
fd = None
try:
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
except OSError:
    fd = None
if fd is None or off % 512:
    if fd is not None:
        os.close(fd)
    fd = os.open(dev, os.O_RDONLY)
size = os.lseek(fd, 0, os.SEEK_END)
end = size if length is None else min(size, off + length)
CH = 4 << 20
buf = mmap.mmap(-1, CH)
mv = memoryview(buf)
h = hashlib.sha256()
pos = off
while pos < end:
    want = min(CH, end - pos)
    rd = want if want % 512 == 0 else (want + 511) // 512 * 512
    try:
        n = os.preadv(fd, [mv[:rd]], pos)
    except OSError:
        os.close(fd)
        fd = os.open(dev, os.O_RDONLY)
        n = os.preadv(fd, [mv[:rd]], pos)
    if n <= 0:
        sys.exit("short read at %d of %s" % (pos, dev))
    n = min(n, want)
    h.update(mv[:n])
    pos += n
os.close(fd)
print(h.hexdigest())
'''


def pattern_bytes(seed: Union[int, str, None], length: int) -> bytes:
    """The bytes guest_write(..., length, seed) writes (host-side, for checks)."""
    seed = None if seed is None else str(seed)
    out = bytearray()
    i = 0
    while len(out) < length:
        out += _block(seed, i)
        i += 1
    return bytes(out[:length])


def guest_write(name: str, device: str, offset_bytes: int, length_bytes: int,
                seed: Union[int, str, None], uri: str = DEFAULT_URI, timeout: float = 300) -> None:
    """Write deterministic data (pattern_bytes(seed, length); zeroes if seed is None)
    to ``device`` at ``offset_bytes`` from inside the guest, O_DIRECT when aligned,
    then fsync (so it reaches the image file, qcow2 metadata included)."""
    if offset_bytes < 0 or length_bytes < 0:
        raise ValueError("offset and length must be >= 0")
    seed_arg = "-" if seed is None else "s" + str(seed)
    guest_exec(name, [GUEST_PYTHON, "-c", _WRITE_SRC, device, str(int(offset_bytes)),
                      str(int(length_bytes)), seed_arg], timeout=timeout, uri=uri, check=True)


def guest_sha256(name: str, device: str, uri: str = DEFAULT_URI, timeout: float = 600,
                 offset_bytes: int = 0, length_bytes: Optional[int] = None) -> str:
    """sha256 hex digest of ``device`` (whole, or a range) read inside the guest."""
    argv = [GUEST_PYTHON, "-c", _SHA_SRC, device, str(int(offset_bytes)),
            "-" if length_bytes is None else str(int(length_bytes))]
    _code, out, _err = guest_exec(name, argv, timeout=timeout, uri=uri, check=True)
    digest = out.strip()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise GuestExecError(f"unexpected sha256 output from {name}: {out!r}")
    return digest


def shutdown_guest(name: str, timeout: float = 60, uri: str = DEFAULT_URI) -> None:
    """Sync and power the guest off from inside (agent); destroy it if that times out."""
    if domstate(name, uri) in ("shut off", ""):
        return
    try:
        guest_exec(name, ["/bin/sync"], timeout=30, uri=uri)
        agent_command(name, {"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}},
                      uri=uri, timeout=10)
    except TestbedError:
        pass  # the agent may vanish before it answers
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if domstate(name, uri) in ("shut off", ""):
            return
        time.sleep(0.5)
    virsh("destroy", name, uri=uri, check=False)


# --------------------------------------------------------------------------
# self test

def _host_sha256_of_image(path: str, fmt: str) -> str:
    with tempfile.TemporaryDirectory(prefix="vmbtb-") as td:
        raw = os.path.join(td, "img.raw")
        subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, raw], check=True)
        h = hashlib.sha256()
        with open(raw, "rb") as f:
            for chunk in iter(lambda: f.read(4 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


def selftest(name: str = "vmbtb-selftest") -> None:
    t0 = time.monotonic()
    info = define_guest(name, [{"target": "vda", "format": "qcow2", "size_mib": 64},
                               {"target": "vdb", "format": "raw", "size_mib": 32}], replace=True)
    print(f"defined+started {info} in {time.monotonic() - t0:.1f}s")
    waited = wait_agent(name)
    print(f"guest agent answered {waited:.1f}s after start")
    print("domblklist:", domblklist(name))
    code, out, err = guest_exec(name, ["/bin/sh", "-c", "uname -r; id -u; echo err >&2; exit 3"])
    assert (code, out.split()[1], err.strip()) == (3, "0", "err"), (code, out, err)
    code, out, _err = guest_exec(name, [GUEST_PYTHON, "-c", "import lxml; print('lxml ok')"])
    print("guest python3 lxml:", out.strip() or code)
    off, ln = 5 << 20, 3 << 20
    t = time.monotonic()
    guest_write(name, "/dev/vda", off, ln, seed=42)
    guest_write(name, "/dev/vdb", 1 << 20, 1 << 20, seed="b")
    guest_write(name, "/dev/vdb", 4 << 20, 512, seed=None)
    print(f"guest writes took {time.monotonic() - t:.1f}s")
    m = json.loads(subprocess.run(["qemu-img", "map", "--output=json", "-U", info.paths[0]],
                                  capture_output=True, text=True, check=True).stdout)
    data = [(e["start"], e["length"]) for e in m if e.get("data")]
    print("qcow2 allocated data extents:", data)
    assert any(s <= off and off + ln <= s + n for s, n in data), "guest write not allocated in qcow2"
    t = time.monotonic()
    sa = guest_sha256(name, "/dev/vda")
    sb = guest_sha256(name, "/dev/vdb")
    print(f"guest sha256 took {time.monotonic() - t:.1f}s")
    # expected content, computed on the host
    exp_a = hashlib.sha256(bytes(off) + pattern_bytes(42, ln) + bytes((64 << 20) - off - ln)).hexdigest()
    assert sa == exp_a, (sa, exp_a)
    t = time.monotonic()
    shutdown_guest(name)
    print(f"shutdown took {time.monotonic() - t:.1f}s, state {domstate(name)!r}")
    assert domstate(name) == "shut off"
    ha = _host_sha256_of_image(info.paths[0], "qcow2")
    hb = _host_sha256_of_image(info.paths[1], "raw")
    assert (sa, sb) == (ha, hb), ((sa, sb), (ha, hb))
    print("guest and host sha256 agree:", sa[:16], sb[:16])
    destroy_guest(name)
    assert not any(os.path.exists(p) for p in info.paths)
    print(f"selftest OK in {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["selftest"]:
        selftest()
    else:
        print("usage: domains.py selftest", file=sys.stderr)
        sys.exit(2)
