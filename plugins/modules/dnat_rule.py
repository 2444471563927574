#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: dnat_rule
short_description: Publish a port of a namespaced service on the host with DNAT
version_added: 0.1.0
description:
  - Maps a host port (or ICMP) to an address and port behind the host, usually a service in a network namespace
    joined to the host by M(netns.expose.netns_veth), as
    C(iptables -t nat -A PREROUTING -p tcp --dport 8090 -i eth0 -j DNAT --to 10.244.1.2:9090) does,
    and makes the host forward the mapped traffic.
  - Takes one mapping as top-level options, or a list of them in O(rules), applied as one batch.
  - B(Owned chains.) The rules live in chains of the collection's own. In the C(nat) table, C(NETNS-EXPOSE) is
    jumped to from C(PREROUTING), C(NETNS-EXPOSE-LOCAL) from C(OUTPUT) when a mapping has O(local=true), and
    C(NETNS-EXPOSE-POST) from the top of C(POSTROUTING) with O(hairpin). The DNAT rules are in chains per protocol
    and range of 64 host ports under the first two, such as C(NETNS-EXPOSE-tcp-8064) for tcp ports 8064 to 8127
    (and C(NETNS-EXPOSE-icmp)), each jumped to by one rule that matches its range.
    In the C(filter) table, C(NETNS-EXPOSE-FWD) is jumped to from the top of C(FORWARD).
    Each rule of a mapping carries the comment C(netns.expose:<name>) naming it; the jumps and the rules the
    mappings share carry C(netns.expose). No other rule or chain is ever changed.
  - B(Atomic.) The module reads the host with one C(iptables-save) and applies all changes of a run in one
    C(iptables-restore --noflush) transaction, waiting for the xtables lock. iptables-restore commits table by table,
    so if a later table fails, the module puts the owned rules of the earlier ones back as they were and fails.
  - B(Drift is repaired.) A deleted rule or jump, a rule edited by hand, or C(ip_forward) reset to 0 is put back
    by the next run, which changes exactly what is missing or wrong; rules in the owned chains that belong to no
    mapping are removed.
  - B(Only this host's traffic.) A mapping without O(destination) matches only packets addressed to a local address
    of the host (C(-m addrtype --dst-type LOCAL)), so a host that routes for other machines does not take their traffic.
  - B(Forwarding.) With O(accept_forward) the rules that DNAT a flow in C(PREROUTING) first set one bit of its
    conntrack mark (O(connmark)), and one rule in C(NETNS-EXPOSE-FWD) accepts the flows that carry it and were DNAT-ed,
    which are exactly the mapped flows, both directions, and the ICMP errors about them (which are RELATED to the flow and
    have its conntrack entry), so path MTU discovery works. Hosts whose C(FORWARD) policy is C(DROP), as with
    Docker or hardened images, need this. Forwarding is never accepted wholesale.
  - B(Cost per packet.) A forwarded packet meets that one rule, however many mappings there are. Only the first
    packet of a flow meets the C(nat) rules, one jump per mapped range of its protocol and the mappings of its range.
  - B(No stale flows.) NAT is decided when a conntrack entry is made, so a flow that started before a mapping was
    added, changed or removed would keep its old translation (or none) until its entry expires. With
    O(flush_conntrack) the module deletes the conntrack entries of the protocol, host port (and O(destination))
    of each mapping it adds, changes or removes, and of no other, and reports them in RV(conntrack). It reads the
    conntrack table once over netlink, matches every entry against all those mappings, and deletes only the
    matching entries, whatever the number of mappings; where netlink cannot be used, the C(conntrack) tool lists
    the table once and deletes the entries of each mapping that has some.
  - B(No localnet hole.) O(local) maps the host's own addresses in C(OUTPUT), never 127.0.0.0/8, and
    C(route_localnet) is never turned on, so LAN neighbours cannot reach services bound to 127.0.0.1 (CVE-2020-8558).
    A loopback O(destination) or O(to_address) is refused, and a mapping without O(destination) does not match
    packets addressed to 127.0.0.0/8, since DNAT in C(PREROUTING) comes before the routing decision that drops them.
  - B(Hairpin.) With O(hairpin), a client in a namespace of the host that reaches a mapping through the host's
    address gets an answer, through a C(MASQUERADE) in C(NETNS-EXPOSE-POST) (jumped to from the top of C(POSTROUTING)) for
    exactly the flow from O(to_address) to itself on O(to_port), and, for mappings with O(in_interface), the same
    DNAT for traffic from O(hairpin_sources).
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
  - iptables (the nft or the legacy variant) on the managed host; M(netns.expose.prerequisites) installs it
options:
  name:
    description:
      - Name of a single mapping; unique on the host, it identifies the mapping there (in the rule comments).
      - Up to 128 letters, digits, V(.), V(_) and V(-), not starting with V(-).
      - Mutually exclusive with O(rules).
    type: str
  protocol:
    description: Protocol of the single mapping.
    type: str
    choices: [tcp, udp, icmp]
    default: tcp
  port:
    description: Host port of the single mapping (tcp and udp only), 1 to 65535.
    type: int
  to_address:
    description: IPv4 address the single mapping sends the traffic to, such as the namespace end of a veth pair.
    type: str
  to_port:
    description: Port on O(to_address) (tcp and udp only). Defaults to O(port).
    type: int
  destination:
    description:
      - Host address to match, like C(-d 10.211.55.122). Without it, any local address of the host matches.
    type: str
  in_interface:
    description: Interface the traffic must come in on, like C(-i eth0).
    type: str
  local:
    description:
      - Also map connections that start on the host itself (the C(nat OUTPUT) chain), so that
        C(curl <host ip>:<port>) works on the host too.
      - Only the host's own addresses are mapped, never 127.0.0.0/8, and C(route_localnet) is never turned on
        (see CVE-2020-8558).
      - With O(rules), the default for entries that do not set it.
    type: bool
    default: false
  rules:
    description:
      - A list of mappings applied as one batch. Each entry takes the keys of the single mapping options
        (O(name), O(protocol), O(port), O(to_address), O(to_port), O(destination), O(in_interface), O(local)).
      - Names must be unique in the list, and so must the protocol, port, destination and in_interface of each entry.
      - Mutually exclusive with O(name).
    type: list
    elements: dict
    suboptions:
      name:
        description: As O(name). Required.
        type: str
      protocol:
        description: As O(protocol).
        type: str
        choices: [tcp, udp, icmp]
      port:
        description: As O(port).
        type: int
      to_address:
        description: As O(to_address).
        type: str
      to_port:
        description: As O(to_port).
        type: int
      destination:
        description: As O(destination).
        type: str
      in_interface:
        description: As O(in_interface).
        type: str
      local:
        description: As O(local); unset takes the module's O(local).
        type: bool
  exclusive:
    description:
      - Remove every mapping the collection owns on the host that is not named here, so that the host converges
        to exactly the declared set. With O(rules=[]) and O(state=present) this removes every mapping.
    type: bool
    default: false
  state:
    description:
      - V(present) makes the mappings exist as declared.
      - V(absent) removes the named mappings (only O(name) is needed, or only C(name) in each O(rules) entry).
        When the last mapping goes, the owned chains and jumps go too, and C(ip_forward) is set back to 0
        if the collection had turned it on.
    type: str
    choices: [present, absent]
    default: present
  ip_forward:
    description:
      - Make C(net.ipv4.ip_forward) 1 while a mapping is present (it is what lets the host route the mapped traffic).
        The module remembers that it turned it on, and sets it back to 0 when the last mapping is removed.
    type: bool
    default: true
  accept_forward:
    description:
      - Accept in the C(filter FORWARD) chain exactly the flows each mapping DNATs, for hosts whose C(FORWARD)
        policy is C(DROP). The mappings set the bit O(connmark) on their flows, and one rule accepts them all.
      - With V(false) the mappings of the run do not mark their flows; mappings that do (of other runs) keep the rule.
    type: bool
    default: true
  hairpin:
    description:
      - Let clients in the host's own namespaces reach the mappings through the host's address, including a client
        in the target's own namespace (which needs one C(MASQUERADE) rule per mapping, matched only by the first
        packet of such a flow).
    type: bool
    default: true
  hairpin_sources:
    description:
      - IPv4 networks (CIDR) of the host's namespaces, such as the subnets of the veth pairs. Mappings with
        O(in_interface) also DNAT traffic from these networks, whatever interface it comes in on. Only with O(hairpin).
    type: list
    elements: str
    default: []
  flush_conntrack:
    description:
      - Delete the conntrack entries of each mapping that is added, changed or removed (its protocol, host port and
        O(destination)), so that flows that started before the change meet the new rules. One read of the conntrack
        table over netlink (ctnetlink, from Python's standard library), or the C(conntrack) tool where netlink cannot
        be used; with neither, the module warns and deletes nothing.
      - Without O(destination) the entries of the port to any address are deleted, including flows the host routes
        for others; those are picked up again by conntrack on their next packet.
    type: bool
    default: true
  connmark:
    description:
      - The bit of the conntrack mark that the mappings set on the flows they DNAT, and that the one C(FORWARD) rule
        of O(accept_forward) tests. A number with exactly one bit set; the default is V(0x1000000) (bit 24).
      - The default is none of the marks of kube-proxy (V(0x4000), V(0x8000)), Tailscale (V(0xff0000)) or
        Cilium (V(0xf00)); Docker and firewalld set no conntrack mark. Choose another bit if a program on the
        host uses this one of the conntrack mark (for example with C(CONNMARK --save-mark) without a mask).
      - Changing it updates every mapping listed, and deletes their flows (O(flush_conntrack)).
    type: int
    default: 16777216
  persistent:
    description:
      - Also write what brings the owned rules and C(ip_forward) back at boot, and after a firewall reload that
        flushed them, with no Ansible run, where systemd is the service manager.
      - C(/etc/netns-expose/iptables.rules) holds only the collection's chains and the jumps to them (the input of
        C(iptables-restore --noflush)); the unit C(/etc/systemd/system/netns-expose-rules.service) loads it at boot,
        after the host's own firewall (C(nftables.service), C(netfilter-persistent.service), C(firewalld.service)) and
        before C(network-online.target), and again whenever C(nftables.service) (which runs C(flush ruleset), also
        wiping iptables-nft rules) or C(netfilter-persistent.service) restarts. The run starts the unit, so that this
        holds before the next boot too. C(/etc/sysctl.d/90-netns-expose.conf) turns C(net.ipv4.ip_forward) on at boot
        when the collection turned it on.
      - The files are part of the run's plan, so check mode and diff show them, and a file changed or deleted by hand
        is put back by the next run. They follow the owned rules, whichever run changes them.
      - V(false), and a run that leaves no owned rule, remove them (and stop the unit), so that after the next reboot
        nothing comes back.
      - Where systemd does not run (C(/run/systemd/system) is missing) nothing is written, with a warning.
    type: bool
    default: true
  iptables:
    description:
      - Which iptables variant to use. V(auto) uses the variant of the host's C(iptables) command, as the rest of
        the host does.
    type: str
    choices: [auto, nft, legacy]
    default: auto
notes:
  - The rules are not saved across reboots; run the module (or the role) at boot, as Docker recreates its rules.
seealso:
  - module: netns.expose.netns_veth
"""

EXAMPLES = r"""
- name: Publish port 9090 of the service in ns1 as port 8090 of the host, as in the recipe
  netns.expose.dnat_rule:
    name: http-web
    protocol: tcp
    port: 8090
    to_address: 10.244.1.2
    to_port: 9090
    destination: 10.211.55.122
    in_interface: eth0

- name: Answer pings to the host from ns1
  netns.expose.dnat_rule:
    name: http-web-icmp
    protocol: icmp
    to_address: 10.244.1.2
    in_interface: eth0

- name: Converge the host to exactly these mappings
  netns.expose.dnat_rule:
    exclusive: true
    rules:
      - {name: web, port: 8090, to_address: 10.244.1.2, to_port: 9090}
      - {name: dns, protocol: udp, port: 8053, to_address: 10.244.1.2, to_port: 53}

- name: Remove one mapping
  netns.expose.dnat_rule:
    name: http-web
    state: absent
"""

RETURN = r"""
actions:
  description: The changes made, or that would be made in check mode, in order. Empty when nothing differs.
  returned: always
  type: list
  elements: str
  sample:
    - add mapping http-web (tcp 8090 -> 10.244.1.2:9090)
    - update the netns.expose chains and the jumps to them
    - "commit the rule changes in one iptables-restore --noflush transaction (nft: filter +2 -0, nat +7 -0)"
    - >-
      delete the conntrack entries of tcp port 8090 to 10.211.55.122 in one pass over the conntrack table (netlink),
      so that flows older than the change meet the new rules
    - set net.ipv4.ip_forward = 1 (was 0)
mappings:
  description: Every mapping the collection owns on the host after the run (predicted in check mode), with its rules.
  returned: always
  type: dict
  sample:
    http-web:
      - >-
        -A NETNS-EXPOSE-POST -s 10.244.1.2/32 -d 10.244.1.2/32 -p tcp -m tcp --dport 9090
        -m comment --comment "netns.expose:http-web" -j MASQUERADE
      - >-
        -A NETNS-EXPOSE-tcp-8064 -d 10.211.55.122/32 -i eth0 -p tcp -m tcp --dport 8090
        -m comment --comment "netns.expose:http-web" -j CONNMARK --set-xmark 0x1000000/0x1000000
      - >-
        -A NETNS-EXPOSE-tcp-8064 -d 10.211.55.122/32 -i eth0 -p tcp -m tcp --dport 8090
        -m comment --comment "netns.expose:http-web" -j DNAT --to-destination 10.244.1.2:9090
conntrack:
  description:
    - The conntrack entries deleted, one entry per protocol, host port and destination of the mappings that changed
      (all deleted in one pass over the table).
    - C(deleted) is the number of entries, or null in check mode.
  returned: always
  type: list
  elements: dict
  sample:
    - {protocol: udp, port: 8053, destination: null, deleted: 1}
iptables:
  description: The iptables variant used.
  returned: always
  type: str
  sample: nft
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netns.expose.plugins.module_utils._conntrack import ConntrackTable
from ansible_collections.netns.expose.plugins.module_utils._dnat import (
    MAPPING_FIELDS,
    DnatSpec,
    RolledBack,
    build_plan,
    connmark_from_params,
    hairpin_sources_from_params,
    mappings_from_params,
    read_ip_forward,
)
from ansible_collections.netns.expose.plugins.module_utils._iptables import IptablesBackend, IptablesError
from ansible_collections.netns.expose.plugins.module_utils._persist import systemd_of
from ansible_collections.netns.expose.plugins.module_utils._plan import PlanApplyError
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

MAPPING_OPTIONS = dict(
    name=dict(type="str"),
    protocol=dict(type="str", choices=["tcp", "udp", "icmp"]),
    port=dict(type="int"),
    to_address=dict(type="str"),
    to_port=dict(type="int"),
    destination=dict(type="str"),
    in_interface=dict(type="str"),
    local=dict(type="bool"),
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            MAPPING_OPTIONS,
            protocol=dict(type="str", choices=["tcp", "udp", "icmp"], default="tcp"),
            local=dict(type="bool", default=False),
            rules=dict(type="list", elements="dict", options=MAPPING_OPTIONS),
            exclusive=dict(type="bool", default=False),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            ip_forward=dict(type="bool", default=True),
            accept_forward=dict(type="bool", default=True),
            hairpin=dict(type="bool", default=True),
            hairpin_sources=dict(type="list", elements="str", default=[]),
            flush_conntrack=dict(type="bool", default=True),
            connmark=dict(type="int", default=0x1000000),
            persistent=dict(type="bool", default=True),
            iptables=dict(type="str", choices=["auto", "nft", "legacy"], default="auto"),
        ),
        mutually_exclusive=[("name", "rules")],
        required_one_of=[("name", "rules")],
        supports_check_mode=True,
    )
    params = module.params
    try:
        spec = DnatSpec(
            mappings=mappings_from_params({key: params[key] for key in (*MAPPING_FIELDS, "rules", "state")}),
            state=params["state"],
            exclusive=params["exclusive"],
            ip_forward=params["ip_forward"],
            accept_forward=params["accept_forward"],
            hairpin=params["hairpin"],
            hairpin_sources=hairpin_sources_from_params(params["hairpin_sources"]),
            flush_conntrack=params["flush_conntrack"],
            connmark=connmark_from_params(params["connmark"]),
            persistent=params["persistent"],
        )
        backend = IptablesBackend(module, params["iptables"])
        plan = build_plan(backend, spec, backend.read(), read_ip_forward(), conntrack=ConntrackTable(module),
                          systemd=systemd_of(module))
    except (InvalidInput, IptablesError) as exc:
        module.fail_json(msg=str(exc))

    if not module.check_mode:
        try:
            plan.apply()
        except PlanApplyError as exc:
            rolled_back = isinstance(exc.__cause__, RolledBack)
            module.fail_json(msg=str(exc), actions=exc.done, failed_action=exc.failed_step, rolled_back=rolled_back)

    for warning in plan.warnings:
        module.warn(warning)
    result = dict(changed=plan.changed, actions=plan.actions, mappings=plan.after["mappings"], conntrack=plan.conntrack,
                  iptables=backend.variant)
    if module._diff:
        result["diff"] = plan.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
