# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller side of vm_info: hide a result that carries the domain's secrets, never an error.

With O(include_xml) the module returns the persistent domain XML with its VNC/SPICE passwords,
as a backup must store them. Task-level C(no_log) would also hide why the task failed; this
plugin instead marks only a successful result that holds the XML as no_log (registered
variables keep the data). A failed result stays visible, with the secrets the module had read
masked by the module itself.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.vmbackup.libvirt.plugins.plugin_utils._progress import hide_returned_secrets


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # not used
        result.update(self._execute_module(module_name="vmbackup.libvirt.vm_info", module_args=self._task.args,
                                           task_vars=task_vars))
        return hide_returned_secrets(result)
