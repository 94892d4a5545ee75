# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""known_hosts_pin: parsing, fingerprints, hashing, and the all-or-nothing decisions.

Only ``AnsibleModule.run_command`` (ssh-keyscan) is faked; files are real, under tmp_path.
"""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from ansible_collections.vmbackup.libvirt.plugins.module_utils import _known_hosts as kh
from ansible_collections.vmbackup.libvirt.plugins.modules import known_hosts_pin

C_ENV = {"LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}


def blob(seed):
    return base64.b64encode(hashlib.sha512(seed.encode()).digest()).decode()


ED1, ED2, ECDSA1, RSA1 = blob("ed1"), blob("ed2"), blob("ecdsa1"), blob("rsa1")


def fp(b):
    return kh.fingerprint(b)


def keyscan(address, port, lines, types="ed25519,ecdsa,rsa", rc=0, err=""):
    return {"command": ["ssh-keyscan", "-T", "5", "-p", str(port), "-t", types, address],
            "environ_update": C_ENV, "rc": rc, "out": "".join(l + "\n" for l in lines), "err": err}


def run(harness, run_command, args, calls, check_mode=False, diff=False):
    """Run the module once; ``calls=None`` keeps the fake installed before."""
    fake = run_command(calls) if calls is not None else None
    with harness.set_module_args(args, check_mode=check_mode, diff=diff):
        with pytest.raises((harness.AnsibleExitJson, harness.AnsibleFailJson)) as raised:
            known_hosts_pin.main()
    if fake is not None:
        fake.assert_all_called()
    return isinstance(raised.value, harness.AnsibleFailJson), raised.value.result


# ---- pure helpers ------------------------------------------------------------------------

def test_fingerprint_matches_openssh_format():
    raw = base64.b64decode(ED1)
    expected = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert fp(ED1) == "SHA256:" + expected
    assert kh.fingerprint(ED1, "md5").startswith("MD5:") and kh.fingerprint(ED1, "md5").count(":") == 16


@pytest.mark.parametrize("pin", ["SHA256:{sha}", "sha256:{sha}", "{sha}", "SHA256:{sha}=", "{md5}"])
def test_pin_forms(pin):
    sha = fp(ED1)[7:]
    md5 = kh.fingerprint(ED1, "md5").upper().replace("MD5:", "MD5:")
    assert kh.pin_matches([pin.format(sha=sha, md5=md5)], ED1)
    assert not kh.pin_matches([pin.format(sha=fp(ED2)[7:], md5=kh.fingerprint(ED2, "md5"))], ED1)


def test_host_pattern_and_hashing():
    assert kh.host_pattern("hv1", 22) == "hv1"
    assert kh.host_pattern("10.0.0.3", 2222) == "[10.0.0.3]:2222"
    hashed = kh.hash_name("[hv3]:2222", salt=b"s" * 20)
    assert hashed.startswith("|1|" + base64.b64encode(b"s" * 20).decode() + "|")
    assert kh.name_matches(hashed, "[hv3]:2222")
    assert not kh.name_matches(hashed, "hv3")
    assert not kh.name_matches("|1|garbage", "hv3")
    assert kh.host_names({"name": "hv3", "address": "10.0.0.3", "port": 2222, "aliases": ["hv3.lan"]}) == \
        ["[hv3]:2222", "[10.0.0.3]:2222", "[hv3.lan]:2222"]


def test_parse_keeps_markers_and_comments():
    entries = kh.parse("# comment\n\n@cert-authority *.lan ssh-ed25519 %s\nhv1,10.0.0.1 ssh-ed25519 %s c\n" % (ED2, ED1))
    assert [e.marker for e in entries] == [None, None, "@cert-authority", None]
    assert entries[3].hosts == ["hv1", "10.0.0.1"] and entries[3].blob == ED1
    assert entries[0].key_type is None


def test_parse_scan_filters_and_orders():
    out = "# 10.0.0.1:22 SSH-2.0-OpenSSH_9.2\n10.0.0.1 ssh-rsa %s\n10.0.0.1 ssh-ed25519 %s\n" % (RSA1, ED1)
    assert kh.parse_scan(out, ["ed25519", "rsa"]) == [("ssh-ed25519", ED1), ("ssh-rsa", RSA1)]
    assert kh.parse_scan(out, ["ecdsa"]) == []


# ---- the module --------------------------------------------------------------------------

HOSTS = [{"name": "hv1", "address": "10.0.0.1"}, {"name": "hv3", "address": "10.0.0.3", "port": 2222}]
SCANS = [keyscan("10.0.0.1", 22, ["10.0.0.1 ssh-ed25519 " + ED1, "10.0.0.1 ecdsa-sha2-nistp256 " + ECDSA1]),
         keyscan("10.0.0.3", 2222, ["[10.0.0.3]:2222 ssh-rsa " + RSA1])]
EXPECTED = ("hv1,10.0.0.1 ssh-ed25519 %s\nhv1,10.0.0.1 ecdsa-sha2-nistp256 %s\n"
            "[hv3]:2222,[10.0.0.3]:2222 ssh-rsa %s\n" % (ED1, ECDSA1, RSA1))


def test_trust_on_first_use_writes_all_names_then_is_idempotent(harness, run_command, tmp_path):
    path = str(tmp_path / "known_hosts")
    args = {"path": path, "hosts": HOSTS, "trust_on_first_use": True, "mode": "0644"}
    fake = run_command(SCANS + SCANS)
    failed, res = run(harness, run_command, args, None, diff=True)
    assert not failed and res["changed"] and res["added"] == 3
    assert open(path).read() == EXPECTED
    assert res["diff"]["before"] == "" and res["diff"]["after"] == EXPECTED
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert [k["status"] for k in res["hosts"][0]["keys"]] == ["added", "added"]
    failed, res = run(harness, run_command, args, None)
    fake.assert_all_called()
    assert not failed and not res["changed"] and res["added"] == 0
    assert [k["status"] for k in res["hosts"][1]["keys"]] == ["present"]


def test_check_mode_writes_nothing(harness, run_command, tmp_path):
    path = str(tmp_path / "known_hosts")
    failed, res = run(harness, run_command, {"path": path, "hosts": HOSTS, "trust_on_first_use": True},
                      SCANS, check_mode=True, diff=True)
    assert not failed and res["changed"] and res["diff"]["after"] == EXPECTED
    assert not os.path.exists(path)


def test_without_pins_or_tofu_fails_and_shows_the_fingerprints(harness, run_command, tmp_path):
    path = str(tmp_path / "known_hosts")
    failed, res = run(harness, run_command, {"path": path, "hosts": HOSTS}, SCANS)
    assert failed and not os.path.exists(path)
    assert "nothing vouches for it" in res["msg"] and fp(RSA1) in res["msg"]
    assert "prep_trust_on_first_use: true" in res["msg"]
    assert {k["status"] for h in res["hosts"] for k in h["keys"]} == {"untrusted"}


def test_pins_accept_matching_keys_without_tofu(harness, run_command, tmp_path):
    path = str(tmp_path / "known_hosts")
    hosts = [dict(HOSTS[0], fingerprints=[fp(ED1), fp(ECDSA1)]), dict(HOSTS[1], fingerprints=[fp(RSA1)])]
    failed, res = run(harness, run_command, {"path": path, "hosts": hosts}, SCANS)
    assert not failed and open(path).read() == EXPECTED
    assert res["hosts"][0]["keys"][0]["trust"] == "pinned"


def test_wrong_pin_fails_with_both_fingerprints_and_leaves_file_identical(harness, run_command, tmp_path):
    path = tmp_path / "known_hosts"
    original = b"# mine\nother ssh-ed25519 " + ED2.encode() + b"\n"
    path.write_bytes(original)
    wrong = "SHA256:" + "A" * 43
    hosts = [dict(HOSTS[0], fingerprints=[fp(ED1)]), dict(HOSTS[1], fingerprints=[wrong])]
    failed, res = run(harness, run_command, {"path": str(path), "hosts": hosts, "trust_on_first_use": True}, SCANS)
    assert failed
    assert wrong in res["msg"] and fp(RSA1) in res["msg"]
    assert fp(ECDSA1) in res["msg"]  # hv1's ecdsa key is not pinned either
    assert path.read_bytes() == original


def test_changed_key_is_never_replaced(harness, run_command, tmp_path):
    path = tmp_path / "known_hosts"
    original = ("hv1,10.0.0.1 ssh-ed25519 %s\n" % ED2).encode()
    path.write_bytes(original)
    args = {"path": str(path), "hosts": [HOSTS[0]], "trust_on_first_use": True, "key_types": ["ed25519"]}
    failed, res = run(harness, run_command, args,
                      [keyscan("10.0.0.1", 22, ["10.0.0.1 ssh-ed25519 " + ED1], types="ed25519")])
    assert failed
    assert "HOST KEY CHANGED for hv1" in res["msg"]
    assert fp(ED2) in res["msg"] and fp(ED1) in res["msg"] and "ssh-keygen -R" in res["msg"]
    assert res["hosts"][0]["keys"][0]["status"] == "changed"
    assert path.read_bytes() == original


def test_changed_key_under_a_hashed_name_is_found(harness, run_command, tmp_path):
    path = tmp_path / "known_hosts"
    original = ("%s ssh-ed25519 %s\n" % (kh.hash_name("10.0.0.1"), ED2)).encode()
    path.write_bytes(original)
    hosts = [dict(HOSTS[0], fingerprints=[fp(ED1)])]  # even a pinned new key is not swapped in
    failed, res = run(harness, run_command, {"path": str(path), "hosts": hosts, "key_types": ["ssh-ed25519"]},
                      [keyscan("10.0.0.1", 22, ["10.0.0.1 ssh-ed25519 " + ED1], types="ed25519")])
    assert failed and "HOST KEY CHANGED" in res["msg"]
    assert path.read_bytes() == original


def test_hashed_entries_are_idempotent_and_keep_existing_lines(harness, run_command, tmp_path):
    path = tmp_path / "known_hosts"
    path.write_bytes(b"other ssh-ed25519 " + ED2.encode())  # no final newline
    args = {"path": str(path), "hosts": [HOSTS[1]], "trust_on_first_use": True, "hash_hosts": True}
    fake = run_command([SCANS[1], SCANS[1]])
    failed, res = run(harness, run_command, args, None)
    assert not failed and res["added"] == 2
    lines = path.read_text().splitlines()
    assert lines[0] == "other ssh-ed25519 " + ED2
    assert all(line.startswith("|1|") and line.endswith("ssh-rsa " + RSA1) for line in lines[1:])
    assert "10.0.0.3" not in path.read_text()
    failed, res = run(harness, run_command, args, None)
    fake.assert_all_called()
    assert not failed and not res["changed"]


def test_new_name_for_a_known_key_is_added(harness, run_command, tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text("10.0.0.1 ssh-ed25519 %s\n" % ED1)
    args = {"path": str(path), "hosts": [dict(HOSTS[0], fingerprints=[fp(ED1)])], "key_types": ["ed25519"]}
    failed, res = run(harness, run_command, args,
                      [keyscan("10.0.0.1", 22, ["10.0.0.1 ssh-ed25519 " + ED1], types="ed25519")])
    assert not failed and res["changed"]
    assert path.read_text().splitlines()[1] == "hv1 ssh-ed25519 " + ED1


def test_revoked_key_is_refused(harness, run_command, tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text("@revoked * ssh-ed25519 %s\n" % ED1)
    args = {"path": str(path), "hosts": [HOSTS[0]], "key_types": ["ed25519"], "trust_on_first_use": True}
    failed, res = run(harness, run_command, args,
                      [keyscan("10.0.0.1", 22, ["10.0.0.1 ssh-ed25519 " + ED1], types="ed25519")])
    assert failed and "@revoked" in res["msg"]


def test_unreachable_host_fails_everything(harness, run_command, tmp_path):
    path = str(tmp_path / "known_hosts")
    calls = [SCANS[0], keyscan("10.0.0.3", 2222, [], rc=1, err="connect (`10.0.0.3'): Connection refused")]
    failed, res = run(harness, run_command, {"path": path, "hosts": HOSTS, "trust_on_first_use": True}, calls)
    assert failed and not os.path.exists(path)
    assert "no host key of type ed25519/ecdsa/rsa was received from 10.0.0.3 port 2222" in res["msg"]
    assert "Connection refused" in res["msg"]
