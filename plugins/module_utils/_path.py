# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the kernel decides for a mapped flow besides netfilter: the route a host takes for a packet as it came in,
the state of the links, and the neighbour (ARP) entries of each side, from iproute2's JSON (`ip -j`).

The route is asked as the forwarding path asks it (`ip route get <to> from <source> iif <interface>`), so it
fails as forwarding would: with ip_forward off, or without a route to the target.
"""
from __future__ import annotations

import json


class PathError(Exception):
    """ip failed, or printed what is not its JSON."""


def _json(argv, run_command):
    rc, out, err = run_command(argv)
    asked = " ".join(arg for arg in argv[1:] if arg != "-j")
    if rc != 0:
        raise PathError(f"{asked}: {err.strip() or f'exit status {rc}'}")
    try:
        return json.loads(out or "[]")
    except ValueError:
        raise PathError(f"{asked} printed what is not JSON: {out[:200]!r}") from None


def _in_netns(ip, netns):
    return [ip, "-n", netns] if netns else [ip]


def route_of(run_command, ip, to, source=None, in_interface=None, netns=None):
    """{"dev", "gateway", "prefsrc", "type"} (those the kernel gives) of the route a packet from source (None: the
    address the host would choose), in on
    in_interface (None: sent by the host, or the namespace, itself), to `to` takes; PathError with the kernel's
    refusal (such as with ip_forward off, or without a route: "Network is unreachable")."""
    incoming = ["iif", in_interface] if in_interface else []
    outgoing = ["from", source] if source else []
    routes = _json([*_in_netns(ip, netns), "-j", "route", "get", to, *outgoing, *incoming], run_command)
    if not routes:
        raise PathError(f"route get {to}: no route")
    return {key: routes[0][key] for key in ("type", "dev", "gateway", "prefsrc") if key in routes[0]}


def neighbours(run_command, ip, netns=None):
    """The IPv4 neighbour entries of a host, or of one of its namespaces: [{"address", "dev", "mac", "state"}]."""
    entries = _json([*_in_netns(ip, netns), "-j", "-4", "neigh", "show"], run_command)
    return [{"address": entry.get("dst"), "dev": entry.get("dev"), "mac": entry.get("lladdr"),
             "state": " ".join(entry.get("state") or [])} for entry in entries]


def link_state(run_command, ip, ifname, netns=None):
    """{"operstate", "up"} of an interface (up: its administrative state, the UP flag); PathError when it is not there."""
    links = _json([*_in_netns(ip, netns), "-j", "link", "show", "dev", ifname], run_command)
    if not links:
        raise PathError(f"link show dev {ifname}: no such interface")
    return {"operstate": links[0].get("operstate"), "up": "UP" in (links[0].get("flags") or [])}
