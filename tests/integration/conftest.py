"""Shared fixtures of the integration tests: the real test bed and real ansible-playbook runs."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTBED_DIR = os.path.join(ROOT, "tests", "testbed")
TB = os.environ.get("VMBACKUP_TESTBED", "/var/tmp/vmbackup-testbed")
COLLECTIONS = os.path.join(ROOT, "build", "collections")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
HV_PYTHON = "/usr/bin/python3"

sys.path.insert(0, TESTBED_DIR)


# Tests that take many minutes on 2 cores (a nested TCG guest running ansible-playbook, a
# forced LV restore on the LVM host) are the proofs of issue 13's power-loss and LV points; they
# run with `make integration SLOW=1` (VMBACKUP_SLOW_TESTS=1), not in `make test`, to keep CI
# under its hour.
SLOW = os.environ.get("VMBACKUP_SLOW_TESTS") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: many minutes on the test bed; run with make integration SLOW=1")


def pytest_collection_modifyitems(config, items):
    if SLOW:
        return
    skip = pytest.mark.skip(reason="slow (minutes): run with make integration SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def testbed(script, *args, timeout=600):
    """Run a test bed script (``up`` is idempotent and fast when already healthy).

    One at a time per script: two tests running at once (scripts/integration.sh) may both need ceph.sh up on a fresh machine.
    """
    os.makedirs(TB, exist_ok=True)
    with open(os.path.join(TB, ".%s.lock" % script), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cp = subprocess.run(["bash", os.path.join(TESTBED_DIR, script), *args],
                            capture_output=True, text=True, timeout=timeout, check=False)
    if cp.returncode != 0:
        raise RuntimeError("%s %s failed (rc=%s):\n%s\n%s"
                           % (script, " ".join(args), cp.returncode, cp.stdout[-3000:], cp.stderr[-3000:]))
    return cp.stdout


def _ensure_collection_link():
    link = os.path.join(COLLECTIONS, "ansible_collections", "vmbackup", "libvirt")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)


@pytest.fixture(scope="session")
def libvirt():
    testbed("libvirt.sh", "up")
    testbed("guest-image.sh", "build")
    return "qemu:///system"


@pytest.fixture(scope="session")
def sshd():
    testbed("sshd.sh", "up")
    return os.path.join(TB, "ssh")


class Playbook:
    """ansible-playbook runs with the collection on its path."""

    def __init__(self, workdir):
        _ensure_collection_link()
        self.workdir = workdir
        self.async_dir = os.path.join(workdir, "ansible-async")
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
            # Async job results of this test's runs only (another test may run beside it).
            "ANSIBLE_ASYNC_DIR": self.async_dir,
        })

    def inventory(self, text):
        path = os.path.join(self.workdir, "inventory-%s.ini" % hashlib.sha1(text.encode()).hexdigest()[:8])
        with open(path, "w") as fh:
            fh.write(textwrap.dedent(text))
        return path

    def run(self, playbook, inventory, extra=None, check=False, expect_rc=0, args=()):
        argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory, playbook]
        if extra:
            argv += ["-e", json.dumps(extra)]
        if check:
            argv += ["--check", "--diff"]
        argv += list(args)
        cp = subprocess.run(argv, capture_output=True, text=True, env=self.env, cwd=self.workdir, timeout=1800,
                            check=False)
        out = cp.stdout + cp.stderr
        if expect_rc is not None and (cp.returncode == 0) != (expect_rc == 0):
            raise AssertionError("ansible-playbook %s exited %s (expected %s):\n%s"
                                 % (playbook, cp.returncode, expect_rc, out[-12000:]))
        return PlayResult(cp.returncode, out)


class PlayResult:
    def __init__(self, rc, output):
        self.rc = rc
        self.output = output

    @property
    def recap(self):
        """{host: {ok, changed, failed, ...}} from the PLAY RECAP."""
        stats = {}
        started = False
        for line in self.output.splitlines():
            if line.startswith("PLAY RECAP"):
                started = True
                continue
            if started and ":" in line and "=" in line:
                host, rest = line.split(":", 1)
                stats[host.strip()] = {k: int(v) for k, v in (p.split("=") for p in rest.split())}
        return stats

    def changed(self, host):
        return self.recap.get(host, {}).get("changed")


@pytest.fixture
def playbook(tmp_path):
    os.makedirs(os.path.join(str(tmp_path), "ansible-tmp"), exist_ok=True)
    return Playbook(str(tmp_path))


def local_inventory(extra_vars=""):
    return """
    [hypervisors]
    hv-local ansible_connection=local ansible_python_interpreter=%s %s

    [all:vars]
    ansible_python_interpreter=%s
    """ % (HV_PYTHON, extra_vars, HV_PYTHON)


def ssh_inventory(name="hv1", address="127.0.0.11", port=22):
    key = os.path.join(TB, "ssh", "id_ed25519")
    known = os.path.join(TB, "ssh", "known_hosts")
    host = " ".join([
        name, "ansible_host=%s" % address, "ansible_port=%s" % port, "ansible_user=root",
        "ansible_ssh_private_key_file=%s" % key,
        "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes'" % known,
        "vmbackup_ssh_private_key=%s" % key, "vmbackup_known_hosts=%s" % known,
    ])
    return """
    [hypervisors]
    %s

    [all:vars]
    ansible_python_interpreter=%s
    """ % (host, HV_PYTHON)


def image_sha256(path, fmt=None):
    """sha256 of an image's guest-visible content (a chain is followed)."""
    with tempfile.TemporaryDirectory(prefix="vmbtest-") as td:
        raw = os.path.join(td, "img.raw")
        argv = ["qemu-img", "convert", "-U"]
        if fmt:
            argv += ["-f", fmt]
        subprocess.run(argv + ["-O", "raw", path, raw], check=True, capture_output=True)
        digest = hashlib.sha256()
        with open(raw, "rb") as fh:
            for block in iter(lambda: fh.read(4 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
