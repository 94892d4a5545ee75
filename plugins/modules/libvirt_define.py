#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: libvirt_define
short_description: Define a libvirt domain from backed-up XML, with the changes a restore needs
version_added: 0.1.0
description:
  - Defines (does not start) a domain from XML taken at backup time, after
    applying what a restore needs - a new name, a new UUID, new MAC addresses,
    disk sources remapped (file, block device or RBD image, with the disk's
    C(type) and format changed to match), the NVRAM path and the emulator path.
  - Runtime-only elements (aliases, dynamic security labels, backing chains) are removed.
  - Refuses to replace an existing domain whose definition differs unless
    O(force=true), and never replaces the definition of a running domain.
  - Idempotent - a sha256 of the normalized desired definition is kept in the
    domain's C(<metadata>) and compared on the next run, because libvirt adds
    defaults to every definition.
  - Runs on the hypervisor.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
  - vmbackup.libvirt.libvirt
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Shows the domain's inactive XML before and the XML to be defined after.
  idempotent:
    support: full
options:
  xml:
    description: The domain XML as backed up (C(virsh dumpxml --inactive --security-info)).
    type: str
    required: true
  name:
    description: The name to define the domain under. Default the name in O(xml).
    type: str
  uuid:
    description:
      - V(auto) keeps the UUID when the name is unchanged and derives a new one otherwise.
      - V(keep) keeps it, V(derive) derives a UUID from the old UUID and the new name
        (the same every run), any other value is used as the UUID.
    type: str
    default: auto
  macs:
    description:
      - V(auto) keeps MAC addresses when the name is unchanged and derives new ones otherwise.
      - V(derive) makes new addresses (prefix 52:54:00) from the domain's UUID, the same every run.
      - V(remove) removes every network interface (for sandboxed restore tests).
    type: str
    choices: [auto, keep, derive, remove]
    default: auto
  disks:
    description:
      - Disk sources to change, each a dict with C(target), C(type) (V(file), V(block) or V(rbd)),
        C(path) (file or device) and C(format), or for rbd C(name) or C(path) (pool/image), C(hosts)
        (list of C(name)/C(port)) and C(auth) (C(username), C(secret_uuid)).
    type: list
    elements: dict
    default: []
  nvram:
    description: New path of the NVRAM file of a UEFI guest.
    type: str
  emulator:
    description:
      - The emulator binary. V(auto) keeps the backed-up one if it exists on this host and
        otherwise picks the first of C(/usr/bin/qemu-system-x86_64), C(/usr/libexec/qemu-kvm),
        C(/usr/bin/qemu-kvm), C(/usr/bin/kvm) that does.
    type: str
    default: auto
  metadata:
    description: Facts to record in the domain's C(<metadata>), such as C(restored_from).
    type: dict
    default: {}
  autostart:
    description: Whether the domain starts with the host. Omit to leave it as it is.
    type: bool
  force:
    description: Replace the definition of an existing (shut-off) domain of the same name.
    type: bool
    default: false
  sandbox:
    description:
      - Define a copy that is safe to boot beside the live VM (restore tests). Every disk that
        O(disks) does not map is removed (shareable, network and excluded disks, cdroms and
        floppies with a host path, which would be the live VM's storage), and so is every
        C(<hostdev>). Empty cdrom and floppy drives stay. RV(removed) lists what went.
      - The domain's passwords (C(passwd) attributes) never appear in a result, a diff or an
        error, whatever this option says.
    type: bool
    default: false
  tpm_state:
    description:
      - The state files of the domain's emulated TPM (swtpm), as backed up - file name to
        base64 content (see M(vmbackup.libvirt.vm_info)'s RV(vmbackup.libvirt.vm_info#module:vms[].tpm)).
      - They are written, 0600, into libvirt's state directory for the defined domain's UUID
        (C(/var/lib/libvirt/swtpm/UUID/tpm2/)), so a renamed restore (new UUID) gets them too;
        state files there that the backup does not have are removed. Files that are already
        equal are not rewritten. Refused for a running domain.
      - The values are secret (what the guest sealed in its TPM) and are never shown.
    type: dict
"""

EXAMPLES = r"""
- name: Define web1 again as web1-test, with new UUID and MACs and its disk restored elsewhere
  vmbackup.libvirt.libvirt_define:
    xml: "{{ lookup('ansible.builtin.file', '/srv/vmbackup/web1/20261122T013000Z/domain.xml') }}"
    name: web1-test
    disks:
      - target: vda
        type: file
        path: /var/lib/libvirt/images/web1-test-vda.qcow2
        format: qcow2
    metadata:
      restored_from: 20261122T013000Z
"""

RETURN = r"""
removed:
  description: With O(sandbox), the devices removed from the definition (C(device), C(target), C(source), C(reason)).
  returned: always
  type: list
  elements: dict
  sample: [{device: disk, target: vdb, source: /srv/shared/quorum.img, reason: "disk is shareable ..."}]
name:
  description: The domain's name.
  returned: always
  type: str
uuid:
  description: The domain's UUID.
  returned: always
  type: str
macs:
  description: MAC addresses of its interfaces.
  returned: always
  type: list
  elements: str
definition_sha256:
  description: The sha256 of the normalized definition, as recorded in the domain's metadata.
  returned: always
  type: str
tpm_state_dir:
  description: Where the TPM state files went.
  returned: when O(tpm_state) is given
  type: str
tpm_state_written:
  description: The TPM state files written (or, in check mode, that would be).
  returned: when O(tpm_state) is given
  type: list
  elements: str
tpm_state_removed:
  description: State files removed from the directory because the backup does not have them.
  returned: when O(tpm_state) is given
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._libvirt_define import ARGUMENT_SPEC, run
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
