# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pyroute2 behind one small interface that behaves the same on 0.7.x and 0.9.x.

Everything here talks netlink (or, for namespace files, what `ip netns` does);
nothing runs `ip`. Links are addressed by name and resolved to an index at
call time, because a step may act on a link an earlier step created.
"""
from __future__ import annotations

import os
import socket
import traceback
from dataclasses import dataclass, field

try:
    import pyroute2
    from pyroute2 import IPRoute
    from pyroute2 import netns as pyroute2_netns
except ImportError:
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None

IFF_UP = 0x1
IFA_F_SECONDARY = 0x1
MAIN_TABLE = 254
# A netns file is a bind mount of an nsfs inode ("proc" on kernels before 3.19).
NETNS_FS_TYPES = ("nsfs", "proc")


def netns_run_dir():
    return getattr(pyroute2_netns, "NETNS_RUN_DIR", "/var/run/netns")


@dataclass
class Link:
    """What the modules need to know of one network interface."""

    name: str
    index: int
    kind: str | None  # None for a physical device
    peer_index: int | None
    peer_in_other_netns: bool
    mac: str | None
    mtu: int
    up: bool
    operstate: str
    alias: str | None
    addresses: list = field(default_factory=list)  # IPv4 "a.b.c.d/len"
    secondaries: list = field(default_factory=list)  # those of `addresses` the kernel holds as secondary


def _link_kind(msg):
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    return linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None


def _unescape_mountinfo(path):
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


class Netlink:
    """Netlink handles for the host namespace and for named namespaces."""

    def __init__(self):
        self._handles = {}

    def close(self):
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def handle(self, netns=None):
        if netns not in self._handles:
            if netns is None:
                self._handles[netns] = IPRoute()
            else:
                self._handles[netns] = _open_netns(netns)
        return self._handles[netns]

    def _forget(self, netns):
        handle = self._handles.pop(netns, None)
        if handle is not None:
            handle.close()

    # Namespaces

    def netns_state(self, name):
        """'absent', 'present' (a namespace file), or 'foreign' (the path is something else)."""
        path = os.path.join(netns_run_dir(), name)
        if not os.path.lexists(path):
            return "absent"
        target = os.path.realpath(path)
        with open("/proc/self/mountinfo") as mountinfo:
            for line in mountinfo:
                fields = line.split()
                fstype = fields[fields.index("-") + 1]
                if fstype in NETNS_FS_TYPES and _unescape_mountinfo(fields[4]) == target:
                    return "present"
        return "foreign"

    def create_netns(self, name):
        pyroute2_netns.create(name)

    def remove_netns(self, name):
        self._forget(name)
        pyroute2_netns.remove(name)

    # Reading

    def links(self, netns=None):
        """Every link of a namespace by name, with its IPv4 addresses."""
        handle = self.handle(netns)
        links = {}
        by_index = {}
        for msg in handle.get_links():
            link = Link(
                name=msg.get_attr("IFLA_IFNAME"),
                index=msg["index"],
                kind=_link_kind(msg),
                peer_index=msg.get_attr("IFLA_LINK"),
                peer_in_other_netns=msg.get_attr("IFLA_LINK_NETNSID") is not None,
                mac=msg.get_attr("IFLA_ADDRESS"),
                mtu=msg.get_attr("IFLA_MTU"),
                up=bool(msg["flags"] & IFF_UP),
                operstate=msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN",
                alias=msg.get_attr("IFLA_IFALIAS"),
            )
            links[link.name] = link
            by_index[link.index] = link
        for msg in handle.get_addr(family=socket.AF_INET):
            link = by_index.get(msg["index"])
            if link is not None:
                cidr = f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"
                link.addresses.append(cidr)
                if (msg.get_attr("IFA_FLAGS") or msg["flags"]) & IFA_F_SECONDARY:
                    link.secondaries.append(cidr)
        return links

    def default_gateway(self, netns=None):
        """The gateway of the main table's IPv4 default route, or None."""
        for route in self.handle(netns).get_routes(family=socket.AF_INET, table=MAIN_TABLE):
            if route["dst_len"] == 0 and route.get_attr("RTA_DST") is None:
                return route.get_attr("RTA_GATEWAY")
        return None

    # Changing

    def _index(self, ifname, netns=None):
        found = self.handle(netns).link_lookup(ifname=ifname)
        if not found:
            raise LookupError(f"no interface named {ifname!r} in {_where(netns)}")
        return found[0]

    def create_veth(self, host_ifname, peer_ifname, peer_netns, mtu=None):
        """Create a veth pair whose peer end is born inside peer_netns."""
        fd = os.open(os.path.join(netns_run_dir(), peer_netns), os.O_RDONLY)
        try:
            peer = {"ifname": peer_ifname, "net_ns_fd": fd}
            attrs = {"ifname": host_ifname, "kind": "veth", "peer": peer}
            if mtu is not None:
                attrs["mtu"] = peer["mtu"] = mtu
            self.handle().link("add", **attrs)
        finally:
            os.close(fd)

    def move_link(self, ifname, netns):
        fd = os.open(os.path.join(netns_run_dir(), netns), os.O_RDONLY)
        try:
            self.handle().link("set", index=self._index(ifname), net_ns_fd=fd)
        finally:
            os.close(fd)

    def set_link(self, ifname, netns=None, **attrs):
        """Set link attributes such as state='up', mtu=1400 or ifalias='...'."""
        self.handle(netns).link("set", index=self._index(ifname, netns), **attrs)

    def delete_link(self, ifname, netns=None):
        self.handle(netns).link("del", index=self._index(ifname, netns))

    def add_address(self, ifname, cidr, netns=None):
        address, prefixlen = cidr.split("/")
        self.handle(netns).addr("add", index=self._index(ifname, netns), address=address, prefixlen=int(prefixlen))

    def delete_address(self, ifname, cidr, netns=None):
        address, prefixlen = cidr.split("/")
        self.handle(netns).addr("del", index=self._index(ifname, netns), address=address, prefixlen=int(prefixlen))

    def replace_default_route(self, gateway, ifname, netns=None):
        self.handle(netns).route("replace", dst="0.0.0.0/0", gateway=gateway, oif=self._index(ifname, netns), table=MAIN_TABLE)


def _open_netns(name):
    # 0.9.x takes netns= on IPRoute; 0.7.x has the (forking) NetNS class instead.
    try:
        return IPRoute(netns=name)
    except TypeError:
        return pyroute2.NetNS(name)


def _where(netns):
    return "the host namespace" if netns is None else f"netns {netns!r}"
