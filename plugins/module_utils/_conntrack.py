# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deleting the conntrack entries of the mappings that change, in one pass over the table.

NAT is decided when a conntrack entry is made: a flow that started before a mapping
was added, changed or removed keeps its old translation (or none) until its entry
expires. Deleting the entries of the mapping's protocol, host port (and destination)
makes the next packet of such a flow start a new entry that meets the current rules.

A key is (protocol, port, destination): the entries whose original direction has that
protocol, destination port (none for icmp) and, when it is not None, destination address.

The table is read once, over netlink (the kernel's ctnetlink, through Python's own
socket module: no pyroute2, whose message objects cost 0.1 to 0.4 ms an entry), the
entries are matched against every key in Python, and only the matching ones are
deleted, by their original tuple and id, in batches of requests on the same socket.
Where netlink cannot be used, the conntrack tool does it: one `conntrack -L`, then one
`conntrack -D` per key that has entries.
"""
from __future__ import annotations

import errno
import ipaddress
import operator
import os
import re
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
CTA_ID = 12
CTA_ZONE = 18
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}
# The bits of an entry's status that say what happened to its flow (include/uapi/linux/netfilter/nf_conntrack_common.h).
STATUS_BITS = ((1 << 1, "SEEN_REPLY"), (1 << 2, "ASSURED"), (1 << 4, "SRC_NAT"), (1 << 5, "DST_NAT"))
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE",
              "SYN_SENT2")
_U32 = struct.Struct(">I")
PORTED = (6, 17)
# Delete requests sent before their acknowledgements are read: the acknowledgements must fit
# in the socket's receive buffer (each takes about 1 KiB of it; the default is 208 KiB).
BATCH = 64
TIMEOUT = 30  # seconds without an answer from the kernel

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_ATTR = struct.Struct("=HH")  # struct nlattr
_ERROR = struct.Struct("=i")
_PORT = struct.Struct(">H")
NFGENMSG_IPV4 = struct.pack("=BBH", socket.AF_INET, 0, 0)  # family, version, res_id
_DELETED = re.compile(r"(\d+) flow entries have been deleted")


class ConntrackError(Exception):
    pass


def key_order(key):
    protocol, port, destination = key
    return (protocol, port or 0, destination or "")


class KeyIndex:
    """The keys by (protocol number, port), to match entries in constant time; an entry goes to the first key
    (in key_order) that matches it.

    kept: {key: networks} of the keys whose entries from a source in those networks are kept (the clients a
    mapping's allowed_sources still allows, when only the list changed): only the others are deleted."""

    def __init__(self, keys, kept=None):
        self.keys = sorted(keys, key=key_order)
        self._by_port = {}
        self._kept = {key: [ipaddress.IPv4Network(network) for network in networks]
                      for key, networks in (kept or {}).items()}
        for key in self.keys:
            protocol, port, destination = key
            self._by_port.setdefault((PROTOCOL_NUMBERS[protocol], port), []).append((destination, key))

    def match(self, protonum, port, destination, source=None):
        for wanted, key in self._by_port.get((protonum, port if protonum in PORTED else None), ()):
            if wanted is None or wanted == destination:
                if key in self._kept and source is not None and self._keeps(key, source):
                    return None
                return key
        return None

    def _keeps(self, key, source):
        address = ipaddress.IPv4Address(source)
        return any(address in network for network in self._kept[key])


# Netlink

def _message(msg_type, flags, seq, payload):
    return _HEADER.pack(_HEADER.size + len(payload), msg_type, flags, seq, 0) + payload


def _padded(raw):
    return raw + b"\0" * (-len(raw) % 4)


def _attributes(data, start, end):
    """(type, value start, value end, attribute start) of each attribute in data[start:end]."""
    while start + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < _ATTR.size or start + length > end:
            return
        yield kind & NLA_TYPE_MASK, start + _ATTR.size, start + length, start
        start += (length + 3) & ~3


def dump_request(seq):
    return _message((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, NFGENMSG_IPV4)


# How the kernel lays out the start of an IPv4 tcp or udp entry (ctnetlink_dump_tuples): the original tuple,
# its addresses, its protocol number and ports. Read in one go, checked field by field; anything else (icmp, or
# another layout) is read attribute by attribute.
_TCP_UDP = struct.Struct("=HHHHHH4sHH4sHHHHB3xHH2s2xHH2s")
_NESTS = operator.itemgetter(1, 3, 11)  # the types of the original tuple, its addresses, its protocol
_NESTS_SHAPE = (CTA_TUPLE_ORIG, CTA_TUPLE_IP, CTA_TUPLE_PROTO)
_LEAVES = operator.itemgetter(4, 5, 7, 8, 12, 13, 15, 16, 18, 19)  # length and type of each value
_LEAVES_SHAPE = (8, 1, 8, CTA_IP_V4_DST, 5, CTA_PROTO_NUM, 6, 2, 6, CTA_PROTO_DST_PORT)


def entry_key(data, start, end):
    """(protocol number, destination port or None, destination address, source address) of the original
    direction of one ctnetlink message (its attributes are data[start:end], after struct nfgenmsg); None
    without one."""
    if end - start >= _TCP_UDP.size:
        fields = _TCP_UDP.unpack_from(data, start)
        if _LEAVES(fields) == _LEAVES_SHAPE and tuple(kind & NLA_TYPE_MASK for kind in _NESTS(fields)) == _NESTS_SHAPE:
            return fields[14], _PORT.unpack(fields[20])[0], socket.inet_ntoa(fields[9]), socket.inet_ntoa(fields[6])
    protonum = port = destination = source = None
    for kind, value, value_end, _at in _attributes(data, start, end):
        if kind != CTA_TUPLE_ORIG:
            continue
        for tuple_kind, tuple_value, tuple_end, _at in _attributes(data, value, value_end):
            if tuple_kind == CTA_TUPLE_IP:
                for ip_kind, ip_value, ip_end, _a in _attributes(data, tuple_value, tuple_end):
                    if ip_kind == CTA_IP_V4_DST and ip_end - ip_value == 4:
                        destination = socket.inet_ntoa(bytes(data[ip_value:ip_end]))
                    elif ip_kind == CTA_IP_V4_SRC and ip_end - ip_value == 4:
                        source = socket.inet_ntoa(bytes(data[ip_value:ip_end]))
            elif tuple_kind == CTA_TUPLE_PROTO:
                for proto_kind, proto_value, proto_end, _a in _attributes(data, tuple_value, tuple_end):
                    if proto_kind == CTA_PROTO_NUM and proto_end > proto_value:
                        protonum = data[proto_value]
                    elif proto_kind == CTA_PROTO_DST_PORT and proto_end - proto_value == 2:
                        port = _PORT.unpack_from(data, proto_value)[0]
        return protonum, port, destination, source
    return None


def _tuple(data, start, end):
    """{protocol, src, dst, sport, dport} of a CTA_TUPLE_* attribute's value (icmp: the echo id as sport, dport None)."""
    found = {"protocol": None, "src": None, "dst": None, "sport": None, "dport": None}
    for kind, value, value_end, _at in _attributes(data, start, end):
        for leaf, leaf_value, leaf_end, _a in _attributes(data, value, value_end):
            size = leaf_end - leaf_value
            if kind == CTA_TUPLE_IP and leaf in (CTA_IP_V4_SRC, CTA_IP_V4_DST) and size == 4:
                found["src" if leaf == CTA_IP_V4_SRC else "dst"] = socket.inet_ntoa(bytes(data[leaf_value:leaf_end]))
            elif kind == CTA_TUPLE_PROTO and leaf == CTA_PROTO_NUM and size >= 1:
                found["protocol"] = PROTOCOL_NAMES.get(data[leaf_value], str(data[leaf_value]))
            elif kind == CTA_TUPLE_PROTO and leaf in (CTA_PROTO_SRC_PORT, CTA_PROTO_ICMP_ID) and size == 2:
                found["sport"] = _PORT.unpack_from(data, leaf_value)[0]
            elif kind == CTA_TUPLE_PROTO and leaf == CTA_PROTO_DST_PORT and size == 2:
                found["dport"] = _PORT.unpack_from(data, leaf_value)[0]
    return found


def describe_entry(data, start, end):
    """One ctnetlink message's entry as conntrack -L shows it: its original and reply tuples (a DNAT shows as a
    reply that comes from the target instead of the original destination), status, tcp state, mark, timeout."""
    entry = {"original": None, "reply": None, "status": [], "tcp_state": None, "mark": None, "timeout": None}
    for kind, value, value_end, _at in _attributes(data, start, end):
        if kind in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
            entry["original" if kind == CTA_TUPLE_ORIG else "reply"] = _tuple(data, value, value_end)
        elif kind == CTA_STATUS and value_end - value == 4:
            status = _U32.unpack_from(data, value)[0]
            entry["status"] = [name for bit, name in STATUS_BITS if status & bit]
        elif kind in (CTA_MARK, CTA_TIMEOUT) and value_end - value == 4:
            entry["mark" if kind == CTA_MARK else "timeout"] = _U32.unpack_from(data, value)[0]
        elif kind == CTA_PROTOINFO:
            for info, info_value, info_end, _a in _attributes(data, value, value_end):
                for leaf, leaf_value, leaf_end, _b in _attributes(data, info_value, info_end):
                    if info == CTA_PROTOINFO_TCP and leaf == CTA_PROTOINFO_TCP_STATE and leaf_end > leaf_value:
                        state = data[leaf_value]
                        entry["tcp_state"] = TCP_STATES[state] if state < len(TCP_STATES) else str(state)
    return entry


def delete_payload(data, start, end):
    """The payload of a request that deletes the entry of one ctnetlink message: its original tuple, its zone,
    and its id (which makes the kernel delete this entry and no other that took its tuple since)."""
    payload = [NFGENMSG_IPV4]
    for kind, _value, value_end, attribute in _attributes(data, start, end):
        if kind in (CTA_TUPLE_ORIG, CTA_ID, CTA_ZONE):
            payload.append(_padded(bytes(data[attribute:value_end])))
    return b"".join(payload)


def delete_request(seq, payload):
    return _message((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, payload)


def messages(data):
    """(type, seq, payload start, end) of each netlink message in data; payload after struct nlmsghdr."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise ConntrackError("netlink: a truncated message")
        yield kind, seq, offset + _HEADER.size, offset + length
        offset += (length + 3) & ~3


def error_code(data, start):
    return -_ERROR.unpack_from(data, start)[0]


class NetlinkConntrack:
    """One netlink socket to the kernel's conntrack table (IPv4)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.settimeout(TIMEOUT)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 20)  # SO_RCVBUFFORCE: room for the answers
            except OSError:
                pass
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.buffer = bytearray(1 << 16)  # a dump answers in messages of at most 32 KiB
        self.seq = 0

    def close(self):
        self.sock.close()

    def _next_seq(self):
        self.seq += 1
        return self.seq

    def _receive(self):
        try:
            size = self.sock.recv_into(self.buffer)
        except OSError as exc:
            raise ConntrackError(f"netlink: {exc}") from exc
        return bytes(self.buffer[:size])

    def _dump(self):
        """(message, start, end) of every IPv4 entry, read in one dump; message[start:end] are its attributes."""
        seq = self._next_seq()
        self.sock.send(dump_request(seq))
        skip = len(NFGENMSG_IPV4)
        while True:
            data = self._receive()
            for kind, msg_seq, start, end in messages(data):
                if msg_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = error_code(data, start)
                    raise ConntrackError(f"reading the conntrack table: {os.strerror(code)}")
                yield data, start + skip, end

    def entries(self):
        """(protocol number, port, destination, source, message, start, end) of every IPv4 entry, read in one
        dump; message[start:end] are its attributes, for delete_payload."""
        for data, start, end in self._dump():
            key = entry_key(data, start, end)
            if key is not None:
                yield (*key, data, start, end)

    def described(self):
        """Every IPv4 entry, as describe_entry gives it, read in one dump."""
        for data, start, end in self._dump():
            yield describe_entry(data, start, end)

    def delete(self, payloads):
        """Delete entries by their delete payloads, BATCH requests at a time; for each, whether it was deleted
        (an entry gone meanwhile was not)."""
        done = [False] * len(payloads)
        for first in range(0, len(payloads), BATCH):
            waiting = {}
            requests = []
            for position in range(first, min(first + BATCH, len(payloads))):
                seq = self._next_seq()
                waiting[seq] = position
                requests.append(delete_request(seq, payloads[position]))
            self.sock.send(b"".join(requests))
            while waiting:
                data = self._receive()
                for kind, seq, start, _end in messages(data):
                    if kind != NLMSG_ERROR or seq not in waiting:
                        continue
                    position = waiting.pop(seq)
                    code = error_code(data, start)
                    if code == 0:
                        done[position] = True
                    elif code != errno.ENOENT:
                        raise ConntrackError(f"deleting a conntrack entry: {os.strerror(code)}")
        return done


def netlink_usable():
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER).close()
    except (OSError, AttributeError):
        return False
    return True


def delete_over_netlink(keys, table=None, kept=None):
    """Delete the entries of keys (but those KeyIndex keeps) in one pass: {key: entries deleted}."""
    index = KeyIndex(keys, kept)
    counts = {key: 0 for key in index.keys}
    table = table or NetlinkConntrack()
    try:
        matched, payloads = [], []
        for protonum, port, destination, source, message, start, end in table.entries():
            key = index.match(protonum, port, destination, source)
            if key is not None:
                matched.append(key)
                payloads.append(delete_payload(message, start, end))
        for key, deleted in zip(matched, table.delete(payloads)):
            counts[key] += deleted
    finally:
        table.close()
    return counts


# The conntrack tool

def delete_argv(conntrack, protocol, port, destination, source=None):
    """conntrack -D for the flows of one mapping key: protocol, original destination port and address (and,
    when given, original source address)."""
    argv = [conntrack, "-D", "-p", protocol]
    if port is not None:
        argv += ["--orig-port-dst", str(port)]
    if destination is not None:
        argv += ["--orig-dst", destination]
    if source is not None:
        argv += ["--orig-src", source]
    return argv


def deleted_count(rc, out, err):
    """How many entries `conntrack -D` deleted; it exits 1 when there were none."""
    match = _DELETED.search(f"{out}\n{err}")
    if match is None or rc not in (0, 1):
        raise ConntrackError(f"conntrack failed ({rc}): {(err or out).strip()}")
    return int(match.group(1))


def listed_entries(text):
    """(protocol number, destination port or None, destination address, source address) of each line of
    `conntrack -L`."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            continue
        values = {}
        for field in fields[2:]:
            name, sep, value = field.partition("=")
            if sep and name not in values:  # the first of each: the original direction
                values[name] = value
        port = values.get("dport")
        yield int(fields[1]), int(port) if port and port.isdigit() else None, values.get("dst"), values.get("src")


def delete_with_tool(run_command, conntrack, keys, kept=None):
    """One `conntrack -L`, then one `conntrack -D` per key that has entries (per key and source, for a key of
    `kept`, see KeyIndex): {key: entries deleted}."""
    index = KeyIndex(keys, kept)
    counts = {key: 0 for key in index.keys}
    rc, out, err = run_command([conntrack, "-L", "-f", "ipv4"])
    if rc != 0:
        raise ConntrackError(f"conntrack -L failed ({rc}): {(err or out).strip()}")
    present = set()
    for entry in listed_entries(out):
        key = index.match(*entry)
        if key is not None:
            present.add((key, entry[3] if kept and key in kept else None))
    for key, source in sorted(present, key=lambda found: (key_order(found[0]), found[1] or "")):
        counts[key] += deleted_count(*run_command(delete_argv(conntrack, *key, source)))
    return counts


class ConntrackTable:
    """The host's conntrack table; `method` is how it is changed: 'netlink', 'conntrack tool', or None (neither)."""

    def __init__(self, module):
        self.module = module
        self._method = False

    @property
    def method(self):
        if self._method is False:
            if netlink_usable():
                self._method = "netlink"
            elif self.module.get_bin_path("conntrack"):
                self._method = "conntrack tool"
            else:
                self._method = None
        return self._method

    def delete(self, keys, kept=None):
        """Delete the entries of every key (but those KeyIndex keeps) in one pass; {key: entries deleted}."""
        if self.method == "netlink":
            return delete_over_netlink(keys, kept=kept)
        return delete_with_tool(self.module.run_command, self.module.get_bin_path("conntrack"), keys, kept)
