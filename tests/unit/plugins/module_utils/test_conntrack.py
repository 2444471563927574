"""Deleting the flows of the mappings that change: over netlink (fabricated messages), or with the conntrack tool."""
from __future__ import annotations

import errno
import socket
import struct
from unittest import mock

import pytest

from ansible_collections.netns.expose.plugins.module_utils import _conntrack
from ansible_collections.netns.expose.plugins.module_utils._conntrack import (
    ConntrackError,
    ConntrackTable,
    delete_argv,
    deleted_count,
)


def test_argv_names_protocol_port_and_destination_only_when_given():
    assert delete_argv("/usr/sbin/conntrack", "udp", 8053, None) == [
        "/usr/sbin/conntrack", "-D", "-p", "udp", "--orig-port-dst", "8053"]
    assert delete_argv("conntrack", "tcp", 8090, "10.211.55.122") == [
        "conntrack", "-D", "-p", "tcp", "--orig-port-dst", "8090", "--orig-dst", "10.211.55.122"]
    assert delete_argv("conntrack", "icmp", None, None) == ["conntrack", "-D", "-p", "icmp"]


@pytest.mark.parametrize("rc, err, count", [
    (0, "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n", 3),
    # It exits 1 when nothing matched.
    (1, "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n", 0),
])
def test_the_count_of_deleted_entries_is_read_from_its_message(rc, err, count):
    assert deleted_count(rc, "", err) == count


def test_a_real_failure_is_an_error():
    with pytest.raises(ConntrackError, match=r"conntrack failed \(1\): conntrack v1.4.7 \(conntrack-tools\): Operation failed"):
        deleted_count(1, "", "conntrack v1.4.7 (conntrack-tools): Operation failed: Permission denied\n")


# Matching and netlink, on fabricated ctnetlink messages.

def nla(kind, value, nested=False):
    raw = struct.pack("=HH", 4 + len(value), kind | (0x8000 if nested else 0)) + value
    return raw + b"\0" * (-len(raw) % 4)


def nest(kind, *attrs, flag=True):
    return nla(kind, b"".join(attrs), nested=flag)


def ip_tuple(kind, src, dst, proto, flag=True):
    return nest(kind, nest(1, nla(1, socket.inet_aton(src)), nla(2, socket.inet_aton(dst)), flag=flag), proto, flag=flag)


def ports(protonum, sport, dport, flag=True):
    return nest(2, nla(1, bytes([protonum])), nla(2, struct.pack(">H", sport)), nla(3, struct.pack(">H", dport)), flag=flag)


def icmp(ident):
    return nest(2, nla(1, bytes([1])), nla(4, struct.pack(">H", ident)), nla(5, bytes([8])), nla(6, bytes([0])))


def entry_message(orig, reply, ident, zone=None, seq=1):
    attrs = orig + reply + nla(3, struct.pack(">I", 0x18e)) + nla(7, struct.pack(">I", 100))
    if zone is not None:
        attrs += nla(18, struct.pack(">H", zone))
    attrs += nla(12, struct.pack(">I", ident)) + nla(11, struct.pack(">I", 1))
    payload = _conntrack.NFGENMSG_IPV4 + attrs
    return struct.pack("=IHHII", 16 + len(payload), 1 << 8, 0x2, seq, 0) + payload


def tcp_entry(dport, ident, dst="10.211.55.122", protonum=6, flag=True, zone=None, seq=1):
    orig = ip_tuple(1, "10.211.55.123", dst, ports(protonum, 40000, dport, flag), flag)
    reply = ip_tuple(2, "10.244.1.2", "10.211.55.123", ports(protonum, 9090, 40000, flag), flag)
    return entry_message(orig, reply, ident, zone, seq)


def icmp_entry(ident, dst="10.211.55.122", seq=1):
    return entry_message(ip_tuple(1, "10.211.55.123", dst, icmp(7)), ip_tuple(2, dst, "10.211.55.123", icmp(7)), ident, seq=seq)


def attributes_of(message):
    return message, 16 + 4, len(message)


@pytest.mark.parametrize("message, key", [
    (tcp_entry(8090, 1), (6, 8090, "10.211.55.122", "10.211.55.123")),
    (tcp_entry(8053, 2, protonum=17), (17, 8053, "10.211.55.122", "10.211.55.123")),
    (tcp_entry(8090, 3, flag=False), (6, 8090, "10.211.55.122", "10.211.55.123")),  # nests without NLA_F_NESTED
    (tcp_entry(8090, 4, zone=5), (6, 8090, "10.211.55.122", "10.211.55.123")),
    # Not the tcp/udp layout: read attribute by attribute.
    (icmp_entry(5, dst="10.0.0.9"), (1, None, "10.0.0.9", "10.211.55.123")),
])
def test_the_key_of_an_entry_is_its_original_protocol_port_destination_and_source(message, key):
    assert _conntrack.entry_key(*attributes_of(message)) == key


def test_a_delete_request_names_the_original_tuple_the_zone_and_the_id():
    message = tcp_entry(8090, 0x1234, zone=5)
    payload = _conntrack.delete_payload(*attributes_of(message))
    orig = ip_tuple(1, "10.211.55.123", "10.211.55.122", ports(6, 40000, 8090))
    assert payload == _conntrack.NFGENMSG_IPV4 + orig + nla(18, struct.pack(">H", 5)) + nla(12, struct.pack(">I", 0x1234))


def test_an_entry_goes_to_the_first_key_that_matches_it():
    index = _conntrack.KeyIndex({("tcp", 8090, "10.211.55.122"), ("tcp", 8090, None), ("udp", 8090, None), ("icmp", None, None)})
    assert index.keys[0] == ("icmp", None, None) and index.keys[1] == ("tcp", 8090, None)
    assert index.match(6, 8090, "10.211.55.122") == ("tcp", 8090, None)
    assert index.match(17, 8090, "10.0.0.1") == ("udp", 8090, None)
    assert index.match(6, 8091, "10.211.55.122") is None
    assert index.match(1, None, "10.0.0.1") == ("icmp", None, None)
    only_there = _conntrack.KeyIndex({("tcp", 8090, "10.211.55.122")})
    assert only_there.match(6, 8090, "10.211.55.99") is None


def test_a_key_with_kept_sources_matches_only_the_other_sources():
    """A changed allowed_sources cuts the flows of the clients it no longer allows, and only theirs."""
    key = ("tcp", 8090, "10.211.55.122")
    index = _conntrack.KeyIndex({key, ("udp", 8053, None)}, kept={key: ("10.211.55.0/25",)})
    assert index.match(6, 8090, "10.211.55.122", "10.211.55.123") is None, "an allowed client's flow is kept"
    assert index.match(6, 8090, "10.211.55.122", "10.211.55.200") == key, "a denied client's flow is cut"
    assert index.match(17, 8053, "10.0.0.1", "10.211.55.123") == ("udp", 8053, None), "no kept sources: all go"


def test_the_tool_cuts_a_key_with_kept_sources_by_source():
    calls = []
    listing = LISTING + LISTING.replace("src=10.211.55.123", "src=10.211.55.200", 1)

    def run_command(argv):
        calls.append(argv)
        if argv[1] == "-L":
            return 0, listing, ""
        return 0, "", "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been deleted.\n"

    key = ("tcp", 8090, "10.211.55.122")
    counts = _conntrack.delete_with_tool(run_command, "conntrack", [key], kept={key: ("10.211.55.123/32",)})
    assert counts == {key: 1}
    assert calls[1:] == [["conntrack", "-D", "-p", "tcp", "--orig-port-dst", "8090", "--orig-dst", "10.211.55.122",
                          "--orig-src", "10.211.55.200"]]


class FakeKernel:
    """The netlink socket of NetlinkConntrack: answers a dump with `entries`, and delete requests with an
    acknowledgement (ENOENT for the ids in `gone`), reading them as the kernel would."""

    def __init__(self, entries, gone=()):
        self.entries = entries
        self.gone = set(gone)
        self.answers = []
        self.deleted = []
        self.sends = 0

    def send(self, data):
        self.sends += 1
        for kind, seq, start, end in _conntrack.messages(data):
            if kind == (1 << 8) | 1:  # the dump
                answer = b"".join(message[:12] + struct.pack("=I", seq) + message[16:] for message in self.entries)
                self.answers.append(answer + struct.pack("=IHHII", 20, 3, 0x2, seq, 0) + struct.pack("=i", 0))
            else:
                assert kind == (1 << 8) | 2 and data[start:start + 4] == _conntrack.NFGENMSG_IPV4
                ident = None
                for attr_kind, value, _value_end, _attr in _conntrack._attributes(data, start + 4, end):
                    if attr_kind == 12:
                        ident = struct.unpack_from(">I", data, value)[0]
                code = -errno.ENOENT if ident in self.gone else 0
                if not code:
                    self.deleted.append(ident)
                self.answers.append(struct.pack("=IHHII", 36, 2, 0x100, seq, 0) + struct.pack("=i", code) + data[start - 16:start])
        return len(data)

    def recv_into(self, buffer):
        data = self.answers.pop(0)
        buffer[:len(data)] = data
        return len(data)

    def close(self):
        pass


def fake_table(kernel):
    table = _conntrack.NetlinkConntrack.__new__(_conntrack.NetlinkConntrack)
    table.sock, table.buffer, table.seq = kernel, bytearray(1 << 16), 0
    return table


def test_one_dump_then_only_the_matching_entries_are_deleted_in_batches(monkeypatch):
    monkeypatch.setattr(_conntrack, "BATCH", 4)
    entries = [tcp_entry(10000 + i % 10, ident=i) for i in range(30)]
    entries += [tcp_entry(10000, 100, protonum=17), icmp_entry(101), tcp_entry(10001, 102, dst="10.9.9.9")]
    kernel = FakeKernel(entries, gone={10})
    keys = {("tcp", 10000 + i, None) for i in range(0, 10, 2)} | {("tcp", 10001, "10.211.55.122")}
    counts = _conntrack.delete_over_netlink(keys, table=fake_table(kernel))
    # tcp to the even ports, and to 10001 on the master's address only; entry 10 went by itself meanwhile.
    assert sorted(kernel.deleted) == sorted(i for i in range(30) if i % 10 in (0, 2, 4, 6, 8, 1) and i != 10)
    assert counts[("tcp", 10000, None)] == 2 and counts[("tcp", 10001, "10.211.55.122")] == 3
    assert sum(counts.values()) == 17 and len(counts) == len(keys)
    assert kernel.sends == 1 + 5, "one dump, then the 18 matching entries in batches of 4 requests"


def test_a_refused_deletion_is_an_error():
    kernel = FakeKernel([tcp_entry(10000, 1)])
    kernel.gone = set()
    table = fake_table(kernel)
    original = kernel.send

    def refuse(data):
        original(data)
        if kernel.answers and len(kernel.answers[-1]) == 36:
            kernel.answers[-1] = kernel.answers[-1][:16] + struct.pack("=i", -errno.EPERM) + kernel.answers[-1][20:]
        return len(data)

    kernel.send = refuse
    with pytest.raises(ConntrackError, match="deleting a conntrack entry: Operation not permitted"):
        _conntrack.delete_over_netlink({("tcp", 10000, None)}, table=table)


# The conntrack tool, where netlink cannot be used: one listing, then one deletion per key with entries.

LISTING = """\
tcp      6 431999 ESTABLISHED src=10.211.55.123 dst=10.211.55.122 sport=40000 dport=8090 \
src=10.244.1.2 dst=10.211.55.123 sport=9090 dport=40000 [ASSURED] mark=16777216 use=1
udp      17 29 src=10.211.55.123 dst=10.211.55.122 sport=40001 dport=8053 [UNREPLIED] \
src=10.211.55.122 dst=10.211.55.123 sport=8053 dport=40001 mark=0 use=1
icmp     1 29 src=10.211.55.123 dst=10.211.55.122 type=8 code=0 id=7 \
src=10.211.55.122 dst=10.211.55.123 type=0 code=0 id=7 mark=0 use=1
"""


def test_the_listing_of_the_tool_gives_the_original_direction():
    assert list(_conntrack.listed_entries(LISTING)) == [
        (6, 8090, "10.211.55.122", "10.211.55.123"), (17, 8053, "10.211.55.122", "10.211.55.123"),
        (1, None, "10.211.55.122", "10.211.55.123")]


def test_the_tool_deletes_only_the_keys_that_have_entries():
    calls = []

    def run_command(argv):
        calls.append(argv)
        if argv[1] == "-L":
            return 0, LISTING, "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n"
        return 0, "", "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been deleted.\n"

    keys = {("tcp", 8090, None), ("udp", 8053, "10.9.9.9")} | {("tcp", 9000 + i, None) for i in range(100)}
    counts = _conntrack.delete_with_tool(run_command, "conntrack", keys)
    assert calls == [["conntrack", "-L", "-f", "ipv4"], ["conntrack", "-D", "-p", "tcp", "--orig-port-dst", "8090"]]
    assert counts[("tcp", 8090, None)] == 1 and sum(counts.values()) == 1 and len(counts) == len(keys)


def test_netlink_first_then_the_tool_then_nothing(monkeypatch):
    module = mock.Mock()
    module.get_bin_path.return_value = "/usr/sbin/conntrack"
    monkeypatch.setattr(_conntrack, "netlink_usable", lambda: True)
    assert ConntrackTable(module).method == "netlink"
    monkeypatch.setattr(_conntrack, "netlink_usable", lambda: False)
    assert ConntrackTable(module).method == "conntrack tool"
    module.get_bin_path.return_value = None
    assert ConntrackTable(module).method is None


def test_an_entry_reads_as_conntrack_lists_it():
    """Both tuples (the reply from the DNAT's target), the status bits that tell what happened, the tcp state."""
    message = bytearray(tcp_entry(8090, 1))
    message += nest(4, nest(1, nla(1, bytes([3]))))  # CTA_PROTOINFO, its tcp state ESTABLISHED
    message += nla(8, struct.pack(">I", 0x1000000))  # CTA_MARK
    struct.pack_into("=I", message, 0, len(message))
    assert _conntrack.describe_entry(*attributes_of(bytes(message))) == {
        "original": {"protocol": "tcp", "src": "10.211.55.123", "dst": "10.211.55.122", "sport": 40000, "dport": 8090},
        "reply": {"protocol": "tcp", "src": "10.244.1.2", "dst": "10.211.55.123", "sport": 9090, "dport": 40000},
        "status": ["SEEN_REPLY", "ASSURED"],  # 0x18e: and the NAT done bits, not the NAT ones of this fabrication
        "tcp_state": "ESTABLISHED", "mark": 0x1000000, "timeout": 100,
    }
    entry = _conntrack.describe_entry(*attributes_of(icmp_entry(5)))
    assert entry["original"] == {"protocol": "icmp", "src": "10.211.55.123", "dst": "10.211.55.122", "sport": 7,
                                 "dport": None}
