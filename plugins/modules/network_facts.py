#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: network_facts
short_description: Read a host's interfaces and IPv4 addresses, as a fast subset of the network facts
version_added: 0.4.0
description:
  - Sets the network facts that the role C(netns.expose.expose) reads, with the keys and shapes of the
    C(network) facts of M(ansible.builtin.setup), from two runs of C(ip) (C(ip -j addr show) and
    C(ip -j -4 route show default)). It takes a fraction of the time of C(gather_subset=network), which runs
    several commands per interface.
  - The facts are C(interfaces), C(default_ipv4) (only C(interface), C(address) and C(gateway)) and, for each
    interface, C(device), C(active), C(ipv4) and C(ipv4_secondaries). M(ansible.builtin.setup)'s other network
    facts (MAC addresses, MTU, IPv6, C(all_ipv4_addresses), ...) are not set; gather them with
    M(ansible.builtin.setup) where they are needed.
  - As with M(ansible.builtin.setup), the facts of an interface are under its name with C(-) and C(:) made C(_)
    (C(veth-a) is C(ansible_facts.veth_a)), C(ipv4) is the first primary address of the interface and the further
    addresses are in C(ipv4_secondaries), and an address label other than the interface's name (C(eth0:1)) is listed
    in C(interfaces) as an interface of its own (C(eth0_1)).
  - C(default_ipv4) comes from the default route of the lowest metric in the main routing table, C({}) when there is
    none. Its C(address) is the route's preferred source, or else the address the kernel takes for it.
    M(ansible.builtin.setup) asks the kernel for the route to 8.8.8.8 instead, which is the same route unless
    policy routing or routes more specific than the default one cover that address.
  - Needs the C(ip) program of iproute2 with JSON output (C(-j)), which every current Linux distribution has.
  - With O(needs), it also says which of the collection's tools the host lacks (RV(missing)), as
    M(netns.expose.prerequisites) would find them, so that a role can skip that module's call where nothing is
    missing.
  - The module only reads; it never reports a change.
author:
  - netns.expose maintainers (@netns-expose)
extends_documentation_fragment:
  - netns.expose.attributes
  - netns.expose.attributes.platform
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
    details:
      - The module only reads, so it sets the facts in check mode as well.
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: linux
options:
  needs:
    description:
      - Tools of the collection to look for, by what the collection uses them for, as O(netns.expose.prerequisites#module:needs).
      - The ones the host lacks are returned in RV(missing); the module installs nothing.
    type: list
    elements: str
    choices: [pyroute2, iptables, conntrack, nftables]
    default: []
notes:
  - The role C(netns.expose.expose) reads the same facts, the same way, with M(netns.expose.plan_services), in the
    call that also checks its services and reads what publishing them would change; this module is for plays that
    only need the facts, and the tools a host lacks (O(needs)).
seealso:
  - module: ansible.builtin.setup
  - module: netns.expose.plan_services
"""

EXAMPLES = r"""
- name: Read the host's interfaces and addresses
  netns.expose.network_facts:

- name: Read them, and which tools of the iptables backend the host lacks
  netns.expose.network_facts:
    needs: [pyroute2, iptables, conntrack]
  register: host_read

- name: Install only what is missing
  netns.expose.prerequisites:
    needs: "{{ host_read.missing }}"
  when: host_read.missing | length > 0

- name: The address of the interface of the default route
  ansible.builtin.debug:
    msg: "{{ ansible_facts[ansible_facts.default_ipv4.interface | replace('-', '_')].ipv4.address }}"
  when: ansible_facts.default_ipv4.interface is defined
"""

RETURN = r"""
missing:
  description: The entries of O(needs) that the host lacks (a program not found, or pyroute2 not importable by the
    Python that runs the module), in the order of O(needs).
  returned: always
  type: list
  elements: str
  sample: [conntrack]
ansible_facts:
  description: The facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    interfaces:
      description: The name of every interface, and of every address label other than its interface's name,
        with C(:) made C(_).
      returned: always
      type: list
      elements: str
      sample: [lo, eth0, veth-a]
    default_ipv4:
      description: The interface, source address and gateway of the default IPv4 route; C({}) without one.
      returned: always
      type: dict
      contains:
        interface:
          description: The interface of the route.
          type: str
          sample: eth0
        address:
          description: The source address of the route (absent when the host has no address to give it).
          type: str
          sample: 10.211.55.122
        gateway:
          description: The gateway of the route (absent for a route straight through the interface).
          type: str
          sample: 10.211.55.1
      sample: {interface: eth0, address: 10.211.55.122, gateway: 10.211.55.1}
    "<interface>":
      description:
        - One per entry of C(interfaces), under its name with C(-) and C(:) made C(_) (C(veth_a) for C(veth-a)).
        - An address label has only C(ipv4) or C(ipv4_secondaries).
      returned: always
      type: dict
      contains:
        device:
          description: The name of the interface.
          type: str
          sample: veth-a
        active:
          description: Whether the interface's operational state is other than C(down).
          type: bool
          sample: true
        ipv4:
          description:
            - The first primary IPv4 address of the interface, with C(broadcast) (V("") when it has none),
              C(netmask), C(network) and C(prefix) (a string, as M(ansible.builtin.setup) has it).
            - Absent when the interface has no IPv4 address.
          type: dict
          sample: {address: 10.211.55.122, broadcast: 10.211.55.255, netmask: 255.255.255.0, network: 10.211.55.0,
                   prefix: "24"}
        ipv4_secondaries:
          description:
            - Its further IPv4 addresses, each as C(ipv4). First its other primary addresses, then the kernel's
              secondary ones (those in the subnet of another address).
            - Absent when the interface has no further IPv4 address.
          type: list
          elements: dict
          sample: [{address: 10.211.55.200, broadcast: 10.211.55.255, netmask: 255.255.255.0, network: 10.211.55.0,
                    prefix: "24"}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netns.expose.plugins.module_utils._network_facts import read
from ansible_collections.netns.expose.plugins.module_utils._packages import NEEDS, Host


def main():
    module = AnsibleModule(
        argument_spec=dict(needs=dict(type="list", elements="str", choices=list(NEEDS), default=[])),
        supports_check_mode=True,
    )
    module.exit_json(changed=False, missing=Host(module).missing(module.params["needs"]), ansible_facts=read(module))


if __name__ == "__main__":
    main()
