# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_run import hypervisor_errors as backup_hypervisor_errors

DOCUMENTATION = r"""
name: backup_hypervisor_errors
short_description: The hypervisors a backup run could not search, each with its message
version_added: 0.2.0
description:
  - The backup playbook's first play lists the VMs of each hypervisor. A hypervisor that cannot be
    reached, or whose VMs cannot be listed, records why in C(_vmbackup_search_error) and leaves the
    play, so that the run goes on to its summary and report. This filter gathers those messages.
  - A hypervisor with neither C(_vmbackup_search_error) nor C(_vmbackup_here) (the list of its
    requested VMs) stopped for another reason; it gets a message that says so.
positional: hostvars
options:
  _input:
    description: Every hypervisor of the run.
    type: list
    elements: str
    required: true
  hostvars:
    description: C(hostvars).
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Find the hypervisors that could not be searched
  ansible.builtin.set_fact:
    unsearched: "{{ ['hv1', 'hv2'] | vmbackup.libvirt.backup_hypervisor_errors(hostvars) }}"
"""

RETURN = r"""
_value:
  description: Hypervisor name to message, for each hypervisor that could not be searched; empty when all were.
  type: dict
"""


class FilterModule:
    def filters(self):
        return {"backup_hypervisor_errors": backup_hypervisor_errors}
