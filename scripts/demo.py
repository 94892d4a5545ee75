"""The main job on the local default: back up a demo VM, change it, back it up again, restore it.

Run by ``make demo`` (which installs everything and starts libvirtd first). Every step is a
real ansible-playbook run of the collection's playbooks with their default variables, against
the local libvirt (qemu:///system), into the default repository /var/lib/vmbackup.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "testbed"))

import domains  # noqa: E402  (the test bed's guest factory)

VM = os.environ.get("VMBACKUP_DEMO_VM", "vmbackup-demo")
RESTORED = VM + "-restored"
REPO = os.environ.get("VMBACKUP_DEMO_REPOSITORY", "/var/lib/vmbackup")
MiB = 1024 * 1024


def step(text):
    print("\n==> %s" % text, flush=True)


def playbook(name, **extra):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "build", "collections"),
               ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3", ANSIBLE_NOCOLOR="1")
    argv = [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "vmbackup.libvirt.%s" % name,
            "-e", json.dumps(dict(extra, vmbackup_repository=REPO))]
    print("    $ ansible-playbook vmbackup.libvirt.%s -e '%s'" % (name, json.dumps(extra)), flush=True)
    start = time.time()
    cp = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if cp.returncode != 0:
        print(cp.stdout[-8000:], cp.stderr[-4000:])
        sys.exit("demo: ansible-playbook vmbackup.libvirt.%s failed (rc=%s)" % (name, cp.returncode))
    print("    done in %.1f s" % (time.time() - start), flush=True)


def remove(name):
    if domains.domain_exists(name):
        sources = [s for _t, s in domains.domblklist(name) if s and s != "-"]
        domains.virsh("destroy", name, check=False)
        domains.virsh("undefine", name, "--nvram", check=False)
        for src in sources:
            stem = src.split(".vmbackup-")[0].rsplit(".", 1)[0]
            for path in (stem + ".qcow2", stem + ".raw"):
                if os.path.exists(path):
                    os.unlink(path)
            if os.path.exists(src):
                os.unlink(src)


def main():
    step("Creating the demo VM %s (qcow2 + raw disk) on the local libvirt" % VM)
    remove(RESTORED)
    remove(VM)
    # A new demo VM: the previous demo's backups are of another VM; start its history afresh.
    shutil.rmtree(os.path.join(REPO, VM), ignore_errors=True)
    domains.define_guest(VM, [{"target": "vda", "format": "qcow2", "size_mib": 128},
                              {"target": "vdb", "format": "raw", "size_mib": 64}], replace=True)
    domains.wait_agent(VM, timeout=240)
    domains.guest_write(VM, "/dev/vda", 0, 16 * MiB, seed="demo-1")
    domains.guest_write(VM, "/dev/vdb", 8 * MiB, 4 * MiB, seed="demo-2")

    step("Full backup of the running VM")
    playbook("backup", vmbackup_vms=VM)

    step("The guest writes 8 MiB; incremental backup")
    domains.guest_write(VM, "/dev/vda", 64 * MiB, 8 * MiB, seed="demo-3")
    expected = {t: domains.guest_sha256(VM, "/dev/" + t) for t in ("vda", "vdb")}
    playbook("backup", vmbackup_vms=VM)

    step("Restoring the latest backup as %s, starting it and waiting for its guest agent" % RESTORED)
    playbook("restore", vmbackup_vm=VM, vmbackup_restore_name=RESTORED, vmbackup_restore_start=True,
             vmbackup_restore_wait_agent=240)
    got = {t: domains.guest_sha256(RESTORED, "/dev/" + t) for t in ("vda", "vdb")}

    step("Result")
    for path in sorted(os.listdir(os.path.join(REPO, VM))):
        manifest = os.path.join(REPO, VM, path, "manifest.json")
        if os.path.exists(manifest):
            with open(manifest) as fh:
                m = json.load(fh)
            print("    backup %s  %-11s sent %8.1f MiB  stored %8.1f MiB" % (
                m["backup_id"], m["type"], m["bytes_sent"] / MiB, m["bytes_stored"] / MiB))
    ok = got == expected
    for target in ("vda", "vdb"):
        print("    %s: source at backup %s…  restored %s…  %s" % (
            target, expected[target][:12], got[target][:12], "equal" if got[target] == expected[target] else "DIFFERENT"))
    remove(RESTORED)
    print("\ndemo: %s (the demo VM %s and the repository %s are kept)" % ("OK" if ok else "FAILED", VM, REPO))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
