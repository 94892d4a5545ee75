# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_plan import with_cleanup_warnings

DOCUMENTATION = r"""
name: backup_cleanup_warnings
short_description: Add what a backup's cleanup could not do to the VM's result
version_added: 0.4.0
description:
  - Returns the run's results with C(cleanup - MSG) added to the last record's C(warnings) for each
    failed cleanup step (the registered results of tasks that ignore their errors; for a loop, each
    failed item). Without a failed step, or without a record, the results are returned unchanged.
positional: cleanups
options:
  _input:
    description: The run's results, the VM's record last.
    type: list
    elements: dict
    required: true
  cleanups:
    description: The registered results of the cleanup steps.
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Record what the cleanup could not do
  ansible.builtin.set_fact:
    results: "{{ results | vmbackup.libvirt.backup_cleanup_warnings([unlock, slots]) }}"
"""

RETURN = r"""
_value:
  description: The results.
  type: list
  elements: dict
"""


class FilterModule:
    def filters(self):
        return {"backup_cleanup_warnings": with_cleanup_warnings}
