# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the known_hosts_pin module: scan, verify, pin, never replace silently.

The file is changed all at once or not at all: every host is scanned and checked
first, and any problem (a key that does not match a pinned fingerprint, a key
that differs from the one already recorded, a new key with nothing to vouch for
it, a revoked key) fails the whole call before a byte is written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import tempfile

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError

# ssh-keyscan -t names and the key type strings they produce.
KEY_TYPE_ALIASES = {
    "ed25519": "ed25519",
    "ssh-ed25519": "ed25519",
    "ecdsa": "ecdsa",
    "rsa": "rsa",
    # the legacy name: an RSA key is always recorded as "ssh-rsa"; the SHA-1 signature
    # algorithm of the same name is a client setting, not a known_hosts one
    "ssh-rsa": "rsa",
}
DEFAULT_KEY_TYPES = ["ed25519", "ecdsa", "rsa"]

ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    hosts=dict(
        type="list", elements="dict", required=True,
        options=dict(
            name=dict(type="str", required=True),
            address=dict(type="str"),
            port=dict(type="int", default=22),
            aliases=dict(type="list", elements="str", default=[]),
            fingerprints=dict(type="list", elements="str", default=[]),
        ),
    ),
    key_types=dict(type="list", elements="str", default=DEFAULT_KEY_TYPES,
                   choices=sorted(KEY_TYPE_ALIASES)),
    hash_hosts=dict(type="bool", default=False),
    trust_on_first_use=dict(type="bool", default=False),
    timeout=dict(type="int", default=5),
)


def key_family(key_type):
    """The ssh-keyscan type family of a key type string (ssh-ed25519 -> ed25519)."""
    if key_type.startswith("ecdsa-sha2-"):
        return "ecdsa"
    if key_type == "ssh-ed25519":
        return "ed25519"
    if key_type == "ssh-rsa":
        return "rsa"
    return key_type


def fingerprint(blob_b64, algo="sha256"):
    """OpenSSH fingerprint of a base64 public key blob (SHA256:... or MD5:aa:bb...)."""
    raw = base64.b64decode(blob_b64)
    if algo == "md5":
        digest = hashlib.md5(raw).hexdigest()  # noqa: S324 - the OpenSSH MD5 fingerprint format
        return "MD5:" + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")


def normalize_pin(pin):
    """Compare-ready form of a pinned fingerprint: 'sha256:<b64 without =>' or 'md5:<hex:..>'."""
    pin = pin.strip()
    if pin.upper().startswith("MD5:"):
        return "md5:" + pin[4:].lower()
    if pin.upper().startswith("SHA256:"):
        pin = pin[7:]
    return "sha256:" + pin.rstrip("=")


def pin_matches(pins, blob_b64):
    if not pins:
        return False
    mine = {normalize_pin(fingerprint(blob_b64)), normalize_pin(fingerprint(blob_b64, "md5"))}
    return any(normalize_pin(p) in mine for p in pins)


def host_pattern(name, port):
    """The known_hosts form of a name: plain for port 22, [name]:port otherwise."""
    if port and int(port) != 22:
        return "[%s]:%s" % (name, int(port))
    return name


def hash_name(name, salt=None):
    """A hashed known_hosts name (|1|salt|hmac-sha1), as ssh-keygen -H writes it."""
    salt = salt if salt is not None else os.urandom(20)
    mac = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
    return "|1|%s|%s" % (base64.b64encode(salt).decode("ascii"), base64.b64encode(mac).decode("ascii"))


def name_matches(field, name):
    """Whether one entry of a known_hosts host field names ``name`` (plain or hashed)."""
    if field.startswith("|1|"):
        try:
            _empty, _one, salt, mac = field.split("|", 3)
            salt = base64.b64decode(salt)
            mac = base64.b64decode(mac)
        except (ValueError, binascii.Error):
            return False
        return hmac.compare_digest(hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest(), mac)
    # negated and wildcard patterns are left to OpenSSH: only exact names count here
    return field == name


class Entry:
    """One line of a known_hosts file (kept byte for byte)."""

    def __init__(self, lineno, line):
        self.lineno = lineno
        self.line = line
        self.marker = None
        self.hosts = []
        self.key_type = None
        self.blob = None
        text = line.strip()
        if not text or text.startswith("#"):
            return
        parts = text.split()
        if parts[0].startswith("@"):
            self.marker = parts[0]
            parts = parts[1:]
        if len(parts) < 3:
            return
        self.hosts = parts[0].split(",")
        self.key_type = parts[1]
        self.blob = parts[2]

    def names(self, name):
        return any(name_matches(h, name) for h in self.hosts)


def parse(text):
    return [Entry(i + 1, line) for i, line in enumerate(text.splitlines())]


def parse_scan(out, wanted_families):
    """Keys from ssh-keyscan output: [(key_type, blob)] in the order of wanted_families."""
    keys = []
    for line in out.splitlines():
        parts = line.strip().split()
        if len(parts) < 3 or line.startswith("#"):
            continue
        key_type, blob = parts[1], parts[2]
        if key_family(key_type) in wanted_families and (key_type, blob) not in keys:
            keys.append((key_type, blob))
    order = {f: i for i, f in enumerate(wanted_families)}
    return sorted(keys, key=lambda k: order.get(key_family(k[0]), 99))


def scan(runner, address, port, families, timeout):
    argv = ["ssh-keyscan", "-T", str(timeout), "-p", str(port), "-t", ",".join(families), address]
    rc, out, err = runner.run(argv, check_rc=False, what="ssh-keyscan")
    keys = parse_scan(out, families)
    if not keys:
        detail = " ".join(line for line in (err or "").splitlines() if line and not line.startswith("#"))
        raise VmbackupError(
            "no host key of type %s was received from %s port %s (ssh-keyscan rc=%s%s). Check that "
            "sshd listens there and offers one of these key types (prep_known_hosts_key_types)."
            % ("/".join(families), address, port, rc, "; " + detail if detail else ""),
            cmd=argv, rc=rc, stderr=err,
        )
    return keys


class Plan:
    """What one call found for every host, and the lines it would add."""

    def __init__(self):
        self.hosts = []
        self.problems = []
        self.new_lines = []


def host_names(host):
    names = [host["name"]]
    for extra in [host.get("address")] + list(host.get("aliases") or []):
        if extra and extra not in names:
            names.append(extra)
    return [host_pattern(n, host.get("port") or 22) for n in names]


def plan(entries, hosts, scanned, trust_on_first_use, hash_hosts, salt=None):
    """Decide, for every host and scanned key, what to do. ``scanned``: name -> [(type, blob)]."""
    result = Plan()
    revoked = {(e.key_type, e.blob) for e in entries if e.marker == "@revoked"}
    plain = [e for e in entries if e.key_type and e.marker is None]
    for host in hosts:
        names = host_names(host)
        pins = list(host.get("fingerprints") or [])
        report = {"name": host["name"], "address": host.get("address") or host["name"],
                  "port": host.get("port") or 22, "names": names, "pinned": bool(pins), "keys": []}
        known_at_all = any(e.names(n) for e in plain for n in names)
        for key_type, blob in scanned[host["name"]]:
            fp = fingerprint(blob)
            key = {"type": key_type, "fingerprint": fp, "status": "present", "names_added": []}
            report["keys"].append(key)
            where = "%s (%s port %s)" % (host["name"], report["address"], report["port"])
            if (key_type, blob) in revoked:
                key["status"] = "revoked"
                result.problems.append(
                    "%s offers %s key %s, which %s marks @revoked. Do not trust this host until its "
                    "key is replaced." % (where, key_type, fp, "the known_hosts file"))
                continue
            if pins and not pin_matches(pins, blob):
                key["status"] = "mismatch"
                result.problems.append(
                    "%s offers %s key %s, which matches none of the pinned fingerprints %s "
                    "(vmbackup_host_key_fingerprints). Verify the host key on the console "
                    "(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and fix the pin, or limit "
                    "prep_known_hosts_key_types to the pinned key types."
                    % (where, key_type, fp, ", ".join(pins)))
                continue
            changed_here = []
            missing = []
            for name in names:
                same_type = [e for e in plain if e.key_type == key_type and e.names(name)]
                if any(e.blob == blob for e in same_type):
                    continue
                if same_type:
                    changed_here.extend((name, e) for e in same_type)
                else:
                    missing.append(name)
            if changed_here:
                key["status"] = "changed"
                for name, e in changed_here:
                    result.problems.append(
                        "HOST KEY CHANGED for %s: %s line %s records %s key %s for %s, but the host "
                        "now offers %s. This is not accepted. If the change is expected (host "
                        "reinstalled, key rotated), verify the new fingerprint out of band, remove "
                        "the old entry (ssh-keygen -R '%s' -f <known_hosts>) and run prep again, "
                        "with the new fingerprint pinned."
                        % (where, "known_hosts", e.lineno, key_type, fingerprint(e.blob), name, fp, name))
                continue
            if not missing:
                continue
            if not pins and not trust_on_first_use:
                key["status"] = "untrusted"
                result.problems.append(
                    "%s offers %s key %s, and nothing vouches for it: %s. Pin it in the inventory "
                    "(vmbackup_host_key_fingerprints: ['%s'] for host %s) after checking it on the "
                    "host's console, or allow trust on first use (prep_trust_on_first_use: true)."
                    % (where, key_type, fp,
                       "the host is not in known_hosts" if not known_at_all
                       else "known_hosts has other key types for it but not this one",
                       fp, host["name"]))
                continue
            key["status"] = "added"
            key["names_added"] = missing
            key["trust"] = "pinned" if pins else "first use"
            if hash_hosts:
                for name in missing:
                    result.new_lines.append("%s %s %s" % (hash_name(name, salt), key_type, blob))
            else:
                result.new_lines.append("%s %s %s" % (",".join(missing), key_type, blob))
        result.hosts.append(report)
    return result


def read_text(path):
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return handle.read().decode("utf-8", "surrogateescape")


def write_atomic(module, path, text):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise VmbackupError("the directory of the known_hosts file %s does not exist; create it "
                            "(mode 0700, owned by the backup user) first." % path)
    fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8", "surrogateescape"))
        if os.path.exists(path):
            st = os.stat(path)
            os.chmod(tmp, st.st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure(module):
    params = module.params
    path = params["path"]
    families = []
    for t in params["key_types"]:
        fam = KEY_TYPE_ALIASES[t]
        if fam not in families:
            families.append(fam)
    runner = CommandRunner(module)
    before = read_text(path)
    entries = parse(before or "")
    scanned = {}
    problems = []
    for host in params["hosts"]:
        try:
            scanned[host["name"]] = scan(runner, host.get("address") or host["name"],
                                         host.get("port") or 22, families, params["timeout"])
        except VmbackupError as exc:
            problems.append("%s: %s" % (host["name"], exc.msg))
            scanned[host["name"]] = []
    result = plan(entries, params["hosts"], scanned, params["trust_on_first_use"], params["hash_hosts"])
    problems.extend(result.problems)
    if problems:
        raise VmbackupError(
            "known_hosts %s was left unchanged: %s" % (path, " | ".join(problems)),
            hosts=result.hosts, problems=problems,
        )
    after = before or ""
    if result.new_lines:
        if after and not after.endswith("\n"):
            after += "\n"
        after += "\n".join(result.new_lines) + "\n"
    changed = after != (before or "") or before is None
    if changed and not module.check_mode:
        write_atomic(module, path, after)
    if os.path.exists(path):
        file_args = module.load_file_common_arguments(params, path=path)
        changed = module.set_fs_attributes_if_different(file_args, changed)
    out = {
        "changed": changed,
        "path": path,
        "hosts": result.hosts,
        "added": len(result.new_lines),
    }
    if module._diff:
        out["diff"] = {"before": before or "", "after": after,
                       "before_header": "%s (content)" % path, "after_header": "%s (content)" % path}
    return out
