# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mappings, the rules they need, and the plan for the dnat_rule module.

A mapping is identified on the host by the comment "netns.expose:<name>" on each
of its rules. Rules are generated exactly as iptables-save prints them, so the
current and the desired rules compare as text.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from functools import partial

from ansible_collections.netns.expose.plugins.module_utils._iptables import (
    OwnedRules,
    jump_line,
    owned_rules,
    restore_script,
    rule_comment,
)
from ansible_collections.netns.expose.plugins.module_utils._packages import install_hint
from ansible_collections.netns.expose.plugins.module_utils._plan import REMOVE, Plan
from ansible_collections.netns.expose.plugins.module_utils._validation import (
    InvalidInput,
    check_ifname,
    parse_ipv4_address,
)

PREROUTING_CHAIN = "NETNS-EXPOSE"
LOCAL_CHAIN = "NETNS-EXPOSE-LOCAL"
POSTROUTING_CHAIN = "NETNS-EXPOSE-POST"
FORWARD_CHAIN = "NETNS-EXPOSE-FWD"
OWNED_CHAINS = {"nat": (PREROUTING_CHAIN, LOCAL_CHAIN, POSTROUTING_CHAIN), "filter": (FORWARD_CHAIN,)}
JUMPS = {
    ("nat", "PREROUTING"): PREROUTING_CHAIN,
    ("nat", "OUTPUT"): LOCAL_CHAIN,
    ("nat", "POSTROUTING"): POSTROUTING_CHAIN,
    ("filter", "FORWARD"): FORWARD_CHAIN,
}

MAPPING_PREFIX = "netns.expose:"
# A rule that matches nothing in particular and has no target: it only records, in
# the host's own netfilter state, that the collection turned ip_forward on.
IP_FORWARD_MARK = f'-A {PREROUTING_CHAIN} -m comment --comment "netns.expose/ip_forward-was-0"'
IP_FORWARD_PATH = "/proc/sys/net/ipv4/ip_forward"
LOOPBACK = "127.0.0.0/8"

# Letters, digits, '.', '_' and '-', not starting with '-': nothing in a name can
# close the quoted comment or read as an iptables option.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PROTOCOLS = ("tcp", "udp", "icmp")
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}
MAPPING_FIELDS = ("name", "protocol", "port", "to_address", "to_port", "destination", "in_interface", "local")


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

    @property
    def comment(self):
        return f'-m comment --comment "{MAPPING_PREFIX}{self.name}"'

    @property
    def key(self):
        """What two mappings must not share: they would match the same packets."""
        return (self.protocol, self.port, self.destination, self.in_interface)

    def summary(self):
        if self.protocol == "icmp":
            return f"icmp -> {self.to_address}"
        return f"{self.protocol} {self.port} -> {self.to_address}:{self.to_port}"

    def _match_ports(self):
        return "" if self.protocol == "icmp" else f" -m {self.protocol} --dport {self.port}"

    def _dnat_target(self):
        to = self.to_address if self.protocol == "icmp" else f"{self.to_address}:{self.to_port}"
        return f"-j DNAT --to-destination {to}"

    def _prerouting(self, source, in_interface):
        # Without a destination only packets addressed to this host are mapped, so a
        # host that also routes for others does not hijack their traffic. Not 127.0.0.0/8:
        # DNAT comes before the routing decision that drops such a packet from the LAN.
        src = f" -s {source}" if source else ""
        dst = f" -d {self.destination}/32" if self.destination else f" ! -d {LOOPBACK}"
        iif = f" -i {in_interface}" if in_interface else ""
        local = "" if self.destination else " -m addrtype --dst-type LOCAL"
        return (f"-A {PREROUTING_CHAIN}{src}{dst}{iif} -p {self.protocol}{local}{self._match_ports()} "
                f"{self.comment} {self._dnat_target()}")

    def prerouting_rule(self):
        return self._prerouting(None, self.in_interface)

    def hairpin_prerouting_rules(self, sources):
        """Clients in the host's own namespaces come in on their veth, not on in_interface: map them too."""
        if not self.in_interface:
            return []  # the mapping's own rule matches every interface already
        return [self._prerouting(source, None) for source in sources]

    def hairpin_masquerade_rule(self):
        """A client in the target's own namespace reaching it through the host's address: without SNAT the
        target would answer it directly, from an address the client never asked. Only that flow is masqueraded."""
        ports = "" if self.protocol == "icmp" else f" -m {self.protocol} --dport {self.to_port}"
        return (f"-A {POSTROUTING_CHAIN} -s {self.to_address}/32 -d {self.to_address}/32 -p {self.protocol}{ports} "
                f"{self.comment} -j MASQUERADE")

    def output_rule(self):
        # 127.0.0.0/8 stays out: mapping it would need route_localnet (CVE-2020-8558).
        dst = f" -d {self.destination}/32" if self.destination else f" ! -d {LOOPBACK}"
        local = "" if self.destination else " -m addrtype --dst-type LOCAL"
        return f"-A {LOCAL_CHAIN}{dst} -p {self.protocol}{local}{self._match_ports()} {self.comment} {self._dnat_target()}"

    def forward_rule(self):
        """Accept exactly the flows this mapping DNATs: both directions, and ICMP errors about them
        (those are RELATED to the flow's conntrack entry, so they match it too)."""
        match = f"--ctstate DNAT --ctproto {PROTOCOL_NUMBERS[self.protocol]} --ctreplsrc {self.to_address}"
        if self.protocol != "icmp":
            match += f" --ctorigdstport {self.port} --ctreplsrcport {self.to_port}"
        return f"-A {FORWARD_CHAIN} -m conntrack {match} {self.comment} -j ACCEPT"


def mapping_from_params(prefix, params, state):
    """Validate one mapping's options. `prefix` names it in messages ('' or 'rules[3].')."""
    name = params.get("name")
    if not name:
        raise InvalidInput(f"{prefix}name", "is required")
    if not NAME_PATTERN.match(name):
        raise InvalidInput(
            f"{prefix}name",
            f"{name!r} is not a valid mapping name: use up to 128 letters, digits, '.', '_' and '-', not starting with '-' "
            "(it is stored in a rule comment)",
        )
    if state == "absent":
        return Mapping(name=name)
    protocol = params.get("protocol") or "tcp"
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"{prefix}protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
    port, to_port = params.get("port"), params.get("to_port")
    if protocol == "icmp":
        for field_name, value in (("port", port), ("to_port", to_port)):
            if value is not None:
                raise InvalidInput(f"{prefix}{field_name}", "icmp mappings take no ports")
    else:
        if port is None:
            raise InvalidInput(f"{prefix}port", f"is required for {protocol}")
        to_port = port if to_port is None else to_port
        for field_name, value in (("port", port), ("to_port", to_port)):
            if not 1 <= value <= 65535:
                raise InvalidInput(f"{prefix}{field_name}", f"{value} is outside 1..65535")
    to_address = params.get("to_address")
    if not to_address:
        raise InvalidInput(f"{prefix}to_address", "is required")
    destination = params.get("destination")
    in_interface = params.get("in_interface")
    return Mapping(
        name=name,
        protocol=protocol,
        port=port,
        to_address=_not_loopback(f"{prefix}to_address", to_address),
        to_port=to_port,
        destination=_not_loopback(f"{prefix}destination", destination) if destination else None,
        in_interface=check_ifname(f"{prefix}in_interface", in_interface) if in_interface else None,
        local=bool(params.get("local")),
    )


def _not_loopback(field, value):
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
    seen_names, seen_keys = {}, {}
    for index, item in enumerate(params["rules"]):
        prefix = f"rules[{index}]."
        item = dict(item)
        if item.get("local") is None:
            item["local"] = params.get("local")
        mapping = mapping_from_params(prefix, item, state)
        if mapping.name in seen_names:
            raise InvalidInput(f"{prefix}name", f"{mapping.name!r} is also the name of rules[{seen_names[mapping.name]}]")
        seen_names[mapping.name] = index
        if state == "present":
            if mapping.key in seen_keys:
                other = seen_keys[mapping.key]
                raise InvalidInput(
                    f"{prefix}port",
                    f"same protocol, port, destination and in_interface as rules[{other}] ({params['rules'][other]['name']!r})",
                )
            seen_keys[mapping.key] = index
        mappings.append(mapping)
    return mappings


def _mapping_rules(mapping, spec):
    rules = {"nat": {PREROUTING_CHAIN: [mapping.prerouting_rule()]}}
    if spec.hairpin:
        rules["nat"][PREROUTING_CHAIN] += mapping.hairpin_prerouting_rules(spec.hairpin_sources)
        rules["nat"][POSTROUTING_CHAIN] = [mapping.hairpin_masquerade_rule()]
    if mapping.local:
        rules["nat"][LOCAL_CHAIN] = [mapping.output_rule()]
    if spec.accept_forward:
        rules["filter"] = {FORWARD_CHAIN: [mapping.forward_rule()]}
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
    """name -> sorted rule lines, from owned rules; lines of no mapping go under None."""
    by_name = {}
    for chains in owned.chains.values():
        for lines in chains.values():
            for line in lines:
                if line == IP_FORWARD_MARK:
                    continue
                comment = rule_comment(line) or ""
                name = comment[len(MAPPING_PREFIX):] if comment.startswith(MAPPING_PREFIX) else None
                by_name.setdefault(name, []).append(line)
    return {name: sorted(lines) for name, lines in by_name.items()}


def _key_of_rule(line):
    """(protocol, port, destination, in_interface) of an owned PREROUTING rule line."""
    tokens = shlex.split(line)
    values = {}
    negated = False
    for flag, value in zip(tokens, tokens[1:]):
        if flag == "!":
            negated = True  # "! -d 127.0.0.0/8" names no destination
        elif negated:
            negated = False
        else:
            values.setdefault(flag, value)
    port = values.get("--dport")
    destination = values.get("-d")
    return (values.get("-p"), int(port) if port else None, destination[:-3] if destination else None, values.get("-i"))


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


def desired_rules(spec, current_by_name, mark_ip_forward):
    """The owned rules after the run: kept mappings as they are, listed ones as declared."""
    listed = {mapping.name for mapping in spec.mappings}
    kept = {} if spec.exclusive else {
        name: lines for name, lines in current_by_name.items() if name is not None and name not in listed
    }
    desired = OwnedRules(chains={table: {} for table in OWNED_CHAINS}, jumps={table: {} for table in OWNED_CHAINS})

    def add(table, chain, line):
        desired.chains[table].setdefault(chain, []).append(line)

    for lines in kept.values():
        for line in lines:
            add("filter" if line.startswith(f"-A {FORWARD_CHAIN} ") else "nat", line.split()[1], line)
    if spec.state == "present":
        for mapping in spec.mappings:
            for table, chains in _mapping_rules(mapping, spec).items():
                for chain, lines in chains.items():
                    for line in lines:
                        add(table, chain, line)
    if mark_ip_forward and desired.chains["nat"].get(PREROUTING_CHAIN):
        add("nat", PREROUTING_CHAIN, IP_FORWARD_MARK)
    for (table, builtin), chain in JUMPS.items():
        if desired.chains[table].get(chain):
            desired.jumps[table][builtin] = jump_line(builtin, chain)
    return desired


def check_conflicts(spec, current_by_name):
    """Refuse a mapping that would match the same packets as another owned mapping that stays."""
    if spec.state != "present":
        return
    listed = {mapping.name for mapping in spec.mappings}
    taken = {}
    if not spec.exclusive:
        for name, lines in current_by_name.items():
            if name is not None and name not in listed:
                for line in lines:
                    if line.startswith(f"-A {PREROUTING_CHAIN} "):
                        taken[_key_of_rule(line)] = name
    for index, mapping in enumerate(spec.mappings):
        other = taken.get(mapping.key)
        if other is not None:
            where = f"rules[{index}]." if len(spec.mappings) > 1 or index else ""
            raise InvalidInput(
                f"{where}port",
                f"mapping {mapping.name!r} would match the same packets as mapping {other!r}, which this host already has",
            )


def _skeleton(owned):
    """The owned chains that exist and the jumps to them."""
    return {
        "chains": sorted(f"{table} {chain}" for table, chains in owned.chains.items() for chain in chains),
        "jumps": sorted(line for table_jumps in owned.jumps.values() for line in table_jumps.values()),
    }


def _view(by_name, owned, ip_forward):
    return {
        "mappings": {name: lines for name, lines in by_name.items() if name is not None},
        "stray_rules": by_name.get(None, []),
        **_skeleton(owned),
        "ip_forward": ip_forward,
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


def _conntrack_keys(lines):
    """(protocol, port, destination) of the mapped flows of some owned rule lines."""
    return {_key_of_rule(line)[:3] for line in lines if line.startswith(f"-A {PREROUTING_CHAIN} ")}


def _delete_flows(conntrack, entry):
    entry["deleted"] = conntrack.delete(entry["protocol"], entry["port"], entry["destination"])


def _plan_conntrack(plan, conntrack, keys):
    """Delete the flows of every mapping key a change touches: they were NATed (or not) by the old rules."""
    if not keys or conntrack is None:
        return
    if conntrack.binary is None:
        plan.warnings.append(
            "conntrack (the tool) was not found: flows that started before this change keep their old translation "
            f"until their conntrack entries expire; to have them deleted, {install_hint('conntrack')}")
        return
    for protocol, port, destination in sorted(keys, key=lambda key: (key[0], key[1] or 0, key[2] or "")):
        entry = {"protocol": protocol, "port": port, "destination": destination, "deleted": None}
        plan.conntrack.append(entry)
        flows = protocol + (f" port {port}" if port else "") + (f" to {destination}" if destination else "")
        plan.add(f"delete the conntrack entries of {flows}, so that flows older than the change meet the new rules",
                 partial(_delete_flows, conntrack, entry))


def build_plan(backend, spec, dump, ip_forward, conntrack=None):
    """Plan every change of the run from one iptables-save dump and the ip_forward value.

    conntrack: a ConntrackTable, for deleting the flows of the mappings that change (or None).
    """
    current = owned_rules(dump, OWNED_CHAINS)
    current_by_name = rules_by_mapping(current)
    check_conflicts(spec, current_by_name)
    had_mark = IP_FORWARD_MARK in current.chains.get("nat", {}).get(PREROUTING_CHAIN, [])
    turn_forward_on = spec.ip_forward and spec.state == "present" and ip_forward != 1
    desired = desired_rules(spec, current_by_name, mark_ip_forward=had_mark or turn_forward_on)
    # The last mapping is going: put ip_forward back if the collection turned it on.
    restore_forward = had_mark and not desired.chains["nat"].get(PREROUTING_CHAIN) and ip_forward != 0

    plan = DnatPlan(_view(current_by_name, current, ip_forward))
    script, counts = restore_script(current, desired)
    desired_by_name = rules_by_mapping(desired)
    described = {mapping.name: mapping.summary() for mapping in spec.mappings}
    touched_flows = set()
    for name in sorted(name for name in set(current_by_name) | set(desired_by_name) if name is not None):
        before, after = current_by_name.get(name), desired_by_name.get(name)
        if before == after:
            continue
        touched_flows |= _conntrack_keys((before or []) + (after or []))
        if after is None:
            plan.add(f"remove mapping {name}", None, {("mappings", name): REMOVE})
            continue
        if before is None:
            verb = "add"
        elif set(before) < set(after):
            verb = "restore missing rules of"
        else:
            verb = "update"
        detail = f" ({described[name]})" if name in described else ""
        plan.add(f"{verb} mapping {name}{detail}", None, {("mappings", name): after})
    if None in current_by_name:
        plan.add(f"remove {len(current_by_name[None])} rules that belong to no mapping from the netns.expose chains",
                 None, {("stray_rules",): []})
    skeleton = _skeleton(desired)
    if any(plan.after[key] != value for key, value in skeleton.items()):
        plan.add("update the netns.expose chains and the jumps to them", None, {(key,): value for key, value in skeleton.items()})
    if script:
        summary = ", ".join(f"{table} +{added} -{deleted}" for table, (added, deleted) in sorted(counts.items()))
        plan.add(
            f"commit the rule changes in one iptables-restore --noflush transaction ({backend.variant}: {summary})",
            partial(commit_with_rollback, backend, current, script),
        )
    if spec.flush_conntrack:
        _plan_conntrack(plan, conntrack, touched_flows)
    if turn_forward_on:
        plan.add(f"set net.ipv4.ip_forward = 1 (was {ip_forward})", partial(write_ip_forward, 1), {("ip_forward",): 1})
    elif restore_forward:
        plan.add("set net.ipv4.ip_forward = 0 (restoring the value before the first mapping)",
                 partial(write_ip_forward, 0), {("ip_forward",): 0})
    return plan


class RolledBack(Exception):
    """The transaction failed; the owned rules were put back as they were."""


def commit_with_rollback(backend, before, script):
    """Commit; if it fails (iptables-restore commits table by table), put the owned rules back."""
    try:
        backend.commit(script)
    except Exception as failure:
        now = owned_rules(backend.read(), OWNED_CHAINS)
        undo, dummy = restore_script(now, before)
        if undo:
            backend.commit(undo)
        raise RolledBack(f"{failure}; the rules this collection owns were restored to their state before the run") from failure
