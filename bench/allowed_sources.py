"""Benchmark: what allowed_sources costs, in new connections per second and in module time.

    source hack/env.sh && python bench/allowed_sources.py [--mappings 1000] [--networks 100] [--seconds 3]
        [--repeat 5] [--backends nftables,iptables] [--collection DIR]

In a lab of its own (namespaces; nothing on the machine itself): the master has the recipe's
ns1 (10.244.1.2 behind veth1b) with bench/dataplane_traffic.py serving tcp on 9090 in it. Each
backend of dnat_rule in turn makes, in one table (or the owned chains), two sets of --mappings tcp
mappings to 10.244.1.2:9090, in_interface eth0:

- plain: ports 10000.. without allowed_sources;
- lists: ports 20000.., each with allowed_sources of --networks networks (10.<i>.<j>.0/24 ...), the
         slave's 10.211.55.123/32 last of them (the worst place for iptables, which tries them in order).

From the slave, side by side (the targets take turns, connection by connection), new connections
per second (connect, 1 byte each way, close) through the first and the last mapping of each set.
The goal (issue 23, nftables): lists-last >= 0.9 x lists-first, and lists-last >= 0.9 x plain-last.

Then the module time (run directly in the master, python start-up included), the median of --repeat
runs taken in turns: a no-op run (the same arguments again), and a run that changes the list of
one mapping (one network in, then out again). The goal: change <= 2 x no-op.
"""
from __future__ import annotations

import argparse
import statistics

from benchlab import BenchLab, scrub_netfilter
from dnat_dataplane import MAPPED_PORT, MASTER_IP, NS_IP, build_ns1, measure, server

PLAIN_PORT, LISTS_PORT = 10000, 20000
SLAVE_IP = "10.211.55.123"


def networks(index, count):
    """count networks for mapping `index`, none adjacent to another (the list would be merged), the slave's
    address last: 10.<j>.<index>.0/24, j = 0, 1, ... but 211 (the lab's 10.211.55.0/24)."""
    seconds = [j for j in range(255) if j != 211][:count - 1]
    return [f"10.{j}.{index % 256}.0/24" for j in seconds] + [f"{SLAVE_IP}/32"]


def mappings(count, sources):
    plain = [dict(name=f"p{i}", protocol="tcp", port=PLAIN_PORT + i, to_address=NS_IP, to_port=MAPPED_PORT,
                  in_interface="eth0") for i in range(count)]
    lists = [dict(name=f"l{i}", protocol="tcp", port=LISTS_PORT + i, to_address=NS_IP, to_port=MAPPED_PORT,
                  in_interface="eth0", allowed_sources=networks(i, sources)) for i in range(count)]
    return plain + lists


def module_times(bench, args, repeat):
    """{kind: median seconds} of a no-op run and of a run that changes one mapping's list, taken in turns."""
    rules = args["rules"]
    last = rules[-1]
    changed = dict(last, allowed_sources=["192.0.2.0/24", *last["allowed_sources"]])
    times = {"no-op": [], "one list changed": []}
    for _run in range(repeat):
        times["no-op"].append(bench.module_alone(args)[0])
        seconds, result = bench.module_alone(dict(args, rules=[*rules[:-1], changed]))
        if not result["changed"]:
            raise RuntimeError("changing a list changed nothing")
        times["one list changed"].append(seconds)
        bench.module_alone(args)  # back as it was (not timed)
    return {kind: statistics.median(values) for kind, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mappings", type=int, default=1000, help="mappings in each set (plain and lists)")
    parser.add_argument("--networks", type=int, default=100, help="networks in each mapping's list")
    parser.add_argument("--seconds", type=float, default=3.0, help="of connections, for the four targets together")
    parser.add_argument("--repeat", type=int, default=5, help="module runs of each kind (the median is printed)")
    parser.add_argument("--cpu", default="1", help="the CPU that the client and the server run on")
    parser.add_argument("--backends", default="nftables,iptables", help="dnat_rule's backends, in turn")
    parser.add_argument("--collection", help="a checkout of the collection to benchmark instead of this one")
    args = parser.parse_args()
    if args.mappings > 10000:
        parser.error("--mappings: at most 10000 (ports 10000.. and 20000..)")
    if not 1 <= args.networks <= 255:
        parser.error("--networks: from 1 to 255")
    rows = []
    with BenchLab("a", args.collection) as bench:
        scrub_netfilter(bench.lab)
        build_ns1(bench)
        with server(bench, args.cpu):
            for backend in args.backends.split(","):
                run = {"rules": mappings(args.mappings, args.networks), "exclusive": True, "flush_conntrack": False,
                       "backend": backend}
                seconds, result = bench.module_alone(run)
                if result.get("backend") != backend:
                    raise RuntimeError(f"dnat_rule ran with {result.get('backend')}, not {backend}")
                last = args.mappings - 1
                targets = {"plain-first": f"{MASTER_IP}:{PLAIN_PORT}", "plain-last": f"{MASTER_IP}:{PLAIN_PORT + last}",
                           "lists-first": f"{MASTER_IP}:{LISTS_PORT}", "lists-last": f"{MASTER_IP}:{LISTS_PORT + last}"}
                medians = measure(bench, targets, args.seconds, args.cpu)
                conn = {name: medians[("conn", name)] for name in targets}
                rows.append((backend, seconds, conn, module_times(bench, run, args.repeat)))
                bench.module_alone({"rules": [], "exclusive": True, "flush_conntrack": False, "backend": backend})
    print(f"\ncollection: {bench.collection}")
    print(f"{args.mappings} mappings without a list and {args.mappings} with {args.networks} networks each\n")
    print(f"{'backend':<10}{'first run s':>12}{'plain-first':>12}{'plain-last':>11}{'lists-first':>12}{'lists-last':>11}"
          f"{'lists last/first':>18}{'lists/plain last':>18}")
    for backend, seconds, conn, _times in rows:
        print(f"{backend:<10}{seconds:>12.2f}{conn['plain-first']:>12.0f}{conn['plain-last']:>11.0f}"
              f"{conn['lists-first']:>12.0f}{conn['lists-last']:>11.0f}"
              f"{conn['lists-last'] / conn['lists-first']:>18.2f}{conn['lists-last'] / conn['plain-last']:>18.2f}")
    print("\nnew connections per second; the goal (nftables): both ratios >= 0.9\n")
    print(f"{'backend':<10}{'no-op s':>9}{'one list changed s':>20}{'changed/no-op':>15}")
    for backend, _seconds, _conn, times in rows:
        print(f"{backend:<10}{times['no-op']:>9.2f}{times['one list changed']:>20.2f}"
              f"{times['one list changed'] / times['no-op']:>15.2f}")
    print("\nmodule time, median of the runs; the goal: changed/no-op <= 2")


if __name__ == "__main__":
    main()
