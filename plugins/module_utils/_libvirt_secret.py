# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of the libvirt_secret module: a Ceph (cephx) secret that restored domains refer to.

The value never appears on a command line: it is written to a private temporary file for
``virsh secret-set-value --file`` and read from ``ceph auth get-key`` through a pipe.
"""

from __future__ import annotations

import base64

from ansible_collections.vmbackup.libvirt.plugins.module_utils._command import CommandRunner, VmbackupError
from ansible_collections.vmbackup.libvirt.plugins.module_utils import _files
from ansible_collections.vmbackup.libvirt.plugins.module_utils._virsh import URI_ARGSPEC, Virsh

ARGUMENT_SPEC = dict(
    uuid=dict(type="str", required=True),
    usage_name=dict(type="str"),
    value=dict(type="str", no_log=True),
    ceph_client=dict(type="str"),
    ceph_conf=dict(type="path"),
    ceph_keyring=dict(type="path", no_log=False),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    **URI_ARGSPEC
)


def _ceph_key(runner, p):
    argv = ["ceph", "auth", "get-key", "client.%s" % p["ceph_client"]]
    if p["ceph_conf"]:
        argv += ["-c", p["ceph_conf"]]
    if p["ceph_keyring"]:
        argv += ["--keyring", p["ceph_keyring"]]
    _rc, out, _err = runner.run(argv, what="reading the cephx key of client.%s" % p["ceph_client"], timeout=60,
                                hint="Give the key as value (with no_log), or a keyring allowed to read it.")
    return out.strip()


def run(module):
    p = module.params
    runner = CommandRunner(module)
    virsh = Virsh(runner, p["uri"])
    uuid = p["uuid"]
    rc, _out, _err = virsh.run(["secret-dumpxml", uuid], check_rc=False)
    exists = rc == 0
    if p["state"] == "absent":
        if exists and not module.check_mode:
            virsh.run(["secret-undefine", uuid], what="removing secret %s" % uuid)
        return {"changed": exists, "uuid": uuid}
    if p["value"] is None and not p["ceph_client"]:
        raise VmbackupError("secret %s: give its value (base64 cephx key) or ceph_client to read it from Ceph" % uuid)
    value = p["value"] if p["value"] is not None else _ceph_key(runner, p)
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        raise VmbackupError("the value of secret %s is not base64 (a cephx key is)" % uuid)
    current = None
    if exists:
        rc, out, _err = virsh.run(["secret-get-value", uuid], check_rc=False)
        current = out.strip() if rc == 0 else None
    changed = not exists or current != value
    if changed and not module.check_mode:
        if not exists:
            xml = ("<secret ephemeral='no' private='yes'><uuid>%s</uuid><usage type='ceph'><name>%s</name>"
                   "</usage></secret>" % (uuid, p["usage_name"] or "client.%s secret" % (p["ceph_client"] or uuid)))
            _define_from_file(virsh, xml, ["secret-define"], "defining secret %s" % uuid)
        _define_from_file(virsh, value, ["secret-set-value", "--secret", uuid, "--file"],
                          "setting the value of secret %s" % uuid)
    return {"changed": changed, "uuid": uuid, "created": not exists}


def _define_from_file(virsh, content, argv, what):
    with _files.temp_text(content, "vmbackup-secret-") as path:  # 0600: it may hold the secret's value
        virsh.run(argv + [path], what=what)
