"""module_utils/_capture.py without sockets: frames parsed into what each hop reports, in tcpdump's notation
(tests/integration/test_flow_observers.py captures on the lab's interfaces)."""
from __future__ import annotations

import socket
import struct

import pytest

from ansible_collections.netns.expose.plugins.module_utils._capture import Packet, parse_frame, tcp_flags_text


def frame(protonum, transport, src="10.211.55.123", dst="10.211.55.122", ethertype=0x0800, fragment=0):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 1, fragment, 64, protonum, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x00" * 12 + struct.pack("!H", ethertype) + ip + transport


def tcp(sport, dport, flags):
    return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, flags, 0, 0, 0)


@pytest.mark.parametrize("flags, text", [(0x02, "S"), (0x12, "S."), (0x10, "."), (0x18, "P."), (0x11, "F."), (0x04, "R")])
def test_tcp_flags_read_as_tcpdump_prints_them(flags, text):
    assert tcp_flags_text(flags) == text


def test_the_headers_of_tcp_udp_and_icmp_packets():
    assert parse_frame(frame(6, tcp(40123, 8090, 0x02))) == ("tcp", "10.211.55.123", "10.211.55.122", 40123, 8090, "S")
    assert parse_frame(frame(17, struct.pack("!HHHH", 5353, 8053, 8, 0))) == \
        ("udp", "10.211.55.123", "10.211.55.122", 5353, 8053, None)
    assert parse_frame(frame(1, b"\x08\x00\x00\x00\x04\xd2\x00\x01")) == \
        ("icmp", "10.211.55.123", "10.211.55.122", 1234, 1234, "echo request id 1234 seq 1")


def test_an_icmp_error_belongs_to_the_flow_of_the_packet_it_is_about():
    about = frame(17, struct.pack("!HHHH", 41001, 53, 8, 0), src="10.211.55.123", dst="10.244.1.2")[14:]
    error = frame(1, b"\x03\x03\x00\x00\x00\x00\x00\x00" + about, src="10.244.1.2", dst="10.211.55.123")
    assert parse_frame(error) == ("icmp", "10.244.1.2", "10.211.55.123", 41001, 53,
                                  "port unreachable for udp 10.211.55.123:41001 > 10.244.1.2:53")
    # Cut short (the header of the packet it is about is not all there): no ports, still what it is.
    assert parse_frame(frame(1, b"\x03\x01\x00\x00\x00\x00\x00\x00" + about[:12]))[3:] == (None, None, "host unreachable")
    assert parse_frame(frame(1, b"\x0b\x00\x00\x00\x00\x00\x00\x00" + about))[5].startswith("time exceeded for udp ")


def test_what_is_not_an_ipv4_tcp_udp_or_icmp_packet_is_left_out():
    assert parse_frame(frame(6, tcp(1, 2, 0x02), ethertype=0x86DD)) is None  # IPv6
    assert parse_frame(frame(47, b"\x00" * 8)) is None  # GRE
    assert parse_frame(b"\x00" * 20) is None  # too short
    # A fragment after the first has no ports.
    assert parse_frame(frame(17, b"\x00" * 8, fragment=185))[3:] == (None, None, None)


def test_a_packet_reads_as_a_line_of_tcpdump():
    packet = Packet("veth1b", "out", 0.01, "tcp", "10.211.55.123", "10.244.1.2", 40123, 9090, "S")
    assert packet.tuple_text() == "tcp 10.211.55.123:40123 > 10.244.1.2:9090 [S]"
    icmp = Packet("eth0", "in", 0.0, "icmp", "10.211.55.123", "10.211.55.122", 7, 7, "echo request id 7 seq 1")
    assert icmp.tuple_text() == "icmp 10.211.55.123 > 10.211.55.122 echo request id 7 seq 1"
    udp = Packet("eth0", "in", 0.0, "udp", "10.211.55.123", "10.211.55.122", 41001, 8053, None)
    assert udp.tuple_text() == "udp 10.211.55.123:41001 > 10.211.55.122:8053"
