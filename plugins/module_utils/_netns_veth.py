# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read, plan and apply for the netns_veth module.

The view that the diff shows is also what the planner reasons on: each step
records its effect on the view, and later steps look at the view as the
earlier steps leave it (a link moved into a namespace loses its addresses and
goes down, for example).
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from functools import partial

from ansible_collections.netns.expose.plugins.module_utils._netlink import netns_run_dir
from ansible_collections.netns.expose.plugins.module_utils._plan import Plan
from ansible_collections.netns.expose.plugins.module_utils._validation import (
    InvalidInput,
    check_ifname,
    check_netns_name,
    parse_ipv4_interface,
)

# Set as the alias of `lo` in a namespace this module created, so that
# state=absent deletes only namespaces it made (not one a user brought).
OWNER_MARK = "netns.expose"
# What the kernel gives a new veth when no mtu is asked for.
VETH_DEFAULT_MTU = 1500
MTU_MIN, MTU_MAX = 68, 65535


@dataclass(frozen=True)
class VethSpec:
    netns: str
    ns_ifname: str
    host_ifname: str
    ns_address: object
    host_address: object
    default_route: bool
    mtu: int | None
    state: str

    @classmethod
    def from_params(cls, params):
        """Validate module parameters; raises InvalidInput naming the option."""
        ns_ifname = check_ifname("ns_ifname", params["ns_ifname"])
        host_ifname = check_ifname("host_ifname", params["host_ifname"])
        if ns_ifname == host_ifname:
            raise InvalidInput("ns_ifname", f"must differ from host_ifname (both are {ns_ifname!r})")
        mtu = params.get("mtu")
        if mtu is not None and not MTU_MIN <= mtu <= MTU_MAX:
            raise InvalidInput("mtu", f"{mtu} is outside {MTU_MIN}..{MTU_MAX}")
        ns_address = host_address = None
        if params["state"] == "present":
            ns_address = parse_ipv4_interface("ns_address", params["ns_address"])
            host_address = parse_ipv4_interface("host_address", params["host_address"])
            if ns_address.network != host_address.network:
                raise InvalidInput(
                    "host_address",
                    f"{host_address} is not in the subnet of ns_address {ns_address} ({ns_address.network})",
                )
            if ns_address.ip == host_address.ip:
                raise InvalidInput("host_address", f"{host_address.ip} is also ns_address; the two ends need different addresses")
        return cls(
            netns=check_netns_name("netns", params["netns"]),
            ns_ifname=ns_ifname,
            host_ifname=host_ifname,
            ns_address=ns_address,
            host_address=host_address,
            default_route=params.get("default_route", True),
            mtu=mtu,
            state=params["state"],
        )


@dataclass
class Observed:
    """The host as read before planning."""

    netns_present: bool
    netns_owned: bool
    host_links: dict
    netns_links: dict
    default_gateway: str | None


def read_state(netlink, spec):
    state = netlink.netns_state(spec.netns)
    if state == "foreign":
        path = os.path.join(netns_run_dir(), spec.netns)
        raise InvalidInput("netns", f"{path} exists but is not a network namespace")
    present = state == "present"
    netns_links = netlink.links(spec.netns) if present else {}
    loopback = netns_links.get("lo")
    return Observed(
        netns_present=present,
        netns_owned=bool(loopback and loopback.alias == OWNER_MARK),
        host_links=netlink.links(),
        netns_links=netns_links,
        default_gateway=netlink.default_gateway(spec.netns) if present else None,
    )


# Where the pair stands: not there, both ends on the host, or ns end in the netns.
PAIR_ABSENT, PAIR_SPLIT, PAIR_PLACED = "absent", "split", "placed"


def _device(link):
    return "physical device" if link.kind is None else f"{link.kind} device"


def classify_pair(spec, observed):
    """Say where the pair stands, or refuse names that something else already uses."""
    host_end = observed.host_links.get(spec.host_ifname)
    ns_end = observed.netns_links.get(spec.ns_ifname)
    if host_end is None:
        if ns_end is not None:
            raise InvalidInput(
                "ns_ifname",
                f"{spec.ns_ifname!r} already exists in netns {spec.netns!r} ({_device(ns_end)}) "
                f"and is not paired with host_ifname {spec.host_ifname!r}",
            )
        return PAIR_ABSENT
    if host_end.kind != "veth":
        raise InvalidInput("host_ifname", f"{spec.host_ifname!r} is already in use on the host by a {_device(host_end)}, not a veth")
    if host_end.peer_in_other_netns:
        if (
            ns_end is not None
            and ns_end.kind == "veth"
            and ns_end.peer_index == host_end.index
            and host_end.peer_index == ns_end.index
        ):
            return PAIR_PLACED
        raise InvalidInput(
            "host_ifname",
            f"{spec.host_ifname!r} is a veth whose peer is not {spec.ns_ifname!r} in netns {spec.netns!r}",
        )
    peer_on_host = observed.host_links.get(spec.ns_ifname)
    if peer_on_host is None or peer_on_host.index != host_end.peer_index:
        raise InvalidInput(
            "host_ifname",
            f"{spec.host_ifname!r} is a veth paired with another interface on the host, not {spec.ns_ifname!r}",
        )
    if ns_end is not None:
        raise InvalidInput("ns_ifname", f"{spec.ns_ifname!r} is also the name of a {_device(ns_end)} in netns {spec.netns!r}")
    return PAIR_SPLIT


def _end_view(ifname, link, netns):
    if link is None:
        return {"ifname": ifname, "present": False}
    return {
        "ifname": ifname,
        "present": True,
        "netns": netns,
        "addresses": sorted(link.addresses),
        "up": link.up,
        "mtu": link.mtu,
    }


def _new_end_view(ifname, netns, mtu):
    return {"ifname": ifname, "present": True, "netns": netns, "addresses": [], "up": False, "mtu": mtu or VETH_DEFAULT_MTU}


def describe(spec, observed, pair):
    """The view of the host that the diff shows (before, and as the plan leaves it)."""
    if pair == PAIR_SPLIT:
        ns_end = _end_view(spec.ns_ifname, observed.host_links[spec.ns_ifname], None)
    else:
        ns_end = _end_view(spec.ns_ifname, observed.netns_links.get(spec.ns_ifname), spec.netns)
    loopback = observed.netns_links.get("lo")
    return {
        "netns": {"name": spec.netns, "present": observed.netns_present, "loopback_up": bool(loopback and loopback.up)},
        "host_end": _end_view(spec.host_ifname, observed.host_links.get(spec.host_ifname), None),
        "ns_end": ns_end,
        "default_route": observed.default_gateway,
    }


def build_plan(netlink, spec, observed):
    """Compute every step of the run; nothing is changed here."""
    pair = classify_pair(spec, observed)
    plan = Plan(describe(spec, observed, pair))
    plan.warnings = []
    if spec.state == "present":
        _plan_present(netlink, spec, observed, pair, plan)
    else:
        _plan_absent(netlink, spec, observed, pair, plan)
    return plan


def _create_netns(netlink, name):
    netlink.create_netns(name)
    netlink.set_link("lo", name, state="up", ifalias=OWNER_MARK)


def _plan_present(netlink, spec, observed, pair, plan):
    netns = spec.netns
    if not observed.netns_present:
        plan.add(
            f"create netns {netns}",
            partial(_create_netns, netlink, netns),
            {("netns", "present"): True, ("netns", "loopback_up"): True},
        )
    elif not plan.after["netns"]["loopback_up"]:
        plan.add(f"set lo up in netns {netns}", partial(netlink.set_link, "lo", netns, state="up"), {("netns", "loopback_up"): True})

    if pair == PAIR_ABSENT:
        plan.add(
            f"create veth pair {spec.host_ifname} <-> {spec.ns_ifname} (in netns {netns})",
            partial(netlink.create_veth, spec.host_ifname, spec.ns_ifname, netns, spec.mtu),
            {
                ("host_end",): _new_end_view(spec.host_ifname, None, spec.mtu),
                ("ns_end",): _new_end_view(spec.ns_ifname, netns, spec.mtu),
            },
        )
    elif pair == PAIR_SPLIT:
        # The kernel drops a link's addresses and takes it down when it changes namespace.
        plan.add(
            f"move {spec.ns_ifname} into netns {netns}",
            partial(netlink.move_link, spec.ns_ifname, netns),
            {("ns_end", "netns"): netns, ("ns_end", "addresses"): [], ("ns_end", "up"): False},
        )

    # After a create or a move the ends hold no addresses, so what was read no longer applies.
    host_end = observed.host_links.get(spec.host_ifname) if pair != PAIR_ABSENT else None
    ns_end = observed.netns_links.get(spec.ns_ifname) if pair == PAIR_PLACED else None
    _plan_end(netlink, spec, plan, "host_end", None, spec.host_address, host_end)
    _plan_end(netlink, spec, plan, "ns_end", netns, spec.ns_address, ns_end)

    gateway = str(spec.host_address.ip)
    if spec.default_route and plan.after["default_route"] != gateway:
        plan.add(
            f"set default route via {gateway} in netns {netns}",
            partial(netlink.replace_default_route, gateway, spec.ns_ifname, netns),
            {("default_route",): gateway},
        )


def _plan_end(netlink, spec, plan, role, netns, address, link):
    """Converge one end's MTU, IPv4 addresses and link state.

    `link` is the end as read before the run (None if it is only being made).
    """
    end = plan.after[role]
    ifname = end["ifname"]
    where = f" in netns {netns}" if netns else ""
    if spec.mtu is not None and end["mtu"] != spec.mtu:
        plan.add(f"set mtu {spec.mtu} on {ifname}{where}", partial(netlink.set_link, ifname, netns, mtu=spec.mtu), {(role, "mtu"): spec.mtu})
    wanted = str(address)
    secondaries = set(link.secondaries) if link else set()
    # Primaries first: deleting a primary address also deletes the secondaries of its
    # subnet (unless promote_secondaries is set), and those must not be deleted twice.
    for stale in sorted(end["addresses"], key=lambda cidr: cidr in secondaries):
        if stale == wanted or stale not in plan.after[role]["addresses"]:
            continue
        gone = {stale}
        if stale not in secondaries:
            subnet = ipaddress.IPv4Interface(stale).network
            gone |= {cidr for cidr in secondaries if ipaddress.IPv4Interface(cidr).network == subnet}
        remaining = sorted(set(plan.after[role]["addresses"]) - gone)
        effects = {(role, "addresses"): remaining}
        if netns and not remaining:
            # A link left without IPv4 addresses loses its routes, the default route too.
            effects[("default_route",)] = None
        plan.add(f"remove address {stale} from {ifname}{where}", partial(netlink.delete_address, ifname, stale, netns), effects)
    if wanted not in plan.after[role]["addresses"]:
        plan.add(
            f"add address {wanted} to {ifname}{where}",
            partial(netlink.add_address, ifname, wanted, netns),
            {(role, "addresses"): sorted(set(plan.after[role]["addresses"]) | {wanted})},
        )
    if not end["up"]:
        plan.add(f"set {ifname} up{where}", partial(netlink.set_link, ifname, netns, state="up"), {(role, "up"): True})


def _plan_absent(netlink, spec, observed, pair, plan):
    if pair != PAIR_ABSENT:
        # Deleting either end of a veth deletes both.
        plan.add(
            f"delete veth pair {spec.host_ifname} <-> {spec.ns_ifname}",
            partial(netlink.delete_link, spec.host_ifname),
            {("host_end",): _end_view(spec.host_ifname, None, None), ("ns_end",): _end_view(spec.ns_ifname, None, None)},
        )
    if not observed.netns_present:
        return
    if not observed.netns_owned:
        return  # Someone else made this namespace; it stays.
    others = sorted(set(observed.netns_links) - {"lo", spec.ns_ifname})
    if others:
        plan.warnings.append(f"netns {spec.netns} was kept because it still holds interfaces this module does not manage: {', '.join(others)}")
        return
    plan.add(
        f"delete netns {spec.netns}",
        partial(netlink.remove_netns, spec.netns),
        {("netns", "present"): False, ("netns", "loopback_up"): False, ("default_route",): None},
    )


def interfaces_report(view, observed):
    """Name, netns, index, MAC, MTU, addresses and state of each end as `view` has them.

    After a real run the view is read back from the host; in check mode it is the
    plan's prediction, and index and MAC are null for links not made yet.
    """
    report = {}
    for role in ("host_end", "ns_end"):
        end = view[role]
        if not end["present"]:
            report[role] = None
            continue
        links = observed.netns_links if end["netns"] else observed.host_links
        link = links.get(end["ifname"])
        report[role] = {
            "name": end["ifname"],
            "netns": end["netns"],
            "index": link.index if link else None,
            "mac": link.mac if link else None,
            "mtu": end["mtu"],
            "addresses": end["addresses"],
            "state": "up" if end["up"] else "down",
            "operstate": link.operstate.lower() if link else None,
        }
    return report
