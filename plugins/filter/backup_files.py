# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_plan import extra_files

DOCUMENTATION = r"""
name: backup_files
short_description: The extra files of a backup (NVRAM, TPM state) for its commit
version_added: 0.4.0
description:
  - Builds O(vmbackup.libvirt.backup_repo#module:files) of M(vmbackup.libvirt.backup_repo)
    O(vmbackup.libvirt.backup_repo#module:action=commit) from the slurped NVRAM (C(nvram.fd)) and
    the slurped TPM state files (C(tpm-NAME)). Skipped slurps add nothing.
positional: tpm
options:
  _input:
    description: The registered result of M(ansible.builtin.slurp) of the NVRAM (skipped when the VM has none).
    type: dict
    required: true
  tpm:
    description: The registered loop of M(ansible.builtin.slurp) over the TPM's state files.
    type: dict
"""

EXAMPLES = r"""
- name: Files of the backup
  ansible.builtin.debug:
    msg: "{{ nvram | vmbackup.libvirt.backup_files(tpm) }}"
"""

RETURN = r"""
_value:
  description: File name to base64 content.
  type: dict
"""


class FilterModule:
    def filters(self):
        return {"backup_files": extra_files}
