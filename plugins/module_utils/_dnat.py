# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mappings, the rules they need, and the plan for the dnat_rule module.

A mapping is identified on the host by the comment "netns.expose:<name>" on each
of its rules. Rules are generated exactly as iptables-save prints them, so the
current and the desired rules compare as text.

What a packet costs does not grow with the number of mappings:
- the nat table sees only the first packet of a flow. Its rules are in chains per
  protocol and range of BUCKET_PORTS host ports (NETNS-EXPOSE-tcp-8064 has the tcp
  mappings of ports 8064 to 8127), jumped to from NETNS-EXPOSE by one rule per range,
  so a new flow meets the range rules of its protocol and the mappings of its range;
- the rules that DNAT a flow in PREROUTING also set one bit of its conntrack mark
  (CONNMARK, in a rule before each DNAT rule: the DNAT ends the chain), and FORWARD
  accepts every mapped flow, both ways, and the ICMP errors about it (RELATED: they
  belong to its conntrack entry), with one rule that tests that bit.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, replace
from functools import partial

from ansible_collections.netns.expose.plugins.module_utils import _persist
from ansible_collections.netns.expose.plugins.module_utils._conntrack import key_order
from ansible_collections.netns.expose.plugins.module_utils._iptables import (
    JUMP_COMMENT,
    XTABLES_LOCK_WAIT,
    OwnedRules,
    chain_of,
    is_shared_comment,
    jump_line,
    owned_rules,
    restore_script,
    rule_comment,
)
from ansible_collections.netns.expose.plugins.module_utils._packages import install_hint
from ansible_collections.netns.expose.plugins.module_utils._plan import REMOVE, Plan
from ansible_collections.netns.expose.plugins.module_utils._validation import (
    InvalidInput,
    check_allowed_sources,
    check_ifname,
    check_name,
    check_port,
    check_protocol,
    parse_ipv4_address,
)

PREROUTING_CHAIN = "NETNS-EXPOSE"
LOCAL_CHAIN = "NETNS-EXPOSE-LOCAL"
POSTROUTING_CHAIN = "NETNS-EXPOSE-POST"
FORWARD_CHAIN = "NETNS-EXPOSE-FWD"
# The chains of the mappings' DNAT rules, under NETNS-EXPOSE and NETNS-EXPOSE-LOCAL:
# <parent>-icmp, and <parent>-<tcp|udp>-<first port of the range>.
BUCKET_PORTS = 64
BUCKET_CHAIN = re.compile(r"^(NETNS-EXPOSE|NETNS-EXPOSE-LOCAL)-(?:(tcp|udp)-(\d{1,5})|icmp)$")
# allowed_sources, in the mangle table (the nat table cannot drop): a new flow to a mapping with a list meets,
# in NETNS-EXPOSE-SRC (from PREROUTING) or NETNS-EXPOSE-SRC-LOCAL (from OUTPUT), one rule per such mapping
# (and hairpin source), and the mapping's chain NETNS-EXPOSE-S-<digest of its name>: one RETURN per network of
# its list, then a DROP that counts the clients it denied.
SOURCES_CHAIN = "NETNS-EXPOSE-SRC"
SOURCES_LOCAL_CHAIN = "NETNS-EXPOSE-SRC-LOCAL"
ALLOWED_CHAIN_PREFIX = "NETNS-EXPOSE-S-"
ALLOWED_CHAIN = re.compile(r"^NETNS-EXPOSE-S-[0-9a-f]{10}$")
JUMPS = {
    ("nat", "PREROUTING"): PREROUTING_CHAIN,
    ("nat", "OUTPUT"): LOCAL_CHAIN,
    ("nat", "POSTROUTING"): POSTROUTING_CHAIN,
    ("filter", "FORWARD"): FORWARD_CHAIN,
    ("mangle", "PREROUTING"): SOURCES_CHAIN,
    ("mangle", "OUTPUT"): SOURCES_LOCAL_CHAIN,
}


def is_nat_chain(chain):
    return chain in (PREROUTING_CHAIN, LOCAL_CHAIN, POSTROUTING_CHAIN) or BUCKET_CHAIN.match(chain) is not None


def is_mangle_chain(chain):
    return chain in (SOURCES_CHAIN, SOURCES_LOCAL_CHAIN) or ALLOWED_CHAIN.match(chain) is not None


OWNED_CHAINS = {"nat": is_nat_chain, "filter": (FORWARD_CHAIN,), "mangle": is_mangle_chain}


def table_of(chain):
    """The table of an owned chain."""
    if chain == FORWARD_CHAIN:
        return "filter"
    return "mangle" if is_mangle_chain(chain) else "nat"


def allowed_chain(name):
    """The chain of a mapping's allowed_sources (iptables chain names have at most 28 characters)."""
    return ALLOWED_CHAIN_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:10]


# Chains whose rules depend on each other's order (a DROP ends NETNS-EXPOSE-FWD): rewritten whole when an
# edit in place would leave them in another order.
ORDERED_CHAINS = frozenset({FORWARD_CHAIN})

MAPPING_PREFIX = "netns.expose:"
# A rule that matches nothing in particular and has no target: it only records, in
# the host's own netfilter state, that the collection turned ip_forward on.
IP_FORWARD_MARK = f'-A {PREROUTING_CHAIN} -m comment --comment "netns.expose/ip_forward-was-0"'
IP_FORWARD_PATH = "/proc/sys/net/ipv4/ip_forward"
# The comments of the FORWARD rules of the namespace networks (see network_rules), and of the drop that keeps a
# host whose forwarding the collection turned on from routing anything else (see router_rules).
GUARDED_COMMENT = "netns.expose/guarded"
ROUTED_COMMENT = "netns.expose/routed"
ROUTER_DROP_COMMENT = "netns.expose/forward-only-owned"
LOOPBACK = "127.0.0.0/8"
ANY_SOURCE = "0.0.0.0/0"
# The bit of the conntrack mark that the mapped flows carry. Not one of kube-proxy (0x4000, 0x8000: packet
# marks), Tailscale (0xff0000, also saved to the conntrack mark), Cilium (0xf00); Docker and firewalld set none.
DEFAULT_CONNMARK = 0x1000000
_SET_MARK = re.compile(r" -j CONNMARK --set-xmark (0x[0-9a-f]+)/(0x[0-9a-f]+)$")

# Letters, digits, '.', '_' and '-', not starting with '-': nothing in a name can
# close the quoted comment or read as an iptables option.
MAPPING_FIELDS = ("name", "protocol", "port", "to_address", "to_port", "destination", "in_interface", "local",
                  "allowed_sources")


def set_mark_target(mark):
    return f"-j CONNMARK --set-xmark {mark:#x}/{mark:#x}"


def forward_accept_rule(mark):
    """Accept the flows that carry the bit, both ways, and the ICMP errors about them (RELATED to the flow, they
    have its conntrack entry and so its mark). DNAT too: a flow that is only marked is not ours."""
    return f"-A {FORWARD_CHAIN} -m connmark --mark {mark:#x}/{mark:#x} -m conntrack --ctstate DNAT {JUMP_COMMENT} -j ACCEPT"


SOURCES_NEW_ONLY = "-A {chain} -m conntrack ! --ctstate NEW " + JUMP_COMMENT + " -j RETURN"


def network_rules(networks):
    """The NETNS-EXPOSE-FWD rules of the namespace networks (a Networks), in order.

    A guarded network is reached only by the flows of a mapping (DNAT-ed) and by the replies to the connections
    its namespaces open; anything else forwarded to it is dropped, so that a LAN host with a route to the
    subnet, or another namespace of the host, does not reach an unpublished port. A routed network is left to the
    host's own rules (RETURN): it is listed so that the router drop below lets it through too."""
    lines = []
    for network in networks.guarded:
        match = f"-A {FORWARD_CHAIN} -d {network}"
        lines += [f'{match} -m conntrack --ctstate DNAT -m comment --comment "{GUARDED_COMMENT}" -j RETURN',
                  f'{match} -m conntrack --ctdir REPLY -m comment --comment "{GUARDED_COMMENT}" -j RETURN',
                  f'{match} -m comment --comment "{GUARDED_COMMENT}" -j DROP']
    for network in networks.routed:
        lines += [f'-A {FORWARD_CHAIN} -{side} {network} -m comment --comment "{ROUTED_COMMENT}" -j RETURN'
                  for side in ("s", "d")]
    return lines


def router_rules(networks):
    """What ends NETNS-EXPOSE-FWD on a host whose forwarding the collection turned on: the traffic of the
    namespaces (from a guarded network; routed ones returned already) and the DNAT-ed flows go on to the
    host's own rules, and everything else is dropped, so that the host does not become a router."""
    return [*(f'-A {FORWARD_CHAIN} -s {network} -m comment --comment "{GUARDED_COMMENT}" -j RETURN'
              for network in networks.guarded),
            f"-A {FORWARD_CHAIN} -m conntrack --ctstate DNAT {JUMP_COMMENT} -j RETURN",
            f'-A {FORWARD_CHAIN} -m comment --comment "{ROUTER_DROP_COMMENT}" -j DROP']


def networks_of_rules(owned):
    """The Networks whose rules NETNS-EXPOSE-FWD has (read back from the DROP of a guarded network and the
    `-d` RETURN of a routed one)."""
    guarded, routed = [], []
    for line in owned.chains.get("filter", {}).get(FORWARD_CHAIN, []):
        comment, flags = rule_comment(line), _flags_of_rule(line)
        if comment == GUARDED_COMMENT and line.endswith(" -j DROP") and "-d" in flags:
            guarded.append(flags["-d"])
        elif comment == ROUTED_COMMENT and "-d" in flags:
            routed.append(flags["-d"])
    return Networks(tuple(sorted(set(guarded))), tuple(sorted(set(routed))))


def dispatch_rule(chain):
    """The rule in NETNS-EXPOSE (or NETNS-EXPOSE-LOCAL) that sends the flows of a range to its chain."""
    parent, protocol, first = BUCKET_CHAIN.match(chain).groups()
    if protocol is None:
        return f"-A {parent} -p icmp {JUMP_COMMENT} -j {chain}"
    first = int(first)
    return f"-A {parent} -p {protocol} -m {protocol} --dport {first}:{first + BUCKET_PORTS - 1} {JUMP_COMMENT} -j {chain}"


def is_prerouting_rule(line):
    """A rule of the PREROUTING side: NETNS-EXPOSE itself (rules of older versions) or one of its range chains."""
    chain = chain_of(line)
    bucket = BUCKET_CHAIN.match(chain)
    return chain == PREROUTING_CHAIN or (bucket is not None and bucket.group(1) == PREROUTING_CHAIN)


def connmark_from_params(value):
    """The connmark option: one bit of the 32-bit conntrack mark."""
    if value is None:
        return DEFAULT_CONNMARK
    if not 0 < value <= 0xFFFFFFFF or value & (value - 1):
        raise InvalidInput("connmark", f"{value:#x} is not a single bit of the 32-bit conntrack mark (such as 0x1000000)")
    return value


@dataclass(frozen=True)
class Mapping:
    name: str
    protocol: str = "tcp"
    port: int | None = None
    to_address: str | None = None
    to_port: int | None = None
    destination: str | None = None
    in_interface: str | None = None
    local: bool = False
    # The networks (CIDR, collapsed, sorted) whose clients may use the mapping; None: every client.
    allowed_sources: tuple | None = None

    @property
    def comment(self):
        return f'-m comment --comment "{MAPPING_PREFIX}{self.name}"'

    @property
    def key(self):
        """What two mappings must not share: they would match the same packets."""
        return (self.protocol, self.port, self.destination, self.in_interface)

    def match_summary(self):
        """What of a packet the mapping matches (its key), in words: 'tcp port 8090 to 10.211.55.122 on eth0'."""
        return (self.protocol + (f" port {self.port}" if self.port else "")
                + (f" to {self.destination}" if self.destination else "")
                + (f" on {self.in_interface}" if self.in_interface else ""))

    def summary(self):
        if self.protocol == "icmp":
            text = f"icmp -> {self.to_address}"
        else:
            text = f"{self.protocol} {self.port} -> {self.to_address}:{self.to_port}"
        if self.allowed_sources is not None:
            shown = self.allowed_sources[:3]
            more = f" and {len(self.allowed_sources) - 3} more" if len(self.allowed_sources) > 3 else ""
            text += f", from {', '.join(shown)}{more}"
        return text

    @property
    def bucket(self):
        """The range of host ports its rules are filed under: tcp-8064 (ports 8064 to 8127), or icmp."""
        if self.protocol == "icmp":
            return "icmp"
        return f"{self.protocol}-{self.port - self.port % BUCKET_PORTS}"

    def chain(self, parent):
        """The chain of its DNAT rules under NETNS-EXPOSE or NETNS-EXPOSE-LOCAL."""
        return f"{parent}-{self.bucket}"

    def _match_ports(self):
        return "" if self.protocol == "icmp" else f" -m {self.protocol} --dport {self.port}"

    def _dnat_target(self):
        to = self.to_address if self.protocol == "icmp" else f"{self.to_address}:{self.to_port}"
        return f"-j DNAT --to-destination {to}"

    def _match(self, chain, source, in_interface):
        # Without a destination only packets addressed to this host are mapped, so a host that also routes for
        # others does not hijack their traffic. Not 127.0.0.0/8: in PREROUTING, DNAT comes before the routing
        # decision that drops such a packet from the LAN. The port comes before addrtype: the rules of the other
        # ports of the range stop at it, before the route lookup that addrtype makes.
        src = f" -s {source}" if source else ""
        dst = f" -d {self.destination}/32" if self.destination else f" ! -d {LOOPBACK}"
        iif = f" -i {in_interface}" if in_interface else ""
        local = "" if self.destination else " -m addrtype --dst-type LOCAL"
        return f"-A {chain}{src}{dst}{iif} -p {self.protocol}{self._match_ports()}{local} {self.comment}"

    def _prerouting(self, source, in_interface, mark):
        match = self._match(self.chain(PREROUTING_CHAIN), source, in_interface)
        marked = [f"{match} {set_mark_target(mark)}"] if mark else []
        return marked + [f"{match} {self._dnat_target()}"]

    def prerouting_rules(self, mark=None):
        """Its DNAT rule, after a rule that sets `mark` in the flow's conntrack mark (unless mark is None)."""
        return self._prerouting(None, self.in_interface, mark)

    def hairpin_prerouting_rules(self, sources, mark=None):
        """Clients in the host's own namespaces come in on their veth, not on in_interface: map them too."""
        if not self.in_interface:
            return []  # the mapping's own rules match every interface already
        return [line for source in sources for line in self._prerouting(source, None, mark)]

    def hairpin_masquerade_rule(self):
        """A client in the target's own namespace reaching it through the host's address: without SNAT the
        target would answer it directly, from an address the client never asked. Only that flow is masqueraded."""
        ports = "" if self.protocol == "icmp" else f" -m {self.protocol} --dport {self.to_port}"
        return (f"-A {POSTROUTING_CHAIN} -s {self.to_address}/32 -d {self.to_address}/32 -p {self.protocol}{ports} "
                f"{self.comment} -j MASQUERADE")

    def sources_rules(self, sources):
        """The mangle rules of its allowed_sources (none without): the jumps to its chain, for the clients of its
        own match, of the hairpin `sources` and (local) the host's own, then the chain."""
        if self.allowed_sources is None:
            return []
        chain = allowed_chain(self.name)
        jumps = [f"{self._match(SOURCES_CHAIN, None, self.in_interface)} -j {chain}"]
        jumps += [f"{self._match(SOURCES_CHAIN, source, None)} -j {chain}" for source in sources]
        if self.local:
            jumps.append(f"{self._match(SOURCES_LOCAL_CHAIN, None, None)} -j {chain}")
        # iptables-save leaves out "-s 0.0.0.0/0", as it matches every source.
        allowed = [f"-A {chain}{'' if network == ANY_SOURCE else ' -s ' + network} {self.comment} -j RETURN"
                   for network in self.allowed_sources]
        return [*jumps, *allowed, f"-A {chain} {self.comment} -j DROP"]

    def output_rule(self):
        # 127.0.0.0/8 stays out: mapping it would need route_localnet (CVE-2020-8558). Connections from the host
        # itself do not cross FORWARD: no mark.
        return f"{self._match(self.chain(LOCAL_CHAIN), None, None)} {self._dnat_target()}"


def mapping_from_params(prefix, params, state):
    """Validate one mapping's options. `prefix` names it in messages ('' or 'rules[3].')."""
    name = params.get("name")
    if not name:
        raise InvalidInput(f"{prefix}name", "is required")
    check_name(f"{prefix}name", name, "mapping name (it is stored in a rule comment)")
    if state == "absent":
        return Mapping(name=name)
    protocol = check_protocol(f"{prefix}protocol", params.get("protocol") or "tcp")
    port, to_port = params.get("port"), params.get("to_port")
    if protocol == "icmp":
        for field_name, value in (("port", port), ("to_port", to_port)):
            if value is not None:
                raise InvalidInput(f"{prefix}{field_name}", "icmp mappings take no ports")
    else:
        if port is None:
            raise InvalidInput(f"{prefix}port", f"is required for {protocol}")
        port = check_port(f"{prefix}port", port)
        to_port = port if to_port is None else check_port(f"{prefix}to_port", to_port)
    to_address = params.get("to_address")
    if not to_address:
        raise InvalidInput(f"{prefix}to_address", "is required")
    destination = params.get("destination")
    in_interface = params.get("in_interface")
    allowed = params.get("allowed_sources")
    return Mapping(
        name=name,
        protocol=protocol,
        port=port,
        to_address=check_not_loopback(f"{prefix}to_address", to_address),
        to_port=to_port,
        destination=check_not_loopback(f"{prefix}destination", destination) if destination else None,
        in_interface=check_ifname(f"{prefix}in_interface", in_interface) if in_interface else None,
        local=bool(params.get("local")),
        allowed_sources=None if allowed is None else check_allowed_sources(f"{prefix}allowed_sources", allowed),
    )


def check_not_loopback(field, value):
    """A plain IPv4 address outside 127.0.0.0/8: mapping loopback would need route_localnet (CVE-2020-8558)."""
    address = parse_ipv4_address(field, value)
    if address.is_loopback:
        raise InvalidInput(field, f"{address} is a loopback address: mapping 127.0.0.0/8 would open the host's loopback "
                                  "services to the LAN (CVE-2020-8558); publish on the host's LAN address instead")
    return str(address)


def mappings_from_params(params):
    """The module's mappings: the top-level one, or the `rules` list; duplicates refused."""
    state = params["state"]
    if params.get("rules") is None:
        return [mapping_from_params("", params, state)]
    mappings = []
    for index, item in enumerate(params["rules"]):
        item = dict(item)
        if item.get("local") is None:
            item["local"] = params.get("local")
        mappings.append(mapping_from_params(f"rules[{index}].", item, state))
    check_distinct(mappings, lambda index: f"rules[{index}]", keys=state == "present")
    return mappings


def check_distinct(mappings, label, keys=True):
    """Refuse two mappings with one name, or (keys) that would match the same packets; label(index) names one."""
    seen_names, seen_keys = {}, {}
    for index, mapping in enumerate(mappings):
        if mapping.name in seen_names:
            raise InvalidInput(f"{label(index)}.name", f"{mapping.name!r} is also the name of {label(seen_names[mapping.name])}")
        seen_names[mapping.name] = index
        if keys:
            if mapping.key in seen_keys:
                other = seen_keys[mapping.key]
                raise InvalidInput(f"{label(index)}.port",
                                   f"{mapping.match_summary()} is also mapped by {label(other)} ({mappings[other].name!r})")
            seen_keys[mapping.key] = index


@dataclass(frozen=True)
class Setup:
    """How a mapping is set up besides what it matches and where it sends its traffic: the bit of the conntrack
    mark its flows get (None: accept_forward false), hairpin, and the hairpin sources (used only by a mapping
    with in_interface). The same for both backends: what a mapping moved from one to the other keeps."""

    mark: int | None = DEFAULT_CONNMARK
    hairpin: bool = True
    sources: tuple = ()

    def of(self, mapping):
        """This setup as it applies to `mapping`: sources only where they make rules (hairpin, in_interface)."""
        sources = tuple(sorted(set(self.sources))) if self.hairpin and mapping.in_interface else ()
        return Setup(self.mark, self.hairpin, sources)


@dataclass(frozen=True)
class Networks:
    """The subnets of the collection's namespaces on a host, each sorted (see network_rules): `guarded` (reached
    only through the mappings) and `routed` (routed on purpose, left to the host's own rules)."""

    guarded: tuple = ()
    routed: tuple = ()

    def __bool__(self):
        return bool(self.guarded or self.routed)

    def view(self):
        return {"guarded": list(self.guarded), "routed": list(self.routed)}

    def without(self, networks):
        """These networks but those that overlap one of `networks` (an iterable of CIDR strings)."""
        others = [ipaddress.IPv4Network(network) for network in networks]

        def keep(values):
            return tuple(value for value in values if not any(ipaddress.IPv4Network(value).overlaps(other) for other in others))

        return Networks(keep(self.guarded), keep(self.routed))

    def union(self, other):
        return Networks(tuple(sorted(set(self.guarded) | set(other.guarded))),
                        tuple(sorted(set(self.routed) | set(other.routed))))


def networks_from_params(guarded, routed):
    """The options guarded_networks and routed_networks: IPv4 networks that do not overlap each other."""
    checked = {}
    for option, values in (("guarded_networks", guarded), ("routed_networks", routed)):
        for index, value in enumerate(values or []):
            field = f"{option}[{index}]"
            try:
                network = ipaddress.IPv4Network(value)
            except ValueError as exc:
                raise InvalidInput(field, f"{value!r} is not an IPv4 network in CIDR notation ({exc})") from None
            for other_field, other in checked.items():
                if network.overlaps(other):
                    raise InvalidInput(field, f"{network} overlaps {other} of {other_field}: a namespace network is "
                                              "either guarded or routed, once")
            checked[field] = network
    return Networks(*(tuple(sorted({str(network) for field, network in checked.items() if field.startswith(option)}))
                      for option in ("guarded_networks", "routed_networks")))


def resolve_networks(spec, current):
    """The Networks after the run: the run's own lists replace the networks they overlap (all of them with
    exclusive); with state absent the listed networks go; the others stay as they are."""
    listed = (*spec.networks.guarded, *spec.networks.routed)
    if spec.state != "present":
        return current.without(listed)
    if spec.exclusive:
        return spec.networks
    return current.without(listed).union(spec.networks)


def setup_of(spec):
    """The setup the run gives the mappings it lists."""
    return Setup(mark=spec.connmark if spec.accept_forward else None, hairpin=spec.hairpin,
                 sources=tuple(spec.hairpin_sources))


def declared_mappings(spec):
    """[(mapping, setup)] of the mappings the run declares present (none with state absent)."""
    if spec.state != "present":
        return []
    setup = setup_of(spec)
    return [(mapping, setup.of(mapping)) for mapping in spec.mappings]


def kept_mappings(spec, by_name):
    """{name: items} of the owned mappings the run leaves as they are: not listed, and not exclusive."""
    if spec.exclusive:
        return {}
    listed = {mapping.name for mapping in spec.mappings}
    return {name: items for name, items in by_name.items() if name is not None and name not in listed}


def _mapping_rules(mapping, setup):
    """table -> chain -> the mapping's rules there, in order."""
    prerouting = mapping.prerouting_rules(setup.mark)
    rules = {"nat": {}}
    if setup.hairpin:
        prerouting += mapping.hairpin_prerouting_rules(setup.sources, setup.mark)
        rules["nat"][POSTROUTING_CHAIN] = [mapping.hairpin_masquerade_rule()]
    rules["nat"][mapping.chain(PREROUTING_CHAIN)] = prerouting
    if mapping.local:
        rules["nat"][mapping.chain(LOCAL_CHAIN)] = [mapping.output_rule()]
    for line in mapping.sources_rules(setup.sources if setup.hairpin else ()):
        rules.setdefault("mangle", {}).setdefault(chain_of(line), []).append(line)
    return rules


def hairpin_sources_from_params(values):
    """The hairpin_sources option: IPv4 networks, as iptables-save prints them."""
    sources = []
    for index, value in enumerate(values or []):
        try:
            sources.append(str(ipaddress.IPv4Network(value)))
        except ValueError as exc:
            raise InvalidInput(f"hairpin_sources[{index}]", f"{value!r} is not an IPv4 network in CIDR notation ({exc})") from None
    return tuple(sorted(set(sources)))


def rules_by_mapping(owned):
    """name -> rule lines, from owned rules; lines of no mapping go under None.

    The rules the mappings share (comment OWNER_COMMENT: the range jumps, the FORWARD accept) and the
    ip_forward marker are left out. Each mapping's lines are by chain name, in their order in the chain.
    """
    by_name = {}
    for chains in owned.chains.values():
        for lines in chains.values():
            for line in lines:
                comment = rule_comment(line) or ""
                if is_shared_comment(comment):
                    continue
                name = comment[len(MAPPING_PREFIX):] if comment.startswith(MAPPING_PREFIX) else None
                by_name.setdefault(name, []).append(line)
    return {name: sorted(lines, key=chain_of) for name, lines in by_name.items()}


def shared_rules(owned):
    """The rules of the owned chains that no mapping owns (see is_shared_comment): sorted, but those of the chains
    whose order counts (ORDERED_CHAINS), which come last, in their order."""
    shared = {chain: [line for line in lines if is_shared_comment(rule_comment(line))]
              for chains in owned.chains.values() for chain, lines in chains.items()}
    return sorted(line for chain, lines in shared.items() if chain not in ORDERED_CHAINS for line in lines) \
        + [line for chain in sorted(ORDERED_CHAINS) for line in shared.get(chain, [])]


def _flags_of_rule(line):
    """{flag: value} of what comes before the comment (the only quoted part) of a rule of a mapping; a negated
    flag ('! -d 127.0.0.0/8') is left out."""
    tokens = line.split(" -m comment ", 1)[0].split()
    values = {}
    negated = False
    for flag, value in zip(tokens, tokens[1:]):
        if flag == "!":
            negated = True  # "! -d 127.0.0.0/8" names no destination
        elif negated:
            negated = False
        else:
            values.setdefault(flag, value)
    return values


def _key_of_rule(line):
    """(protocol, port, destination, in_interface) of an owned PREROUTING rule line."""
    values = _flags_of_rule(line)
    port = values.get("--dport")
    destination = values.get("-d")
    return (values.get("-p"), int(port) if port else None, destination[:-3] if destination else None, values.get("-i"))


_DNAT_TARGET = re.compile(r" -j DNAT --to-destination (\d+\.\d+\.\d+\.\d+)(?::(\d+))?$")


def mapping_of_rules(name, lines):
    """(Mapping, Setup) that the rule lines of one mapping make, or None when they have no DNAT rule to read
    it from: what moves a mapping of the iptables backend to the other one."""
    main = None
    mark = None
    sources, allowed = [], None
    local = hairpin = False
    for line in lines:
        if ALLOWED_CHAIN.match(chain_of(line)):
            if line.endswith(" -j RETURN"):
                allowed = [*(allowed or []), _flags_of_rule(line).get("-s", ANY_SOURCE)]
            continue
        if chain_of(line) == POSTROUTING_CHAIN:
            hairpin = hairpin or line.endswith(" -j MASQUERADE")
            continue
        bucket = BUCKET_CHAIN.match(chain_of(line))
        if bucket is not None and bucket.group(1) == LOCAL_CHAIN or chain_of(line) == LOCAL_CHAIN:
            local = True
            continue
        if not is_prerouting_rule(line):
            continue
        found = _SET_MARK.search(line)
        if found and found.group(1) == found.group(2):
            mark = int(found.group(1), 16)
            continue
        target = _DNAT_TARGET.search(line)
        if target is None:
            continue
        source = _flags_of_rule(line).get("-s")
        if source:
            sources.append(source)
        elif main is None:
            main = (_key_of_rule(line), target.group(1), target.group(2))
    if main is None:
        return None
    (protocol, port, destination, in_interface), to_address, to_port = main
    mapping = Mapping(name=name, protocol=protocol, port=port, to_address=to_address,
                      to_port=int(to_port) if to_port else None, destination=destination,
                      in_interface=in_interface, local=local,
                      allowed_sources=None if allowed is None else check_allowed_sources("", allowed))
    return mapping, Setup(mark, hairpin or bool(sources), tuple(sources)).of(mapping)


@dataclass
class DnatSpec:
    mappings: list
    state: str
    exclusive: bool
    ip_forward: bool
    accept_forward: bool
    hairpin: bool = True
    hairpin_sources: tuple = ()
    flush_conntrack: bool = True
    connmark: int = DEFAULT_CONNMARK
    persistent: bool = False
    networks: Networks = Networks()


def _empty_rules():
    return OwnedRules(chains={table: {} for table in OWNED_CHAINS}, jumps={table: {} for table in OWNED_CHAINS})


def _add_jumps(desired):
    for (table, builtin), chain in JUMPS.items():
        if desired.chains[table].get(chain):
            desired.jumps[table][builtin] = jump_line(builtin, chain)
    return desired


def forward_rules(marks):
    """Only the FORWARD accept of the flows that carry one of `marks`: what the nftables backend keeps in
    iptables on a host whose iptables FORWARD policy is DROP (an accept in another table would not stop it)."""
    desired = _empty_rules()
    if marks:
        desired.chains["filter"][FORWARD_CHAIN] = [forward_accept_rule(mark) for mark in sorted(marks)]
    return _add_jumps(desired)


def marks_of(owned):
    """The bits of the conntrack mark that the owned nat rules set."""
    marks = set()
    for lines in owned.chains.get("nat", {}).values():
        for line in lines:
            found = _SET_MARK.search(line)
            if found and found.group(1) == found.group(2):
                marks.add(int(found.group(1), 16))
    return marks


def render_rules(kept, mappings, mark_ip_forward, networks=Networks()):
    """The owned rules after the run: `kept` ({name: lines}) as they are, `mappings` ([(Mapping, Setup)]) as
    they set them up, what they share, the rules of the namespace `networks`, and the ip_forward marker with
    the router drop (mark_ip_forward)."""
    desired = _empty_rules()

    def add(table, chain, line):
        desired.chains[table].setdefault(chain, []).append(line)

    for lines in kept.values():
        for line in lines:
            add(table_of(chain_of(line)), chain_of(line), line)
    for mapping, setup in mappings:
        for table, chains in _mapping_rules(mapping, setup).items():
            for chain, lines in chains.items():
                for line in lines:
                    add(table, chain, line)
    nat = desired.chains["nat"]
    for chain in sorted((chain for chain in nat if BUCKET_CHAIN.match(chain)), key=_range_order):
        add("nat", BUCKET_CHAIN.match(chain).group(1), dispatch_rule(chain))
    for chain in (SOURCES_CHAIN, SOURCES_LOCAL_CHAIN):
        if desired.chains["mangle"].get(chain):
            # Only the first packet of a flow is checked, as NAT sees only it.
            desired.chains["mangle"][chain].insert(0, SOURCES_NEW_ONLY.format(chain=chain))
    for mark in sorted(marks_of(desired)):
        add("filter", FORWARD_CHAIN, forward_accept_rule(mark))
    for line in network_rules(networks):
        add("filter", FORWARD_CHAIN, line)
    if mark_ip_forward:
        add("nat", PREROUTING_CHAIN, IP_FORWARD_MARK)
        for line in router_rules(networks):
            add("filter", FORWARD_CHAIN, line)
    return _add_jumps(desired)


def desired_rules(spec, current_by_name, mark_ip_forward):
    """The owned rules after the run: kept mappings as they are, listed ones as declared, and what they share."""
    kept = kept_mappings(spec, current_by_name)
    declared = declared_mappings(spec)
    return render_rules(kept, declared, mark_ip_forward and bool(kept or declared), spec.networks)


def _range_order(chain):
    parent, protocol, first = BUCKET_CHAIN.match(chain).groups()
    return (parent, protocol or "", int(first or 0))


def check_conflicts(spec, current_keys):
    """Refuse a mapping that would match the same packets as another owned mapping that stays.

    current_keys: {name: the keys (protocol, port, destination, in_interface) its rules match}."""
    if spec.state != "present":
        return
    taken = {}
    for name in kept_mappings(spec, current_keys):
        for key in current_keys[name]:
            taken[key] = name
    for index, mapping in enumerate(spec.mappings):
        other = taken.get(mapping.key)
        if other is not None:
            where = f"rules[{index}]." if len(spec.mappings) > 1 or index else ""
            raise InvalidInput(
                f"{where}port",
                f"mapping {mapping.name!r} would match the same packets as mapping {other!r}, which this host already has",
            )


def _skeleton(owned):
    """The owned chains that exist, the jumps to them, and the rules the mappings share."""
    return {
        "chains": sorted(f"{table} {chain}" for table, chains in owned.chains.items() for chain in chains),
        "jumps": sorted(line for table_jumps in owned.jumps.values() for line in table_jumps.values()),
        "shared_rules": shared_rules(owned),
    }


def read_ip_forward():
    with open(IP_FORWARD_PATH) as sysctl:
        return int(sysctl.read().strip())


def write_ip_forward(value):
    with open(IP_FORWARD_PATH, "w") as sysctl:
        sysctl.write(f"{value}\n")


class DnatPlan(Plan):
    """The plan of a run, and what it did to the conntrack table (filled in as it is applied)."""

    def __init__(self, before):
        super().__init__(before)
        self.conntrack = []
        self.published = {"rules": [], "hairpin_sources": [], "guarded_networks": [], "routed_networks": []}


def published_mappings(ruleset, by_name, known=None):
    """The owned mappings of a ruleset state ({name: items}, as ruleset.by_name gives them) as entries of the
    module's `rules`, with the hairpin sources they were set up with: what a later run with exclusive puts back
    as it is (the rollout's rollback).

    known: {name: (mapping, setup)} of the mappings the run sets up, which need no reading back.
    """
    known = known or {}
    rules, sources = [], set()
    for name, items in sorted(by_name.items(), key=lambda entry: str(entry[0])):
        if name is None:
            continue
        parsed = known[name] if name in known else ruleset.parse(name, items)
        if parsed is None:
            continue
        mapping, setup = parsed
        # vars, not asdict: a Mapping holds only plain values, and asdict's deep copy costs 60 ms per 1,000.
        rules.append({key: list(value) if isinstance(value, tuple) else value
                      for key, value in vars(mapping).items() if value is not None})
        sources.update(setup.sources)
    return {"rules": rules, "hairpin_sources": sorted(sources)}


def _describe_networks(before, after):
    """The change of the namespace networks, in words: 'guard 10.244.1.0/24; stop guarding 10.244.2.0/24'."""
    changes = []
    for verb, undo, kind in (("guard", "stop guarding", "guarded"), ("route", "stop routing", "routed")):
        old, new = set(getattr(before, kind)), set(getattr(after, kind))
        if new - old:
            changes.append(f"{verb} {', '.join(sorted(new - old))}")
        if old - new:
            changes.append(f"{undo} {', '.join(sorted(old - new))}")
    return "namespace networks: " + "; ".join(changes)


def _conntrack_keys(lines):
    """(protocol, port, destination) of the mapped flows of some owned rule lines."""
    return {_key_of_rule(line)[:3] for line in lines if is_prerouting_rule(line)}


def _describe_keys(keys):
    flows = [protocol + (f" port {port}" if port else "") + (f" to {destination}" if destination else "")
             for protocol, port, destination in keys]
    if len(flows) > 3:
        flows = flows[:3] + [f"{len(flows) - 3} more"]
    return flows[0] if len(flows) == 1 else f"{', '.join(flows[:-1])} and {flows[-1]}"


def _delete_flows(conntrack, keys, entries, cut=None):
    counts = conntrack.delete(keys, cut) if cut else conntrack.delete(keys)
    for key, entry in zip(keys, entries):
        entry["deleted"] = counts.get(key, 0)


def _gains_a_list(before, declared):
    """Whether a mapping ((Mapping, Setup) as read, and as the run declares it) is given allowed_sources it had not:
    its rules or elements are then a superset of what it had, as when drift is repaired, but the run changes it."""
    return (before is not None and declared is not None and before[0].allowed_sources is None
            and declared[0].allowed_sources is not None)


def _flows_to_delete(touched, cut, source, active, name, before, after, set_up):
    """Add to `touched` the keys of a changed mapping whose flows must all go (they were NATed, or not, by the old
    rules), or, when only its allowed_sources changed, to `cut` ({key: allowed sources}) the keys whose flows from
    the sources it no longer allows go: the established flows of the clients it still allows survive."""
    old = source.parse(name, before) if before else None
    new = set_up.get(name) or (active.parse(name, after) if after else None)
    if old is not None and new is not None and old[1] == new[1] \
            and replace(old[0], allowed_sources=None) == replace(new[0], allowed_sources=None):
        if new[0].allowed_sources is not None:
            cut.update((key, new[0].allowed_sources) for key in active.flow_keys(after))
        return
    touched |= (source.flow_keys(before) if before else set()) | (active.flow_keys(after) if after else set())


def _plan_conntrack(plan, conntrack, keys, cut=None):
    """Delete the flows of every mapping key a change touches, and those of the keys of `cut` ({key: allowed
    sources}) from other sources: one step, one pass over the conntrack table."""
    cut = cut or {}
    if not (keys or cut) or conntrack is None:
        return
    method = conntrack.method
    if method is None:
        plan.warnings.append(
            "conntrack (netlink or the tool) cannot be used: flows that started before this change keep their old "
            f"translation until their conntrack entries expire; to have them deleted, {install_hint('conntrack')}")
        return
    keys = sorted({*keys, *cut}, key=key_order)
    entries = [{"protocol": protocol, "port": port, "destination": destination, "deleted": None,
                **({"kept_sources": list(cut[(protocol, port, destination)])} if (protocol, port, destination) in cut else {})}
               for protocol, port, destination in keys]
    plan.conntrack.extend(entries)
    what = _describe_keys(keys) + (" (from the sources no longer allowed)" if cut else "")
    plan.add(f"delete the conntrack entries of {what} in one pass over the conntrack table ({method}), "
             "so that flows older than the change meet the new rules", partial(_delete_flows, conntrack, keys, entries, cut))


class IptablesRuleset:
    """The iptables backend as the planner sees it: the owned chains of one variant, read from one dump.

    Each backend's ruleset offers the same calls: by_name, forward_marker, marks, render (the owned state after
    the run), render_other (what it keeps while the other backend has the mappings), check, keys, flow_keys,
    parse, view, plan_stray, plan_skeleton, plan_commit and boot_part; plan_dnat does the rest, once for both.
    A ruleset that is not the run's backend shows in the view under `root` (its own key).
    """

    noun = "rules"

    def __init__(self, backend, dump, root=()):
        self.backend = backend
        self.dump = dump
        self.root = tuple(root)
        self.current = owned_rules(dump, OWNED_CHAINS)

    @property
    def title(self):
        return f"iptables-{self.backend.variant}"

    @property
    def variant(self):
        return self.backend.variant

    @staticmethod
    def by_name(state):
        return rules_by_mapping(state)

    @staticmethod
    def forward_marker(state):
        return IP_FORWARD_MARK in state.chains.get("nat", {}).get(PREROUTING_CHAIN, [])

    @staticmethod
    def marks(state):
        return marks_of(state)

    @staticmethod
    def networks(state):
        return networks_of_rules(state)

    @staticmethod
    def render(kept, mappings, mark_ip_forward, networks=Networks()):
        return render_rules(kept, mappings, mark_ip_forward, networks)

    def forward_policy(self):
        return self.dump.policies.get("filter", {}).get("FORWARD")

    def render_other(self, marks):
        """While the nftables backend has the mappings: only the FORWARD accept, where the FORWARD policy is DROP."""
        return forward_rules(marks if self.forward_policy() == "DROP" else ())

    def check(self, desired):
        pass

    @staticmethod
    def keys(lines):
        return {_key_of_rule(line) for line in lines if is_prerouting_rule(line)}

    @staticmethod
    def flow_keys(lines):
        return _conntrack_keys(lines)

    @staticmethod
    def parse(name, lines):
        return mapping_of_rules(name, lines)

    def _suffix(self):
        return f" ({self.title})" if self.root else ""

    def view(self, state, by_name):
        body = {"stray_rules": by_name.get(None, []), **_skeleton(state)}
        if not self.root:
            return body
        return {self.root[0]: body} if any(body.values()) else {}

    def plan_stray(self, plan, by_name):
        if None in by_name:
            plan.add(f"remove {len(by_name[None])} rules that belong to no mapping from the netns.expose chains"
                     + self._suffix(), None, {(*self.root, "stray_rules"): []})

    def plan_skeleton(self, plan, desired):
        skeleton = _skeleton(desired)
        if skeleton != _skeleton(self.current):
            plan.add("update the netns.expose chains and the jumps to them" + self._suffix(), None,
                     {(*self.root, key): value for key, value in skeleton.items()})

    def plan_commit(self, plan, desired):
        script, counts = restore_script(self.current, desired, ORDERED_CHAINS)
        if script:
            summary = ", ".join(f"{table} +{added} -{deleted}" for table, (added, deleted) in sorted(counts.items()))
            plan.add(
                f"commit the rule changes in one iptables-restore --noflush transaction ({self.variant}: {summary})",
                partial(commit_with_rollback, self.backend, self.current, script),
            )

    def rules_file(self):
        """The file of the owned rules for boot: RULES_FILE for the iptables backend; under the nftables backend,
        one per variant (it holds only the FORWARD accept)."""
        if not self.root:
            return RULES_FILE
        return os.path.join(os.path.dirname(RULES_FILE), f"iptables-{self.variant}.rules")

    def boot_part(self, desired):
        return iptables_boot_part(self.variant, self.rules_file(), desired)


def plan_dnat(active, spec, ip_forward, conntrack=None, systemd=None, others=()):
    """Plan every change of the run, for the backend `active` (a ruleset such as IptablesRuleset, read already).

    others: the rulesets of the other backend (and iptables variants) on the host: their mappings move to
    `active`, and they keep only what render_other says (nothing, or a FORWARD accept).
    conntrack: a ConntrackTable, for deleting the flows of the mappings that change (or None).
    systemd: a _persist.Systemd where systemd runs (the files for boot are planned), else None.
    """
    rulesets = (active, *others)
    current_by = [ruleset.by_name(ruleset.current) for ruleset in rulesets]
    origin = {}  # name -> index of the ruleset whose copy counts (the active backend's first)
    for index in reversed(range(len(rulesets))):
        for name in current_by[index]:
            if name is not None:
                origin[name] = index
    current_items = {name: current_by[index][name] for name, index in origin.items()}
    check_conflicts(spec, {name: rulesets[origin[name]].keys(items) for name, items in current_items.items()})

    warnings = []
    kept, moved = {}, []
    for name, items in sorted(kept_mappings(spec, current_items).items()):
        if origin[name] == 0:
            kept[name] = items
            continue
        parsed = rulesets[origin[name]].parse(name, items)
        if parsed is None:
            warnings.append(f"mapping {name} of {rulesets[origin[name]].title} has no translation left to move to "
                            f"{active.title}: it is removed")
        else:
            moved.append(parsed)
    declared = declared_mappings(spec)
    had_mark = any(ruleset.forward_marker(ruleset.current) for ruleset in rulesets)
    wants_forward = spec.ip_forward and spec.state == "present" and ip_forward != 1
    current_networks = Networks()
    for ruleset in rulesets:
        current_networks = current_networks.union(ruleset.networks(ruleset.current))
    networks = resolve_networks(spec, current_networks)
    desired = active.render(kept, moved + declared, (had_mark or wants_forward) and bool(kept or moved or declared),
                            networks)
    desired_by_name = active.by_name(desired)
    has_mappings = any(name is not None for name in desired_by_name)
    marks = active.marks(desired)
    desired_all = [desired, *(other.render_other(marks) for other in others)]
    active.check(desired)
    # Forwarding goes on only for a mapping, and always with the marker that remembers it.
    turn_forward_on = wants_forward and has_mappings
    # The last mapping is going: put ip_forward back if the collection turned it on.
    restore_forward = had_mark and not has_mappings and ip_forward != 0

    view = {"mappings": dict(current_items)}
    for ruleset, by_name in zip(rulesets, current_by):
        view.update(ruleset.view(ruleset.current, by_name))
    view["ip_forward"] = ip_forward
    view["networks"] = current_networks.view()
    plan = DnatPlan(view)
    plan.warnings.extend(warnings)
    described = {mapping.name: mapping.summary() for mapping in spec.mappings}
    set_up = {mapping.name: (mapping, setup) for mapping, setup in moved + declared}
    plan.published = {**published_mappings(active, desired_by_name, known=set_up),
                      "guarded_networks": list(networks.guarded), "routed_networks": list(networks.routed)}
    touched_flows, cut_flows = set(), {}
    for name in sorted(name for name in set(current_items) | set(desired_by_name) if name is not None):
        before, after = current_items.get(name), desired_by_name.get(name)
        source = rulesets[origin[name]] if name in origin else active
        detail = f" ({described[name]})" if name in described else ""
        if before is not None and after is not None and source is not active:
            # The same translation in the other backend: its flows stay as they are.
            if source.parse(name, before) != set_up.get(name):
                _flows_to_delete(touched_flows, cut_flows, source, active, name, before, after, set_up)
            plan.add(f"move mapping {name} to {active.title}{detail}", None, {("mappings", name): after})
            continue
        if before == after:
            continue
        _flows_to_delete(touched_flows, cut_flows, source, active, name, before, after, set_up)
        if after is None:
            plan.add(f"remove mapping {name}", None, {("mappings", name): REMOVE})
            continue
        if before is None:
            verb = "add"
        elif set(before) < set(after) and not _gains_a_list(source.parse(name, before), set_up.get(name)):
            verb = f"restore missing {active.noun} of"
        else:
            verb = "update"
        plan.add(f"{verb} mapping {name}{detail}", None, {("mappings", name): after})
    if networks != current_networks:
        plan.add(_describe_networks(current_networks, networks), None, {("networks",): networks.view()})
    for ruleset, by_name, wanted in zip(rulesets, current_by, desired_all):
        ruleset.plan_stray(plan, by_name)
        ruleset.plan_skeleton(plan, wanted)
    for ruleset, wanted in zip(rulesets, desired_all):
        ruleset.plan_commit(plan, wanted)
    if spec.flush_conntrack:
        _plan_conntrack(plan, conntrack, touched_flows, {key: kept for key, kept in cut_flows.items()
                                                         if key not in touched_flows})
    if turn_forward_on:
        plan.add(f"set net.ipv4.ip_forward = 1 (was {ip_forward})", partial(write_ip_forward, 1), {("ip_forward",): 1})
    elif restore_forward:
        plan.add("set net.ipv4.ip_forward = 0 (restoring the value before the first mapping)",
                 partial(write_ip_forward, 0), {("ip_forward",): 0})
    if systemd is not None:
        parts = [part for part in (ruleset.boot_part(wanted) for ruleset, wanted in zip(rulesets, desired_all)) if part]
        wanted_files = boot_files(parts, active.forward_marker(desired)) if spec.persistent else {}
        plan_boot(plan, wanted_files, systemd)
    elif spec.persistent and has_mappings:
        plan.warnings.append(
            "persistent: systemd is not the service manager of this host (no /run/systemd/system), so nothing is "
            "written for boot: the mappings and ip_forward will not come back after a reboot")
    return plan


def build_plan(backend, spec, dump, ip_forward, conntrack=None, systemd=None):
    """Plan every change of a run of the iptables backend from one iptables-save dump and the ip_forward value."""
    return plan_dnat(IptablesRuleset(backend, dump), spec, ip_forward, conntrack=conntrack, systemd=systemd)


# Persistence (option persistent): at boot, and after a firewall reload flushed everything,
# systemd loads the owned rules from files that hold only them (the owned chains and jumps,
# or the owned nftables table), and systemd-sysctl turns ip_forward on when the collection
# turned it on.
RULES_UNIT = "netns-expose-rules.service"
RULES_FILE = os.path.join(_persist.STATE_DIR, "iptables.rules")
NFT_RULES_FILE = os.path.join(_persist.STATE_DIR, "nftables.nft")
SYSCTL_FILE = "/etc/sysctl.d/90-netns-expose.conf"
# The firewall loaders that flush the rules: the unit loads after them, and again when they restart.
FLUSHING_FIREWALLS = {"nft": ("nftables.service", "netfilter-persistent.service"), "legacy": ("netfilter-persistent.service",)}
IPTABLES_SERVICE = """# The jumps, if any are left: restore appends them again. The owned chains are flushed by restore.
{pre}
ExecStart=iptables-{variant}-restore --noflush --wait {wait} {rules}
"""
RULES_UNIT_TEXT = """[Unit]
Description=netns.expose: the port mappings of the collection ({what})
Documentation={documentation}
After={after}
Before=network-online.target
PartOf={part_of}
ConditionPathExists={condition}

[Service]
Type=oneshot
RemainAfterExit=yes
{service}
[Install]
WantedBy=multi-user.target {part_of}
"""


@dataclass
class BootPart:
    """What one backend brings back at boot: its file, the unit's lines that load it, and the firewall
    loaders that flush it (the unit is ordered after `after`, and is part of `part_of`)."""

    label: str
    path: str
    content: str
    service: str
    after: tuple
    part_of: tuple


def boot_files(parts, ip_forward_marked):
    """{path: content} of the files and links that load `parts` (the first is the run's backend) at boot."""
    if not parts:
        return {}
    header = _persist.HEADER.format(module="dnat_rule")
    part_of = tuple(dict.fromkeys(unit for part in parts for unit in part.part_of))
    after = ("network-pre.target", *dict.fromkeys(unit for part in parts for unit in part.after), "firewalld.service")
    unit = header + RULES_UNIT_TEXT.format(
        what="; ".join(f"{part.label}, {part.path}" for part in parts),
        documentation=" ".join(f"file:{part.path}" for part in parts),
        after=" ".join(after), part_of=" ".join(part_of), condition=parts[0].path,
        service="".join(part.service for part in parts))
    files = {part.path: header + part.content for part in parts}
    files[os.path.join(_persist.UNIT_DIR, RULES_UNIT)] = unit
    for target in ("multi-user.target", *part_of):
        files[os.path.join(_persist.UNIT_DIR, f"{target}.wants", RULES_UNIT)] = _persist.Link(
            os.path.join(_persist.UNIT_DIR, RULES_UNIT))
    if ip_forward_marked:
        files[SYSCTL_FILE] = header + "# The collection turned forwarding on for its mappings.\nnet.ipv4.ip_forward = 1\n"
    return files


def iptables_boot_part(variant, path, desired):
    """The BootPart that loads `desired` (owned rules of one iptables variant) from `path`, or None (no rules)."""
    if desired.is_empty():
        return None
    pre = [f"ExecStartPre=-iptables-{variant} -t {table} -D{line[2:]}"
           for table, jumps in sorted(desired.jumps.items()) for line in jumps.values()]
    service = IPTABLES_SERVICE.format(pre="\n".join(pre), variant=variant, wait=XTABLES_LOCK_WAIT, rules=path)
    return BootPart(label=f"iptables-{variant}", path=path, content=restore_script(OwnedRules(), desired, ORDERED_CHAINS)[0],
                    service=service, after=FLUSHING_FIREWALLS[variant], part_of=FLUSHING_FIREWALLS[variant])


def persisted_files(variant, desired):
    """{path: content} that bring `desired` (the owned rules of the iptables backend after the run) back at boot."""
    part = iptables_boot_part(variant, RULES_FILE, desired)
    return boot_files([part] if part else [], IptablesRuleset.forward_marker(desired))


def persisted_paths():
    """Every file the persistence of dnat_rule may have written."""
    wants = [os.path.join(_persist.UNIT_DIR, f"{target}.wants", RULES_UNIT)
             for target in sorted({"multi-user.target", *(name for names in FLUSHING_FIREWALLS.values() for name in names)})]
    per_variant = [os.path.join(os.path.dirname(RULES_FILE), f"iptables-{variant}.rules") for variant in sorted(FLUSHING_FIREWALLS)]
    return [RULES_FILE, NFT_RULES_FILE, *per_variant, os.path.join(_persist.UNIT_DIR, RULES_UNIT), SYSCTL_FILE, *wants]


def plan_boot(plan, wanted, systemd):
    """The files for boot: `wanted` written and the others removed; the unit started, so that a firewall
    reload before the next boot brings the rules back too (it restarts with the loaders), or stopped."""
    current = _persist.read_files(persisted_paths())
    plan.before[_persist.VIEW_KEY] = plan.after[_persist.VIEW_KEY] = _persist.view(current)
    active = systemd.is_active(RULES_UNIT)
    if active and not wanted and current:
        plan.add(f"stop {RULES_UNIT}", partial(systemd.run, "stop", RULES_UNIT))
    _persist.plan_files(plan, current, wanted, systemd.reload)
    if wanted and not active:
        # Loading the same rules again: a moment without the jumps, once, as when a firewall reloads.
        plan.add(f"start {RULES_UNIT}, so that it restarts with the firewall loaders",
                 partial(systemd.run, "start", RULES_UNIT))


class RolledBack(Exception):
    """The transaction failed; the owned rules were put back as they were."""


def commit_with_rollback(backend, before, script):
    """Commit; if it fails (iptables-restore commits table by table), put the owned rules back."""
    try:
        backend.commit(script)
    except Exception as failure:
        now = owned_rules(backend.read(), OWNED_CHAINS)
        undo, dummy = restore_script(now, before, ORDERED_CHAINS)
        if undo:
            backend.commit(undo)
        raise RolledBack(f"{failure}; the rules this collection owns were restored to their state before the run") from failure
