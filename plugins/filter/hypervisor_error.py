# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.vmbackup.libvirt.plugins.module_utils._backup_run import hypervisor_error

DOCUMENTATION = r"""
name: hypervisor_error
short_description: Say why a hypervisor could not be used, from the result of its first task
version_added: 0.2.0
description:
  - The backup and restore test playbooks start on each hypervisor with a C(vm_info) task that
    is allowed to fail or be unreachable (C(ignore_unreachable), C(ignore_errors)), so the run
    still reaches its report. This filter turns that task's registered result into the message
    the report carries - the hypervisor, how it was reached, the cause (the SSH error, or the
    module's message and stderr) and what to check.
positional: hypervisor, host, port, uri
options:
  _input:
    description: The registered result of the failed or unreachable task.
    type: dict
    required: true
  hypervisor:
    description: The hypervisor's inventory name.
    type: str
    required: true
  host:
    description: The address it was reached at (C(ansible_host)).
    type: str
    default: ""
  port:
    description: The SSH port (C(ansible_port)), if set.
    type: str
    default: ""
  uri:
    description: The libvirt URI the task used.
    type: str
    default: qemu:///system
"""

EXAMPLES = r"""
- name: Say why
  ansible.builtin.set_fact:
    why: "{{ listed | vmbackup.libvirt.hypervisor_error(inventory_hostname, ansible_host | default(''), ansible_port | default('')) }}"
"""

RETURN = r"""
_value:
  description: The message.
  type: str
"""


class FilterModule:
    def filters(self):
        return {"hypervisor_error": hypervisor_error}
