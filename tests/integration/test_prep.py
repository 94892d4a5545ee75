"""The prep role against the test bed's real sshd endpoints and the local libvirt.

hv1 127.0.0.11:22 (ed25519), hv2 127.0.0.12:22 (ecdsa), hv3 127.0.0.13:2222 (rsa) from
tests/testbed/sshd.sh; the "host key changed" case uses an extra sshd this file starts on
127.0.0.14:2022 (its own config and key under tmp_path), so the shared endpoints keep their keys.
Every known_hosts file and key pair lives under tmp_path; keys are authorized in the test
bed's authorized_keys (never root's real one) and removed again afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

import conftest
from conftest import HV_PYTHON, TB, Playbook

SSH = os.path.join(TB, "ssh")
AUTHORIZED_KEYS = os.path.join(SSH, "authorized_keys")
ADMIN_KEY = os.path.join(SSH, "id_ed25519")
ENDPOINTS = [("hv1", "127.0.0.11", 22), ("hv2", "127.0.0.12", 22), ("hv3", "127.0.0.13", 2222)]
PREP = "vmbackup.libvirt.prep"
IMAGE_OWNER = "libvirt-qemu:kvm"  # Debian's qemu user:group on this machine

INVENTORY = """
[hypervisors]
hv1 ansible_host=127.0.0.11 ansible_port=22
hv2 ansible_host=127.0.0.12 ansible_port=22
hv3 ansible_host=127.0.0.13 ansible_port=2222

[hypervisors:vars]
ansible_user=root
ansible_ssh_private_key_file={key}
ansible_ssh_common_args='-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes'
{extra}

[all:vars]
ansible_python_interpreter={py}
"""


def inventory(pb, extra=""):
    return pb.inventory(INVENTORY.format(key=ADMIN_KEY, known=os.path.join(SSH, "known_hosts"),
                                         py=HV_PYTHON, extra=extra))


def fingerprint_of(pubfile):
    out = subprocess.run(["ssh-keygen", "-lf", pubfile], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def hv_pubkey(hv):
    kind = {"hv1": "ed25519", "hv2": "ecdsa", "hv3": "rsa"}[hv]
    return os.path.join(SSH, hv, "ssh_host_%s_key.pub" % kind)


def read_bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


def remove_authorized(pubfile):
    """Take our test key out of the test bed's authorized_keys again."""
    if not os.path.exists(pubfile):
        return
    blob = read_bytes(pubfile).decode().split()[1]
    with open(AUTHORIZED_KEYS) as fh:
        lines = fh.readlines()
    keep = [line for line in lines if blob not in line]
    if keep != lines:
        # Written aside and renamed: tests in the other xdist worker log in with this file meanwhile.
        tmp = AUTHORIZED_KEYS + ".tmp-%d" % os.getpid()
        with open(tmp, "w") as fh:
            fh.writelines(keep)
        os.chmod(tmp, 0o600)
        os.replace(tmp, AUTHORIZED_KEYS)


def openssh(known_hosts, key, address, port, name=None):
    argv = ["ssh", "-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=%s" % known_hosts,
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", "ControlMaster=no", "-o", "ControlPath=none", "-p", str(port)]
    if name:
        argv += ["-o", "HostKeyAlias=%s" % name]
    return subprocess.run(argv + ["root@%s" % address, "echo connected"], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)


PARAMIKO = r"""
import sys, paramiko
known, key, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = paramiko.SSHClient()
c.load_host_keys(known)
c.set_missing_host_key_policy(paramiko.RejectPolicy())
c.connect(host, port=port, username="root", key_filename=key, look_for_keys=False, allow_agent=False, timeout=10)
_i, o, _e = c.exec_command("echo connected")
print(o.read().decode().strip())
c.close()
"""


def paramiko_connect(known_hosts, key, address, port):
    return subprocess.run([HV_PYTHON, "-c", PARAMIKO, known_hosts, key, address, str(port)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def endpoints():
    conftest.testbed("sshd.sh", "up")
    return ENDPOINTS


@pytest.fixture(scope="module")
def prepared(endpoints, tmp_path_factory):
    """One full prep run (trust on first use) into a fresh known_hosts and a new key pair."""
    work = str(tmp_path_factory.mktemp("prep"))
    os.makedirs(os.path.join(work, "ansible-tmp"))
    pb = Playbook(work)
    known = os.path.join(work, "known_hosts")
    key = os.path.join(work, "id_backup")
    extra = {"prep_known_hosts_path": known, "prep_ssh_key_path": key,
             "prep_authorized_keys_path": AUTHORIZED_KEYS, "prep_trust_on_first_use": True,
             "vmbackup_image_owner": IMAGE_OWNER}
    inv = inventory(pb)
    first = pb.run(PREP, inv, extra=extra)
    yield {"pb": pb, "inv": inv, "extra": extra, "known": known, "key": key, "first": first}
    remove_authorized(key + ".pub")


def test_first_run_records_every_endpoint(prepared):
    assert prepared["first"].changed("hv1") > 0
    text = read_bytes(prepared["known"]).decode()
    for name, address, port in ENDPOINTS:
        for host in (name, address):
            pattern = host if port == 22 else "[%s]:%s" % (host, port)
            found = subprocess.run(["ssh-keygen", "-F", pattern, "-f", prepared["known"]],
                                   capture_output=True, text=True, check=False)
            assert found.returncode == 0, "%s missing in:\n%s" % (pattern, text)
    assert "ssh-ed25519" in text and "ecdsa-sha2-nistp256" in text and "ssh-rsa" in text
    assert "[127.0.0.13]:2222" in text
    assert oct(os.stat(prepared["known"]).st_mode & 0o777) == "0o644"
    assert os.stat(prepared["known"]).st_uid == os.getuid()
    assert oct(os.stat(prepared["key"]).st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("name,address,port", ENDPOINTS)
def test_openssh_connects_strictly(prepared, name, address, port):
    cp = openssh(prepared["known"], prepared["key"], address, port)
    assert cp.returncode == 0 and "connected" in cp.stdout, cp.stderr
    # the inventory name is recorded too
    alias = name if port == 22 else "[%s]:%s" % (name, port)
    cp = openssh(prepared["known"], prepared["key"], address, port, name=alias)
    assert cp.returncode == 0 and "connected" in cp.stdout, (alias, cp.stderr)


@pytest.mark.parametrize("name,address,port", ENDPOINTS)
def test_paramiko_connects_with_reject_policy(prepared, name, address, port):
    cp = paramiko_connect(prepared["known"], prepared["key"], address, port)
    assert cp.returncode == 0 and cp.stdout.strip() == "connected", cp.stderr


def test_second_run_changes_nothing(prepared):
    again = prepared["pb"].run(PREP, prepared["inv"], extra=prepared["extra"])
    for name, _a, _p in ENDPOINTS:
        assert again.changed(name) == 0, again.output[-6000:]


def test_pinned_wrong_fingerprint_fails_and_file_is_untouched(prepared):
    pb = prepared["pb"]
    known = os.path.join(pb.workdir, "known_hosts.pinned")
    shutil.copyfile(prepared["known"], known)
    before = read_bytes(known)
    wrong = "SHA256:" + "A" * 43
    inv = inventory(pb, extra="") + ""
    inv = pb.inventory(open(inv).read().replace(
        "hv2 ansible_host=127.0.0.12 ansible_port=22",
        "hv2 ansible_host=127.0.0.12 ansible_port=22 vmbackup_host_key_fingerprints='[\"%s\"]'" % wrong))
    extra = dict(prepared["extra"], prep_known_hosts_path=known, prep_preflight=False, prep_authorize_key=False)
    res = pb.run(PREP, inv, extra=extra, expect_rc=2)
    assert res.rc != 0
    real = fingerprint_of(hv_pubkey("hv2"))
    assert "matches none of the pinned fingerprints" in res.output
    assert real in res.output and wrong in res.output
    assert "left unchanged" in res.output
    assert read_bytes(known) == before


def test_unpinned_new_hosts_need_trust_on_first_use(endpoints, playbook):
    known = os.path.join(playbook.workdir, "known_hosts")
    extra = {"prep_known_hosts_path": known, "prep_preflight": False, "prep_authorize_key": False}
    res = playbook.run(PREP, inventory(playbook), extra=extra, expect_rc=2)
    assert "nothing vouches for it" in res.output
    assert "prep_trust_on_first_use: true" in res.output
    assert fingerprint_of(hv_pubkey("hv3")) in res.output
    assert not os.path.exists(known)


def test_correct_pins_without_trust_on_first_use_hashed_and_idempotent(endpoints, playbook, tmp_path):
    known = os.path.join(playbook.workdir, "known_hosts")
    pins = "\n".join("%s vmbackup_host_key_fingerprints='[\"%s\"]'" % (n, fingerprint_of(hv_pubkey(n)))
                     for n, _a, _p in ENDPOINTS)
    inv = inventory(playbook)
    text = open(inv).read().replace("[hypervisors:vars]", "[hypervisors]\n%s\n\n[hypervisors:vars]" % pins)
    inv = playbook.inventory(text)
    extra = {"prep_known_hosts_path": known, "prep_preflight": False, "prep_authorize_key": False,
             "prep_known_hosts_hash": True}
    first = playbook.run(PREP, inv, extra=extra)
    assert first.changed("hv1") > 0
    content = read_bytes(known).decode()
    assert "127.0.0.1" not in content and "hv1" not in content  # hashed
    assert content.count("|1|") == 6  # name and address of each of the three hosts
    for name, address, port in ENDPOINTS:
        cp = openssh(known, ADMIN_KEY, address, port)
        assert cp.returncode == 0, cp.stderr
        cp = paramiko_connect(known, ADMIN_KEY, address, port)
        assert cp.returncode == 0, cp.stderr
    second = playbook.run(PREP, inv, extra=extra)
    assert all(second.changed(n) == 0 for n, _a, _p in ENDPOINTS), second.output[-4000:]
    assert read_bytes(known).decode() == content


def test_check_mode_reports_and_writes_nothing(endpoints, playbook):
    known = os.path.join(playbook.workdir, "known_hosts")
    extra = {"prep_known_hosts_path": known, "prep_preflight": False, "prep_authorize_key": False,
             "prep_trust_on_first_use": True}
    res = playbook.run(PREP, inventory(playbook), extra=extra, check=True)
    assert res.changed("hv1") >= 1
    assert "+[hv3]:2222,[127.0.0.13]:2222 ssh-rsa" in res.output  # the diff
    assert not os.path.exists(known)


# ---- a dedicated endpoint whose host key changes between two runs ---------------------------

EXTRA_ADDR, EXTRA_PORT = "127.0.0.14", 2022


def _start_sshd(d):
    conf = os.path.join(d, "sshd_config")
    with open(conf, "w") as fh:
        fh.write("\n".join([
            "ListenAddress %s" % EXTRA_ADDR, "Port %d" % EXTRA_PORT, "AddressFamily inet",
            "HostKey %s" % os.path.join(d, "host_ed25519"), "PidFile %s" % os.path.join(d, "sshd.pid"),
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "AuthorizedKeysFile %s" % AUTHORIZED_KEYS, "UsePAM no", "StrictModes no", "UseDNS no",
        ]) + "\n")
    subprocess.run(["/usr/sbin/sshd", "-f", conf, "-E", os.path.join(d, "sshd.log")], check=True)
    for _i in range(100):
        try:
            socket.create_connection((EXTRA_ADDR, EXTRA_PORT), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("extra sshd did not listen on %s:%s" % (EXTRA_ADDR, EXTRA_PORT))


def _stop_sshd(d):
    pidfile = os.path.join(d, "sshd.pid")
    if os.path.exists(pidfile):
        pid = int(open(pidfile).read().strip())
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            return
        for _i in range(50):
            if not os.path.exists("/proc/%d" % pid):
                break
            time.sleep(0.1)
        os.unlink(pidfile) if os.path.exists(pidfile) else None


def _new_host_key(d):
    key = os.path.join(d, "host_ed25519")
    for f in (key, key + ".pub"):
        if os.path.exists(f):
            os.unlink(f)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hv4", "-f", key], check=True)
    return fingerprint_of(key + ".pub")


@pytest.fixture
def hv4(tmp_path):
    d = str(tmp_path / "hv4")
    os.makedirs(d)
    _new_host_key(d)
    _start_sshd(d)
    yield d
    _stop_sshd(d)


def test_changed_host_key_is_reported_not_accepted(hv4, playbook):
    inv = playbook.inventory("""
    [hypervisors]
    hv4 ansible_connection=local vmbackup_ssh_host=%s vmbackup_ssh_port=%d

    [all:vars]
    ansible_python_interpreter=%s
    """ % (EXTRA_ADDR, EXTRA_PORT, HV_PYTHON))
    known = os.path.join(playbook.workdir, "known_hosts")
    extra = {"prep_known_hosts_path": known, "prep_preflight": False, "prep_authorize_key": False,
             "prep_trust_on_first_use": True}
    playbook.run(PREP, inv, extra=extra)
    old_fp = fingerprint_of(os.path.join(hv4, "host_ed25519.pub"))
    before = read_bytes(known)
    assert b"[hv4]:2022,[127.0.0.14]:2022 ssh-ed25519" in before
    # the host is reinstalled: new key, same address
    _stop_sshd(hv4)
    new_fp = _new_host_key(hv4)
    _start_sshd(hv4)
    assert new_fp != old_fp
    res = playbook.run(PREP, inv, extra=extra, expect_rc=2)  # even with trust on first use
    assert "HOST KEY CHANGED for hv4" in res.output
    assert old_fp in res.output and new_fp in res.output
    assert "ssh-keygen -R" in res.output
    assert read_bytes(known) == before
    # and OpenSSH agrees the recorded key is not the one offered now
    cp = openssh(known, ADMIN_KEY, EXTRA_ADDR, EXTRA_PORT)
    assert cp.returncode != 0 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in cp.stderr


# ---- hypervisor preflight ----------------------------------------------------------------


def _report(pb, host):
    with open(os.path.join(pb.workdir, "reports", "%s.json" % host)) as fh:
        return json.load(fh)


def test_preflight_local_hypervisor_reports_the_truth(endpoints, playbook):
    os.makedirs(os.path.join(playbook.workdir, "reports"))
    inv = playbook.inventory(open(inventory(playbook)).read().replace(
        "hv2 ansible_host=127.0.0.12 ansible_port=22\n", "").replace(
        "hv3 ansible_host=127.0.0.13 ansible_port=2222\n", ""))
    extra = {"prep_known_hosts": False, "prep_authorize_key": False, "vmbackup_image_owner": IMAGE_OWNER,
             "prep_preflight_report_dir": os.path.join(playbook.workdir, "reports")}
    res = playbook.run(PREP, inv, extra=extra)
    assert "vmbackup_preflight" in res.output  # printed
    rep = _report(playbook, "hv1")
    assert rep["ok"] is True, rep["failures"]
    assert rep["libvirt"]["reachable"] is True and rep["libvirt"]["uri"] == "qemu:///system"
    assert rep["libvirt"]["version"] and rep["qemu"]["version"]
    assert rep["blockcommit"]["live"] is True and "QEMU" in rep["blockcommit"]["basis"]
    # this machine has no device-mapper (no dm_mod, nothing in /proc/misc)
    with open("/proc/misc") as fh:
        has_dm = "device-mapper" in fh.read()
    assert rep["device_mapper"]["available"] is has_dm is False
    assert rep["checks"]["device_mapper"]["ok"] is False and rep["checks"]["device_mapper"]["required"] is False
    assert "device_mapper" in rep["warnings"]
    assert rep["checks"]["qemu_img"]["ok"] and rep["checks"]["qemu_nbd"]["ok"]
    assert rep["python"]["lxml"] is True
    assert rep["image_owner"]["detected"] == IMAGE_OWNER


def test_preflight_fails_with_a_fix_for_each_missing_piece(endpoints, playbook):
    os.makedirs(os.path.join(playbook.workdir, "reports"))
    inv = playbook.inventory(open(inventory(playbook)).read().replace(
        "hv2 ansible_host=127.0.0.12 ansible_port=22\n", "").replace(
        "hv3 ansible_host=127.0.0.13 ansible_port=2222\n", ""))
    extra = {"prep_known_hosts": False, "prep_authorize_key": False,
             "vmbackup_libvirt_uri": "qemu+unix:///system?socket=/nonexistent/libvirt-sock",
             "prep_commands": {"qemu_img": "qemu-img-does-not-exist"},
             # default image owner qemu:qemu: Debian has libvirt-qemu:kvm instead
             "prep_preflight_report_dir": os.path.join(playbook.workdir, "reports")}
    res = playbook.run(PREP, inv, extra=extra, expect_rc=2)
    out = res.output
    assert "Preflight failed on hypervisor hv1" in out
    assert "[libvirt]" in out and "does not answer" in out and "Start the libvirt daemon" in out
    assert "[qemu_img] 'qemu-img-does-not-exist' not found" in out
    assert "qemu-utils (Debian/Ubuntu) or qemu-img (RHEL-family)" in out
    assert "[image_owner]" in out and "Set vmbackup_image_owner: libvirt-qemu:kvm" in out
    rep = _report(playbook, "hv1")
    assert rep["ok"] is False
    assert set(rep["failures"]) == {"libvirt", "qemu_img", "image_owner"}


LVMHOST_KNOWN = os.path.join(TB, "lvmhost", "known_hosts")


def _lvmhost_healthy():
    cp = subprocess.run(["bash", os.path.join(os.path.dirname(__file__), "..", "testbed", "lvmhost.sh"), "health"],
                        capture_output=True, text=True, timeout=120, check=False)
    return cp.returncode == 0, (cp.stdout + cp.stderr).strip()[-300:]


def test_preflight_lvm_hypervisor_has_lvm2_and_device_mapper(playbook):
    healthy, why = _lvmhost_healthy()
    if not healthy:
        pytest.skip("the LVM hypervisor (tests/testbed/lvmhost.sh) is not healthy: %s" % why)
    os.makedirs(os.path.join(playbook.workdir, "reports"))
    host = ("lvmhost ansible_host=127.0.0.1 ansible_port=2299 ansible_user=root ansible_ssh_private_key_file=%s "
            "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes'" % (ADMIN_KEY, LVMHOST_KNOWN))
    inv = playbook.inventory("""
    [hypervisors]
    %s

    [all:vars]
    ansible_python_interpreter=%s
    """ % (host, HV_PYTHON))
    extra = {"prep_known_hosts": False, "prep_authorize_key": False, "prep_lvm": "required",
             "vmbackup_image_owner": IMAGE_OWNER, "prep_preflight_fail": False,
             "prep_preflight_report_dir": os.path.join(playbook.workdir, "reports")}
    res = playbook.run(PREP, inv, extra=extra, expect_rc=None)
    if "UNREACHABLE" in res.output:
        pytest.skip("the LVM hypervisor went away during the test (managed by tests/testbed/lvmhost.sh)")
    assert res.rc == 0, res.output[-6000:]
    rep = _report(playbook, "lvmhost")
    assert rep["checks"]["lvm2"]["ok"] is True and rep["checks"]["lvm2"]["required"] is True
    assert rep["lvm"]["json_reports"] is True and "vg0" in rep["lvm"]["volume_groups"]
    assert rep["device_mapper"]["available"] is True and rep["checks"]["device_mapper"]["ok"] is True
