# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # How the backup node reaches a hypervisor (_ssh.CONNECTION_ARGSPEC).
    DOCUMENTATION = r"""
options:
  transport:
    description: V(ssh) to reach a remote hypervisor, V(local) when the hypervisor is the backup node.
    type: str
    choices: [ssh, local]
    default: ssh
  ssh_host:
    description: The hypervisor's address for SSH.
    type: str
  ssh_port:
    description: Its SSH port.
    type: int
    default: 22
  ssh_user:
    description: The account on the hypervisor.
    type: str
    default: root
  ssh_private_key:
    description: The backup node's private key for the hypervisor.
    type: path
  known_hosts:
    description: The known_hosts file that holds the hypervisor's host key (see the C(prep) role).
    type: path
    default: ~/.ssh/known_hosts
  ssh_options:
    description: Extra C(-o) options for ssh, such as V(ConnectTimeout=10).
    type: list
    elements: str
    default: []
"""
