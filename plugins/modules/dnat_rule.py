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
  - B(Two backends.) O(backend) picks where the mappings live, iptables (the owned chains below, with either iptables
    variant) or nftables (one owned table, see B(nftables backend) below). Both have the same mappings, with the same
    meaning, and a host moves from one to the other in one run. V(auto), the default, takes nftables when the host
    has C(nft) and iptables has no rules of the host's own, and iptables otherwise (see O(backend)).
  - B(Owned chains) (iptables backend). The rules live in chains of the collection's own. In the C(nat) table, C(NETNS-EXPOSE) is
    jumped to from C(PREROUTING), C(NETNS-EXPOSE-LOCAL) from C(OUTPUT) when a mapping has O(local=true), and
    C(NETNS-EXPOSE-POST) from the top of C(POSTROUTING) with O(hairpin). The DNAT rules are in chains per protocol
    and range of 64 host ports under the first two, such as C(NETNS-EXPOSE-tcp-8064) for tcp ports 8064 to 8127
    (and C(NETNS-EXPOSE-icmp)), each jumped to by one rule that matches its range.
    In the C(filter) table, C(NETNS-EXPOSE-FWD) is jumped to from the top of C(FORWARD). In the C(mangle) table,
    for the mappings with O(allowed_sources), C(NETNS-EXPOSE-SRC) from C(PREROUTING), C(NETNS-EXPOSE-SRC-LOCAL) from
    C(OUTPUT), and a chain per such mapping (see B(Source allow-lists)).
    Each rule of a mapping carries the comment C(netns.expose:<name>) naming it; the jumps and the rules the
    mappings share carry C(netns.expose). No other rule or chain is ever changed.
  - B(Atomic.) The iptables backend reads the host with one C(iptables-save) and applies all changes of a run in one
    C(iptables-restore --noflush) transaction, waiting for the xtables lock. iptables-restore commits table by table,
    so if a later table fails, the module puts the owned rules of the earlier ones back as they were and fails.
  - B(nftables backend.) The collection owns the table C(ip netns_expose) and nothing else in nftables. The module
    reads it with C(nft -j list table ip netns_expose) (JSON), and a run that changes anything replaces the whole
    table in one C(nft -f -) transaction (C(table ip netns_expose {}), C(delete table ip netns_expose), then the
    table as it should be), which cannot half-apply and leaves nothing stale. A mapping is elements of maps, not
    rules; the chains dispatch through maps keyed by what the mappings match, so the first packet of a flow meets a
    fixed number of lookups whatever the number of mappings. C(dnat_<protocol>_<kind>) maps the flow's key to the
    target (C(address . port), or the address for icmp), the kinds being C(dst) (C(ip daddr . tcp dport)),
    C(local) (no O(destination), so the port alone, behind C(fib daddr type local ip daddr != 127.0.0.0/8)),
    C(iif_dst) and C(iif_local) (O(in_interface), with C(iifname) first), C(src_dst) and C(src_local)
    (O(hairpin_sources), with C(ip saddr) first); for icmp the port's place holds C(meta l4proto). C(mark_<protocol>_<kind>) holds the keys of the
    mappings whose flows get the O(connmark) bit, set right before their DNAT; C(output_<protocol>_<dst|local>)
    maps the host's own connections (O(local)); C(hairpin) and C(hairpin_icmp) hold the flows from a target to
    itself, masqueraded in C(postrouting). The chains are C(prerouting) (nat, priority dstnat), C(prerouting_local),
    C(output) (nat, priority -100), C(output_local), C(postrouting) (nat, srcnat) and C(forward) (filter, a counter
    of the mapped forwarded flows; it accepts nothing that another table drops). When two mappings match one packet,
    the one with O(destination) comes first, then O(in_interface), then O(hairpin_sources). Every element of a
    mapping carries the comment C(netns.expose:<name>) and has a counter (RV(counters)); the empty set
    C(ip_forward_was_0) records that the collection turned C(ip_forward) on. C(nft list table ip netns_expose)
    shows it all.
  - B(Drift is repaired.) A deleted rule or jump, a rule edited by hand, or C(ip_forward) reset to 0 is put back
    by the next run, which changes exactly what is missing or wrong; rules in the owned chains that belong to no
    mapping are removed. With nftables, a deleted or added element, the table deleted, a chain, map or set changed,
    or a rule replaced (each rule carries a digest of its text as comment) makes the next run replace the table.
  - B(Only this host's traffic.) A mapping without O(destination) matches only packets addressed to a local address
    of the host (C(-m addrtype --dst-type LOCAL), or C(fib daddr type local) with nftables), so a host that routes
    for other machines does not take their traffic.
  - B(Forwarding.) With O(accept_forward) the rules that DNAT a flow in C(PREROUTING) first set one bit of its
    conntrack mark (O(connmark)), and one rule in C(NETNS-EXPOSE-FWD) accepts the flows that carry it and were DNAT-ed,
    which are exactly the mapped flows, both directions, and the ICMP errors about them (which are RELATED to the flow and
    have its conntrack entry), so path MTU discovery works. Hosts whose C(FORWARD) policy is C(DROP), as with
    Docker or hardened images, need this. Forwarding is never accepted wholesale.
  - B(nftables next to another firewall.) In nftables an accept in one table does not stop a drop in another base
    chain of the same hook. With the nftables backend, on a host whose iptables C(filter FORWARD) policy is
    C(DROP) (Docker; either variant), the module keeps in iptables the same owned accept as the iptables backend
    (the jump from C(FORWARD) to C(NETNS-EXPOSE-FWD) and its one rule), and removes it with the last mapping. A
    forward chain of an nftables table of the host's own that drops (policy drop, or a rule that drops or rejects
    everything, as C(/etc/nftables.conf) or firewalld have) is never changed; the run fails before changing
    anything, naming the table and chain, and the rule to add there (C(ct mark & 0x1000000 == 0x1000000 ct status
    dnat accept)), unless that chain accepts the mapped flows already or O(forward_drop_check=false).
  - B(Cost per packet.) A forwarded packet meets that one rule, however many mappings there are. Only the first
    packet of a flow meets the C(nat) rules; with iptables, one jump per mapped range of its protocol and the
    mappings of its range; with nftables, one map lookup per kind of mapping that exists (and one for the mark).
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
  - B(Source allow-lists.) A mapping with O(allowed_sources) lets in only the clients whose source address is in
    the list - from the LAN, from the host's namespaces by hairpin, and the host's own connections (O(local)). The
    first packet of a flow from any other source is dropped before the DNAT (no reset, no ICMP error) and counted.
    With nftables, a verdict map per kind of mapping (C(sources_<protocol>_<kind>), C(sources_output_<protocol>_<kind>)),
    keyed as the DNAT maps, jumps to the mapping's chain C(src.<mapping>), whose one rule
    C(ip saddr != @src.<mapping> counter drop) tests the interval set C(src.<mapping>) - two lookups for a new flow
    whatever the number of mappings and networks; RV(counters) reports the drops as C(denied). With iptables, in the
    C(mangle) table (the C(nat) table cannot drop), C(NETNS-EXPOSE-SRC) (from C(PREROUTING)) and
    C(NETNS-EXPOSE-SRC-LOCAL) (from C(OUTPUT)) send the new flows of each such mapping to its chain
    C(NETNS-EXPOSE-S-<digest of its name>), one C(RETURN) per network and a counted C(DROP); a new flow meets one
    rule per mapping with a list (and per hairpin source) and the networks of its own list, in order - what
    iptables costs without sets. Changing only the list changes those elements or rules in place; the established
    flows of the clients the new list still allows survive, and those of the sources it no longer allows are cut
    (their conntrack entries deleted, see RV(conntrack)), since a denial at the first packet would not stop them.
  - B(Nothing reachable that was not published.) The subnets of the namespaces in O(guarded_networks) are reached only
    through the mappings; a forwarded packet to an address in them passes only if its flow was DNAT-ed (a mapping's,
    from the LAN or by hairpin) or is a reply to a connection the namespace opened (C(ct direction reply), with the
    ICMP errors about it); anything else is dropped before it is forwarded, so a LAN host with a route to the subnet,
    or another namespace of the host, reaches no port of it, published or not. The host itself still reaches its
    namespaces directly (that is not forwarded). With iptables these are three rules per network in
    C(NETNS-EXPOSE-FWD), commented C(netns.expose/guarded); with nftables the interval set C(guarded) and three
    rules in C(forward). O(routed_networks) names the namespace subnets that are routed on purpose and so not guarded.
  - B(Not a router.) When the module is the one that turns C(ip_forward) on, the host forwards only what the collection
    owns - the flows of the mappings (DNAT-ed, both ways), the traffic of the namespaces in O(guarded_networks) and
    to and from O(routed_networks); the last rule of C(NETNS-EXPOSE-FWD) (comment C(netns.expose/forward-only-owned))
    or of the C(forward) chain drops everything else that is forwarded, as Docker's C(FORWARD) policy C(DROP) does
    when Docker turns forwarding on. Where forwarding was on before (a router, a Docker host, a Kubernetes node), that
    drop is never made, and other forwarding is left alone; the empty set C(ip_forward_was_0) (or the marker rule of
    C(NETNS-EXPOSE)) records which case the host was in, and removing the last mapping puts C(ip_forward) back.
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
  - nftables (C(nft)) for the nftables backend, iptables (the nft or the legacy variant) for the iptables backend,
    on the managed host; M(netns.expose.prerequisites) installs them
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
  allowed_sources:
    description:
      - The clients the mapping lets in, as IPv4 addresses or networks (CIDR), checked by the client's source
        address before the DNAT (see B(Source allow-lists) above). Overlapping and adjacent networks are merged.
      - Unset, every client. An empty list is refused, since it would let no client in (list V(0.0.0.0/0) to let
        every client in explicitly).
      - The host's own connections (O(local)) come from one of its addresses, which must be listed to let the host in.
    type: list
    elements: str
    version_added: 0.6.0
  rules:
    description:
      - A list of mappings applied as one batch. Each entry takes the keys of the single mapping options
        (O(name), O(protocol), O(port), O(to_address), O(to_port), O(destination), O(in_interface), O(local),
        O(allowed_sources)).
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
      allowed_sources:
        description: As O(allowed_sources), for this entry (the module's O(allowed_sources) is not a default for entries).
        type: list
        elements: str
        version_added: 0.6.0
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
  guarded_networks:
    description:
      - IPv4 networks (CIDR) of the host's namespaces that must be reached only through the mappings (see
        B(Nothing reachable that was not published) above), such as the subnets of the veth pairs. The role
        M(netns.expose.expose) passes the subnets of its services.
      - With O(state=present) the listed networks are guarded after the run; a listed network replaces the ones it
        overlaps, and the others stay as they are, unless O(exclusive=true), which leaves exactly these (and
        O(routed_networks)). With O(state=absent) the listed networks (of either list) are no longer guarded or routed.
      - A network must not overlap another one of this list or of O(routed_networks).
    type: list
    elements: str
    default: []
  routed_networks:
    description:
      - IPv4 networks (CIDR) of the host's namespaces that are routed on purpose (a LAN host with a route to them
        reaches every port of them), so they are not guarded. On a host whose C(ip_forward) the module turned on,
        their traffic is forwarded both ways. Listed as O(guarded_networks) is.
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
        holds before the next boot too.
      - With the nftables backend, C(/etc/netns-expose/nftables.nft) holds only the owned table (starting with
        C(table ip netns_expose {}) and C(delete table ip netns_expose), so that loading it twice is fine), and the
        same unit runs C(nft -f /etc/netns-expose/nftables.nft), with the same ordering, C(PartOf=nftables.service).
        Where the module keeps an accept in an iptables C(FORWARD) chain (see above), C(iptables-<variant>.rules) has
        it and the unit loads it too. Switching backends replaces the files. C(/etc/sysctl.d/90-netns-expose.conf) turns C(net.ipv4.ip_forward) on at boot
        when the collection turned it on.
      - The files are part of the run's plan, so check mode and diff show them, and a file changed or deleted by hand
        is put back by the next run. They follow the owned rules, whichever run changes them.
      - V(false), and a run that leaves no owned rule, remove them (and stop the unit), so that after the next reboot
        nothing comes back.
      - Where systemd does not run (C(/run/systemd/system) is missing) nothing is written, with a warning.
    type: bool
    default: true
  backend:
    description:
      - Where the mappings live. V(iptables) is the owned chains of the iptables backend (variant O(iptables)),
        V(nftables) the owned table C(ip netns_expose).
      - V(auto) takes V(nftables) when the host has C(nft) and no iptables rules of its own, that is, no rule or
        chain that is not the collection's in C(iptables-nft-save) (the tables iptables-nft made) nor in
        C(iptables-legacy-save) (read only when iptables-legacy has a table); built-in chains and their policies,
        and the collection's own chains, do not count. It takes V(iptables) when there are such rules (Docker,
        kube-proxy, a firewall written for iptables), so that they keep working as they did, or when C(nft) is
        missing. RV(backend) and RV(backend_reason) say what it took and why.
      - A run moves every mapping of the other backend to this one, and leaves no rule of the other (only, with
        nftables, the FORWARD accept described above, where the iptables FORWARD policy is DROP). A mapping that
        keeps its translation keeps its flows.
    type: str
    choices: [auto, iptables, nftables]
    default: auto
  forward_drop_check:
    description:
      - With the nftables backend, fail before changing anything when a forward chain of an nftables table of the
        host's own would drop the mapped flows (see above). V(false) proceeds anyway, for a firewall that accepts
        those flows in a way the check does not see (a jump to a chain of its own, say).
    type: bool
    default: true
  iptables:
    description:
      - Which iptables variant the iptables backend uses. V(auto) uses the variant of the host's C(iptables)
        command, as the rest of the host does.
      - With the nftables backend, the variants whose owned rules the run removes or whose FORWARD chain gets the
        accept; V(auto) takes both (iptables-legacy only when it has a table).
    type: str
    choices: [auto, nft, legacy]
    default: auto
notes:
  - Names longer than 115 characters do not fit the comment of an nftables element (128 characters with the
    C(netns.expose:) prefix); the nftables backend refuses them.
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
    guarded_networks: [10.244.1.0/24]  # ns1's other ports stay out of reach of LAN hosts that route to it

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

- name: The same mappings in the table ip netns_expose, on a host with nftables and no iptables
  netns.expose.dnat_rule:
    backend: nftables
    exclusive: true
    rules:
      - {name: web, port: 8090, to_address: 10.244.1.2, to_port: 9090, destination: 10.211.55.122}
  register: published

- name: How many flows each mapping has translated
  ansible.builtin.debug:
    var: published.counters
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
  description:
    - >-
      Every mapping the collection owns on the host after the run (predicted in check mode), with its rules
      (iptables) or its elements (nftables, such as C(dnat_tcp_dst { 10.211.55.122 . 8090 : 10.244.1.2 . 9090 })).
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
published:
  description:
    - Every mapping the collection owns on the host after the run (predicted in check mode), as entries of O(rules),
      and the O(hairpin_sources) they were set up with.
    - A later run with these, O(exclusive=true) and RV(backend) as O(backend) puts the mappings back as they are;
      playbooks/rollout.yml reads them before a batch to roll it back.
  returned: always
  type: dict
  contains:
    rules:
      description: The mappings, in the form of O(rules) (unset options left out).
      type: list
      elements: dict
      returned: always
    hairpin_sources:
      description: The hairpin sources of the mappings that have an O(rules[].in_interface).
      type: list
      elements: str
      returned: always
    guarded_networks:
      description: The O(guarded_networks) of the host after the run.
      type: list
      elements: str
      returned: always
    routed_networks:
      description: The O(routed_networks) of the host after the run.
      type: list
      elements: str
      returned: always
  sample:
    rules:
      - {name: http-web-tcp-8090, protocol: tcp, port: 8090, destination: 10.211.55.122, to_address: 10.244.1.2,
         to_port: 9090, local: true}
    hairpin_sources: []
    guarded_networks: [10.244.1.0/24]
    routed_networks: []
conntrack:
  description:
    - The conntrack entries deleted, one entry per protocol, host port and destination of the mappings that changed
      (all deleted in one pass over the table).
    - C(deleted) is the number of entries, or null in check mode.
    - C(kept_sources), when only a mapping's O(allowed_sources) changed, are the networks whose clients' flows were kept
      (the entries of other sources were deleted).
  returned: always
  type: list
  elements: dict
  sample:
    - {protocol: udp, port: 8053, destination: null, deleted: 1}
iptables:
  description:
    - The iptables variant used by the iptables backend.
    - With the nftables backend, the variant whose FORWARD chain has the owned accept (its policy is DROP), or null.
  returned: always
  type: str
  sample: nft
backend:
  description: The backend that has the mappings after the run.
  returned: always
  type: str
  sample: nftables
backend_reason:
  description: Why O(backend) took it (with V(auto), what it found on the host).
  returned: always
  type: str
  sample: nft is installed and iptables has no rules of the host's own
counters:
  description:
    - With the nftables backend, per mapping, the packets and bytes its elements have counted, as read before the
      run's change. NAT sees only the first packet of a flow, so C(packets) is the number of flows (connections,
      and the host's own with O(local)) the mapping has translated. Replacing the table carries the counters over.
    - C(denied), for a mapping with O(allowed_sources), is the number of packets from other sources it dropped.
  returned: when the backend is nftables
  type: dict
  sample:
    web: {packets: 12, bytes: 720, denied: 3}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netns.expose.plugins.module_utils._dnat import RolledBack
from ansible_collections.netns.expose.plugins.module_utils._lock import run_locked
from ansible_collections.netns.expose.plugins.module_utils._dnat_run import ARGUMENT_RULES, ARGUMENT_SPEC, plan_run
from ansible_collections.netns.expose.plugins.module_utils._iptables import IptablesError
from ansible_collections.netns.expose.plugins.module_utils._nftables import ForwardDropped, NftError
from ansible_collections.netns.expose.plugins.module_utils._plan import PlanApplyError
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput


def converge(module):
    """Read, plan and (unless in check mode) apply: (plan, backends); fails the module on a refusal or an error."""
    try:
        plan, backends = plan_run(module, module.params)
    except (InvalidInput, IptablesError, NftError, ForwardDropped) as exc:
        module.fail_json(msg=str(exc))
    if not module.check_mode:
        try:
            plan.apply()
        except PlanApplyError as exc:
            rolled_back = isinstance(exc.__cause__, RolledBack)
            module.fail_json(msg=str(exc), actions=exc.done, failed_action=exc.failed_step, rolled_back=rolled_back)
    return plan, backends


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, **ARGUMENT_RULES)
    plan, backends = run_locked(module, lambda: converge(module))

    for warning in plan.warnings:
        module.warn(warning)
    result = dict(changed=plan.changed, actions=plan.actions, mappings=plan.after["mappings"], published=plan.published,
                  conntrack=plan.conntrack,
                  backend=backends.name, backend_reason=backends.why, iptables=backends.variant)
    if backends.name == "nftables":
        result["counters"] = backends.active.counters()
    if module._diff:
        result["diff"] = plan.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
