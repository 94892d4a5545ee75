"""The AWX execution environment definition: ansible-builder introspects the collection and accepts the file.

No container engine is needed: ``ansible-builder create`` writes the build context only.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
BUILDER = os.path.join(VENV_BIN, "ansible-builder")
EE_FILE = os.path.join(ROOT, "docs", "awx", "execution-environment.yml")

pytestmark = pytest.mark.skipif(not os.path.exists(BUILDER),
                                reason="ansible-builder is not installed (pip install ansible-builder)")


def lines(path):
    with open(path) as fh:
        return [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]


def run(argv, **kw):
    cp = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    assert cp.returncode == 0, "%s failed (rc=%s):\n%s\n%s" % (argv, cp.returncode, cp.stdout, cp.stderr)
    return cp.stdout


def test_introspect_finds_our_dependencies(tmp_path):
    # ansible-builder introspect reads meta/execution-environment.yml of every collection in the tree.
    tree = tmp_path / "collections" / "ansible_collections" / "vmbackup"
    tree.mkdir(parents=True)
    os.symlink(ROOT, str(tree / "libvirt"))
    out = run([BUILDER, "introspect", "--sanitize", str(tmp_path / "collections")])
    data = yaml.safe_load(out)
    python = "\n".join(data["python"]) if isinstance(data["python"], list) else str(data["python"])
    system = "\n".join(data["system"]) if isinstance(data["system"], list) else str(data["system"])
    for req in lines(os.path.join(ROOT, "requirements.txt")):
        assert req.split(">")[0].split("=")[0] in python, (req, out)
    for req in lines(os.path.join(ROOT, "bindep.txt")):
        assert req.split()[0] in system, (req, out)
    assert "vmbackup.libvirt" in out


def test_create_build_context(tmp_path):
    with open(EE_FILE) as fh:
        ee = yaml.safe_load(fh)
    assert ee["version"] == 3
    # The collection tarball the EE installs (the file names galaxy.yml's version).
    with open(os.path.join(ROOT, "galaxy.yml")) as fh:
        version = yaml.safe_load(fh)["version"]
    tarball = "vmbackup-libvirt-%s.tar.gz" % version
    assert ee["dependencies"]["galaxy"]["collections"][0]["name"] == "collections/" + tarball
    dist = os.path.join(ROOT, "build", "dist")
    if not os.path.exists(os.path.join(dist, tarball)):
        run([os.path.join(VENV_BIN, "ansible-galaxy"), "collection", "build", "--output-path", dist, "--force"],
            cwd=ROOT)
    context = str(tmp_path / "context")
    run([BUILDER, "create", "-f", EE_FILE, "--context", context, "--output-filename", "Containerfile"], cwd=ROOT)
    build = os.path.join(context, "_build")
    assert os.path.exists(os.path.join(build, "collections", tarball))
    with open(os.path.join(build, "requirements.yml")) as fh:
        assert yaml.safe_load(fh)["collections"][0]["name"] == "collections/" + tarball
    assert lines(os.path.join(build, "requirements.txt")) == lines(os.path.join(ROOT, "requirements.txt"))
    assert lines(os.path.join(build, "bindep.txt")) == lines(os.path.join(ROOT, "bindep.txt"))
    with open(os.path.join(context, "Containerfile")) as fh:
        containerfile = fh.read()
    assert "ansible-galaxy collection install" in containerfile
    assert "requirements.txt" in containerfile and "bindep.txt" in containerfile
    assert "ansible-core>=2.16,<2.20" in containerfile
    shutil.rmtree(context)
