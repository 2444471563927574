# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One master's view of probed flows, for explain: what it saw from before the probes until after them.

The master arms the trace (_trace) and the captures (_capture) on its LAN interface and on both ends of
each flow's veth pair, says so with a `ready` file in the run's directory, and watches until a `done` file
appears there (the probes are over) or the time is up. Then it reads the flows' conntrack entries, the
route each DNAT-ed request takes, the neighbour entries of the master and of the namespaces, and
ip_forward. The run's directory (and its parents, when empty) and the trace table go whatever happens
short of a kill: the run ends by itself at its timeout when nobody creates `done`.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from ansible_collections.netns.expose.plugins.module_utils._capture import Capture
from ansible_collections.netns.expose.plugins.module_utils._conntrack import NetlinkConntrack
from ansible_collections.netns.expose.plugins.module_utils._dnat import read_ip_forward
from ansible_collections.netns.expose.plugins.module_utils._path import PathError, neighbours, route_of
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
    to_port: int
    in_interface: str
    host_ifname: str
    netns: str
    ns_ifname: str


def flows_from_params(entries):
    """The flows of the module's `flows`; InvalidInput names flows[<index>].<field>."""
    flows = []
    for index, entry in enumerate(entries):
        where = f"flows[{index}]."
        missing = [key for key in FLOW_FIELDS if entry.get(key) in (None, "")]
        if missing:
            raise InvalidInput(f"{where}{missing[0]}", "is required")
        for key in ("client", "address", "to_address"):
            parse_ipv4_address(f"{where}{key}", entry[key])
        for key in ("in_interface", "host_ifname", "ns_ifname"):
            check_ifname(f"{where}{key}", entry[key])
        check_netns_name(f"{where}netns", entry["netns"])
        port = {key: check_port(f"{where}{key}", entry[key]) for key in ("client_port", "port", "to_port")}
        try:
            flow = Flow(entry["protocol"], entry["client"], port["client_port"], entry["address"], port["port"])
        except InvalidInput as exc:
            raise InvalidInput(f"{where}{exc.field}", exc.problem) from None
        flows.append(WatchedFlow(entry["name"], flow, entry["to_address"], port["to_port"], entry["in_interface"],
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


def capture_points(flows):
    """[(hop, interface, netns path)]: the master's LAN interface, then each pair's host and namespace ends, once each."""
    points = {}
    for watched in flows:
        points.setdefault(f"master {watched.in_interface}", (watched.in_interface, None))
        points.setdefault(f"master {watched.host_ifname}", (watched.host_ifname, None))
        points.setdefault(f"{watched.netns} {watched.ns_ifname}",
                          (watched.ns_ifname, os.path.join(NETNS_DIR, watched.netns)))
    return [(hop, ifname, path) for hop, (ifname, path) in points.items()]


def _traced(packet):
    return {"fields": packet.fields,
            "chains": [{"chain": hop.chain, "rules": [list(rule) for rule in hop.rules], "verdict": hop.verdict,
                        "fields": hop.fields} for hop in packet.hops]}


def _first_and_later(packets):
    return {"first": _traced(packets[0]) if packets else None,
            "later": _traced(packets[1]) if len(packets) > 1 else None, "count": len(packets)}


def _ours(entry, flow):
    original = entry["original"] or {}
    return original.get("src") == flow.client and original.get("sport") == flow.client_port


class Watch:
    """One run: the flows, where they are watched, and what was seen."""

    def __init__(self, module, flows, run_id, timeout, nft, ip):
        self.module, self.flows, self.timeout, self.nft, self.ip = module, flows, timeout, nft, ip
        self.run_id = run_id
        table_name(run_id)  # checks the run id
        self.directory = os.path.join(RUN_DIR, run_id)

    def _run(self, argv):
        return self.module.run_command(argv)

    def observe(self):
        """Watch until the done file or the timeout; the report. The run's directory goes whatever happens."""
        os.makedirs(self.directory, mode=0o700)
        try:
            keep_ports = {watched.flow.client_port for watched in self.flows}
            with Trace(self.nft, [watched.flow for watched in self.flows], self.run_id) as trace, \
                    Capture(capture_points(self.flows), lambda *packet: keep_ports & set(packet[3:5])) as capture:
                with open(os.path.join(self.directory, "ready"), "w", encoding="utf-8"):
                    pass
                finished = self._await_done()
            return self._report(trace.packets, capture.packets, finished)
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

    def _report(self, traced, captured, finished):
        conntrack = NetlinkConntrack()
        try:
            entries = list(conntrack.described())
        finally:
            conntrack.close()
        flows = []
        for watched in self.flows:
            flow = watched.flow
            try:
                route = route_of(self._run, self.ip, watched.to_address, flow.client, watched.in_interface)
            except PathError as exc:
                route = {"error": str(exc)}
            packets = flow_packets(traced, flow)
            flows.append({
                "name": watched.name,
                "flow": {"protocol": flow.protocol, "client": flow.client, "client_port": flow.client_port,
                         "address": flow.address, "port": flow.port, "to_address": watched.to_address,
                         "to_port": watched.to_port},
                "hops": [{"hop": packet.hop, "direction": packet.direction, "seconds": round(packet.seconds, 6),
                          "packet": packet.tuple_text()}
                         for packet in captured if flow.client_port in (packet.sport, packet.dport)],
                "chains": {"request": _first_and_later(packets["request"]), "reply": _first_and_later(packets["reply"])},
                "conntrack": [entry for entry in entries if _ours(entry, flow)],
                "route": route,
            })
        namespaces = sorted({watched.netns for watched in self.flows})
        return {
            "finished": finished,
            "flows": flows,
            "neighbours": {"master": neighbours(self._run, self.ip),
                           **{netns: neighbours(self._run, self.ip, netns=netns) for netns in namespaces}},
            "ip_forward": read_ip_forward(),
        }
