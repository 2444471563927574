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
  - Takes one pair as top-level options, or a list of them in O(pairs), converged in one call with one plan;
    C(changed), RV(actions), the diff and check mode cover every pair, and nothing changes unless every entry
    is valid and every pair can be made as declared.
author:
  - netns.expose maintainers (@netns-expose)
extends_documentation_fragment:
  - netns.expose.attributes
  - netns.expose.attributes.platform
  - netns.expose.lock
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: linux
requirements:
  - pyroute2 >= 0.7.2 on the managed host (0.7.x and 0.9.x are tested); M(netns.expose.prerequisites) installs it
options:
  netns:
    description:
      - Name of the network namespace of the single pair, a plain file name under C(/run/netns).
      - Required unless O(pairs) is given; O(pairs) and the single pair's options are mutually exclusive.
    type: str
  ns_ifname:
    description:
      - Name of the veth end inside O(netns). At most 15 characters, without V(/), V(:) or whitespace.
      - Required with O(netns).
    type: str
  host_ifname:
    description:
      - Name of the veth end in the host namespace. Same rules as O(ns_ifname), and it must differ from it.
      - Required with O(netns).
    type: str
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
  pairs:
    description:
      - A list of pairs converged in one call. Each entry takes the keys of the single pair's options
        (O(netns), O(ns_ifname), O(host_ifname), O(ns_address), O(host_address), O(default_route), O(mtu)),
        with the same rules; O(state) applies to every entry.
      - A namespace holds one pair (its default route goes via that pair). An entry may repeat an earlier entry
        exactly, as services that share a namespace do; the pair is then made once, and RV(pairs) has a result
        for each entry.
      - Two entries with the same O(pairs[].netns) that differ in any option are refused before anything changes,
        as are two pairs with the same O(pairs[].host_ifname) and two pairs whose subnets overlap. Messages name
        the entry and its option, as in C(pairs[3].ns_address).
      - The actions of every pair are listed pair by pair, in the order of the entries; each names the pair's
        namespace or its host end. The diff holds each pair's before and after under its namespace's name.
      - Mutually exclusive with the single pair's options. An empty list changes nothing.
    type: list
    elements: dict
    suboptions:
      netns:
        description: As O(netns). Required.
        type: str
      ns_ifname:
        description: As O(ns_ifname). Required.
        type: str
      host_ifname:
        description: As O(host_ifname). Required.
        type: str
      ns_address:
        description: As O(ns_address). Required when O(state=present).
        type: str
      host_address:
        description: As O(host_address). Required when O(state=present).
        type: str
      default_route:
        description: As O(default_route).
        type: bool
        default: true
      mtu:
        description: As O(mtu).
        type: int
  state:
    description:
      - V(present) makes the namespace and pair exist as declared.
      - V(absent) deletes the pair, and the namespace too if this module created it and nothing else is left in it.
        A namespace the module did not create (or that still holds other interfaces) is kept.
      - With O(pairs), applies to every entry; with V(absent) only the names of each entry are needed.
    type: str
    choices: [present, absent]
    default: present
  persistent:
    description:
      - Also write what makes each listed namespace and its pair again at boot, with no Ansible run, where systemd
        is the service manager. Per namespace, two C(ip -batch) files in C(/etc/netns-expose/netns/)
        (C(<netns>.host), run on the host, and C(<netns>.ns), run in the namespace), and the instance
        C(netns-expose-netns@<netns>.service) of the template unit C(/etc/systemd/system/netns-expose-netns@.service),
        enabled for C(multi-user.target) and ordered before C(network-pre.target). At boot the unit makes the
        namespace only when it does not exist yet.
      - The files are part of the run's plan, so check mode and diff show them, and a file changed or deleted by hand
        is put back by the next run.
      - V(false), and O(state=absent), remove the files of the listed namespaces (the template unit goes with the
        last namespace), so that they do not come back after the next reboot.
      - Where systemd does not run (C(/run/systemd/system) is missing) nothing is written, with a warning.
    type: bool
    default: true
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

- name: Three services, three namespaces, one call
  netns.expose.netns_veth:
    pairs:
      - {netns: web, ns_ifname: web0, host_ifname: veth-web, ns_address: 10.244.1.2/24, host_address: 10.244.1.3/24}
      - {netns: dns, ns_ifname: dns0, host_ifname: veth-dns, ns_address: 10.244.2.2/24, host_address: 10.244.2.3/24}
      - {netns: db, ns_ifname: db0, host_ifname: veth-db, ns_address: 10.244.3.2/24, host_address: 10.244.3.3/24,
         default_route: false, mtu: 1400}

- name: Remove them, and the namespaces this module made, in one call
  netns.expose.netns_veth:
    pairs:
      - {netns: web, ns_ifname: web0, host_ifname: veth-web}
      - {netns: dns, ns_ifname: dns0, host_ifname: veth-dns}
      - {netns: db, ns_ifname: db0, host_ifname: veth-db}
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
  returned: when O(pairs) is not given
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
pairs:
  description:
    - With O(pairs), the RV(interfaces) of each entry, in the order of the entries (an entry that repeats
      another gets the same result).
  returned: when O(pairs) is given
  type: list
  elements: dict
  contains:
    host_end:
      description: The end in the host namespace, as RV(interfaces.host_end).
      type: dict
      returned: always
    ns_end:
      description: The end in the namespace, as RV(interfaces.host_end).
      type: dict
      returned: always
  sample:
    - host_end: {name: veth-web, netns: null, index: 7, mac: "6e:1f:3a:00:11:22", mtu: 1500,
                 addresses: [10.244.1.3/24], state: up, operstate: up}
      ns_end: {name: web0, netns: web, index: 2, mac: "6e:1f:3a:00:11:23", mtu: 1500,
               addresses: [10.244.1.2/24], state: up, operstate: up}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.netns.expose.plugins.module_utils._netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    Netlink,
)
from ansible_collections.netns.expose.plugins.module_utils._lock import run_locked
from ansible_collections.netns.expose.plugins.module_utils._netns_veth import ARGUMENT_RULES, ARGUMENT_SPEC, VethRun
from ansible_collections.netns.expose.plugins.module_utils._persist import systemd_of
from ansible_collections.netns.expose.plugins.module_utils._packages import install_hint
from ansible_collections.netns.expose.plugins.module_utils._plan import PlanApplyError
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput


def converge(module):
    """Read, plan and (unless in check mode) apply: (run, its outputs); fails the module on a refusal or an error."""
    with Netlink() as netlink:
        try:
            run = VethRun(netlink, module.params, systemd=systemd_of(module))
        except InvalidInput as exc:
            module.fail_json(msg=str(exc))
        if not module.check_mode:
            try:
                run.plan.apply()
            except PlanApplyError as exc:
                module.fail_json(msg=str(exc), actions=exc.done, failed_action=exc.failed_step)
        return run, run.outputs(applied=not module.check_mode)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, **ARGUMENT_RULES)
    if not HAS_PYROUTE2:
        module.fail_json(msg=f"{missing_required_lib('pyroute2')}. To fix it, {install_hint('pyroute2')}.",
                         exception=PYROUTE2_IMPORT_ERROR)

    run, outputs = run_locked(module, lambda: converge(module))

    for warning in run.plan.warnings:
        module.warn(warning)
    result = dict(changed=run.plan.changed, actions=run.plan.actions, **outputs)
    if module._diff:
        result["diff"] = run.plan.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
