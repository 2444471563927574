# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One master's view of probed flows, for explain: what it saw from before the probes until after them.

The master arms the trace (_trace) and the captures (_capture) on its LAN interface and on both ends of
each flow's veth pair, says so with a `ready` file in the run's directory, and watches until a `done` file
appears there (the probes are over) or the time is up. Then it reads the flows' conntrack entries (and
whether they were there before the probes), other clients' stale entries of the mappings, the route each
DNAT-ed request takes and the route back from its namespace, the state of both ends of each pair, the
map elements each mapping owns with what they counted meanwhile, the type of each base chain, the
neighbour entries of the master and of the namespaces, and ip_forward. The captures on the master start
on its interface toward the client, where the requests come in, whatever the mapping's in_interface.
The run's directory (and its parents, when empty) and the trace table go whatever happens short of a
kill: the run ends by itself at its timeout when nobody creates `done`.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from ansible_collections.netns.expose.plugins.module_utils._capture import Capture
from ansible_collections.netns.expose.plugins.module_utils._conntrack import NetlinkConntrack
from ansible_collections.netns.expose.plugins.module_utils._dnat import read_ip_forward
from ansible_collections.netns.expose.plugins.module_utils._nftables import NftBackend
from ansible_collections.netns.expose.plugins.module_utils._path import PathError, link_state, neighbours, route_of
from ansible_collections.netns.expose.plugins.module_utils._trace import Flow, Trace, flow_packets, table_name
from ansible_collections.netns.expose.plugins.module_utils._validation import (
    InvalidInput,
    check_ifname,
    check_netns_name,
    check_port,
    parse_ipv4_address,
)

RUN_DIR = "/run/netns-expose/explain"
NETNS_DIR = "/run/netns"  # where `ip netns` keeps the namespaces
POLL_SECONDS = 0.1
FLOW_FIELDS = ("name", "protocol", "client", "client_port", "address", "port", "to_address", "to_port",
               "in_interface", "host_ifname", "netns", "ns_ifname")


@dataclass(frozen=True)
class WatchedFlow:
    """A probe's flow through a mapping: the client's end, the mapping, and the interfaces it crosses."""

    name: str
    flow: Flow
    to_address: str
    to_port: int | None  # None for icmp
    in_interface: str | None  # the mapping's (None: any interface)
    host_ifname: str
    netns: str
    ns_ifname: str


def flows_from_params(entries):
    """The flows of the module's `flows`; InvalidInput names flows[<index>].<field>."""
    flows = []
    for index, entry in enumerate(entries):
        where = f"flows[{index}]."
        optional = ("in_interface", "port", "to_port") if entry.get("protocol") == "icmp" else ("in_interface",)
        missing = [key for key in FLOW_FIELDS if entry.get(key) in (None, "") and key not in optional]
        if missing:
            raise InvalidInput(f"{where}{missing[0]}", "is required")
        for key in ("client", "address", "to_address"):
            parse_ipv4_address(f"{where}{key}", entry[key])
        for key in ("in_interface", "host_ifname", "ns_ifname"):
            if entry.get(key) is not None:
                check_ifname(f"{where}{key}", entry[key])
        check_netns_name(f"{where}netns", entry["netns"])
        if entry["protocol"] == "icmp":
            refused = [key for key in ("port", "to_port") if entry.get(key) is not None]
            if refused:
                raise InvalidInput(f"{where}{refused[0]}", "must not be set for icmp, which has no ports")
        port = {key: check_port(f"{where}{key}", entry[key]) for key in ("client_port", "port", "to_port")
                if entry.get(key) is not None}
        try:
            flow = Flow(entry["protocol"], entry["client"], port["client_port"], entry["address"], port.get("port"))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}{exc.field}", exc.problem) from None
        flows.append(WatchedFlow(entry["name"], flow, entry["to_address"], port.get("to_port"), entry.get("in_interface"),
                                 entry["host_ifname"], entry["netns"], entry["ns_ifname"]))
    ports = [watched.flow.client_port for watched in flows]
    if len(set(ports)) != len(ports):
        raise InvalidInput("flows", "two flows have one client_port; each probe needs its own")
    return flows


def remove_run_directory(directory, levels=2):
    """Remove a run's directory, and the `levels` directories above it when no other run has one there
    (explain/ and netns-expose/ of RUN_DIR): nothing of the run stays."""
    shutil.rmtree(directory, ignore_errors=True)
    for _level in range(levels):
        directory = os.path.dirname(directory)
        try:
            os.rmdir(directory)
        except OSError:  # another run's directory is there (or it is gone already)
            return


def capture_points(flows, arrivals):
    """[(hop, interface, netns path)]: the master's interface each flow comes in on (arrivals: by client address),
    then each pair's host and namespace ends, once each."""
    points = {}
    for watched in flows:
        arrival = arrivals[watched.flow.client]
        points.setdefault(f"master {arrival}", (arrival, None))
        points.setdefault(f"master {watched.host_ifname}", (watched.host_ifname, None))
        points.setdefault(f"{watched.netns} {watched.ns_ifname}",
                          (watched.ns_ifname, os.path.join(NETNS_DIR, watched.netns)))
    return [(hop, ifname, path) for hop, (ifname, path) in points.items()]


def _traced(packet):
    return {"fields": packet.fields,
            "chains": [{"chain": hop.chain, "rules": [list(rule) for rule in hop.rules], "verdict": hop.verdict,
                        "fields": hop.fields} for hop in packet.hops]}


def _first_and_later(packets):
    hits = {}
    for packet in packets:
        for chain in dict.fromkeys(packet.path()):
            hits[chain] = hits.get(chain, 0) + 1
    return {"first": _traced(packets[0]) if packets else None,
            "later": _traced(packets[1]) if len(packets) > 1 else None, "count": len(packets), "hits": hits}


def _ours(entry, flow):
    """Whether a conntrack entry is the flow's (icmp: conntrack keeps the echo's identifier as both ports)."""
    original = entry["original"] or {}
    return original.get("src") == flow.client and original.get("sport") == flow.client_port


def _stale(entry, watched):
    """Whether a conntrack entry is of another client's flow to the mapping (its protocol, address and port) that
    does not reach the mapping's target: one that started before the mapping, so no DNAT, or before it changed."""
    original, reply, flow = entry["original"] or {}, entry["reply"] or {}, watched.flow
    if original.get("protocol") != flow.protocol or original.get("dst") != flow.address or _ours(entry, flow):
        return False
    if flow.protocol == "icmp":
        return reply.get("src") != watched.to_address
    return original.get("dport") == flow.port and (reply.get("src"), reply.get("sport")) != (watched.to_address, watched.to_port)


def conntrack_entries():
    """The conntrack table, each entry as conntrack -L shows it."""
    conntrack = NetlinkConntrack()
    try:
        return list(conntrack.described())
    finally:
        conntrack.close()


def mapping_elements(owned, counted_before, name):
    """The elements of the nftables backend's table that the mapping `name` owns, each with its set or map, its
    text, and its packet counter now and how much it grew during the run (None for those without a counter)."""
    elements = []
    for set_name, items in owned.elements.items():
        for key, value, owner in items:
            if owner != name:
                continue
            counted = owned.counters.get((set_name, key))
            before = counted_before.get((set_name, key), (0, 0))
            elements.append({"set": set_name, "element": key if value is None else f"{key} : {value}",
                             "packets": counted[0] if counted else None,
                             "run_packets": counted[0] - before[0] if counted else None})
    return elements


class Watch:
    """One run: the flows, where they are watched, and what was seen."""

    def __init__(self, module, flows, run_id, timeout, nft, ip):
        self.module, self.flows, self.timeout, self.nft, self.ip = module, flows, timeout, nft, ip
        self.run_id = run_id
        table_name(run_id)  # checks the run id
        self.directory = os.path.join(RUN_DIR, run_id)
        self.tables = NftBackend(module, nft)

    def _run(self, argv):
        return self.module.run_command(argv)

    def arrivals(self):
        """{client address: the master's interface toward it}: where the client's requests come in."""
        arrivals = {}
        for client in sorted({watched.flow.client for watched in self.flows}):
            route = route_of(self._run, self.ip, client)
            if "dev" not in route:
                raise PathError(f"route get {client}: the master has no interface toward the client ({route})")
            arrivals[client] = route["dev"]
        return arrivals

    def observe(self):
        """Watch until the done file or the timeout; the report. The run's directory goes whatever happens."""
        arrivals = self.arrivals()
        # What was there before the probes: a flow's entry (then its probes do not start it), the elements' counters.
        before = {"conntrack": conntrack_entries(), "counters": self.tables.read().counters}
        os.makedirs(self.directory, mode=0o700)
        try:
            keep_ports = {watched.flow.client_port for watched in self.flows}
            with Trace(self.nft, [watched.flow for watched in self.flows], self.run_id) as trace, \
                    Capture(capture_points(self.flows, arrivals), lambda *packet: keep_ports & set(packet[3:5])) as capture:
                with open(os.path.join(self.directory, "ready"), "w", encoding="utf-8"):
                    pass
                finished = self._await_done()
            return self._report(trace.packets, capture.packets, finished, arrivals, before)
        finally:
            remove_run_directory(self.directory)

    def _await_done(self):
        deadline = time.monotonic() + self.timeout
        done = os.path.join(self.directory, "done")
        while time.monotonic() < deadline:
            if os.path.exists(done):
                return True
            time.sleep(POLL_SECONDS)
        return False

    def _route(self, to, source, in_interface, netns=None):
        try:
            return route_of(self._run, self.ip, to, source, in_interface, netns=netns)
        except PathError as exc:
            return {"error": str(exc)}

    def _link(self, ifname, netns=None):
        try:
            return link_state(self._run, self.ip, ifname, netns=netns)
        except PathError as exc:
            return {"error": str(exc)}

    def _report(self, traced, captured, finished, arrivals, before):  # pylint: disable=too-many-arguments
        entries = conntrack_entries()
        flows = []
        for watched in self.flows:
            flow = watched.flow
            packets = flow_packets(traced, flow)
            flows.append({
                "name": watched.name,
                "flow": {"protocol": flow.protocol, "client": flow.client, "client_port": flow.client_port,
                         "address": flow.address, "port": flow.port, "to_address": watched.to_address,
                         "to_port": watched.to_port, "in_interface": watched.in_interface,
                         "host_ifname": watched.host_ifname, "netns": watched.netns, "ns_ifname": watched.ns_ifname},
                "hops": [{"hop": packet.hop, "direction": packet.direction, "seconds": round(packet.seconds, 6),
                          "packet": packet.tuple_text()}
                         for packet in captured if flow.client_port in (packet.sport, packet.dport)],
                "chains": {"request": _first_and_later(packets["request"]), "reply": _first_and_later(packets["reply"])},
                "conntrack": [entry for entry in entries if _ours(entry, flow)],
                "conntrack_before": [entry for entry in before["conntrack"] if _ours(entry, flow)],
                "stale": [entry for entry in entries if _stale(entry, watched)],
                "arrival": arrivals[flow.client],
                "route": self._route(watched.to_address, flow.client, arrivals[flow.client]),
                "return_route": self._route(flow.client, watched.to_address, None, netns=watched.netns),
                "links": {watched.host_ifname: self._link(watched.host_ifname),
                          watched.ns_ifname: self._link(watched.ns_ifname, watched.netns)},
            })
        owned = self.tables.read()
        for flow in flows:
            flow["elements"] = mapping_elements(owned, before["counters"], flow["name"])
        namespaces = sorted({watched.netns for watched in self.flows})
        return {
            "finished": finished,
            "flows": flows,
            "base_chains": {f"{chain['family']} {chain['table']} {chain['name']}": {"type": chain["type"], "hook": chain["hook"]}
                            for chain in self.tables.chains() if "hook" in chain},
            "neighbours": {"master": neighbours(self._run, self.ip),
                           **{netns: neighbours(self._run, self.ip, netns=netns) for netns in namespaces}},
            "ip_forward": read_ip_forward(),
        }
