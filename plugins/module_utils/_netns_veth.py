# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read, plan and apply for the netns_veth module.

The view that the diff shows is also what the planner reasons on: each step
records its effect on the view, and later steps look at the view as the
earlier steps leave it (a link moved into a namespace loses its addresses and
goes down, for example).

A run declares one pair (the top-level options) or a batch (`pairs`). A batch
has one plan whose view holds each pair's view under its netns; the per-pair
planners work on their part of it through a _PairScope.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from functools import partial

from ansible_collections.netns.expose.plugins.module_utils import _persist
from ansible_collections.netns.expose.plugins.module_utils._lock import LOCK_OPTION
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


# The module's options, here so that plan_services can plan a call of it (one pair: the top-level
# options, or the keys of a `pairs` entry).
PAIR_OPTIONS = dict(
    netns=dict(type="str"),
    ns_ifname=dict(type="str"),
    host_ifname=dict(type="str"),
    ns_address=dict(type="str"),
    host_address=dict(type="str"),
    default_route=dict(type="bool", default=True),
    mtu=dict(type="int"),
)
ARGUMENT_SPEC = dict(
    PAIR_OPTIONS,
    **LOCK_OPTION,
    pairs=dict(type="list", elements="dict", options=PAIR_OPTIONS),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    persistent=dict(type="bool", default=True),
)
# The other required options are checked with the rest of a pair, naming the option.
ARGUMENT_RULES = dict(
    mutually_exclusive=[("pairs", option) for option in PAIR_OPTIONS],
    required_one_of=[("netns", "pairs")],
)
PAIR_FIELDS = tuple(PAIR_OPTIONS)


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
    # How messages name this pair's options: "" for the top-level pair, "pairs[3]." in a batch.
    # Not part of the pair: two entries that declare the same pair are equal.
    prefix: str = field(default="", compare=False)

    @classmethod
    def from_params(cls, params, prefix=""):
        """Validate one pair's options; raises InvalidInput naming the option (after `prefix`)."""
        for name in ("netns", "ns_ifname", "host_ifname"):
            if params.get(name) is None:
                raise InvalidInput(f"{prefix}{name}", "is required")
        ns_ifname = check_ifname(f"{prefix}ns_ifname", params["ns_ifname"])
        host_ifname = check_ifname(f"{prefix}host_ifname", params["host_ifname"])
        if ns_ifname == host_ifname:
            raise InvalidInput(f"{prefix}ns_ifname", f"must differ from host_ifname (both are {ns_ifname!r})")
        mtu = params.get("mtu")
        if mtu is not None and not MTU_MIN <= mtu <= MTU_MAX:
            raise InvalidInput(f"{prefix}mtu", f"{mtu} is outside {MTU_MIN}..{MTU_MAX}")
        ns_address = host_address = None
        if params["state"] == "present":
            for name in ("ns_address", "host_address"):
                if params.get(name) is None:
                    raise InvalidInput(f"{prefix}{name}", "is required when state=present")
            ns_address = parse_ipv4_interface(f"{prefix}ns_address", params["ns_address"])
            host_address = parse_ipv4_interface(f"{prefix}host_address", params["host_address"])
            if ns_address.network != host_address.network:
                raise InvalidInput(
                    f"{prefix}host_address",
                    f"{host_address} is not in the subnet of ns_address {ns_address} ({ns_address.network})",
                )
            if ns_address.ip == host_address.ip:
                raise InvalidInput(
                    f"{prefix}host_address", f"{host_address.ip} is also ns_address; the two ends need different addresses"
                )
        default_route = params.get("default_route")
        return cls(
            netns=check_netns_name(f"{prefix}netns", params["netns"]),
            ns_ifname=ns_ifname,
            host_ifname=host_ifname,
            ns_address=ns_address,
            host_address=host_address,
            default_route=True if default_route is None else default_route,
            mtu=mtu,
            state=params["state"],
            prefix=prefix,
        )


def specs_from_params(params):
    """The declared pairs, one per entry in input order: the top-level pair, or each of `pairs`.

    An entry that declares the same pair as an earlier one gets an equal spec (the
    pair is planned once); entries that would fight over a name, a namespace or a
    subnet are refused, naming the later entry's option.
    """
    if params.get("pairs") is None:
        return [VethSpec.from_params(params)]
    specs, distinct = [], []
    for index, entry in enumerate(params["pairs"]):
        spec = VethSpec.from_params({**entry, "state": params["state"]}, prefix=f"pairs[{index}].")
        if spec not in distinct:
            for other in distinct:
                check_pairs_apart(spec, other)
            distinct.append(spec)
        specs.append(spec)
    return specs


def _shown(value):
    return "unset" if value is None else str(value)


def check_pairs_apart(spec, other):
    """Refuse two different pairs of one batch that cannot both be as declared."""
    where = other.prefix.rstrip(".")
    if spec.netns == other.netns:
        if spec.ns_ifname != other.ns_ifname:
            # One pair per namespace: its default route goes via that pair.
            raise InvalidInput(
                f"{spec.prefix}netns",
                f"{spec.netns!r} already holds the pair of {where} (ns_ifname {other.ns_ifname!r}); "
                "a netns takes one pair, and entries that name it must declare the same pair",
            )
        differing = next(name for name in PAIR_FIELDS if getattr(spec, name) != getattr(other, name))
        raise InvalidInput(
            f"{spec.prefix}{differing}",
            f"{where} declares {spec.ns_ifname!r} in netns {spec.netns!r} with {differing} "
            f"{_shown(getattr(other, differing))}, this entry with {_shown(getattr(spec, differing))}; "
            "entries that name the same pair must declare it the same way",
        )
    if spec.host_ifname == other.host_ifname:
        raise InvalidInput(f"{spec.prefix}host_ifname", f"{spec.host_ifname!r} is also the host_ifname of {where}")
    if spec.ns_address is not None and spec.ns_address.network.overlaps(other.ns_address.network):
        # The host would have two routes to one subnet, one via each pair.
        raise InvalidInput(
            f"{spec.prefix}ns_address",
            f"subnet {spec.ns_address.network} overlaps {other.ns_address.network}, the subnet of {where}",
        )


@dataclass
class Observed:
    """The host as read before planning."""

    netns_present: bool
    netns_owned: bool
    host_links: dict
    netns_links: dict
    default_gateway: str | None


def read_state(netlink, spec, host_links=None):
    """Read what the pair's plan needs; `host_links` is the host's links if already read."""
    state = netlink.netns_state(spec.netns)
    if state == "foreign":
        path = os.path.join(netns_run_dir(), spec.netns)
        raise InvalidInput(f"{spec.prefix}netns", f"{path} exists but is not a network namespace")
    present = state == "present"
    netns_links = netlink.links(spec.netns) if present else {}
    loopback = netns_links.get("lo")
    return Observed(
        netns_present=present,
        netns_owned=bool(loopback and loopback.alias == OWNER_MARK),
        host_links=netlink.links() if host_links is None else host_links,
        netns_links=netns_links,
        default_gateway=netlink.default_gateway(spec.netns) if present else None,
    )


def read_states(netlink, specs):
    """read_state of each pair, with one read of the host's links for all of them."""
    host_links = netlink.links()
    return [read_state(netlink, spec, host_links) for spec in specs]


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
                f"{spec.prefix}ns_ifname",
                f"{spec.ns_ifname!r} already exists in netns {spec.netns!r} ({_device(ns_end)}) "
                f"and is not paired with host_ifname {spec.host_ifname!r}",
            )
        return PAIR_ABSENT
    if host_end.kind != "veth":
        raise InvalidInput(
            f"{spec.prefix}host_ifname", f"{spec.host_ifname!r} is already in use on the host by a {_device(host_end)}, not a veth"
        )
    if host_end.peer_in_other_netns:
        if (
            ns_end is not None
            and ns_end.kind == "veth"
            and ns_end.peer_index == host_end.index
            and host_end.peer_index == ns_end.index
        ):
            return PAIR_PLACED
        raise InvalidInput(
            f"{spec.prefix}host_ifname",
            f"{spec.host_ifname!r} is a veth whose peer is not {spec.ns_ifname!r} in netns {spec.netns!r}",
        )
    peer_on_host = observed.host_links.get(spec.ns_ifname)
    if peer_on_host is None or peer_on_host.index != host_end.peer_index:
        raise InvalidInput(
            f"{spec.prefix}host_ifname",
            f"{spec.host_ifname!r} is a veth paired with another interface on the host, not {spec.ns_ifname!r}",
        )
    if ns_end is not None:
        raise InvalidInput(f"{spec.prefix}ns_ifname", f"{spec.ns_ifname!r} is also the name of a {_device(ns_end)} in netns {spec.netns!r}")
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
    _plan_pair(netlink, spec, observed, pair, plan)
    return plan


def build_batch_plan(netlink, specs, observed):
    """One plan for distinct pairs (one per netns); its view holds each pair's view under its netns."""
    # Every pair is classified before any is planned: a refusal comes before any step exists.
    pairs = [classify_pair(spec, seen) for spec, seen in zip(specs, observed)]
    plan = Plan({spec.netns: describe(spec, seen, pair) for spec, seen, pair in zip(specs, observed, pairs)})
    for spec, seen, pair in zip(specs, observed, pairs):
        _plan_pair(netlink, spec, seen, pair, _PairScope(plan, spec.netns))
    return plan


class _PairScope:
    """One pair's part of a batch plan, as the per-pair planners use a plan: `after`, `add` and `warnings`."""

    def __init__(self, plan, key):
        self._plan = plan
        self._key = key
        self.warnings = plan.warnings

    @property
    def after(self):
        return self._plan.after[self._key]

    def add(self, description, apply, effects=None):
        self._plan.add(description, apply, {(self._key, *path): value for path, value in (effects or {}).items()})


def _plan_pair(netlink, spec, observed, pair, plan):
    if spec.state == "present":
        _plan_present(netlink, spec, observed, pair, plan)
    else:
        _plan_absent(netlink, spec, observed, pair, plan)


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


# Persistence (option persistent): at boot, systemd makes each persisted namespace and its
# pair again with iproute2, from two `ip -batch` files per namespace that the plan writes.
NETNS_UNIT = "netns-expose-netns@.service"
NETNS_FILES = os.path.join(_persist.STATE_DIR, "netns")
NETNS_UNIT_TEXT = """[Unit]
Description=netns.expose: network namespace %I and its veth pair
Documentation=file:{files}/%I.host file:{files}/%I.ns
DefaultDependencies=no
After=local-fs.target
Before=network-pre.target
Wants=network-pre.target
# At boot: a namespace that exists already is left as it is.
ConditionPathExists=!/run/netns/%I

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=ip -batch {files}/%I.host
ExecStart=ip -n %I -batch {files}/%I.ns

[Install]
WantedBy=multi-user.target
""".format(files=NETNS_FILES)


def netns_unit(netns):
    """The unit that makes a persisted namespace at boot (an instance of NETNS_UNIT)."""
    return f"netns-expose-netns@{_persist.systemd_escape(netns)}.service"


def netns_paths(netns):
    """The files of one persisted namespace: its two batch files and the link that enables its unit."""
    return [os.path.join(NETNS_FILES, f"{netns}.host"), os.path.join(NETNS_FILES, f"{netns}.ns"),
            os.path.join(_persist.UNIT_DIR, "multi-user.target.wants", netns_unit(netns))]


def netns_files(spec):
    """{path: content} that make spec's namespace and pair at boot, as the plan makes them now."""
    header = _persist.HEADER.format(module="netns_veth")
    mtu = f" mtu {spec.mtu}" if spec.mtu else ""
    host = [f"netns add {spec.netns}",
            f"link add {spec.host_ifname}{mtu} type veth peer name {spec.ns_ifname}{mtu} netns {spec.netns}",
            f"addr add {spec.host_address} dev {spec.host_ifname}",
            f"link set {spec.host_ifname} up"]
    inside = ["link set lo up", f"link set lo alias {OWNER_MARK}",
              f"addr add {spec.ns_address} dev {spec.ns_ifname}", f"link set {spec.ns_ifname} up"]
    if spec.default_route:
        inside.append(f"route add default via {spec.host_address.ip}")
    host_path, ns_path, link = netns_paths(spec.netns)
    return {host_path: header + "\n".join(host) + "\n", ns_path: header + "\n".join(inside) + "\n",
            link: _persist.Link(os.path.join(_persist.UNIT_DIR, NETNS_UNIT))}


def persisted_namespaces():
    """The namespaces whose files are on the host."""
    try:
        return {name[:-len(".host")] for name in os.listdir(NETNS_FILES) if name.endswith(".host")}
    except FileNotFoundError:
        return set()


def plan_persistence(plan, specs, persistent, reload_systemd):
    """The files of the listed namespaces: written (persistent, present) or removed; the template unit
    while any namespace is persisted. Other namespaces' files stay as they are."""
    listed = {spec.netns for spec in specs}
    template = os.path.join(_persist.UNIT_DIR, NETNS_UNIT)
    current = _persist.read_files([path for netns in sorted(listed) for path in netns_paths(netns)] + [template])
    desired = {}
    if persistent:
        for spec in specs:
            if spec.state == "present":
                desired.update(netns_files(spec))
    if desired or persisted_namespaces() - listed:
        desired[template] = _persist.HEADER.format(module="netns_veth") + NETNS_UNIT_TEXT
    plan.before[_persist.VIEW_KEY] = plan.after[_persist.VIEW_KEY] = _persist.view(current)
    _persist.plan_files(plan, current, desired, reload_systemd)


class VethRun:
    """One module call: the declared pairs, the host as read, and the one plan of the call.

    Reading and planning refuse bad input and conflicting host state (InvalidInput)
    before anything changes; `plan.apply()` makes the changes.
    systemd: None where systemd does not run, else an object with reload() (daemon-reload).
    """

    def __init__(self, netlink, params, systemd=None):
        self.netlink = netlink
        self.batch = params.get("pairs") is not None
        self.specs = specs_from_params(params)
        self.distinct = list(dict.fromkeys(self.specs))
        self.observed = read_states(netlink, self.distinct)
        if self.batch:
            self.plan = build_batch_plan(netlink, self.distinct, self.observed)
        else:
            self.plan = build_plan(netlink, self.distinct[0], self.observed[0])
        persistent = params.get("persistent", False)
        if systemd is None:
            if persistent and params["state"] == "present":
                self.plan.warnings.append(
                    "persistent: systemd is not the service manager of this host (no /run/systemd/system), so "
                    "nothing is written for boot: the namespaces and pairs will not come back after a reboot")
        else:
            plan_persistence(self.plan, self.distinct, persistent, systemd.reload)

    def _predicted(self, spec):
        return self.plan.after[spec.netns] if self.batch else self.plan.after

    def outputs(self, applied):
        """`interfaces` for the single pair, or `pairs` (one per entry, in input order) for a batch.

        After a run the ends are read back from the host; in check mode they are the plan's prediction.
        """
        if applied:
            final = read_states(self.netlink, self.distinct)
            views = [describe(spec, seen, classify_pair(spec, seen)) for spec, seen in zip(self.distinct, final)]
        else:
            final, views = self.observed, [self._predicted(spec) for spec in self.distinct]
        reports = {spec: interfaces_report(view, seen) for spec, view, seen in zip(self.distinct, views, final)}
        if self.batch:
            return {"pairs": [reports[spec] for spec in self.specs]}
        return {"interfaces": reports[self.specs[0]]}
