#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rbd_transfer
short_description: Move a Ceph RBD disk between a hypervisor and the backup repository as rbd diffs
version_added: 0.1.0
description:
  - Runs on the backup node and reaches the hypervisor over SSH with strict host
    key checking against O(known_hosts) (or locally with O(transport=local)); the
    C(rbd) commands run on the hypervisor with its Ceph configuration and keyring.
  - O(direction=backup) streams C(rbd export-diff [--from-snap FROM] IMAGE@vmbackup-SNAPSHOT -)
    into O(repo_file) as it is (the repository format of RBD disks, C(TARGET.rbddiff)).
    A full export carries only the allocated extents; an incremental one only what changed
    since O(from_snapshot). Memory use is constant. The file is written as C(.part),
    fsynced, checked to be one whole C(rbd diff v1) stream from O(from_snapshot) to
    O(snapshot), and only then renamed.
  - If O(from_snapshot) is gone from the image, the export is full (unless
    O(fallback_full=false)) and RV(fallback_reason) says why.
  - O(direction=restore) first checks every file of O(chain) against its sha256 and
    checks that they form one chain (a full diff, then diffs each starting where the
    one before ended); nothing is written if one is damaged.
  - With O(target_kind=rbd) it creates the image O(image) (refusing an existing one
    unless O(force), which removes it and its snapshots first) and streams each
    file into C(rbd import-diff -) in order. If that fails, the incomplete image is removed.
  - With O(target_kind=file) or O(target_kind=block) it applies the diffs on the backup
    node into a sparse raw temporary file (in O(tmpdir)) and writes it into the target
    through C(qemu-nbd) on the hypervisor, as M(vmbackup.libvirt.disk_transfer) does.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
  - vmbackup.libvirt.connection
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - A backup whose file is already in the repository is not transferred again.
      - A restore refuses an existing target unless O(force=true), which writes it again.
options:
  direction:
    description: V(backup) (hypervisor to repository) or V(restore) (repository to hypervisor).
    type: str
    required: true
    choices: [backup, restore]
  image:
    description:
      - For backups, the RBD image to read, C(POOL/IMAGE) or C(POOL/NAMESPACE/IMAGE).
      - For restores, the target, an RBD image (O(target_kind=rbd)) or a path on the
        hypervisor (O(target_kind=file) or O(target_kind=block)).
    type: str
    required: true
  snapshot:
    description:
      - For backups, the backup ID whose snapshot C(vmbackup-<ID>) is exported (see
        M(vmbackup.libvirt.rbd_export)). A name starting with C(vmbackup-) is taken as it is.
    type: str
  from_snapshot:
    description:
      - For backups, the snapshot (or backup ID) of the previous backup; the export is then
        an incremental diff from it. Empty or omitted means a full export.
    type: str
  fallback_full:
    description: For backups, export full when O(from_snapshot) is not on the image (else fail).
    type: bool
    default: true
  repo_file:
    description: For backups, the file to write in the repository (C(REPO/VM/.partial-ID/TARGET.rbddiff)).
    type: path
  chain:
    description:
      - For restores, the diff files to apply, the full backup first, each a dict
        with C(path) and C(sha256) (as the manifests record them).
    type: list
    elements: dict
    default: []
  target_kind:
    description: For restores, what O(image) is.
    type: str
    choices: [rbd, file, block]
    default: rbd
  format:
    description: For restores to a file, the format of the file to create.
    type: str
    choices: [raw, qcow2]
    default: raw
  size:
    description:
      - For restores to a file, its virtual size in bytes. Default the image's size at the
        last backup of the chain (from its diff).
    type: int
  force:
    description: For restores, replace an existing target.
    type: bool
    default: false
  compare:
    description:
      - For restores to a file or block device, read the written target back and compare it with the
        applied chain (C(qemu-img compare)); a difference fails the module. Off, the chain is read
        once (a restore that ran P(vmbackup.libvirt.backup_verify#module) first has checked it).
    type: bool
    default: true
  keep_snapshot:
    description:
      - For restores to RBD, keep the snapshot of the last backup of the chain on the new image
        (C(rbd import-diff) creates one per diff; the others are removed). Its content is the
        restored backup, so an incremental backup from it stays possible.
    type: bool
    default: true
  tmpdir:
    description:
      - For restores to a file or block device, the directory on the backup node for the
        temporary raw image (sparse; as large as the data). Default the repository's
        directory of the VM (the parent of the last chain file's directory).
    type: path
  ceph_conf:
    description: Path of C(ceph.conf) on the hypervisor (C(rbd --conf)).
    type: path
  ceph_id:
    description: The Ceph client ID on the hypervisor (C(rbd --id)).
    type: str
    default: admin
  ceph_keyring:
    description: Path of the keyring on the hypervisor (C(rbd --keyring)); only the path is ever passed.
    type: path
  cluster:
    description: The cluster name (C(rbd --cluster)).
    type: str
  ceph_timeout:
    description:
      - Seconds to wait for the monitors (C(--client-mount-timeout)); short C(rbd) commands
        are killed after O(ceph_timeout) + 60 seconds. Streams are not limited in time.
    type: int
    default: 30
  ready_timeout:
    description: Seconds to wait for qemu-nbd and the SSH forward (restores to files and block devices).
    type: int
    default: 60
requirements:
  - OpenSSH client on the backup node, and qemu-img for restores to files or block devices.
  - The C(rbd) command on the hypervisor, and qemu-nbd there for restores to files or block devices.
seealso:
  - module: vmbackup.libvirt.rbd_export
  - module: vmbackup.libvirt.disk_transfer
"""

EXAMPLES = r"""
- name: Pull the incremental diff of web1's RBD disk
  vmbackup.libvirt.rbd_transfer:
    direction: backup
    image: rbd/web1-disk0
    snapshot: 20261122T013000Z
    from_snapshot: vmbackup-20261121T013000Z
    repo_file: /srv/vmbackup/web1/.partial-20261122T013000Z/vda.rbddiff
    ceph_id: vmbackup
    ssh_host: hv1.example.com
    known_hosts: /home/backup/.ssh/known_hosts
  delegate_to: localhost
  register: pulled

- name: Restore the chain into a new RBD image
  vmbackup.libvirt.rbd_transfer:
    direction: restore
    image: rbd/web1-test-disk0
    chain:
      - path: /srv/vmbackup/web1/20261121T013000Z/vda.rbddiff
        sha256: 3b0c...e1
      - path: /srv/vmbackup/web1/20261122T013000Z/vda.rbddiff
        sha256: 9f2a...07
    ceph_id: vmbackup
    ssh_host: hv1.example.com
  delegate_to: localhost

- name: Restore the same chain into a qcow2 file instead
  vmbackup.libvirt.rbd_transfer:
    direction: restore
    target_kind: file
    format: qcow2
    image: /var/lib/libvirt/images/web1-test-vda.qcow2
    chain: "{{ vda_chain }}"
    ssh_host: hv1.example.com
  delegate_to: localhost
"""

RETURN = r"""
image:
  description: The source image (backup) or the target (restore), as given.
  returned: always
  type: str
mode:
  description: V(full) or V(incremental).
  returned: direction=backup
  type: str
snapshot:
  description: The exported snapshot's full name.
  returned: direction=backup
  type: str
from_snapshot:
  description: The snapshot the diff starts from, or V(null) for a full export.
  returned: direction=backup
  type: str
fallback_reason:
  description: Why the export is full although O(from_snapshot) was given; V(null) otherwise.
  returned: direction=backup
  type: str
file:
  description: The file written in the repository.
  returned: direction=backup
  type: str
sha256:
  description: sha256 of the stored file.
  returned: direction=backup and not check mode
  type: str
compared:
  description: Whether the written file or block target was read back and compared with the chain.
  returned: direction=restore to a file or block target
  type: bool
bytes_sent:
  description:
    - For backups, bytes of the stream that crossed the wire (the stored file's size).
    - For restores to RBD, bytes of diffs streamed to the hypervisor; to files, bytes of data applied.
  returned: changed and not check mode
  type: int
stored_bytes:
  description: Bytes the stored file occupies.
  returned: direction=backup and not check mode
  type: int
data_bytes:
  description: Bytes of image data in the diff (its C(w) records); the rest is framing.
  returned: direction=backup and not check mode
  type: int
zero_bytes:
  description: Bytes the diff marks as zeroed or discarded (C(z) records; no data sent).
  returned: direction=backup and changed and not check mode
  type: int
size:
  description: Image size in bytes (at the exported snapshot, or at the restored backup).
  returned: success, except backups in check mode
  type: int
duration:
  description: Seconds the transfer took.
  returned: changed and not check mode
  type: float
target:
  description: The restored target.
  returned: direction=restore
  type: str
created:
  description: Whether the target was created.
  returned: direction=restore
  type: bool
replaced:
  description: Whether an existing RBD image was removed first (O(force)).
  returned: direction=restore and target_kind=rbd
  type: bool
snapshots:
  description: Snapshots left on a restored RBD image.
  returned: direction=restore and target_kind=rbd
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module
from ansible_collections.vmbackup.libvirt.plugins.module_utils._rbd_transfer import ARGUMENT_SPEC, REQUIRED_IF, run


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
