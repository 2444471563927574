# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""From the role's declarative `expose_services` to what the modules are called with.

The role calls this on each host, in the plan_services module, where the host's
interfaces are read (the services_plan filter calls it on the controller), before
anything changes: everything that can be wrong is refused here, with the service
and the field named. The checks are the modules' own: each service's pair is parsed
by netns_veth's VethSpec, each port by dnat_rule's mapping parser and its
verification check by probe's; only their messages are renamed to the role's
fields. The result batches every pair into one netns_veth call and every mapping
into one dnat_rule call, whatever the number of services.
"""
from __future__ import annotations

import difflib
import ipaddress

from ansible.module_utils.common.validation import check_type_bool, check_type_int, check_type_str
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.netns.expose.plugins.module_utils._dnat import (
    check_distinct,
    check_not_loopback,
    mapping_from_params,
)
from ansible_collections.netns.expose.plugins.module_utils._netns_veth import VethSpec, check_pairs_apart
from ansible_collections.netns.expose.plugins.module_utils._probe import parse_check
from ansible_collections.netns.expose.plugins.module_utils._role_spec import ROLE_VARIABLES, SERVICE_OPTIONS
from ansible_collections.netns.expose.plugins.module_utils._validation import (
    InvalidInput,
    check_allowed_sources,
    check_ifname,
)

# Variables of the expose role that its argument specs do not list: what it sets, and what verify.yml and rollout.yml read.
OTHER_ROLE_VARIABLES = ("expose_plan", "expose_verify_timeout", "expose_verify_retries", "expose_rollout_serial",
                        "expose_rollout_max_fail_percentage", "expose_explain_masters", "expose_explain_mappings",
                        "expose_explain_slave", "expose_explain_dir", "expose_explain_timeout",
                        "expose_explain_first_port")
PAIR_FIELDS = ("netns", "ns_ifname", "host_ifname", "ns_address", "host_address")
# dnat_rule's option -> the role's field, for messages about a port's mapping.
MAPPING_FIELD_NAMES = {"port": "host_port", "to_port": "ns_port"}
# probe's option -> the role's field, for messages about a port's check.
CHECK_FIELD_NAMES = {"port": "host_port"}
TYPE_CHECKS = {"str": check_type_str, "int": check_type_int, "bool": check_type_bool}
TYPE_NAMES = {"str": "a string", "int": "an integer", "bool": "a boolean (true/false, yes/no, 1/0)"}


def known_variables():
    """Every variable the expose role knows."""
    return set(ROLE_VARIABLES) | set(OTHER_ROLE_VARIABLES)


def unknown_variables(names):
    """[(name, closest known name or None)] for the expose_ variables the role does not know."""
    known = sorted(known_variables())
    return [(name, next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.8)), None))
            for name in sorted(set(names) - set(known)) if name.startswith("expose_")]


def unknown_variable_warnings(names):
    """One warning per expose_ variable the role does not know (a misspelt name would be ignored)."""
    return [f"{name} is not a variable of the netns.expose.expose role" + (f"; did you mean {closest}?" if closest else "")
            for name, closest in unknown_variables(names)]


# The fields of a service, checked against the role's `service` entry point


def _unknown(where, key, known):
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"the known ones are {', '.join(sorted(known))}"
    return InvalidInput(f"{where}.{key}", f"unknown option; {hint}")


def check_fields(where, value, spec):
    """A dict of the fields in spec, converted to their types with their defaults; InvalidInput names the field."""
    if not isinstance(value, dict):
        raise InvalidInput(where, f"must be a dictionary, not {type(value).__name__}")
    for key in value:
        if key not in spec:
            raise _unknown(where, key, spec)
    checked = {}
    for key, option in spec.items():
        field = f"{where}.{key}"
        given = value.get(key)
        if given is None:
            if option.get("required"):
                raise InvalidInput(field, "is required")
            given = option.get("default")
            checked[key] = list(given) if isinstance(given, list) else given
            continue
        kind = option.get("type", "str")
        if kind == "list":
            if not isinstance(given, list):
                raise InvalidInput(field, f"must be a list, not {type(given).__name__}")
            if "options" in option:
                checked[key] = [check_fields(f"{field}[{index}]", item, option["options"]) for index, item in enumerate(given)]
            else:
                checked[key] = [_typed(f"{field}[{index}]", item, option.get("elements", "str")) for index, item in enumerate(given)]
            continue
        checked[key] = _typed(field, given, kind)
        if option.get("choices") and checked[key] not in option["choices"]:
            raise InvalidInput(field, f"{given!r} is not one of {', '.join(map(str, option['choices']))}")
    return checked


def _typed(field, value, kind):
    """value converted to the type `kind` (str, int, bool), as Ansible's argument specs convert it."""
    try:
        return TYPE_CHECKS[kind](value)
    except TypeError:
        raise InvalidInput(field, f"{value!r} is not {TYPE_NAMES[kind]}") from None


def _renamed(names, call, *args, where=None):
    """call(*args), with a module's option name in its refusal turned into the role's field (under `where`)."""
    try:
        return call(*args)
    except InvalidInput as exc:
        prefix, _dot, option = exc.field.rpartition(".")
        raise InvalidInput(f"{prefix if where is None else where}.{names.get(option, option)}", exc.problem) from None


class _Service:
    """One entry of expose_services, checked by the modules' own parsers."""

    def __init__(self, index, raw, defaults, state, facts):
        label = f"expose_services[{index}]"
        name = raw.get("name") if isinstance(raw, dict) else None
        self.where = f"{label} ({name})" if isinstance(name, str) and name else label
        fields = check_fields(self.where, raw, SERVICE_OPTIONS)
        self.name = fields["name"]
        self.demo = fields["demo"]
        self.pair = {key: fields[key] for key in PAIR_FIELDS}
        self.spec = VethSpec.from_params({**self.pair, "state": "present"}, prefix=f"{self.where}.")
        self.ns_ip = str(self.spec.ns_address.ip)
        self.routed = fields["routed"]
        self.allowed_sources = None
        if fields["allowed_sources"] is not None:
            self.allowed_sources = list(check_allowed_sources(f"{self.where}.allowed_sources", fields["allowed_sources"]))
        self.in_interface = self.host_ip = None
        if state == "present":
            self._resolve_host_side(fields, defaults, facts)
        self.ports = [self._port(index, port, state, defaults) for index, port in enumerate(fields["ports"])]

    def _resolve_host_side(self, fields, defaults, facts):
        """in_interface (none: any) and host_ip: the service's own, the role's, or the default route's."""
        interfaces = facts.get("interfaces", [])
        in_interface, interface_field = fields["in_interface"], f"{self.where}.in_interface"
        if not in_interface:
            in_interface, interface_field = defaults.get("in_interface"), "expose_in_interface"
        if in_interface:
            check_ifname(interface_field, in_interface)
            if in_interface not in interfaces:
                raise InvalidInput(interface_field, f"{in_interface!r} is not an interface of this host "
                                                    f"(it has {', '.join(sorted(interfaces)) or 'none'})")
            self.in_interface = in_interface
        host_ip, field = fields["host_ip"], f"{self.where}.host_ip"
        if not host_ip:
            host_ip, field = defaults.get("host_ip"), "expose_host_ip"
        if not host_ip:
            address_of = in_interface or (facts.get("default_ipv4") or {}).get("interface")
            if not address_of:
                raise InvalidInput(field, "is not set and the host has no default IPv4 route to take it from")
            host_ip = ((facts.get(address_of.replace("-", "_")) or {}).get("ipv4") or {}).get("address")
            if not host_ip:
                raise InvalidInput(interface_field if in_interface else field,
                                   f"{address_of!r} has no IPv4 address on this host to take host_ip from")
        self.host_ip = check_not_loopback(field, host_ip)

    def _port(self, index, port, state, defaults):
        where = f"{self.where}.ports[{index}]"
        protocol = port["protocol"]
        name = f"{self.name}-icmp" if protocol == "icmp" else f"{self.name}-{protocol}-{port['host_port']}"
        mapping = {"name": name, "protocol": protocol, "port": port["host_port"], "to_address": self.ns_ip,
                   "to_port": port["ns_port"],
                   "allowed_sources": self.allowed_sources if port["allowed_sources"] is None else port["allowed_sources"]}
        if state == "present":
            mapping.update(destination=self.host_ip, in_interface=self.in_interface, local=defaults["local"])
        parsed = _renamed(MAPPING_FIELD_NAMES, mapping_from_params, "", mapping, "present", where=where)
        # What dnat_rule is called with: the mapping as parsed (ns_port defaulted, allowed_sources collapsed),
        # without what is unset.
        parsed_fields = {"to_port": parsed.to_port,
                         "allowed_sources": None if parsed.allowed_sources is None else list(parsed.allowed_sources)}
        module_args = {key: value for key, value in {**mapping, **parsed_fields}.items() if value is not None}
        check = {"target": self.name, "protocol": protocol, "address": self.host_ip or self.ns_ip,
                 "port": parsed.port, "check": port["check"], "path": port["path"], "status": port["status"],
                 "expect": port["expect"], "probe": port["probe"],
                 "allowed_sources": None if parsed.allowed_sources is None else list(parsed.allowed_sources)}
        check = {key: value for key, value in check.items() if value is not None}
        _renamed(CHECK_FIELD_NAMES, parse_check, 0, check, where=where)
        return {"protocol": protocol, "parsed": parsed, "mapping": module_args,
                "target": {**check, "mapping": name, "netns": self.pair["netns"]}}


def services_plan(raw_services, state="present", in_interface=None, host_ip=None, facts=None, local=True):
    """Check expose_services and return the batched module arguments (see the filter's docs)."""
    if state not in ("present", "absent"):
        raise InvalidInput("expose_state", f"{state!r} is not one of present, absent")
    if not isinstance(raw_services, list):
        raise InvalidInput("expose_services", f"must be a list of services, not {type(raw_services).__name__}")
    facts = facts or {}
    defaults = {"in_interface": in_interface, "host_ip": host_ip, "local": boolean(local)}
    services = [_Service(index, raw, defaults, state, facts) for index, raw in enumerate(raw_services)]
    _check_across(services, facts if state == "present" else None)

    pairs, seen = [], []
    for service in services:
        if service.spec not in seen:
            seen.append(service.spec)
            pairs.append(dict(service.pair))
    ports = [port for service in services for port in service.ports]
    return {
        "pairs": pairs,
        "mappings": [port["mapping"] for port in ports],
        "targets": [port["target"] for port in ports],
        "demo": [{
            "name": service.name,
            "netns": service.pair["netns"],
            "tcp_ports": sorted({port["parsed"].to_port for port in service.ports if port["protocol"] == "tcp"}),
            "udp_ports": sorted({port["parsed"].to_port for port in service.ports if port["protocol"] == "udp"}),
        } for service in services if service.demo],
        # Clients in any of the host's service namespaces reach every mapping (hairpin),
        # also the mappings restricted to an in_interface.
        "hairpin_sources": sorted({str(service.spec.ns_address.network) for service in services}),
        # Their subnets are reached only through the mappings, but those routed on purpose.
        "guarded_networks": sorted({str(service.spec.ns_address.network) for service in services if not service.routed}),
        "routed_networks": sorted({str(service.spec.ns_address.network) for service in services if service.routed}),
    }


def _check_across(services, facts):
    """What no single service can get wrong alone: names, pairs, subnets and ports (facts None: names and pairs only)."""
    by_name, distinct = {}, []
    for service in services:
        if service.name in by_name:
            raise InvalidInput(f"{service.where}.name", f"is also the name of {by_name[service.name].where}")
        by_name[service.name] = service
        same = [other for other in distinct if other.spec == service.spec]
        if same and same[0].routed != service.routed:
            raise InvalidInput(f"{service.where}.routed", f"is {str(service.routed).lower()} and "
                                                          f"{str(same[0].routed).lower()} in {same[0].where}, "
                                                          "which has the same namespace: set it alike")
        if not same:
            for other in distinct:
                check_pairs_apart(service.spec, other.spec)
            distinct.append(service)
    if facts is None:
        return
    own_ends = {service.pair["host_ifname"] for service in services}
    for host_network, ifname in _host_networks(facts, own_ends).items():
        for service in distinct:
            if service.spec.ns_address.network.overlaps(host_network):
                raise InvalidInput(f"{service.where}.ns_address",
                                   f"{service.spec.ns_address.network} overlaps {host_network} of the host's interface {ifname}")
    ports = [(f"{service.where}.ports[{index}]", port["parsed"])
             for service in services for index, port in enumerate(service.ports)]
    _renamed(MAPPING_FIELD_NAMES, check_distinct, [parsed for _where, parsed in ports], lambda index: ports[index][0])


def _host_networks(facts, skip_ifnames):
    """IPv4 networks on the host's interfaces (from network facts), but lo and the services' own ends."""
    networks = {}
    for ifname in facts.get("interfaces", []):
        if ifname == "lo" or ifname in skip_ifnames:
            continue
        iface = facts.get(ifname.replace("-", "_"), {})
        for entry in [iface.get("ipv4") or {}, *iface.get("ipv4_secondaries", [])]:
            if entry.get("address") and entry.get("netmask"):
                networks.setdefault(ipaddress.IPv4Interface(f"{entry['address']}/{entry['netmask']}").network, ifname)
    return networks
