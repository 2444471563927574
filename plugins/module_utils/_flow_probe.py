# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A slave's half of explaining mappings: one real request per flow, from the flow's own source port, and what the
slave's interface toward the master saw of it, for explain.

Each check runs as the probe module runs it (module_utils/_probe), from its source_port. A udp and an icmp check
run twice from the same port, so that their flow has a later packet after its first (a tcp check's connection has
several). A capture (module_utils/_capture) on the slave's interface toward each address records the packets of
those ports, and the slave's neighbour entries are read after the requests.
"""
from __future__ import annotations

from ansible_collections.netns.expose.plugins.module_utils._capture import Capture
from ansible_collections.netns.expose.plugins.module_utils._path import PathError, neighbours, route_of
from ansible_collections.netns.expose.plugins.module_utils._probe import Prober, result_of
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

# Sent twice: the first packet of the flow makes its conntrack entry, the second is a later packet of it.
REPEATED = ("udp", "icmp")


def check_source_ports(checks):
    """Each check needs a source port of its own: the captures and the master's trace find its flow by it."""
    seen = {}
    for index, check in enumerate(checks):
        if check.source_port is None:
            raise InvalidInput(f"checks[{index}].source_port", "is required: the flow is found by it")
        if check.source_port in seen:
            raise InvalidInput(f"checks[{index}].source_port", f"{check.source_port} is also that of checks[{seen[check.source_port]}]")
        seen[check.source_port] = index


def interfaces_toward(run_command, ip, checks):
    """{address: {"interface", "client"}}: the slave's interface and source address toward each check's address."""
    toward = {}
    for address in sorted({check.address for check in checks}):
        route = route_of(run_command, ip, address)
        if "dev" not in route:
            raise PathError(f"route get {address}: no interface toward it ({route})")
        toward[address] = {"interface": route["dev"], "client": route.get("prefsrc")}
    return toward


def _send(prober, check):
    """The check's result; a repeated one's is its last attempt's, with how many of them answered."""
    if check.protocol not in REPEATED or prober.denied_source(check) is not None:
        return prober.run(check)
    attempts = [prober.attempt(check) for _repeat in range(2)]
    result = result_of(check, attempts[-1], attempts=len(attempts))
    result["answered"] = sum(attempt.ok for attempt in attempts)
    return result


def probe_flows(run_command, ip, checks, timeout):
    """The checks' results, each with its source address and port, the slave's interface, and its packets there;
    and the slave's neighbour entries after them."""
    check_source_ports(checks)
    toward = interfaces_toward(run_command, ip, checks)
    points = [(f"slave {interface}", interface, None) for interface in sorted({end["interface"] for end in toward.values()})]
    ports = {check.source_port for check in checks}
    prober = Prober(timeout, retries=0)
    with Capture(points, lambda *packet: ports & set(packet[3:5])) as capture:
        results = [_send(prober, check) for check in checks]
    for check, result in zip(checks, results):
        end = toward[check.address]
        result.update(source_port=check.source_port, client=end["client"], interface=end["interface"], hops=[
            {"hop": packet.hop, "direction": packet.direction, "seconds": round(packet.seconds, 6), "packet": packet.tuple_text()}
            for packet in capture.packets if check.source_port in (packet.sport, packet.dport)])
    return {"results": results, "neighbours": neighbours(run_command, ip)}
