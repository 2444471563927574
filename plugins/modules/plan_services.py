#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: plan_services
short_description: Check the expose role's services against a host and say what publishing them would change
version_added: 0.5.0
description:
  - The first step of the role C(netns.expose.expose) on each host, in one call. It reads the host's interfaces
    and addresses (as M(netns.expose.network_facts), whose facts it sets), checks O(services) against them and
    batches them into the arguments of one M(netns.expose.netns_veth) and one M(netns.expose.dnat_rule) call
    (RV(plan), as the filter P(netns.expose.services_plan#filter) does, with the same checks and messages).
  - With O(compare), it then plans those two calls in check mode, with the modules' own read of the host, and
    returns what each would change (RV(pending)). The role skips a call that would change nothing, so a run that
    finds a host as declared makes this one module call there; a host changed behind the role's back (a firewall
    reload that dropped the mappings, a pair deleted by hand) shows its changes here and gets the calls.
  - Its messages name the role's variables (C(expose_services[1] (db).ports[0].host_port), C(expose_state)), since
    its options are theirs.
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
      - The module only reads, so it does the same in check mode.
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: linux
requirements:
  - The C(ip) program of iproute2 with JSON output (C(-j)), where O(state=present).
  - For RV(pending), what the two modules need (M(netns.expose.prerequisites)); where it is missing, RV(pending)
    says that it cannot tell.
options:
  services:
    description:
      - The services, as the role's C(expose_services); the fields of each are those of the role's entry point
        C(service) (C(ansible-doc -t role netns.expose.expose)).
    type: raw
    required: true
  state:
    description:
      - The role's C(expose_state). V(present) resolves each service's interface and host address on the host and
        checks everything; V(absent) only needs what names the pairs and mappings to remove (no facts are read).
    type: str
    default: present
  in_interface:
    description: The role's C(expose_in_interface), the interface the mappings are restricted to; empty is any.
    type: str
  host_ip:
    description:
      - The role's C(expose_host_ip), the default host address of the mappings.
      - Empty takes the primary IPv4 address of the service's interface, or of the interface of the default IPv4 route.
    type: str
  local:
    description: The role's C(expose_local_clients), whether the mappings also take the host's own connections.
    type: bool
    default: true
  variables:
    description:
      - The names of the variables that start with C(expose_) (C(query('ansible.builtin.varnames', '^expose_'))).
      - Those the role does not know get a warning that names the closest known one.
    type: list
    elements: str
    default: []
  needs:
    description: As O(netns.expose.network_facts#module:needs), the tools whose absence RV(missing) reports.
    type: list
    elements: str
    choices: [pyroute2, iptables, conntrack, nftables]
    default: []
  compare:
    description: Plan the role's two module calls in check mode and return what each would change (RV(pending)).
    type: bool
    default: true
  persistent:
    description: The role's C(expose_persistent), as the two calls get it.
    type: bool
    default: true
  exclusive:
    description: The role's C(expose_exclusive), as the M(netns.expose.dnat_rule) call gets it.
    type: bool
    default: true
  backend:
    description: The role's C(expose_backend), as the M(netns.expose.dnat_rule) call gets it.
    type: str
    choices: [auto, iptables, nftables]
    default: auto
notes:
  - The calls RV(pending) plans are those of the role's C(apply) entry point; another call with other options
    may change what this one does not foresee.
seealso:
  - module: netns.expose.network_facts
  - module: netns.expose.netns_veth
  - module: netns.expose.dnat_rule
"""

EXAMPLES = r"""
- name: Check the services and read what publishing them would change
  netns.expose.plan_services:
    services:
      - name: http-web
        netns: ns1
        ns_ifname: veth1a
        host_ifname: veth1b
        ns_address: 10.244.1.2/24
        host_address: 10.244.1.3/24
        ports:
          - {protocol: tcp, host_port: 8090, ns_port: 9090}
    in_interface: eth0
  register: read

- name: Create the pairs only where they are not as declared
  netns.expose.netns_veth:
    pairs: "{{ read.plan.pairs }}"
  when: read.pending.pairs != []
"""

RETURN = r"""
plan:
  description: The services batched into module arguments, as the filter P(netns.expose.services_plan#filter) returns
    them (the role sets it as C(expose_plan)).
  returned: success
  type: dict
  contains:
    pairs:
      description: One entry per namespace, the options of a M(netns.expose.netns_veth) pair.
      type: list
      elements: dict
    mappings:
      description: One entry per port, the options of a M(netns.expose.dnat_rule) mapping.
      type: list
      elements: dict
    targets:
      description: One entry per port, a check of M(netns.expose.probe), with C(mapping) and C(netns).
      type: list
      elements: dict
    demo:
      description: One entry per service with C(demo=true), its netns and its tcp and udp ports in the namespace.
      type: list
      elements: dict
    hairpin_sources:
      description: The services' namespace subnets.
      type: list
      elements: str
    guarded_networks:
      description: The namespace subnets of the services that are not C(routed), reached only through the mappings.
      type: list
      elements: str
    routed_networks:
      description: The namespace subnets of the services that are C(routed) on purpose.
      type: list
      elements: str
  sample:
    pairs: [{netns: ns1, ns_ifname: veth1a, host_ifname: veth1b, ns_address: 10.244.1.2/24, host_address: 10.244.1.3/24}]
    mappings: [{name: http-web-tcp-8090, protocol: tcp, port: 8090, to_address: 10.244.1.2, to_port: 9090,
                destination: 10.211.55.122, in_interface: eth0, local: true}]
    targets: [{target: http-web, protocol: tcp, address: 10.211.55.122, port: 8090, mapping: http-web-tcp-8090, netns: ns1}]
    demo: []
    hairpin_sources: [10.244.1.0/24]
    guarded_networks: [10.244.1.0/24]
    routed_networks: []
pending:
  description:
    - What the role's two calls would change, as the actions the modules would report; V([]) where a call would
      change nothing or is not made, null where this module could not tell (O(compare=false), an entry of O(needs)
      missing, since what installing it changes cannot be foreseen, a tool the module needs missing, or the
      module's read refused something, which the call itself then reports).
  returned: success
  type: dict
  contains:
    pairs:
      description: The actions of the M(netns.expose.netns_veth) call.
      type: list
      elements: str
    mappings:
      description: The actions of the M(netns.expose.dnat_rule) call.
      type: list
      elements: str
  sample:
    pairs: []
    mappings: ["add http-web-tcp-8090 (tcp 10.211.55.122:8090 -> 10.244.1.2:9090)"]
missing:
  description: The entries of O(needs) that the host lacks, in the order of O(needs).
  returned: success
  type: list
  elements: str
  sample: [conntrack]
ansible_facts:
  description: The network facts of M(netns.expose.network_facts), read where O(state=present).
  returned: when O(state=present)
  type: dict
  sample: {interfaces: [lo, eth0], default_ipv4: {interface: eth0, address: 10.211.55.122}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netns.expose.plugins.module_utils._network_facts import read
from ansible_collections.netns.expose.plugins.module_utils._packages import NEEDS, Host
from ansible_collections.netns.expose.plugins.module_utils._role_calls import pending
from ansible_collections.netns.expose.plugins.module_utils._services import services_plan, unknown_variable_warnings
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput


def main():
    module = AnsibleModule(
        argument_spec=dict(
            services=dict(type="raw", required=True),
            state=dict(type="str", default="present"),
            in_interface=dict(type="str"),
            host_ip=dict(type="str"),
            local=dict(type="bool", default=True),
            variables=dict(type="list", elements="str", default=[]),
            needs=dict(type="list", elements="str", choices=list(NEEDS), default=[]),
            compare=dict(type="bool", default=True),
            persistent=dict(type="bool", default=True),
            exclusive=dict(type="bool", default=True),
            backend=dict(type="str", choices=["auto", "iptables", "nftables"], default="auto"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    for warning in unknown_variable_warnings(params["variables"]):
        module.warn(warning)
    result = {"changed": False}
    if params["state"] == "present":
        result["ansible_facts"] = read(module)
    try:
        plan = services_plan(params["services"], state=params["state"], in_interface=params["in_interface"],
                             host_ip=params["host_ip"], facts=result.get("ansible_facts"), local=params["local"])
    except InvalidInput as exc:
        module.fail_json(msg=str(exc))
    result.update(plan=plan, missing=Host(module).missing(params["needs"]), pending={"pairs": None, "mappings": None})
    # What installing a missing tool changes (the backend auto picks, say) cannot be foreseen.
    if params["compare"] and not result["missing"]:
        result["pending"], warnings = pending(module, plan, params["state"], params["persistent"],
                                              params["exclusive"], params["backend"])
        for warning in warnings:
            module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
