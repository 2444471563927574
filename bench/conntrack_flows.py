"""Conntrack entries for bench/dnat_bench.py, made in the namespace it runs in (the lab master), with pyroute2.

    conntrack_flows.py add FIRST_PORT COUNT     one established tcp flow to each mapped port (as a client of the
                                                slave would have, DNAT-ed to ns1), and as many that are not
                                                the mappings' (udp to the same ports, tcp to port 443)
    conntrack_flows.py count FIRST_PORT COUNT   prints {"mapped": n, "other": n}
    conntrack_flows.py delete FIRST_PORT COUNT  deletes the mapped flows as the dnat_rule on PYTHONPATH does, and
                                                prints the seconds it took: in one pass if it has
                                                _conntrack.delete_over_netlink, else one `conntrack -D` per mapping

The mappings of the benchmark are tcp FIRST_PORT.. FIRST_PORT+COUNT-1. What dnat_rule must delete
when they change is exactly the "mapped" flows; the "other" ones must stay.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, NFCTSocket

SLAVE, MASTER, NS1 = "10.211.55.123", "10.211.55.122", "10.244.1.2"
IPS_CONFIRMED_SEEN_REPLY_ASSURED = 0x8 | 0x2 | 0x4  # as an established flow shows them
TIMEOUT = 3600


def flows(first_port, count):
    """(mapped?, original tuple, reply tuple) of every flow."""
    for i in range(count):
        port, client_port = first_port + i, 20000 + i
        yield True, (socket.IPPROTO_TCP, SLAVE, client_port, MASTER, port), (NS1, 9090)
        yield False, (socket.IPPROTO_UDP, SLAVE, client_port, MASTER, port), (MASTER, port)
        yield False, (socket.IPPROTO_TCP, SLAVE, client_port, MASTER, 443), (MASTER, 443)


def add(ct, first_port, count):
    for _mapped, (proto, saddr, sport, daddr, dport), (raddr, rport) in flows(first_port, count):
        ct.entry("add", timeout=TIMEOUT, status=IPS_CONFIRMED_SEEN_REPLY_ASSURED,
                 tuple_orig=NFCTAttrTuple(saddr=saddr, daddr=daddr, proto=proto, sport=sport, dport=dport),
                 tuple_reply=NFCTAttrTuple(saddr=raddr, daddr=saddr, proto=proto, sport=rport, dport=sport))


def count_flows(ct, first_port, count):
    wanted = {orig: mapped for mapped, orig, _reply in flows(first_port, count)}
    found = {"mapped": 0, "other": 0}
    for msg in ct.dump():
        orig = msg.get_attr("CTA_TUPLE_ORIG")
        ip, proto = orig.get_attr("CTA_TUPLE_IP"), orig.get_attr("CTA_TUPLE_PROTO")
        key = (proto.get_attr("CTA_PROTO_NUM"), ip.get_attr("CTA_IP_V4_SRC"), proto.get_attr("CTA_PROTO_SRC_PORT"),
               ip.get_attr("CTA_IP_V4_DST"), proto.get_attr("CTA_PROTO_DST_PORT"))
        if key in wanted:
            found["mapped" if wanted[key] else "other"] += 1
    return found


def time_deletion(first_port, count):
    """Seconds that the collection's own deletion takes for the benchmark's mappings."""
    from ansible_collections.netns.expose.plugins.module_utils import _conntrack  # pylint: disable=import-outside-toplevel

    keys = {("tcp", port, None) for port in range(first_port, first_port + count)}
    start = time.monotonic()
    if hasattr(_conntrack, "delete_over_netlink"):
        _conntrack.delete_over_netlink(keys)
    else:  # releases that ran the tool once per mapping
        for key in sorted(keys):
            subprocess.run(_conntrack.delete_argv("conntrack", *key), capture_output=True, check=False)
    return time.monotonic() - start


def main(argv):
    command, first_port, count = argv[0], int(argv[1]), int(argv[2])
    if command == "delete":
        print(time_deletion(first_port, count))
        return 0
    ct = NFCTSocket()
    try:
        if command == "add":
            add(ct, first_port, count)
        else:
            json.dump(count_flows(ct, first_port, count), sys.stdout)
    finally:
        ct.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
