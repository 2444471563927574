# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""From the role's declarative `expose_services` to what the modules are called with.

The role calls this (through the services_plan filter) on the controller, once per
host, before any module runs: everything that can be wrong across services is
refused here, with the service and the field named, before anything changes.
The result batches every pair into one netns_veth call and every mapping into
one dnat_rule call, whatever the number of services.
"""
from __future__ import annotations

import ipaddress
import re

from ansible_collections.netns.expose.plugins.module_utils._validation import (
    InvalidInput,
    check_ifname,
    check_netns_name,
    parse_ipv4_address,
    parse_ipv4_interface,
)

# Mapping names are "<service>-<protocol>-<host_port>" and must fit dnat_rule's
# name rules (128 characters, no quoting): the service name leaves room for the rest.
SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PAIR_FIELDS = ("netns", "ns_ifname", "host_ifname", "ns_address", "host_address")
PORTED = ("tcp", "udp")


def _need(field, value):
    if value in (None, ""):
        raise InvalidInput(field, "is required")
    return value


def _port(field, value):
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value), 10)
        except ValueError:
            raise InvalidInput(field, f"{value!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise InvalidInput(field, f"{value} is outside 1..65535")
    return value


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


def _interface_address(facts, ifname):
    iface = facts.get(ifname.replace("-", "_"))
    if not iface:
        return None
    return (iface.get("ipv4") or {}).get("address")


class _Service:
    """One validated entry of expose_services."""

    def __init__(self, index, raw, defaults, state, facts):
        label = f"expose_services[{index}]"
        self.name = _need(f"{label}.name", raw.get("name"))
        if not SERVICE_NAME.match(str(self.name)):
            raise InvalidInput(
                f"{label}.name",
                f"{self.name!r} is not a valid service name: up to 64 letters, digits, '.', '_' and '-', "
                "not starting with '-' (it names the service's port mappings)",
            )
        self.where = f"{label} ({self.name})"
        self.pair = {}
        for key in PAIR_FIELDS:
            self.pair[key] = _need(f"{self.where}.{key}", raw.get(key))
        check_netns_name(f"{self.where}.netns", self.pair["netns"])
        for key in ("ns_ifname", "host_ifname"):
            check_ifname(f"{self.where}.{key}", self.pair[key])
        self.ns_address = parse_ipv4_interface(f"{self.where}.ns_address", self.pair["ns_address"])
        host_address = parse_ipv4_interface(f"{self.where}.host_address", self.pair["host_address"])
        if host_address.network != self.ns_address.network:
            raise InvalidInput(f"{self.where}.host_address",
                               f"{host_address} is not in the subnet of ns_address ({self.ns_address.network})")
        if host_address.ip == self.ns_address.ip:
            raise InvalidInput(f"{self.where}.host_address", f"{host_address.ip} is also the ns_address")
        self.ports = [self._port_entry(i, port) for i, port in enumerate(raw.get("ports") or [])]
        self.in_interface = self.host_ip = None
        if state == "present":
            self._resolve_host_side(raw, defaults, facts)

    def _port_entry(self, index, raw):
        where = f"{self.where}.ports[{index}]"
        protocol = raw.get("protocol", "tcp")
        if protocol not in (*PORTED, "icmp"):
            raise InvalidInput(f"{where}.protocol", f"{protocol!r} is not one of tcp, udp, icmp")
        if protocol == "icmp":
            for key in ("host_port", "ns_port", "probe"):
                if raw.get(key) not in (None, ""):
                    raise InvalidInput(f"{where}.{key}", "icmp takes no ports and no probe")
            return {"protocol": "icmp", "host_port": None, "ns_port": None, "expect": None, "probe": None}
        host_port = _port(f"{where}.host_port", _need(f"{where}.host_port", raw.get("host_port")))
        ns_port = raw.get("ns_port")
        ns_port = host_port if ns_port in (None, "") else _port(f"{where}.ns_port", ns_port)
        if protocol == "tcp" and raw.get("probe") not in (None, ""):
            raise InvalidInput(f"{where}.probe", "is for udp ports (tcp is probed with an HTTP GET)")
        if protocol == "udp" and raw.get("expect") and not raw.get("probe"):
            raise InvalidInput(f"{where}.probe", "is required with expect: it is the datagram that asks for the reply")
        return {"protocol": protocol, "host_port": host_port, "ns_port": ns_port,
                "expect": raw.get("expect") or None, "probe": raw.get("probe") or None}

    def _resolve_host_side(self, raw, defaults, facts):
        """in_interface and host_ip: the service's own, the role's, or the default route's."""
        default_route = facts.get("default_ipv4") or {}
        in_interface = raw.get("in_interface") or defaults.get("in_interface")
        interface_field = f"{self.where}.in_interface" if raw.get("in_interface") else "expose_in_interface"
        if not in_interface:
            in_interface = default_route.get("interface")
            if not in_interface:
                raise InvalidInput(interface_field, "is not set and the host has no default IPv4 route to take it from")
        self.in_interface = check_ifname(interface_field, in_interface)
        host_ip = raw.get("host_ip") or defaults.get("host_ip")
        if not host_ip:
            host_ip = _interface_address(facts, in_interface)
            if not host_ip:
                raise InvalidInput(interface_field, f"{in_interface!r} has no IPv4 address on this host to take host_ip from")
        field = f"{self.where}.host_ip" if raw.get("host_ip") else "expose_host_ip"
        address = parse_ipv4_address(field, host_ip)
        if address.is_loopback:
            raise InvalidInput(field, f"{address} is a loopback address: publishing on 127.0.0.0/8 would open the "
                                      "host's loopback to the LAN (CVE-2020-8558)")
        self.host_ip = str(address)

    def mapping_name(self, port):
        if port["protocol"] == "icmp":
            return f"{self.name}-icmp"
        return f"{self.name}-{port['protocol']}-{port['host_port']}"


def _check_across(services, facts):
    """What no single service can get wrong alone: shared names, ports, namespaces and subnets."""
    by_name, by_netns, by_host_ifname, by_key, subnets = {}, {}, {}, {}, []
    for service in services:
        if service.name in by_name:
            raise InvalidInput(f"{service.where}.name", f"is also the name of {by_name[service.name].where}")
        by_name[service.name] = service
        same_netns = by_netns.get(service.pair["netns"])
        if same_netns is not None:
            if same_netns.pair != service.pair:
                raise InvalidInput(
                    f"{service.where}.netns",
                    f"{service.pair['netns']!r} is also claimed by {same_netns.where} with different interfaces or "
                    "addresses; services sharing a netns must declare the same pair",
                )
            continue  # the same pair, declared again: one pair serves both
        by_netns[service.pair["netns"]] = service
        other = by_host_ifname.get(service.pair["host_ifname"])
        if other is not None:
            raise InvalidInput(f"{service.where}.host_ifname",
                               f"{service.pair['host_ifname']!r} is also the host end of {other.where}")
        by_host_ifname[service.pair["host_ifname"]] = service
        for network, other in subnets:
            if network.overlaps(service.ns_address.network):
                raise InvalidInput(f"{service.where}.ns_address",
                                   f"{service.ns_address.network} overlaps {network} of {other.where}")
        subnets.append((service.ns_address.network, service))

    host_networks = _host_networks(facts, set(by_host_ifname))
    for network, service in subnets:
        for host_network, ifname in host_networks.items():
            if network.overlaps(host_network):
                raise InvalidInput(f"{service.where}.ns_address",
                                   f"{network} overlaps {host_network} of the host's interface {ifname}")

    for service in services:
        for index, port in enumerate(service.ports):
            key = (port["protocol"], port["host_port"], service.host_ip, service.in_interface)
            if key in by_key:
                other, other_index = by_key[key]
                what = "icmp" if port["protocol"] == "icmp" else f"{port['protocol']} host_port {port['host_port']}"
                raise InvalidInput(
                    f"{service.where}.ports[{index}]",
                    f"{what} on {service.host_ip} is also published by {other.where}.ports[{other_index}]",
                )
            by_key[key] = (service, index)


def services_plan(raw_services, state="present", in_interface=None, host_ip=None, facts=None):
    """Validate expose_services and return the batched module arguments (see the filter's docs)."""
    if state not in ("present", "absent"):
        raise InvalidInput("expose_state", f"{state!r} is not one of present, absent")
    if not isinstance(raw_services, list) or not all(isinstance(item, dict) for item in raw_services):
        raise InvalidInput("expose_services", "must be a list of dictionaries")
    facts = facts or {}
    defaults = {"in_interface": in_interface, "host_ip": host_ip}
    services = [_Service(index, raw, defaults, state, facts) for index, raw in enumerate(raw_services)]
    if state == "present":
        _check_across(services, facts)

    pairs, seen_netns = [], set()
    for service in services:
        if service.pair["netns"] not in seen_netns:
            seen_netns.add(service.pair["netns"])
            pairs.append(dict(service.pair))
    mappings, targets, demo = [], [], []
    for service in services:
        to_address = str(service.ns_address.ip)
        for port in service.ports:
            mapping = {"name": service.mapping_name(port), "protocol": port["protocol"], "to_address": to_address}
            # A check of the netns.expose.probe module, as a slave runs it.
            target = {"target": service.name, "protocol": port["protocol"], "address": service.host_ip,
                      "port": port["host_port"], "expect": port["expect"], "probe": port["probe"]}
            if port["protocol"] in PORTED:
                mapping.update(port=port["host_port"], to_port=port["ns_port"])
            if state == "present":
                mapping.update(destination=service.host_ip, in_interface=service.in_interface)
            mappings.append(mapping)
            targets.append(target)
        demo.append({
            "name": service.name,
            "netns": service.pair["netns"],
            "tcp_ports": sorted({port["ns_port"] for port in service.ports if port["protocol"] == "tcp"}),
            "udp_ports": sorted({port["ns_port"] for port in service.ports if port["protocol"] == "udp"}),
        })
    # Clients in any of the host's service namespaces may reach every mapping (hairpin).
    hairpin_sources = sorted({str(service.ns_address.network) for service in services})
    return {"pairs": pairs, "mappings": mappings, "targets": targets, "demo": demo, "hairpin_sources": hairpin_sources}
