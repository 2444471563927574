# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which chains each packet of one probed flow crosses on a host, from the kernel's own trace.

A table of the run's own, `ip netns_expose_trace_<run>`, has one chain at the very front of
prerouting (priority -350: before conntrack at -200 and the raw table at -300) that sets
`meta nftrace set 1` on exactly the packets of the flows the run probes: from the client's
address and source port to the mapped address and port, and the replies back to the client's
port. Every chain those packets then cross, in every table of the host (the collection's,
iptables-nft's, the host's own), reports its rules and verdicts to `nft monitor trace`. That
works in any network namespace and changes nothing global: no LOG target (which, outside the
machine's first namespace, needs the global sysctl nf_log_all_netns), no sysctl. The table is
deleted when the trace ends, also when it fails. iptables-legacy chains are not nftables and do
not report; their counters say what they did.

The first packet of a flow crosses the nat chains (where the DNAT is decided); the later ones
are translated by conntrack and cross only the filter chains, which is what the trace shows.
"""
from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

TABLE_PREFIX = "netns_expose_trace_"
# Before conntrack (-200) and raw (-300), so that every chain of the hook after it is traced.
TRACE_PRIORITY = -350
RUN_ID = re.compile(r"^[a-z0-9]{1,16}$")
# How long the monitor may take to print a canary's trace, and how often one is sent meanwhile.
CANARY_SECONDS = 10
CANARY_RETRY_SECONDS = 0.2
# trace id 1db40fe7 ip netns_expose prerouting rule ip daddr ... (verdict accept)
TRACE_LINE = re.compile(r"^trace id (?P<id>[0-9a-f]+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<event>.*)$")
RULE_EVENT = re.compile(r"^rule (?P<rule>.*) \(verdict (?P<verdict>[^)]*)\)\s*$")
# What the packet lines say that the reports use: "iif "veth1b"", "ip saddr 10.0.0.1", "tcp dport 8090", ...
PACKET_FIELDS = {
    "iif": re.compile(r'\biif "([^"]+)"'),
    "oif": re.compile(r'\boif "([^"]+)"'),
    "saddr": re.compile(r"\bip saddr (\S+)"),
    "daddr": re.compile(r"\bip daddr (\S+)"),
    "sport": re.compile(r"\b(?:tcp|udp) sport (\d+)"),
    "dport": re.compile(r"\b(?:tcp|udp) dport (\d+)"),
    "tcp_flags": re.compile(r"\btcp flags == (\S+)"),
    "icmp_type": re.compile(r"\bicmp type (\S+)"),
    "icmp_id": re.compile(r"\bicmp id (\d+)"),
}


@dataclass(frozen=True)
class Flow:
    """The flow of one probe: protocol, the client's address and source port, the mapped address and port.

    An icmp flow is an echo's: client_port is the echo's identifier (as conntrack keys it), port is None.
    """

    protocol: str
    client: str
    client_port: int
    address: str
    port: int | None

    def __post_init__(self):
        if self.protocol not in ("tcp", "udp", "icmp"):
            raise InvalidInput("protocol", f"{self.protocol!r} cannot be traced; tcp, udp or icmp")

    def request_rule(self):
        proto = self.protocol
        if proto == "icmp":
            return f"ip saddr {self.client} ip daddr {self.address} icmp type echo-request icmp id {self.client_port} meta nftrace set 1"
        return (f"ip saddr {self.client} ip daddr {self.address} {proto} sport {self.client_port} "
                f"{proto} dport {self.port} meta nftrace set 1")

    def reply_rule(self):
        # After the DNAT the reply comes from the target, whatever its address: the client's port names it.
        if self.protocol == "icmp":
            return f"ip daddr {self.client} icmp type echo-reply icmp id {self.client_port} meta nftrace set 1"
        return f"ip daddr {self.client} {self.protocol} dport {self.client_port} meta nftrace set 1"

    def _client_end(self, fields, key, port_key, echo):
        if fields.get(key) != self.client:
            return False
        if self.protocol == "icmp":
            return fields.get("icmp_type") == echo and fields.get("icmp_id") == str(self.client_port)
        return fields.get(port_key) == str(self.client_port)

    def is_request(self, fields):
        return self._client_end(fields, "saddr", "sport", "echo-request")

    def is_reply(self, fields):
        return self._client_end(fields, "daddr", "dport", "echo-reply")


def table_name(run_id):
    if not RUN_ID.match(run_id):
        raise InvalidInput("run_id", f"{run_id!r} is not 1 to 16 lowercase letters and digits")
    return TABLE_PREFIX + run_id


def arm_script(table, flows, canary_port):
    """The nft script that adds the trace table for flows, and for the canary datagrams to 127.0.0.1:canary_port."""
    rules = "".join(f"    {rule}\n" for flow in flows for rule in (flow.request_rule(), flow.reply_rule()))
    return (f"table ip {table} {{\n"
            f"  chain prerouting {{\n    type filter hook prerouting priority {TRACE_PRIORITY}; policy accept;\n{rules}  }}\n"
            f"  chain output {{\n    type filter hook output priority {TRACE_PRIORITY}; policy accept;\n"
            f"    ip daddr 127.0.0.1 udp dport {canary_port} meta nftrace set 1\n  }}\n}}\n")


@dataclass
class Hop:
    """One chain a packet crossed: its rules that matched (with their verdicts) and how it left the chain."""

    chain: str  # "<family> <table> <chain>"
    rules: list = field(default_factory=list)  # [(rule text, verdict)] of the rules that matched, in order
    verdict: str | None = None  # the verdict that ended the chain ("accept", "policy accept", "jump X", ...)
    fields: dict = field(default_factory=dict)  # the packet as it entered a base chain (after an earlier DNAT)


@dataclass
class TracedPacket:
    fields: dict  # the packet as it entered the host
    hops: list = field(default_factory=list)

    def path(self):
        return [hop.chain for hop in self.hops]


def _packet_fields(event):
    """What a `packet:` line says of the keys of PACKET_FIELDS."""
    fields = {}
    for key, pattern in PACKET_FIELDS.items():
        found = pattern.search(event)
        if found:
            fields[key] = found.group(1)
    return fields


def parse_trace(text, table):
    """The packets `nft monitor trace` printed, in order, each with the chains it crossed (table's own left out).

    Each traced packet starts in the trace table's chain (the first of prerouting), so a `packet:` line of
    that chain starts a packet; the lines of the same trace id that follow, until the id starts again,
    are its chains. The canaries start in the table's output chain and are left out.
    """
    packets, current = [], {}
    for line in text.splitlines():
        found = TRACE_LINE.match(line.strip())
        if not found:
            continue
        trace_id, event = found["id"], found["event"]
        if found["table"] == table:
            if event.startswith("packet:") and found["chain"] == "prerouting":
                current[trace_id] = TracedPacket(_packet_fields(event))
                packets.append(current[trace_id])
            elif event.startswith("packet:"):
                current.pop(trace_id, None)  # a canary (output): not a packet of the flows
            continue
        packet = current.get(trace_id)
        if packet is None:
            continue  # a packet traced by something other than this run
        chain = f"{found['family']} {found['table']} {found['chain']}"
        if not packet.hops or packet.hops[-1].chain != chain:
            packet.hops.append(Hop(chain))
        hop = packet.hops[-1]
        if event.startswith("packet:"):
            hop.fields = _packet_fields(event)
        elif event.startswith("rule "):
            rule = RULE_EVENT.match(event)
            if rule:
                hop.rules.append((rule["rule"], rule["verdict"]))
                if rule["verdict"] != "continue":
                    hop.verdict = rule["verdict"]
        elif event.startswith(("policy ", "verdict ")):
            hop.verdict = event.strip()
    return packets


def flow_packets(packets, flow):
    """{"request": [packets from the client], "reply": [packets back to it]} of flow, in order."""
    return {"request": [packet for packet in packets if flow.is_request(packet.fields)],
            "reply": [packet for packet in packets if flow.is_reply(packet.fields)]}


class Trace:
    """The trace table armed and `nft monitor trace` reading, as a context manager: both gone on exit.

    with Trace(nft, flows, run_id) as trace: <send the probes>; then trace.packets (after the block).

    The monitor is known to be reading, on entry, and to have read everything traced in the block, on
    exit, by a canary: a datagram the trace table also marks, from a socket of the trace's own to itself
    on 127.0.0.1, whose trace line comes after those of every packet traced before it.
    """

    def __init__(self, nft, flows, run_id):
        self.nft, self.flows, self.table = nft, list(flows), table_name(run_id)
        self.monitor = self.reader = self.canary = None
        self.lines, self.arrived = [], threading.Condition()
        self.packets = []

    def _nft(self, script):
        done = subprocess.run([self.nft, "-f", "-"], input=script, capture_output=True, text=True, check=False)
        return done.returncode, done.stderr.strip()

    def _read(self):
        for line in self.monitor.stdout:
            with self.arrived:
                self.lines.append(line)
                self.arrived.notify_all()

    def _canaries_seen(self):
        mark = f"ip {self.table} output packet:"
        port = f"udp dport {self.canary.getsockname()[1]} "
        return sum(1 for line in self.lines if mark in line and port in line)

    def _sing(self):
        """Send canaries until the monitor prints one more than it had; OSError when it does not."""
        with self.arrived:
            seen = self._canaries_seen()
        deadline = time.monotonic() + CANARY_SECONDS
        while time.monotonic() < deadline:
            self.canary.sendto(b"canary", self.canary.getsockname())
            with self.arrived:
                if self.arrived.wait_for(lambda: self._canaries_seen() > seen, timeout=CANARY_RETRY_SECONDS):
                    return
        raise OSError(f"nft monitor trace printed no trace of the table {self.table} within {CANARY_SECONDS} s")

    def __enter__(self):
        self.canary = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.monitor = subprocess.Popen([self.nft, "monitor", "trace"], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self.canary.bind(("127.0.0.1", 0))
            rc, err = self._nft(arm_script(self.table, self.flows, canary_port=self.canary.getsockname()[1]))
            if rc != 0:
                raise OSError(f"nft could not add the trace table {self.table}: {err}")
            self._sing()
        except BaseException:
            self._disarm()
            raise
        return self

    def _disarm(self):
        """Delete the table (if it is there), stop the monitor; the error of a delete that failed, or None."""
        rc, err = self._nft(f"delete table ip {self.table}\n")
        self.monitor.terminate()
        try:
            self.monitor.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.monitor.kill()
            self.monitor.wait()
        self.reader.join(timeout=5)
        self.canary.close()
        return None if rc == 0 or "No such file or directory" in err else err

    def __exit__(self, *exc):
        try:
            self._sing()
        finally:
            failed = self._disarm()
        self.packets = parse_trace("".join(self.lines), self.table)
        if failed:
            raise OSError(f"nft could not delete the trace table {self.table}: {failed}")
        return False
