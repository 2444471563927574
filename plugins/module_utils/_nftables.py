# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nftables backend of dnat_rule: one table of its own, replaced whole in one transaction.

The collection owns the table `ip netns_expose` and nothing else in nftables. A mapping
costs elements of maps, not rules: the chains dispatch through maps keyed by what a
mapping matches (destination, in_interface, hairpin source, port), so a new flow meets
a fixed number of lookups whatever the number of mappings.

- `dnat_<protocol>_<kind>` maps the key of a flow to the target (address . port, or the
  address for icmp), with a counter per element; the kinds are `dst` (ip daddr . port),
  `local` (port; any local address), `iif_dst` and `iif_local` (with iifname first),
  `src_dst` and `src_local` (hairpin sources: ip saddr first, intervals). The "port" of
  icmp is `meta l4proto` (the element reads `icmp`).
- `mark_<protocol>_<kind>` holds the same keys for the mappings whose flows get the bit of
  the conntrack mark (accept_forward; `_0x...` after the name for another bit than
  0x1000000), set by a rule right before the DNAT (a DNAT ends the chain).
- `output_<protocol>_<dst|local>` maps the host's own connections (option local).
- `hairpin` and `hairpin_icmp` hold the flows from a target to itself, masqueraded.
- The rules of the kinds without destination are in `prerouting_local` (and
  `output_local`), jumped to by one rule that makes sure the destination is a local
  address and not 127.0.0.0/8 (CVE-2020-8558).

Each element carries the comment "netns.expose:<mapping>" (the hairpin elements, which
mappings may share, carry none). Each rule carries a comment with a digest of its text,
so that a rule changed by hand is noticed. What records that the
collection turned ip_forward on is the empty set `ip_forward_was_0`. The table is read with `nft -j list table` (JSON) and
written by one `nft -f -` that creates, deletes and declares it again: one transaction,
which leaves nothing stale behind and cannot half-apply.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from functools import partial

from ansible_collections.netns.expose.plugins.module_utils import _dnat
from ansible_collections.netns.expose.plugins.module_utils._dnat import (
    DEFAULT_CONNMARK,
    MAPPING_PREFIX,
    OWNED_CHAINS,
    BootPart,
    IptablesRuleset,
    Mapping,
    Networks,
    Setup,
)
from ansible_collections.netns.expose.plugins.module_utils._iptables import (
    VARIANTS,
    IptablesBackend,
    IptablesError,
    foreign_rules,
)
from ansible_collections.netns.expose.plugins.module_utils._packages import install_hint
from ansible_collections.netns.expose.plugins.module_utils._plan import REMOVE
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput, check_allowed_sources

FAMILY = "ip"
TABLE = "netns_expose"
TABLE_NAME = f"{FAMILY} {TABLE}"
TABLE_COMMENT = "netns.expose"
# An empty set whose presence records that the collection turned ip_forward on (it puts it back with the last
# mapping). Not the table's comment: nft's JSON does not show a table's comment (1.0.6).
MARKER_SET = "ip_forward_was_0"
MARKER_DECLARATION = f"set {MARKER_SET}: type inet_proto"
# The subnets of the collection's namespaces (see _dnat.network_rules): interval sets of the table's own.
GUARDED_SET, ROUTED_SET = "guarded", "routed"
NETWORK_SETS = (GUARDED_SET, ROUTED_SET)
NETWORK_DECLARATION = "set {name}: type ipv4_addr; flags interval"
RULE_COMMENT_PREFIX = "netns.expose "
COMMENT_MAX = 128  # characters of an nftables comment
LOCAL_GUARD = "fib daddr type local ip daddr != 127.0.0.0/8"
LEGACY_TABLES = "/proc/net/ip_tables_names"

PROTOCOLS = ("tcp", "udp", "icmp")
PORT_PART = {"tcp": ("tcp dport", "inet_service"), "udp": ("udp dport", "inet_service"), "icmp": ("meta l4proto", "inet_proto")}
IIF, SADDR, DADDR = ("iifname", "ifname"), ("ip saddr", "ipv4_addr"), ("ip daddr", "ipv4_addr")
KIND_PARTS = {
    "iif_dst": (IIF, DADDR), "src_dst": (SADDR, DADDR), "dst": (DADDR,),
    "iif_local": (IIF,), "src_local": (SADDR,), "local": (),
}
# The order of their rules: with a destination before without, then in_interface, hairpin sources, neither.
PREROUTING_KINDS = ("iif_dst", "src_dst", "dst", "iif_local", "src_local", "local")
OUTPUT_KINDS = ("dst", "local")
HAIRPIN_PARTS = {"hairpin": (SADDR, DADDR, ("meta l4proto", "inet_proto"), ("th dport", "inet_service")),
                 "hairpin_icmp": (SADDR, DADDR, ("meta l4proto", "inet_proto"))}
# sources (sources_output): the verdict maps of the mappings with allowed_sources, keyed as their dnat (output) map,
# whose element jumps to the mapping's chain `src.<mapping>`; that chain drops a source not in the mapping's set
# `src.<mapping>` ("allowed"). Two lookups for a new flow to such a mapping, whatever the number of mappings and sources.
ROLES = ("dnat", "output", "mark", "hairpin", "sources", "sources_output", "allowed")
ALLOWED_PREFIX = "src."
_SET_NAME = re.compile(r"^(dnat|mark|output|sources|sources_output)_(tcp|udp|icmp)_"
                       r"(iif_dst|src_dst|dst|iif_local|src_local|local)(?:_(0x[0-9a-f]+))?$")
_ITEM = re.compile(r"^(\S+) \{ (.*?)(?: : (.*))? \}$")
# chain -> (its declaration in the file, how the view shows it)
CHAINS = {
    "prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "prerouting_local": None,
    "output": "type nat hook output priority -100; policy accept;",
    "output_local": None,
    "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
    "forward": "type filter hook forward priority filter; policy accept;",
}
CHAIN_VIEWS = {
    "prerouting": "prerouting: type nat hook prerouting priority -100; policy accept",
    "prerouting_local": "prerouting_local",
    "output": "output: type nat hook output priority -100; policy accept",
    "output_local": "output_local",
    "postrouting": "postrouting: type nat hook postrouting priority 100; policy accept",
    "forward": "forward: type filter hook forward priority 0; policy accept",
}


class NftError(Exception):
    pass


class ForwardDropped(Exception):
    """A chain of the host's own firewall would drop the mapped flows: refused before anything changes."""


# The maps and sets, by name

@dataclass(frozen=True)
class SetKind:
    """What a map or set of the table is, read from its name."""

    name: str
    role: str  # one of ROLES
    protocol: str | None = None
    kind: str | None = None
    mark: int | None = None

    @property
    def parts(self):
        """(expression, type) of each part of the key."""
        if self.role == "hairpin":
            return HAIRPIN_PARTS[self.name]
        if self.role == "allowed":
            return (SADDR,)
        return (*KIND_PARTS[self.kind], PORT_PART[self.protocol])

    @property
    def key_expression(self):
        return " . ".join(expression for expression, _type in self.parts)

    @property
    def is_map(self):
        return self.role in ("dnat", "output", "sources", "sources_output")

    @property
    def counted(self):
        """Whether its elements have counters: the DNAT maps' count the flows each mapping translated."""
        return self.role in ("dnat", "output")

    @property
    def interval(self):
        return self.role == "allowed" or (self.kind is not None and self.kind.startswith("src"))

    @property
    def value_type(self):
        if self.role.startswith("sources"):
            return "verdict"
        return "ipv4_addr" if self.protocol == "icmp" else "ipv4_addr . inet_service"

    def declaration(self):
        """How the view shows it (and compares it with what the host has)."""
        return _declaration("map" if self.is_map else "set", self.name, " . ".join(kind for _e, kind in self.parts),
                            self.value_type if self.is_map else None, ["interval"] if self.interval else [], self.counted)

    def order(self):
        return (ROLES.index(self.role), self.name if self.role in ("hairpin", "allowed") else "",
                PROTOCOLS.index(self.protocol or "tcp"), PREROUTING_KINDS.index(self.kind) if self.kind else 0, self.mark or 0)


def _declaration(keyword, name, key_type, value_type, flags, counter):
    text = f"{keyword} {name}: type {key_type}" + (f" : {value_type}" if value_type else "")
    if flags:
        text += f"; flags {', '.join(flags)}"
    return text + ("; counter" if counter else "")


def set_name(role, protocol, kind, mark=None):
    if role == "mark" and mark != DEFAULT_CONNMARK:
        return f"mark_{protocol}_{kind}_{mark:#x}"
    return f"{role}_{protocol}_{kind}"


def parse_set_name(name):
    """The SetKind of a name this module makes, or None."""
    if name in HAIRPIN_PARTS:
        return SetKind(name, "hairpin")
    if name.startswith(ALLOWED_PREFIX) and len(name) > len(ALLOWED_PREFIX):
        return SetKind(name, "allowed")
    found = _SET_NAME.match(name)
    if found is None:
        return None
    role, protocol, kind, mark_text = found.groups()
    if role in ("output", "sources_output") and kind not in OUTPUT_KINDS:
        return None
    mark = None
    if role == "mark":
        mark = int(mark_text, 16) if mark_text else DEFAULT_CONNMARK
        if mark & (mark - 1) or (mark_text and mark == DEFAULT_CONNMARK):
            return None
    elif mark_text:
        return None
    return SetKind(name, role, protocol, kind, mark)


def item(set_name_, key, value=None):
    """How a mapping's element shows in its view: `dnat_tcp_dst { 10.211.55.122 . 8090 : 10.244.1.2 . 9090 }`."""
    return f"{set_name_} {{ {key}" + (f" : {value}" if value is not None else "") + " }"


def parse_item(text):
    found = _ITEM.match(text)
    if found is None:
        raise ValueError(f"not an element: {text!r}")
    return found.groups()


def _network_text(network):
    """A hairpin source as nft prints it in a key: a /32 as the bare address."""
    network = ipaddress.IPv4Network(network)
    return str(network.network_address) if network.prefixlen == 32 else str(network)


def _components(kind, key):
    """{expression: value} of a key of the map or set `kind`."""
    return dict(zip((expression for expression, _t in kind.parts), key.split(" . ")))


def mapping_elements(mapping, setup):
    """[(set, key, value or None)] of one mapping set up as `setup` (a Setup normalized for it)."""
    protocol = mapping.protocol
    port = "icmp" if protocol == "icmp" else str(mapping.port)
    value = mapping.to_address if protocol == "icmp" else f"{mapping.to_address} . {mapping.to_port}"
    where = "dst" if mapping.destination else "local"
    destination = [mapping.destination] if mapping.destination else []
    interface = [f'"{mapping.in_interface}"'] if mapping.in_interface else []
    kind = ("iif_" if mapping.in_interface else "") + where
    key = " . ".join([*interface, *destination, port])
    checked = mapping.allowed_sources is not None
    verdict = f"jump {ALLOWED_PREFIX}{mapping.name}"
    elements = [(set_name("dnat", protocol, kind), key, value)]
    if setup.mark:
        elements.append((set_name("mark", protocol, kind, setup.mark), key, None))
    if checked:
        elements.append((set_name("sources", protocol, kind), key, verdict))
    if setup.hairpin:
        for source in setup.sources:
            source_key = " . ".join([_network_text(source), *destination, port])
            elements.append((set_name("dnat", protocol, "src_" + where), source_key, value))
            if setup.mark:
                elements.append((set_name("mark", protocol, "src_" + where, setup.mark), source_key, None))
            if checked:
                elements.append((set_name("sources", protocol, "src_" + where), source_key, verdict))
        elements.append(_hairpin_element(protocol, mapping.to_address, mapping.to_port))
    if mapping.local:
        output_key = " . ".join([*destination, port])
        elements.append((set_name("output", protocol, where), output_key, value))
        if checked:
            elements.append((set_name("sources_output", protocol, where), output_key, verdict))
    if checked:
        elements += [(f"{ALLOWED_PREFIX}{mapping.name}", _network_text(network), None) for network in mapping.allowed_sources]
    return elements


def _hairpin_element(protocol, to_address, to_port):
    if protocol == "icmp":
        return ("hairpin_icmp", f"{to_address} . {to_address} . icmp", None)
    return ("hairpin", f"{to_address} . {to_address} . {protocol} . {to_port}", None)


def _hairpin_of(kind, value):
    """The hairpin element of a mapping whose main DNAT element is in `kind` with `value`."""
    to_address, _sep, to_port = value.partition(" . ")
    return _hairpin_element(kind.protocol, to_address, to_port)


# The table's state

@dataclass
class NftState:
    """The owned table as read (or as it should be): None of it when `exists` is false.

    elements: set -> [(key, value or None, owner mapping or None)]; rules: chain -> [comment];
    texts: rule comment -> rule text (what this module would write); counters: (set, key) -> (packets, bytes);
    denied: chain src.<mapping> -> (packets, bytes) its drop counted (the clients not in allowed_sources).
    """

    exists: bool = False
    chains: dict = field(default_factory=dict)
    sets: dict = field(default_factory=dict)
    elements: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)
    texts: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    denied: dict = field(default_factory=dict)

    def signature(self):
        return (self.exists, self.chains, self.sets,
                {name: sorted(set(elements)) for name, elements in self.elements.items() if elements}, self.rules)


def _value_text(raw, types):
    parts = raw["concat"] if isinstance(raw, dict) and "concat" in raw else [raw]
    return " . ".join(_component_text(part, kind) for part, kind in zip(parts, types))


# nft names protocols from /etc/protocols, which a minimal host may lack (no netbase): it then prints numbers.
PROTOCOL_NAMES = {"1": "icmp", "6": "tcp", "17": "udp"}


def _component_text(raw, kind):
    if isinstance(raw, dict):
        if "jump" in raw:
            return f"jump {raw['jump']['target']}"
        if "prefix" in raw:
            return f"{raw['prefix']['addr']}/{raw['prefix']['len']}"
        if "range" in raw:
            return "-".join(_component_text(part, kind) for part in raw["range"])
        return json.dumps(raw, sort_keys=True)
    if kind == "ifname":
        return f'"{raw}"'
    if kind == "inet_proto":
        return PROTOCOL_NAMES.get(str(raw), str(raw))
    return str(raw)


def _types(value):
    if isinstance(value, list):
        return value
    return [part.strip() for part in str(value).split(" . ")]


def state_from_json(document):
    """The NftState of `nft -j list table ip netns_expose` output (a parsed document), or of no table (None)."""
    state = NftState()
    if document is None:
        return state
    for entry in document.get("nftables", []):
        if "table" in entry:
            state.exists = True
        elif "set" in entry or "map" in entry:
            keyword = "map" if "map" in entry else "set"
            obj = entry[keyword]
            name = obj["name"]
            key_types = _types(obj["type"])
            value_types = _types(obj["map"]) if keyword == "map" else None
            flags = obj.get("flags", [])
            flags = [flags] if isinstance(flags, str) else list(flags)
            counter = any("counter" in statement for statement in obj.get("stmt", []))
            state.sets[name] = _declaration(keyword, name, " . ".join(key_types),
                                            " . ".join(value_types) if value_types else None, flags, counter)
            elements = state.elements.setdefault(name, [])
            for raw in obj.get("elem", []):
                raw_key, raw_value = (raw[0], raw[1]) if keyword == "map" else (raw, None)
                details = raw_key.get("elem") if isinstance(raw_key, dict) and "elem" in raw_key else {"val": raw_key}
                key = _value_text(details["val"], key_types)
                value = _value_text(raw_value, value_types) if keyword == "map" else None
                comment = details.get("comment") or ""
                owner = comment[len(MAPPING_PREFIX):] if comment.startswith(MAPPING_PREFIX) else None
                elements.append((key, value, owner))
                counter_value = details.get("counter")
                if isinstance(counter_value, dict):
                    state.counters[(name, key)] = (counter_value.get("packets", 0), counter_value.get("bytes", 0))
        elif "chain" in entry:
            obj = entry["chain"]
            if "hook" in obj:
                view = f"{obj['name']}: type {obj.get('type')} hook {obj['hook']} priority {obj.get('prio')}; policy {obj.get('policy')}"
            else:
                view = obj["name"]
            state.chains[obj["name"]] = view
            state.rules.setdefault(obj["name"], [])
        elif "rule" in entry:
            obj = entry["rule"]
            comment = obj.get("comment") or f"(handle {obj.get('handle')}, not made by netns.expose)"
            state.rules.setdefault(obj["chain"], []).append(comment)
            if obj["chain"].startswith(ALLOWED_PREFIX):
                for expression in obj.get("expr", []):
                    if isinstance(expression.get("counter"), dict):
                        state.denied[obj["chain"]] = (expression["counter"].get("packets", 0),
                                                      expression["counter"].get("bytes", 0))
    # What this module would have written for these maps and sets: the texts of the rules it recognizes.
    state.texts = _chain_rules({name: kind for name in state.sets if (kind := parse_set_name(name))},
                               {name for name in NETWORK_SETS if name in state.sets}, MARKER_SET in state.sets)[1]
    return state


def _rule_comment(chain, text):
    return RULE_COMMENT_PREFIX + hashlib.sha256(f"{chain}: {text}".encode()).hexdigest()[:8]


def _chain_rules(kinds, network_sets=(), marker=False):
    """(chain -> [rule texts], comment -> text) for the maps and sets `kinds` ({name: SetKind}), the sets of
    namespace networks `network_sets` that the table has, and the ip_forward marker (the router drop)."""
    present = {(kind.role, kind.protocol, kind.kind): name for name, kind in kinds.items() if kind.role != "mark"}
    marks = {}
    for name, kind in kinds.items():
        if kind.role == "mark":
            marks.setdefault((kind.protocol, kind.kind), []).append((kind.mark, name))
    chains = {name: [] for name in CHAINS}
    for protocol in PROTOCOLS:
        to = "to" if protocol == "icmp" else "addr . port to"
        for kind in PREROUTING_KINDS:
            chain = chains["prerouting_local" if kind.endswith("local") else "prerouting"]
            key = " . ".join(expression for expression, _t in (*KIND_PARTS[kind], PORT_PART[protocol]))
            name = present.get(("sources", protocol, kind))
            if name:
                chain.append(f"{key} vmap @{name}")
            for mark, name in sorted(marks.get((protocol, kind), [])):
                chain.append(f"{key} @{name} ct mark set ct mark | {mark:#010x}")
            name = present.get(("dnat", protocol, kind))
            if name:
                chain.append(f"dnat ip {to} {key} map @{name}")
        for kind in OUTPUT_KINDS:
            key = " . ".join(expression for expression, _t in (*KIND_PARTS[kind], PORT_PART[protocol]))
            chain = chains["output_local" if kind == "local" else "output"]
            name = present.get(("sources_output", protocol, kind))
            if name:
                chain.append(f"{key} vmap @{name}")
            name = present.get(("output", protocol, kind))
            if name:
                chain.append(f"dnat ip {to} {key} map @{name}")
    for parent in ("prerouting", "output"):
        if chains[f"{parent}_local"]:
            chains[parent].append(f"{LOCAL_GUARD} jump {parent}_local")
    for name in HAIRPIN_PARTS:
        if name in kinds:
            chains["postrouting"].append(f"ct status dnat {kinds[name].key_expression} @{name} masquerade")
    for mark in sorted({mark for pairs in marks.values() for mark, _name in pairs}):
        chains["forward"].append(f"ct mark & {mark:#010x} == {mark:#010x} ct status dnat counter accept")
    chains["forward"] += _forward_network_rules(network_sets, marker and bool(kinds))
    for name, kind in kinds.items():
        if kind.role == "allowed":
            # A denied client gets nothing: no reset, no ICMP error; the counter is the mapping's count of them.
            chains[name] = [f"ip saddr != @{name} counter drop"]
    chains = {name: rules for name, rules in chains.items() if rules}
    texts = {_rule_comment(chain, text): text for chain, rules in chains.items() for text in rules}
    return chains, texts


def _forward_network_rules(network_sets, router):
    """The forward rules of the namespace networks and, with `router`, the router drop: as _dnat.network_rules
    and _dnat.router_rules for the iptables backend. A drop in any base chain is final in nftables, so every drop
    here matches only what the collection owns (a guarded network), or is made only on a host whose forwarding
    the collection turned on (router)."""
    rules = []
    if ROUTED_SET in network_sets:
        rules += [f"ip daddr @{ROUTED_SET} accept", f"ip saddr @{ROUTED_SET} accept"]
    if GUARDED_SET in network_sets:
        rules += [f"ip daddr @{GUARDED_SET} ct status dnat accept",
                  f"ip daddr @{GUARDED_SET} ct direction reply accept",
                  f"ip daddr @{GUARDED_SET} counter drop"]
    if router:
        if GUARDED_SET in network_sets:
            rules.append(f"ip saddr @{GUARDED_SET} accept")
        rules += ["ct status dnat accept", "counter drop"]
    return rules


class _Taken:
    """The keys already in one map or set of the table being built; for interval keys (hairpin source first),
    the sources by the rest of the key, so that an overlapping source is found without a scan."""

    def __init__(self):
        self.keys = set()
        self.sources = {}

    def claims(self, kind, key):
        """Whether `key` is free (and take it)."""
        if key in self.keys:
            return False
        if kind.interval:
            source, _sep, rest = key.partition(" . ")
            network = ipaddress.IPv4Network(source)
            others = self.sources.setdefault(rest, [])
            if any(network.overlaps(other) for other in others):
                return False
            others.append(network)
        self.keys.add(key)
        return True


# The elements that go with a mapping's element of another map: dropped with it, when another mapping has its key.
DEPENDS_ON = {"mark": "dnat", "sources": "dnat", "sources_output": "output"}


def build_state(units, mark_ip_forward, networks=Networks()):
    """The table that holds `units` ([(owner, [(set, key, value)])], in order of precedence), and the namespace
    `networks`; the ip_forward marker (mark_ip_forward) only with a mapping.

    Two mappings may claim one key of a map (say the host's own connections to one port, for two mappings that
    differ only by in_interface), or overlapping hairpin sources: the first keeps it, as the first rule would in
    iptables, and the DNAT of the other drops out with its mark. Hairpin elements are shared.
    """
    elements, taken, dropped = {}, {}, set()
    for owner, owned in units:
        for set_name_, key, value in sorted(owned, key=lambda element: ROLES.index(_role(element[0]))):
            kind = parse_set_name(set_name_)
            if kind is None:
                continue
            if DEPENDS_ON.get(kind.role) and (owner, DEPENDS_ON[kind.role], kind.protocol, kind.kind, key) in dropped:
                continue
            if not taken.setdefault(set_name_, _Taken()).claims(kind, key):
                if kind.role in ("dnat", "output"):
                    dropped.add((owner, kind.role, kind.protocol, kind.kind, key))
                continue
            elements.setdefault(set_name_, []).append((key, value, None if kind.role == "hairpin" else owner))
    network_elements = {name: [(_network_text(network), None, None) for network in values]
                        for name, values in ((GUARDED_SET, networks.guarded), (ROUTED_SET, networks.routed)) if values}
    if not elements and not network_elements:
        return NftState()
    kinds = {name: parse_set_name(name) for name in sorted(elements, key=lambda name: parse_set_name(name).order())}
    mark_ip_forward = mark_ip_forward and bool(kinds)
    chains, texts = _chain_rules(kinds, set(network_elements), mark_ip_forward)
    sets = {name: kind.declaration() for name, kind in kinds.items()}
    sets.update((name, NETWORK_DECLARATION.format(name=name)) for name in network_elements)
    if mark_ip_forward:
        sets[MARKER_SET] = MARKER_DECLARATION
    return NftState(
        exists=True,
        chains={name: CHAIN_VIEWS.get(name, name) for name in chains},
        sets=sets,
        elements={**{name: elements[name] for name in kinds}, **network_elements},
        rules={chain: [_rule_comment(chain, text) for text in rules] for chain, rules in chains.items()},
        texts=texts,
    )


def _role(name):
    kind = parse_set_name(name)
    return kind.role if kind else "hairpin"


def table_text(state, counters=None, denied=None):
    """The input of `nft -f` that replaces the owned table with `state` (deletes it, if it does not exist).

    counters: (set, key) -> (packets, bytes) and denied: chain -> (packets, bytes) to carry over (the table is
    replaced, its counters would start at 0).
    """
    lines = [f"table {TABLE_NAME} {{}}", f"delete table {TABLE_NAME}"]
    if not state.exists:
        return "\n".join(lines) + "\n"
    counters = counters or {}
    lines += [f"table {TABLE_NAME} {{", f'\tcomment "{TABLE_COMMENT}"']
    if MARKER_SET in state.sets:
        lines.append(f'\tset {MARKER_SET} {{ type inet_proto; comment "netns.expose turned net.ipv4.ip_forward on"; }}')
    # The sets of allowed sources and their chains first: the verdict maps jump to those chains.
    allowed = [name for name in state.elements if name.startswith(ALLOWED_PREFIX)]
    ordered = [*allowed, *(name for name in state.elements if name not in allowed)]
    for name in ordered:
        elements = state.elements[name]
        if name in NETWORK_SETS:
            lines += [f"\tset {name} {{", "\t\ttype ipv4_addr", "\t\tflags interval",
                      "\t\telements = { " + ", ".join(key for key, _value, _owner in elements) + " }", "\t}"]
            continue
        kind = parse_set_name(name)
        lines.append(f"\t{'map' if kind.is_map else 'set'} {name} {{")
        lines.append(f"\t\ttype {' . '.join(kind_ for _e, kind_ in kind.parts)}"
                     + (f" : {kind.value_type}" if kind.is_map else ""))
        if kind.interval:
            lines.append("\t\tflags interval")
        if kind.counted:
            lines.append("\t\tcounter")
        texts = []
        for key, value, owner in elements:
            text = key
            packets, octets = counters.get((name, key), (0, 0))
            if kind.counted and (packets or octets):
                text += f" counter packets {packets} bytes {octets}"
            if owner:
                text += f' comment "{MAPPING_PREFIX}{owner}"'
            texts.append(text + (f" : {value}" if value is not None else ""))
        lines.append("\t\telements = { " + ",\n\t\t\t     ".join(texts) + " }")
        lines.append("\t}")
        if name in allowed and name in state.rules:
            lines += _chain_text(state, name, (denied or {}).get(name))
    for chain in state.rules:
        if chain not in allowed:
            lines += _chain_text(state, chain)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _chain_order(chain):
    """The base chains and their own chains in the order of CHAINS, then the others by name."""
    return (0, list(CHAINS).index(chain), "") if chain in CHAINS else (1, 0, chain)


def _chain_text(state, chain, counter=None):
    """A chain of the table; `counter` (packets, bytes) is carried over into its counter."""
    declaration = CHAINS.get(chain)
    texts = [state.texts[comment] for comment in state.rules[chain]]
    if counter and any(counter):
        texts = [text.replace(" counter ", f" counter packets {counter[0]} bytes {counter[1]} ", 1) for text in texts]
    return [f"\tchain {chain} {{", *([f"\t\t{declaration}"] if declaration else []),
            *(f'\t\t{text} comment "{comment}"' for text, comment in zip(texts, state.rules[chain])), "\t}"]


def by_name(state):
    """name -> the items of its elements; items of no mapping (no comment, or a map this module does not make,
    or a hairpin element of no mapping) go under None. A mapping's hairpin element is its when the hairpin set
    has it (mappings with one target share it)."""
    found = {}
    hairpin = {}
    # The sets of allowed sources and their chains first: the verdict maps jump to those chains.
    allowed = [name for name in state.elements if name.startswith(ALLOWED_PREFIX)]
    ordered = [*allowed, *(name for name in state.elements if name not in allowed)]
    for name in ordered:
        elements = state.elements[name]
        if name in NETWORK_SETS:
            continue  # the run's, not a mapping's: see networks_of_state
        kind = parse_set_name(name)
        for key, value, owner in elements:
            if kind is not None and kind.role == "hairpin":
                hairpin[(name, key)] = False
            else:
                found.setdefault(owner if kind is not None else None, set()).add(item(name, key, value))
    for owner, items in found.items():
        if owner is None:
            continue
        for text in list(items):
            name, key, value = parse_item(text)
            kind = parse_set_name(name)
            if kind.role == "dnat" and not kind.interval:
                element = _hairpin_of(kind, value)
                if (element[0], element[1]) in hairpin:
                    hairpin[(element[0], element[1])] = True
                    items.add(item(*element))
    for (name, key), claimed in hairpin.items():
        if not claimed:
            found.setdefault(None, set()).add(item(name, key))
    return {owner: sorted(items) for owner, items in found.items()}


def networks_of_state(state):
    """The Networks of the table's sets `guarded` and `routed`."""
    return Networks(*(tuple(sorted(str(ipaddress.IPv4Network(key)) for key, _value, _owner in state.elements.get(name, [])))
                      for name in NETWORK_SETS))


def mapping_of_elements(name, items):
    """(Mapping, Setup) that the elements of one mapping make, or None without its DNAT element: what moves a
    mapping of the nftables backend to the other one."""
    main = None
    marks = {}
    sources, allowed = [], None
    local = hairpin = False
    for text in items:
        set_name_, key, value = parse_item(text)
        kind = parse_set_name(set_name_)
        if kind is None or kind.role in ("sources", "sources_output"):
            continue
        if kind.role == "allowed":
            allowed = [*(allowed or []), str(ipaddress.IPv4Network(key))]
        elif kind.role == "hairpin":
            hairpin = True
        elif kind.role == "output":
            local = True
        elif kind.role == "mark":
            marks.setdefault((kind.protocol, kind.kind, key), kind.mark)
        elif kind.interval:
            sources.append(str(ipaddress.IPv4Network(_components(kind, key)["ip saddr"])))
        elif main is None:
            main = (kind, key, value)
    if main is None:
        return None
    kind, key, value = main
    parts = _components(kind, key)
    to_address, _sep, to_port = value.partition(" . ")
    mapping = Mapping(name=name, protocol=kind.protocol,
                      port=None if kind.protocol == "icmp" else int(parts[PORT_PART[kind.protocol][0]]),
                      to_address=to_address, to_port=int(to_port) if to_port else None,
                      destination=parts.get("ip daddr"), in_interface=parts["iifname"].strip('"') if "iifname" in parts else None,
                      local=local, allowed_sources=None if allowed is None else check_allowed_sources("", allowed))
    return mapping, Setup(marks.get((kind.protocol, kind.kind, key)), hairpin or bool(sources), tuple(sources)).of(mapping)


# Coexistence with the host's own firewall

def _is_accept_of_mapped(expressions, marks):
    """Whether a rule accepts the mapped flows: it matches nothing but a bit of `marks` in the conntrack mark
    and ct status dnat (or nothing at all), and accepts."""
    if not expressions or "accept" not in expressions[-1]:
        return False
    for expression in expressions[:-1]:
        if "counter" in expression or "log" in expression:
            continue
        match = expression.get("match")
        if match is None:
            return False
        left, right = match.get("left"), match.get("right")
        if left == {"ct": {"key": "status"}} and (right == "dnat" or (isinstance(right, list) and "dnat" in right)):
            continue
        if (isinstance(left, dict) and "&" in left and left["&"][0] == {"ct": {"key": "mark"}}
                and left["&"][1] == right and right in marks):
            continue
        return False
    return True


def _drops_everything(expressions):
    if not expressions:
        return False
    last = expressions[-1]
    if "drop" not in last and "reject" not in last:
        return False
    return all("counter" in expression or "log" in expression for expression in expressions[:-1])


def forward_drop(policy, rules, marks):
    """Why a forward chain of the host's drops the mapped flows ('policy drop', 'a rule that drops everything
    (handle N)'), or None when it does not, or accepts them first."""
    for handle, expressions in rules:
        if _is_accept_of_mapped(expressions, marks):
            return None
        if _drops_everything(expressions):
            return f"a rule that drops or rejects everything (handle {handle})"
    return "policy drop" if policy == "drop" else None


def forward_drop_message(problems, marks):
    """What to tell the admin when chains of the host's own firewall ([((family, table, chain), why)]) would drop
    the flows that carry `marks`."""
    rules = [f"ct mark & {mark:#x} == {mark:#x} ct status dnat accept" for mark in sorted(marks)]
    chains = "; ".join(f"chain {chain} of table {family} {table} ({why})" for (family, table, chain), why in problems)
    (family, table, chain), _why = problems[0]
    return (f"backend nftables: the host's own firewall would drop the forwarded flows of the mappings: {chains}. "
            f"An accept in table {TABLE_NAME} does not stop a drop in another table (nor would the iptables backend's "
            f"accept), and netns.expose changes nothing of the host's own. Add to that chain, before what drops, the "
            f"rule that accepts exactly the mapped flows: {' and '.join(rules)} (for example: "
            f"nft insert rule {family} {table} {chain} {rules[0].replace('&', 'and')}), or set forward_drop_check: "
            f"false if that firewall accepts these flows already. Nothing was changed.")


class NftBackend:
    """Runs nft through module.run_command."""

    def __init__(self, module, path=None):
        self.module = module
        self.nft = path or module.get_bin_path("nft")
        if not self.nft:
            raise NftError(f"nftables: nft was not found on the host; {install_hint('nftables')}")

    def _json(self, *argv, missing_ok=False):
        rc, out, err = self.module.run_command([self.nft, "-j", *argv])
        if rc != 0:
            if missing_ok and "No such file or directory" in err:
                return None
            raise NftError(f"nft -j {' '.join(argv)} failed ({rc}): {err.strip()}")
        try:
            return json.loads(out)
        except ValueError as exc:
            raise NftError(f"nft -j {' '.join(argv)} printed no JSON: {exc}") from None

    def read(self):
        """The owned table (an NftState; one that does not exist when there is no table)."""
        return state_from_json(self._json("list", "table", FAMILY, TABLE, missing_ok=True))

    def chains(self):
        """Every chain of the host: [chain objects of nft's JSON]."""
        return [entry["chain"] for entry in self._json("list", "chains").get("nftables", []) if "chain" in entry]

    def rules(self, family, table, chain):
        """[(handle, expressions)] of one chain."""
        document = self._json("list", "chain", family, table, chain)
        return [(entry["rule"].get("handle"), entry["rule"].get("expr", []))
                for entry in document.get("nftables", []) if "rule" in entry]

    def commit(self, text):
        rc, out, err = self.module.run_command([self.nft, "-f", "-"], data=text, binary_data=True)
        if rc != 0:
            raise NftError(f"nft -f failed ({rc}), nothing was changed: {(err or out).strip()}")


class NftRuleset:
    """The nftables backend as the planner sees it (see _dnat.IptablesRuleset for the calls)."""

    noun = "elements"
    title = "nftables"
    root = ("nftables",)

    def __init__(self, backend, state, forward_drop_check=False, iptables_forward=()):
        """forward_drop_check: refuse, before any change, when a forward chain of the host's own would drop
        the mapped flows. iptables_forward: (family, table, chain) of the forward chains that an iptables
        variant's ruleset handles (with its own accept where their policy is DROP)."""
        self.backend = backend
        self.current = state
        self.forward_drop_check = forward_drop_check
        self.iptables_forward = set(iptables_forward)

    by_name = staticmethod(by_name)

    @staticmethod
    def forward_marker(state):
        return MARKER_SET in state.sets

    @staticmethod
    def marks(state):
        return {kind.mark for name in state.sets if (kind := parse_set_name(name)) and kind.role == "mark"}

    networks = staticmethod(networks_of_state)

    @staticmethod
    def render(kept, mappings, mark_ip_forward, networks=Networks()):
        for mapping, _setup in mappings:
            if len(MAPPING_PREFIX + mapping.name) > COMMENT_MAX:
                raise InvalidInput("name", f"{mapping.name!r} is {len(mapping.name)} characters long: the nftables backend "
                                           f"keeps a mapping's name in the comment of its elements, which holds "
                                           f"{COMMENT_MAX - len(MAPPING_PREFIX)} after {MAPPING_PREFIX!r}; use a shorter "
                                           "name, or backend iptables")
        units = [(name, [parse_item(text) for text in items]) for name, items in kept.items()]
        units += [(mapping.name, mapping_elements(mapping, setup)) for mapping, setup in mappings]
        return build_state(units, mark_ip_forward, networks)

    @staticmethod
    def render_other(marks):
        return NftState()

    def check(self, desired):
        marks = self.marks(desired)
        if not self.forward_drop_check or not marks:
            return
        problems = []
        for chain in self.backend.chains():
            where = (chain.get("family"), chain.get("table"), chain.get("name"))
            if chain.get("hook") != "forward" or where[0] not in ("ip", "inet") or where[:2] == (FAMILY, TABLE):
                continue
            if where in self.iptables_forward:
                continue
            why = forward_drop(chain.get("policy"), self.backend.rules(*where), marks)
            if why:
                problems.append((where, why))
        if problems:
            raise ForwardDropped(forward_drop_message(problems, marks))

    @staticmethod
    def keys(items):
        found = set()
        for text in items:
            name, key, _value = parse_item(text)
            kind = parse_set_name(name)
            if kind is not None and kind.role == "dnat":
                parts = _components(kind, key)
                port = None if kind.protocol == "icmp" else int(parts[PORT_PART[kind.protocol][0]])
                interface = parts["iifname"].strip('"') if "iifname" in parts else None
                found.add((kind.protocol, port, parts.get("ip daddr"), interface))
        return found

    def flow_keys(self, items):
        return {key[:3] for key in self.keys(items)}

    @staticmethod
    def parse(name, items):
        return mapping_of_elements(name, items)

    @staticmethod
    def _body(state, stray):
        return {
            "chains": sorted(state.chains.values()),
            "sets": sorted(state.sets.values()),
            # In one order whatever the order of the chains in the table (nft lists them in the order made).
            "rules": [f"{chain}: {state.texts.get(comment, comment)}" for chain in sorted(state.rules, key=_chain_order)
                      for comment in state.rules[chain]],
            "stray_elements": stray,
        }

    def view(self, state, by_name_):
        return {self.root[0]: self._body(state, by_name_.get(None, []))} if state.exists else {}

    def plan_stray(self, plan, by_name_):
        if None in by_name_:
            plan.add(f"remove {len(by_name_[None])} elements that belong to no mapping from table {TABLE_NAME}", None,
                     {(*self.root, "stray_elements"): []})

    def plan_skeleton(self, plan, desired):
        if (self._body(desired, []), desired.exists) != (self._body(self.current, []), self.current.exists):
            plan.add(f"update the chains, maps and sets of table {TABLE_NAME}", None,
                     {self.root: self._body(desired, []) if desired.exists else REMOVE})

    def plan_commit(self, plan, desired):
        if desired.signature() == self.current.signature():
            return
        if desired.exists:
            count = sum(len(elements) for elements in desired.elements.values())
            what = (f"replace table {TABLE_NAME} in one nft -f transaction ({count} elements in {len(desired.sets)} "
                    f"maps and sets, {sum(len(rules) for rules in desired.rules.values())} rules)")
        else:
            what = f"delete table {TABLE_NAME} in one nft -f transaction"
        plan.add(what, partial(self.backend.commit, table_text(desired, self.current.counters, self.current.denied)))

    @staticmethod
    def boot_part(desired):
        if not desired.exists:
            return None
        path = _dnat.NFT_RULES_FILE
        return BootPart(label="nftables", path=path, content=table_text(desired), service=f"ExecStart=nft -f {path}\n",
                        after=("nftables.service", "netfilter-persistent.service"), part_of=("nftables.service",))

    def counters(self):
        """{mapping: {packets, bytes}} of the current table: the first packets of the flows each mapping
        translated (NAT sees only those), in prerouting and output, since the table was first made."""
        found = {}
        for (name, key), (packets, octets) in self.current.counters.items():
            kind = parse_set_name(name)
            if kind is None or not kind.counted:
                continue
            for element_key, _value, owner in self.current.elements.get(name, []):
                if element_key == key and owner:
                    total = found.setdefault(owner, {"packets": 0, "bytes": 0})
                    total["packets"] += packets
                    total["bytes"] += octets
        for chain, (packets, _octets) in self.current.denied.items():
            found.setdefault(chain[len(ALLOWED_PREFIX):], {"packets": 0, "bytes": 0})["denied"] = packets
        return dict(sorted(found.items()))


# Which backend: the option backend (auto, iptables, nftables)

def legacy_tables_present(path=LEGACY_TABLES):
    """Whether iptables-legacy has a table in this network namespace (reading it would otherwise load nothing)."""
    try:
        with open(path, encoding="utf-8") as names:
            return bool(names.read().strip())
    except OSError:
        return False


def choose_backend(requested, nft_usable, dumps):
    """(backend, why) for the option backend, from whether nft is installed and the iptables-save dumps of the
    variants that are ({variant: Dump}).

    auto takes nftables when nft is installed and no iptables variant has rules or chains of the host's own
    (the collection's own, and built-in chains with their policies, do not count); iptables when one has
    (Docker, kube-proxy, a firewall written for iptables: their rules keep working as they do), or when nft is
    not installed.
    """
    if requested != "auto":
        return requested, "asked for"
    if not nft_usable:
        return "iptables", "nft is not installed"
    for variant in sorted(dumps):
        found = foreign_rules(dumps[variant], OWNED_CHAINS)
        if found:
            return "iptables", (f"iptables-{variant} has {len(found)} rules or chains of the host's own, such as "
                                f"{found[0]!r}")
    return "nftables", "nft is installed and iptables has no rules of the host's own"


@dataclass
class Backends:
    """The rulesets of one run: the backend that gets the mappings (`active`) and the others on the host."""

    name: str
    why: str
    active: object
    others: list
    variant: str | None


def open_backends(module, backend="auto", iptables="auto", forward_drop_check=True):
    """Read what the run needs from the host and pick the backend (see choose_backend)."""
    nft_path = module.get_bin_path("nft")
    wanted_variants = VARIANTS if iptables == "auto" else (iptables,)
    iptables_backends, dumps = {}, {}
    for variant in wanted_variants:
        if not (module.get_bin_path(f"iptables-{variant}-save") and module.get_bin_path(f"iptables-{variant}-restore")):
            continue
        if variant == "legacy" and iptables == "auto" and not legacy_tables_present():
            continue
        iptables_backends[variant] = IptablesBackend(module, variant)
        if backend == "iptables" and iptables == "auto":
            continue  # the iptables backend reads the variant the host's iptables command uses, below
        dumps[variant] = iptables_backends[variant].read()
    name, why = choose_backend(backend, bool(nft_path), dumps)
    if name == "iptables":
        if not nft_path and not iptables_backends and backend == "auto":
            raise IptablesError(f"neither nft nor iptables was found on the host; {install_hint('nftables')}, or "
                                f"{install_hint('iptables')}")
        chosen = IptablesBackend(module, iptables)
        dump = dumps[chosen.variant] if chosen.variant in dumps else chosen.read()
        others = [NftRuleset(NftBackend(module, nft_path), NftBackend(module, nft_path).read())] if nft_path else []
        return Backends(name, why, IptablesRuleset(chosen, dump), others, chosen.variant)
    nft = NftBackend(module, nft_path)
    others = [IptablesRuleset(iptables_backends[variant], dumps[variant], root=(f"iptables-{variant}",))
              for variant in sorted(dumps)]
    handled = {("ip", "filter", "FORWARD")} if "nft" in dumps else set()
    active = NftRuleset(nft, nft.read(), forward_drop_check=forward_drop_check, iptables_forward=handled)
    variants = [ruleset.variant for ruleset in others if ruleset.forward_policy() == "DROP"]
    return Backends(name, why, active, others, variants[0] if variants else None)
