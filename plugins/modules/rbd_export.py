#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rbd_export
short_description: Take, list and rotate the backup snapshots of a Ceph RBD image
version_added: 0.1.0
description:
  - Manages the snapshots named C(vmbackup-<BACKUP_ID>) of one RBD image. Backup IDs are
    UTC times such as C(20261122T013000Z), so the names sort by time.
    Snapshots whose names do not start with C(vmbackup-) are never touched.
  - O(state=present) takes the snapshot of a backup (C(rbd snap create)); the
    backup node then pulls it with M(vmbackup.libvirt.rbd_transfer), as
    C(rbd export-diff) (full) or C(rbd export-diff --from-snap) (incremental).
    With O(parent), the module also says which of the two it must be; if the
    parent backup's snapshot is gone from the image, the export is full and
    RV(fallback_reason) says why.
  - O(state=rotated) removes every snapshot of ours except O(snapshot) (after a backup
    landed in the repository, keep only the newest one for the next incremental).
  - O(state=absent) removes the snapshot of O(snapshot) (undo after a failed backup).
  - Runs on the hypervisor (or any host with the C(rbd) client and access to the cluster).
  - Every C(rbd) call is bounded in time (O(ceph_timeout)), so a cluster that
    does not answer fails with a clear error instead of hanging.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows the image's snapshots of ours before and after.
  idempotent:
    support: full
    details:
      - Idempotent by snapshot name; a second run with the same state changes nothing.
options:
  image:
    description: The RBD image, C(POOL/IMAGE) or C(POOL/NAMESPACE/IMAGE).
    type: str
    required: true
  snapshot:
    description:
      - The backup ID (C(20261122T013000Z)); the snapshot is C(vmbackup-<snapshot>).
        A name that already starts with C(vmbackup-) is taken as it is.
    type: str
    required: true
  state:
    description:
      - V(present) takes the snapshot if it is not there.
      - V(absent) removes it if it is there.
      - V(rotated) removes every snapshot of ours except O(snapshot), which must exist.
      - V(pruned) removes every snapshot of ours except O(snapshot) if it exists (repairs what
        a dead run left; O(snapshot) is then the newest complete backup's ID, or any ID that is
        not there to remove them all).
    type: str
    choices: [present, absent, rotated, pruned]
    default: present
  parent:
    description:
      - With O(state=present), the backup ID of the repository's previous backup of this
        disk. If the image still has its snapshot, RV(mode) is V(incremental) and
        RV(from_snapshot) names it; otherwise RV(mode) is V(full) and
        RV(fallback_reason) says why.
    type: str
  ceph_conf:
    description: Path of the cluster's C(ceph.conf) on the host (C(rbd --conf)). Default C(/etc/ceph/<cluster>.conf).
    type: path
  ceph_id:
    description: The Ceph client ID (the user without C(client.)), C(rbd --id).
    type: str
    default: admin
  ceph_keyring:
    description:
      - Path of the keyring of O(ceph_id) on the host (C(rbd --keyring)). Default the one
        C(ceph.conf) names. Only the path is ever passed; the key never is.
    type: path
  cluster:
    description: The cluster name (C(rbd --cluster)), when it is not C(ceph).
    type: str
  ceph_timeout:
    description:
      - Seconds to wait for the monitors (C(--client-mount-timeout)). Every short C(rbd)
        command is also killed after O(ceph_timeout) + 60 seconds.
    type: int
    default: 30
requirements:
  - The C(rbd) command (Debian C(ceph-common)) on the host, and a keyring readable there.
seealso:
  - module: vmbackup.libvirt.rbd_transfer
"""

EXAMPLES = r"""
- name: Snapshot web1's RBD disk for backup 20261122T013000Z
  vmbackup.libvirt.rbd_export:
    image: rbd/web1-disk0
    snapshot: 20261122T013000Z
    parent: 20261121T013000Z   # the repository's previous backup of this disk
    ceph_id: vmbackup
    ceph_keyring: /etc/ceph/ceph.client.vmbackup.keyring
  register: rbd_snap

- name: Pull it into the repository (full or incremental, as planned)
  vmbackup.libvirt.rbd_transfer:
    direction: backup
    image: rbd/web1-disk0
    snapshot: 20261122T013000Z
    from_snapshot: "{{ rbd_snap.from_snapshot }}"
    repo_file: /srv/vmbackup/web1/.partial-20261122T013000Z/vda.rbddiff
    ceph_id: vmbackup
    ssh_host: "{{ ansible_host }}"
  delegate_to: localhost

- name: Once the backup landed, keep only its snapshot on the image
  vmbackup.libvirt.rbd_export:
    image: rbd/web1-disk0
    snapshot: 20261122T013000Z
    state: rotated
    ceph_id: vmbackup
"""

RETURN = r"""
image:
  description: The image.
  returned: always
  type: str
snapshot:
  description: The full name of the snapshot, C(vmbackup-<snapshot>).
  returned: always
  type: str
  sample: vmbackup-20261122T013000Z
snapshots:
  description: The image's snapshots of ours after the change (or as they would be in check mode), oldest first.
  returned: always
  type: list
  elements: str
previous:
  description: The newest snapshot of ours older than RV(snapshot), or V(null).
  returned: always
  type: str
size:
  description: The image's size in bytes.
  returned: always
  type: int
created:
  description: Whether the snapshot was (or would be) taken.
  returned: always
  type: bool
removed:
  description: Snapshots of ours that were (or would be) removed.
  returned: always
  type: list
  elements: str
mode:
  description: V(incremental) when the image has the snapshot of O(parent), else V(full).
  returned: state=present
  type: str
from_snapshot:
  description: The snapshot to export the diff from (C(rbd export-diff --from-snap)), or V(null) for a full export.
  returned: state=present
  type: str
fallback_reason:
  description: Why the export is full although O(parent) was given; V(null) otherwise.
  returned: state=present
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module
from ansible_collections.vmbackup.libvirt.plugins.module_utils._rbd import EXPORT_ARGUMENT_SPEC, run_export


def main():
    module = AnsibleModule(argument_spec=EXPORT_ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run_export)


if __name__ == "__main__":
    main()
