# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the kernel decides for a mapped flow besides netfilter: the route a host takes for a packet as it came in,
and the neighbour (ARP) entries of each side, from iproute2's JSON (`ip -j`).

The route is asked as the forwarding path asks it (`ip route get <to> from <source> iif <interface>`), so it
fails as forwarding would: with ip_forward off, or without a route to the target.
"""
from __future__ import annotations

import json


class PathError(Exception):
    """ip failed, or printed what is not its JSON."""


def _json(argv, run_command):
    rc, out, err = run_command(argv)
    if rc != 0:
        raise PathError(f"{' '.join(argv[1:])}: {err.strip() or f'exit status {rc}'}")
    try:
        return json.loads(out or "[]")
    except ValueError:
        raise PathError(f"{' '.join(argv[1:])} printed what is not JSON: {out[:200]!r}") from None


def _in_netns(ip, netns):
    return [ip, "-n", netns] if netns else [ip]


def route_of(run_command, ip, to, source, in_interface):
    """{"dev", "gateway", "prefsrc", "type"} (those the kernel gives) of the route a packet from source, in on
    in_interface, to `to` takes; PathError with the kernel's refusal (such as with ip_forward off)."""
    routes = _json([ip, "-j", "route", "get", to, "from", source, "iif", in_interface], run_command)
    if not routes:
        raise PathError(f"route get {to} from {source} iif {in_interface}: no route")
    return {key: routes[0][key] for key in ("type", "dev", "gateway", "prefsrc") if key in routes[0]}


def neighbours(run_command, ip, netns=None):
    """The IPv4 neighbour entries of a host, or of one of its namespaces: [{"address", "dev", "mac", "state"}]."""
    entries = _json([*_in_netns(ip, netns), "-j", "-4", "neigh", "show"], run_command)
    return [{"address": entry.get("dst"), "dev": entry.get("dev"), "mac": entry.get("lladdr"),
             "state": " ".join(entry.get("state") or [])} for entry in entries]
