# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_files import lines

DOCUMENTATION = r"""
name: backup_files_lines
short_description: A file-level restore's result as lines to read
version_added: 0.4.0
description:
  - Renders the result of M(vmbackup.libvirt.backup_files) as text lines - the backup and what was mounted,
    one C(ls -l)-like line per listed or found entry (type, mode, uid:gid, size, mtime, path, link target),
    and one line per extracted path with what was done.
options:
  _input:
    description: The registered result of M(vmbackup.libvirt.backup_files).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Show what the backup holds
  ansible.builtin.debug:
    msg: "{{ listed | vmbackup.libvirt.backup_files_lines }}"
"""

RETURN = r"""
_value:
  description: The lines.
  type: list
  elements: str
"""


class FilterModule:
    def filters(self):
        return {"backup_files_lines": lines}
