#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: netns_veth
short_description: Join a network namespace to its host with a veth pair
version_added: 0.1.0
description:
  - Creates a named network namespace (as C(ip netns add) does) and a veth pair between it and the host,
    gives each end an IPv4 address, brings both ends up and points the namespace's default route at the host end.
  - This is the first half of publishing a service that runs in a namespace; a DNAT rule on the host does the port mapping.
  - Talks netlink through pyroute2; it does not run C(ip).
  - Converges any partial state to the declared one and changes only what differs. Cases it repairs include
    a namespace without the pair, a pair whose namespace end is still on the host, a missing or wrong address
    (other IPv4 addresses on either end are removed), a link that is down, a default route that is missing or
    points elsewhere, and an MTU that differs.
  - Refuses, before changing anything, names that are already used by something else, such as a physical
    interface called like O(host_ifname) or a file in C(/run/netns) that is not a namespace.
author:
  - netns.expose maintainers (@netns-expose)
extends_documentation_fragment:
  - netns.expose.attributes
  - netns.expose.attributes.platform
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: linux
requirements:
  - pyroute2 >= 0.7.2 on the managed host (0.7.x and 0.9.x are tested)
options:
  netns:
    description:
      - Name of the network namespace, a plain file name under C(/run/netns).
    type: str
    required: true
  ns_ifname:
    description:
      - Name of the veth end inside O(netns). At most 15 characters, without V(/), V(:) or whitespace.
    type: str
    required: true
  host_ifname:
    description:
      - Name of the veth end in the host namespace. Same rules as O(ns_ifname), and it must differ from it.
    type: str
    required: true
  ns_address:
    description:
      - IPv4 address with prefix length (CIDR) of the end inside the namespace, for example V(10.244.1.2/24).
      - Required when O(state=present).
    type: str
  host_address:
    description:
      - IPv4 address with prefix length of the host end, in the same subnet as O(ns_address) and different from it.
      - Required when O(state=present).
    type: str
  default_route:
    description:
      - Make the namespace's IPv4 default route go via the host end's address.
      - When V(false), the namespace's routes are left alone.
    type: bool
    default: true
  mtu:
    description:
      - MTU of both ends. When unset, a new pair gets the kernel default (1500) and an existing one keeps its MTU.
    type: int
  state:
    description:
      - V(present) makes the namespace and pair exist as declared.
      - V(absent) deletes the pair, and the namespace too if this module created it and nothing else is left in it.
        A namespace the module did not create (or that still holds other interfaces) is kept.
    type: str
    choices: [present, absent]
    default: present
notes:
  - The module marks a namespace it creates by setting the alias of its C(lo) interface to V(netns.expose);
    O(state=absent) deletes only namespaces that carry this mark.
  - Only IPv4 addresses are managed. IPv6 addresses (such as link-local ones) are left alone.
  - Processes still running in the namespace keep it alive after O(state=absent) removes its name.
seealso:
  - name: ip-netns(8)
    description: The namespace convention this module follows.
    link: https://man7.org/linux/man-pages/man8/ip-netns.8.html
"""

EXAMPLES = r"""
- name: Put ns1 behind veth1b, as in the hand-made recipe
  netns.expose.netns_veth:
    netns: ns1
    ns_ifname: veth1a
    host_ifname: veth1b
    ns_address: 10.244.1.2/24
    host_address: 10.244.1.3/24

- name: Same, with a smaller MTU and no default route in the namespace
  netns.expose.netns_veth:
    netns: ns2
    ns_ifname: veth2a
    host_ifname: veth2b
    ns_address: 10.244.2.2/24
    host_address: 10.244.2.3/24
    mtu: 1400
    default_route: false

- name: Remove the pair, and the namespace if this module made it
  netns.expose.netns_veth:
    netns: ns1
    ns_ifname: veth1a
    host_ifname: veth1b
    state: absent
"""

RETURN = r"""
actions:
  description: The changes made, or that would be made in check mode, in order. Empty when nothing differs.
  returned: always
  type: list
  elements: str
  sample:
    - create netns ns1
    - create veth pair veth1b <-> veth1a (in netns ns1)
    - add address 10.244.1.3/24 to veth1b
    - set veth1b up
    - add address 10.244.1.2/24 to veth1a in netns ns1
    - set veth1a up in netns ns1
    - set default route via 10.244.1.3 in netns ns1
interfaces:
  description:
    - The two ends as they are after the run (in check mode, as the run would leave them; C(index) and C(mac)
      are then null for links that do not exist yet). An end that does not exist is null.
  returned: always
  type: dict
  contains:
    host_end:
      description: The end in the host namespace.
      type: dict
      returned: always
      sample:
        name: veth1b
        netns: null
        index: 7
        mac: 6e:1f:3a:00:11:22
        mtu: 1500
        addresses: [10.244.1.3/24]
        state: up
        operstate: up
    ns_end:
      description: The end in the namespace; same keys as RV(interfaces.host_end).
      type: dict
      returned: always
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.netns.expose.plugins.module_utils._netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    Netlink,
)
from ansible_collections.netns.expose.plugins.module_utils._netns_veth import (
    VethSpec,
    build_plan,
    classify_pair,
    describe,
    interfaces_report,
    read_state,
)
from ansible_collections.netns.expose.plugins.module_utils._plan import PlanApplyError
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput


def main():
    module = AnsibleModule(
        argument_spec=dict(
            netns=dict(type="str", required=True),
            ns_ifname=dict(type="str", required=True),
            host_ifname=dict(type="str", required=True),
            ns_address=dict(type="str"),
            host_address=dict(type="str"),
            default_route=dict(type="bool", default=True),
            mtu=dict(type="int"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        required_if=[("state", "present", ("ns_address", "host_address"))],
        supports_check_mode=True,
    )
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)

    with Netlink() as netlink:
        try:
            spec = VethSpec.from_params(module.params)
            observed = read_state(netlink, spec)
            plan = build_plan(netlink, spec, observed)
        except InvalidInput as exc:
            module.fail_json(msg=str(exc))

        if module.check_mode:
            view, final = plan.after, observed
        else:
            try:
                plan.apply()
            except PlanApplyError as exc:
                module.fail_json(msg=str(exc), actions=exc.done, failed_action=exc.failed_step)
            final = read_state(netlink, spec)
            view = describe(spec, final, classify_pair(spec, final))

    for warning in plan.warnings:
        module.warn(warning)
    result = dict(changed=plan.changed, actions=plan.actions, interfaces=interfaces_report(view, final))
    if module._diff:
        result["diff"] = plan.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
