"""module_utils/_trace.py without a kernel: the trace table's script, and `nft monitor trace` output parsed into
packets and the chains each crossed (the output is nft 1.0.6's, from a namespace where a nat chain DNATs
tcp 8090; tests/integration/test_trace.py runs it against the collection's mappings)."""
from __future__ import annotations

import pytest

from ansible_collections.netns.expose.plugins.module_utils._trace import (
    Flow,
    arm_script,
    flow_packets,
    parse_trace,
    table_name,
)
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

TABLE = "netns_expose_trace_t1"
FLOW = Flow("tcp", "10.99.0.1", 40123, "10.99.0.2", 8090)
# A SYN DNAT-ed in natx prerouting, the SYN-ACK, a packet of another run's trace, a canary (whose id is the SYN's
# again), and the next packet of the flow.
OUTPUT = f"""\
trace id f270db11 ip {TABLE} prerouting packet: iif "trvb" ip saddr 10.99.0.1 ip daddr 10.99.0.2 ip ttl 64 \
tcp sport 40123 tcp dport 8090 tcp flags == syn tcp window 64240
trace id f270db11 ip {TABLE} prerouting rule ip saddr 10.99.0.1 ip daddr 10.99.0.2 tcp sport 40123 \
tcp dport 8090 meta nftrace set 1 (verdict continue)
trace id f270db11 ip {TABLE} prerouting policy accept
trace id f270db11 ip natx prerouting packet: iif "trvb" ip saddr 10.99.0.1 ip daddr 10.99.0.2 tcp sport 40123 \
tcp dport 8090 tcp flags == syn
trace id f270db11 ip natx prerouting rule tcp dport 8090 counter packets 0 bytes 0 dnat to 10.99.0.2:9090 comment "m1" (verdict accept)
trace id 1db40fe7 ip {TABLE} prerouting packet: iif "trvb" ip saddr 10.99.0.2 ip daddr 10.99.0.1 tcp sport 9090 tcp dport 40123 tcp flags == 0x12
trace id 1db40fe7 ip {TABLE} prerouting rule ip daddr 10.99.0.1 tcp dport 40123 meta nftrace set 1 (verdict continue)
trace id 1db40fe7 ip {TABLE} prerouting policy accept
trace id 1db40fe7 ip filter forward packet: iif "trvb" oif "eth0" ip saddr 10.99.0.2 ip daddr 10.99.0.1 tcp sport 9090 tcp dport 40123
trace id 1db40fe7 ip filter forward policy accept
trace id 77777777 ip netns_expose_trace_other prerouting packet: iif "eth0" ip saddr 10.1.1.1 ip daddr 10.1.1.2
trace id 77777777 ip filter forward policy accept
trace id f270db11 ip {TABLE} output packet: oif "lo" ip saddr 127.0.0.1 ip daddr 127.0.0.1 udp sport 50000 udp dport 50000
trace id f270db11 ip filter OUTPUT policy accept
trace id f270db11 ip {TABLE} prerouting packet: iif "trvb" ip saddr 10.99.0.1 ip daddr 10.99.0.2 tcp sport 40123 tcp dport 8090 tcp flags == ack
trace id f270db11 ip {TABLE} prerouting rule ip saddr 10.99.0.1 ip daddr 10.99.0.2 tcp sport 40123 tcp dport 8090 meta nftrace set 1 (verdict continue)
trace id f270db11 ip {TABLE} prerouting policy accept
trace id f270db11 ip filter forward packet: iif "trvb" oif "eth0" ip saddr 10.99.0.1 ip daddr 10.244.1.2 tcp sport 40123 tcp dport 9090
trace id f270db11 ip filter forward rule ct status dnat accept (verdict accept)
"""


def test_the_trace_table_marks_exactly_the_flow_and_its_replies():
    assert arm_script(TABLE, [FLOW], canary_port=50000) == (
        f"table ip {TABLE} {{\n  chain prerouting {{\n    type filter hook prerouting priority -350; policy accept;\n"
        "    ip saddr 10.99.0.1 ip daddr 10.99.0.2 tcp sport 40123 tcp dport 8090 meta nftrace set 1\n"
        "    ip daddr 10.99.0.1 tcp dport 40123 meta nftrace set 1\n  }\n"
        "  chain output {\n    type filter hook output priority -350; policy accept;\n"
        "    ip daddr 127.0.0.1 udp dport 50000 meta nftrace set 1\n  }\n}\n")


def test_each_packet_gets_the_chains_it_crossed_with_the_rules_that_matched():
    packets = parse_trace(OUTPUT, TABLE)
    assert [packet.path() for packet in packets] == [["ip natx prerouting"], ["ip filter forward"], ["ip filter forward"]]
    syn, syn_ack, ack = packets
    assert syn.fields == {"iif": "trvb", "saddr": "10.99.0.1", "daddr": "10.99.0.2", "sport": "40123", "dport": "8090",
                          "tcp_flags": "syn"}
    assert syn.hops[0].rules == [('tcp dport 8090 counter packets 0 bytes 0 dnat to 10.99.0.2:9090 comment "m1"', "accept")]
    assert syn.hops[0].verdict == "accept"
    assert syn_ack.hops[0].verdict == "policy accept" and syn_ack.hops[0].fields["oif"] == "eth0"
    # Each chain has the packet as it entered it: after the DNAT its destination is the target.
    assert ack.fields["daddr"] == "10.99.0.2" and ack.hops[0].fields["daddr"] == "10.244.1.2"
    assert ack.hops[0].rules == [("ct status dnat accept", "accept")]
    assert flow_packets(packets, FLOW) == {"request": [syn, ack], "reply": [syn_ack]}


def test_what_cannot_be_traced_is_refused_naming_it():
    with pytest.raises(InvalidInput, match="protocol: 'sctp' cannot be traced; tcp, udp or icmp"):
        Flow("sctp", "10.99.0.1", 1, "10.99.0.2", 0)
    with pytest.raises(InvalidInput, match="run_id: 'a b' is not"):
        table_name("a b")
    assert table_name("ab12") == "netns_expose_trace_ab12"


def test_an_icmp_flow_is_traced_by_its_echo_identifier():
    echo = Flow("icmp", "10.99.0.1", 4321, "10.99.0.2", None)
    assert echo.request_rule() == "ip saddr 10.99.0.1 ip daddr 10.99.0.2 icmp type echo-request icmp id 4321 meta nftrace set 1"
    assert echo.reply_rule() == "ip daddr 10.99.0.1 icmp type echo-reply icmp id 4321 meta nftrace set 1"
    # As nft monitor trace prints them.
    text = (
        'trace id 0a ip netns_expose_trace_t prerouting packet: iif "eth0" ip saddr 10.99.0.1 ip daddr 10.99.0.2 ip ttl 64 '
        "icmp type echo-request icmp code net-unreachable icmp id 4321 icmp sequence 1\n"
        "trace id 0a ip filter FORWARD policy drop\n"
        'trace id 0b ip netns_expose_trace_t prerouting packet: iif "veth1b" ip saddr 10.99.0.2 ip daddr 10.99.0.1 '
        "icmp type echo-reply icmp code net-unreachable icmp id 4321 icmp sequence 1\n"
        'trace id 0c ip netns_expose_trace_t prerouting packet: iif "eth0" ip saddr 10.99.0.1 ip daddr 10.99.0.2 '
        "icmp type echo-request icmp code net-unreachable icmp id 999 icmp sequence 1\n"
    )
    packets = parse_trace(text, "netns_expose_trace_t")
    found = flow_packets(packets, echo)
    assert [packet.fields["icmp_type"] for packet in found["request"]] == ["echo-request"]
    assert found["request"][0].hops[0].verdict == "policy drop"
    assert [packet.fields["icmp_id"] for packet in found["reply"]] == ["4321"]
