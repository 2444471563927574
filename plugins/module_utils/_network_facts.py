# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's interfaces and IPv4 addresses, from iproute2's JSON, as ansible.builtin.setup's network facts.

Only the facts the expose role reads, with setup's keys and shapes, so that the role reads them the same
whichever gathered them: `interfaces`, `default_ipv4` (interface, address, gateway) and, for each interface,
`device`, `active`, `ipv4` and `ipv4_secondaries`. Two runs of ip (`ip -j addr show` and
`ip -j -4 route show default`) instead of the several commands per interface (ip, ethtool) of setup.

What setup does, and this does too (ansible/module_utils/facts/network/linux.py):
- `interfaces` lists every link, and every address label that is not its link's name (`eth0:1`), with `:` made `_`;
- an interface's facts are under its name with `:` and `-` made `_` (`.` stays): `veth-a` -> `veth_a`;
- `ipv4` is the first primary address of the link, the further ones and then the kernel's secondary addresses
  (another address in the subnet of one) are `ipv4_secondaries`; the prefix is a string; `broadcast` is `""`
  when the address has none; an address with a peer (`10.0.0.1 peer 10.0.0.2/32`) is taken as a /32;
- an address with a label of its own is under the label, not under its link (a secondary one is under both).
"""
from __future__ import annotations

import ipaddress
import json

ADDR_ARGS = ("-j", "addr", "show")
ROUTE_ARGS = ("-j", "-4", "route", "show", "default")


class NetworkFactsError(Exception):
    """ip failed, or printed what is not its JSON."""


def fact_key(name):
    """The key of an interface's facts, as setup makes it: `:` (labels) and `-` become `_`, `.` stays."""
    return name.replace(":", "_").replace("-", "_")


def _inet(link, secondary=None, exclude_scopes=()):
    """The IPv4 addresses of a link (of `ip -j addr show`), primary or secondary ones only unless secondary is None."""
    return [addr for addr in link.get("addr_info") or () if addr.get("family") == "inet" and addr.get("local")
            and (secondary is None or bool(addr.get("secondary")) == secondary)
            and addr.get("scope", "global") not in exclude_scopes]


def ipv4_entry(addr):
    """setup's dict of one address: address, broadcast, netmask, network, prefix (a string)."""
    local = addr["local"]
    peer = addr.get("address", local) != local
    prefix = 32 if peer else int(addr.get("prefixlen", 32))
    network = ipaddress.IPv4Network(f"{local}/{prefix}", strict=False)
    return {"address": local, "broadcast": "" if peer else addr.get("broadcast", ""),
            "netmask": str(network.netmask), "network": str(network.network_address), "prefix": str(prefix)}


def interface_facts(links):
    """{name: facts} of every link and of every label other than its link's name, in the order of `ip addr`."""
    by_name = {}
    for link in links:
        device = link.get("ifname")
        if not device:
            continue
        by_name[device] = {"device": device, "active": str(link.get("operstate", "unknown")).lower() != "down"}
        # setup reads `ip addr show primary dev X`, then `ip addr show secondary dev X`.
        for secondary in (False, True):
            for addr in _inet(link, secondary):
                label, entry = addr.get("label") or device, ipv4_entry(addr)
                if label != device:
                    by_name[label] = {}  # setup starts a label's facts over at each of its addresses
                facts = by_name[label]
                if secondary or "ipv4" in facts:
                    facts.setdefault("ipv4_secondaries", []).append(entry)
                else:
                    facts["ipv4"] = entry
                if secondary and label != device:
                    by_name[device].setdefault("ipv4_secondaries", []).append(dict(entry))
    return by_name


def source_address(links, device, gateway=None):
    """The address the kernel gives the packets of a route through device (to gateway) without a source of its own.

    The first primary address of the device in the subnet of the gateway, else its first primary one but host
    scope ones, else the first primary address of global scope of any link.
    """
    own = [addr for link in links if link.get("ifname") == device for addr in _inet(link, False, ("host",))]
    if gateway:
        for addr in own:
            if ipaddress.IPv4Address(gateway) in ipaddress.IPv4Network(f"{addr['local']}/{addr.get('prefixlen', 32)}",
                                                                       strict=False):
                return addr["local"]
    if own:
        return own[0]["local"]
    return next((addr["local"] for link in links for addr in _inet(link, False, ("host", "link"))), None)


def default_ipv4(routes, links):
    """setup's default_ipv4 from `ip -j -4 route show default`: {interface, address, gateway}, {} without one.

    The route the kernel uses is the one of the lowest metric; a route that is not unicast (unreachable,
    blackhole, ...) leaves the host without one, as setup finds it (by `ip route get`).
    """
    if not routes:
        return {}
    route = min(routes, key=lambda route: int(route.get("metric", 0)))
    hop = route if route.get("dev") else next(iter(route.get("nexthops") or ()), {})
    if route.get("type", "unicast") != "unicast" or not hop.get("dev"):
        return {}
    facts = {"interface": hop["dev"]}
    address = route.get("prefsrc") or source_address(links, hop["dev"], hop.get("gateway"))
    if address:
        facts["address"] = address
    if hop.get("gateway"):
        facts["gateway"] = hop["gateway"]
    return facts


def network_facts(links, routes):
    """The facts (keys of ansible_facts) from the parsed `ip -j addr show` and `ip -j -4 route show default`."""
    interfaces = interface_facts(links)
    facts = {fact_key(name): value for name, value in interfaces.items()}
    facts["interfaces"] = [name.replace(":", "_") for name in interfaces]
    facts["default_ipv4"] = default_ipv4(routes, links)
    return facts


def parse(text, command):
    """The list that ip printed as JSON (empty output: an empty list)."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise NetworkFactsError(f"{command} did not print a JSON list (is its iproute2 too old for -j?): "
                                f"{text.strip()[:200]!r}")
    return data


def gather(run_command, ip):
    """The facts, with the ip program at path `ip`; run_command(argv) -> (rc, stdout, stderr) as AnsibleModule's."""
    outputs = []
    for args in (ADDR_ARGS, ROUTE_ARGS):
        command = " ".join(("ip",) + args)
        rc, out, err = run_command([ip, *args])
        if rc != 0:
            raise NetworkFactsError(f"{command} failed (rc {rc}): {(err or out).strip() or 'no message'}")
        outputs.append(parse(out, command))
    return network_facts(*outputs)


def read(module):
    """The facts of the module's host; fails the module, saying why, where ip is missing or fails."""
    ip = module.get_bin_path("ip")
    if not ip:
        module.fail_json(msg="the ip program of iproute2 is not on this host (PATH, /sbin, /usr/sbin); install iproute2")
    try:
        return gather(module.run_command, ip)
    except NetworkFactsError as exc:
        module.fail_json(msg=str(exc))
