# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What crosses each hop of a mapped flow: the packets on interfaces, read as tcpdump would, without tcpdump.

One AF_PACKET socket per interface, opened in the interface's network namespace (the calling thread
joins it with setns(2) for the socket() and bind() calls only, then comes back; the socket stays in
the namespace it was made in). A thread per socket reads frames until the capture ends and keeps the
IPv4 tcp, udp and icmp packets the caller's predicate wants, with the direction the kernel gives each
(PACKET_OUTGOING: sent on the interface). ICMP is keyed as conntrack keys it: an echo by its identifier
(in place of both ports), an error (port unreachable, ...) by the ports of the packet it is about, so
that both belong to the flow they concern. Nothing on the host changes; the minimal hosts the
collection runs on need no tcpdump.
"""
from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_HEADER = 14
PACKET_OUTGOING = 4
CLONE_NEWNET = 0x40000000
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}
# TCP flags as tcpdump prints them: [S.] is SYN-ACK, [P.] PSH-ACK, ...
TCP_FLAGS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x20, "U"))
TCP_ACK = 0x10
ICMP_ECHO = {0: "echo reply", 8: "echo request"}
# The ICMP errors that carry the header of the packet they are about, by type and code.
ICMP_ERRORS = {3: "unreachable", 11: "time exceeded", 12: "parameter problem"}
UNREACHABLE_CODES = {0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable", 3: "port unreachable",
                     4: "fragmentation needed", 9: "net prohibited", 10: "host prohibited", 13: "administratively prohibited"}
POLL_SECONDS = 0.1
SO_TIMESTAMP = 29
_TIMEVAL = struct.Struct("=qq")  # struct timeval on 64-bit Linux
FRAME_BYTES = 256  # the headers are all that is read


@dataclass(frozen=True)
class Packet:
    """One packet seen on one interface."""

    hop: str  # the capture point's name, as the caller gave it
    direction: str  # "in" (received on the interface) or "out" (sent on it)
    seconds: float  # since the capture started, by the kernel's clock of the frame
    protocol: str
    src: str
    dst: str
    sport: int | None  # icmp: the echo's identifier, or the source port of the packet an error is about
    dport: int | None  # icmp: the echo's identifier, or the destination port of the packet an error is about
    note: str | None  # tcp: the flags in tcpdump's notation ("S", "S.", "P.", "."); icmp: what it is

    def tuple_text(self):
        if self.protocol == "icmp":
            return f"icmp {self.src} > {self.dst}" + (f" {self.note}" if self.note else "")
        source = self.src if self.sport is None else f"{self.src}:{self.sport}"
        destination = self.dst if self.dport is None else f"{self.dst}:{self.dport}"
        return f"{self.protocol} {source} > {destination}" + (f" [{self.note}]" if self.note else "")


def tcp_flags_text(flags):
    return "".join(letter for bit, letter in TCP_FLAGS if flags & bit) + ("." if flags & TCP_ACK else "")


def _ports(frame, ip):
    """(transport protocol number, sport, dport, where the transport header starts) of the IPv4 header at ip;
    no ports for a fragment after the first, nor for a header cut short."""
    version_ihl, protonum = frame[ip], frame[ip + 9]
    transport = ip + (version_ihl & 0x0F) * 4
    fragment_offset = struct.unpack_from("!H", frame, ip + 6)[0] & 0x1FFF
    if protonum in (6, 17) and not fragment_offset and len(frame) >= transport + 4:
        return (protonum, *struct.unpack_from("!HH", frame, transport), transport)
    return protonum, None, None, transport


def _icmp(frame, start):
    """(identifier or sport, identifier or dport, what it is) of the ICMP message at start."""
    if len(frame) < start + 8:
        return None, None, None
    kind, code = frame[start], frame[start + 1]
    if kind in ICMP_ECHO:
        identifier, sequence = struct.unpack_from("!HH", frame, start + 4)
        return identifier, identifier, f"{ICMP_ECHO[kind]} id {identifier} seq {sequence}"
    what = UNREACHABLE_CODES.get(code, f"unreachable code {code}") if kind == 3 else ICMP_ERRORS.get(kind, f"type {kind}")
    inner = start + 8  # the header of the packet the error is about, and 8 bytes of what followed it
    if kind not in ICMP_ERRORS or len(frame) < inner + 20 or frame[inner] >> 4 != 4:
        return None, None, what
    protonum, sport, dport, _transport = _ports(frame, inner)
    src, dst = socket.inet_ntoa(frame[inner + 12:inner + 16]), socket.inet_ntoa(frame[inner + 16:inner + 20])
    about = f"{PROTOCOLS.get(protonum, protonum)} {src}" + (f":{sport} > {dst}:{dport}" if sport is not None else f" > {dst}")
    return sport, dport, f"{what} for {about}"


def parse_frame(frame):
    """(protocol, src, dst, sport, dport, note) of an Ethernet frame with an IPv4 tcp, udp or icmp packet, or None
    (see Packet)."""
    if len(frame) < ETH_HEADER + 20 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = ETH_HEADER
    if frame[ip] >> 4 != 4 or frame[ip + 9] not in PROTOCOLS:
        return None
    src, dst = socket.inet_ntoa(frame[ip + 12:ip + 16]), socket.inet_ntoa(frame[ip + 16:ip + 20])
    protonum, sport, dport, transport = _ports(frame, ip)
    note = None
    if protonum == 1:
        sport, dport, note = _icmp(frame, transport)
    elif protonum == 6 and sport is not None and len(frame) >= transport + 14:
        note = tcp_flags_text(frame[transport + 13])
    return PROTOCOLS[protonum], src, dst, sport, dport, note


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def open_socket(ifname, netns_path=None):
    """An AF_PACKET socket bound to ifname, in the network namespace of netns_path (None: the caller's)."""
    if netns_path is None:
        return _bound(ifname)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                return _bound(ifname)
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def _kernel_time(ancillary):
    """When the kernel saw the frame (SO_TIMESTAMP), so that hops read by different threads sort right."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(data) >= _TIMEVAL.size:
            seconds, microseconds = _TIMEVAL.unpack_from(data)
            return seconds + microseconds / 1e6
    return time.time()


def _bound(ifname):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        sock.bind((ifname, 0))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"capturing on {ifname}: {exc.strerror}") from None
    return sock


class Capture:
    """Packets on several interfaces at once, as a context manager: reading from entry to exit.

    points: [(hop name, interface, netns path or None)]; keep(protocol, src, dst, sport, dport) -> bool
    chooses the packets. After the block, `packets` has them, in the order they were seen.
    """

    def __init__(self, points, keep):
        self.points, self.keep = list(points), keep
        self.sockets, self.threads, self.packets = [], [], []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.started = None

    def __enter__(self):
        try:
            for hop, ifname, netns_path in self.points:
                self.sockets.append((hop, open_socket(ifname, netns_path)))
        except BaseException:
            self._close()
            raise
        self.started = time.time()
        for hop, sock in self.sockets:
            thread = threading.Thread(target=self._read, args=(hop, sock), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _read(self, hop, sock):
        # Until the capture ends and nothing is left to read: the last packets are read too.
        while True:
            if not select.select([sock], [], [], POLL_SECONDS)[0]:
                if self.stop.is_set():
                    return
                continue
            frame, ancillary, _flags, address = sock.recvmsg(FRAME_BYTES, socket.CMSG_SPACE(_TIMEVAL.size))
            parsed = parse_frame(frame)
            if parsed is None or not self.keep(*parsed[:5]):
                continue
            direction = "out" if address[2] == PACKET_OUTGOING else "in"
            with self.lock:
                self.packets.append(Packet(hop, direction, _kernel_time(ancillary) - self.started, *parsed))

    def _close(self):
        for _hop, sock in self.sockets:
            sock.close()

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()
        self._close()
        self.packets.sort(key=lambda packet: packet.seconds)
        return False
