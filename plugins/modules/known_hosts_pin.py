#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmbackup.libvirt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: known_hosts_pin
short_description: Record hypervisor host keys in a known_hosts file, verified against pinned fingerprints
version_added: 0.1.0
description:
  - Scans the SSH host keys of a list of hosts with C(ssh-keyscan) and records them in a
    known_hosts file, under the host's name and its address (C([name]:port) for a port other
    than 22), plain or hashed.
  - A scanned key is accepted only when it matches one of the host's pinned fingerprints
    (O(hosts[].fingerprints)) or, without pins, when O(trust_on_first_use) allows it.
  - A key that differs from the one the file already records for that name and key type is
    never replaced; the call fails and shows both fingerprints.
  - All or nothing. Every host is scanned and checked before anything is written; any problem
    fails the call and leaves the file byte-identical.
  - Existing lines (comments, other hosts, C(@cert-authority) and C(@revoked) markers) are kept
    as they are; a scanned key listed under C(@revoked) is refused.
  - Runs on the backup node, the machine whose SSH client must trust the hosts.
author:
  - vmbackup.libvirt maintainers (@vmbackup)
extends_documentation_fragment:
  - vmbackup.libvirt.attributes
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    details:
      - Scans the hosts and reports what would be added; writes nothing.
  diff_mode:
    support: full
  idempotent:
    support: full
    details:
      - Hashed entries are matched by their HMAC, so a second run adds nothing either.
options:
  path:
    description:
      - The known_hosts file. Its directory must exist.
    type: path
    required: true
  hosts:
    description:
      - The hosts to record.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - The host's name (for example its inventory name), recorded in the file.
        type: str
        required: true
      address:
        description:
          - The address to scan, also recorded in the file. Defaults to O(hosts[].name).
        type: str
      port:
        description:
          - The SSH port. Entries use the C([name]:port) form when it is not 22.
        type: int
        default: 22
      aliases:
        description:
          - More names to record for the same keys.
        type: list
        elements: str
        default: []
      fingerprints:
        description:
          - Pinned fingerprints, C(SHA256:...) as C(ssh-keygen -lf) prints them (C(MD5:..) also
            accepted). When given, every scanned key must match one of them.
        type: list
        elements: str
        default: []
  key_types:
    description:
      - The host key types to scan and record, among those the host offers.
      - V(ssh-rsa) is accepted as another name for V(rsa); an RSA key is recorded as C(ssh-rsa)
        either way. Whether the SHA-1 C(ssh-rsa) signature algorithm is allowed is a client
        setting (C(HostKeyAlgorithms)), not a known_hosts one.
    type: list
    elements: str
    choices: [ed25519, ssh-ed25519, ecdsa, rsa, ssh-rsa]
    default: [ed25519, ecdsa, rsa]
  hash_hosts:
    description:
      - Write new entries with hashed names (as C(ssh-keygen -H) does), one line per name.
    type: bool
    default: false
  trust_on_first_use:
    description:
      - Accept keys of hosts that have no pinned fingerprints and no entry of that key type yet.
      - Without it, such keys fail the call with their fingerprints, ready to be pinned.
    type: bool
    default: false
  timeout:
    description:
      - Seconds C(ssh-keyscan) waits for each host.
    type: int
    default: 5
requirements:
  - ssh-keyscan (OpenSSH client) on the machine that runs the module.
seealso:
  - module: ansible.builtin.known_hosts
"""

EXAMPLES = r"""
- name: Trust the hypervisors' pinned host keys for the backup user
  vmbackup.libvirt.known_hosts_pin:
    path: /home/backup/.ssh/known_hosts
    owner: backup
    group: backup
    mode: "0644"
    hosts:
      - name: hv1
        address: 192.0.2.11
        fingerprints:
          - SHA256:2GCd0E7mXs2mH3cP6A8l3m0bX7Ck6f3xJ0cQ5yqk0ZQ
      - name: hv3
        address: 192.0.2.13
        port: 2222
        fingerprints:
          - SHA256:W3L3Wb1q1rWm3z7c2nX2N4bq9wq8gM0pD0qC8JYd3hA

- name: First contact in a lab, hashed entries, ed25519 only
  vmbackup.libvirt.known_hosts_pin:
    path: ~/.ssh/known_hosts
    hash_hosts: true
    key_types: [ed25519]
    trust_on_first_use: true
    hosts:
      - name: lab-hv1
      - name: lab-hv2
        address: 192.0.2.22
"""

RETURN = r"""
path:
  description: The known_hosts file.
  returned: always
  type: str
added:
  description: Number of lines added.
  returned: always
  type: int
hosts:
  description: What was found for each host (also returned on failure).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The host's name.
      type: str
    address:
      description: The address scanned.
      type: str
    port:
      description: The SSH port.
      type: int
    names:
      description: The names the entries use (C([name]:port) form for a port other than 22).
      type: list
      elements: str
    pinned:
      description: Whether fingerprints were pinned for the host.
      type: bool
    keys:
      description: The scanned keys.
      type: list
      elements: dict
      contains:
        type:
          description: Key type as recorded (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa).
          type: str
        fingerprint:
          description: SHA256 fingerprint.
          type: str
        status:
          description: >-
            V(present) (already recorded), V(added), V(mismatch) (does not match a pin),
            V(changed) (differs from the recorded key), V(untrusted) (nothing vouches for it),
            V(revoked).
          type: str
        names_added:
          description: Names the key was added under.
          type: list
          elements: str
  sample:
    - name: hv3
      address: 192.0.2.13
      port: 2222
      names: ["[hv3]:2222", "[192.0.2.13]:2222"]
      pinned: true
      keys:
        - type: ssh-rsa
          fingerprint: SHA256:W3L3Wb1q1rWm3z7c2nX2N4bq9wq8gM0pD0qC8JYd3hA
          status: added
          names_added: ["[hv3]:2222", "[192.0.2.13]:2222"]
problems:
  description: Why the call failed, one message per problem, each with what to do.
  returned: failure
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmbackup.libvirt.plugins.module_utils._known_hosts import ARGUMENT_SPEC, ensure
from ansible_collections.vmbackup.libvirt.plugins.module_utils._module import run_module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, add_file_common_args=True)
    run_module(module, ensure)


if __name__ == "__main__":
    main()
