"""Benchmark: what dnat_rule's mappings cost the traffic that crosses the master, for 1, 100 and 1,000 mappings.

    source hack/env.sh && python bench/dnat_dataplane.py [--sizes 1,100,1000] [--seconds 3]
        [--backends iptables,nftables] [--layouts dense,spread] [--collection DIR]

In a lab of its own (namespaces; nothing on the machine itself): the master has the
recipe's ns1 (10.244.1.2 behind veth1b), with bench/dataplane_traffic.py serving tcp on
9090 and 9091 in it; its FORWARD policy is DROP, with a foreign rule that accepts only
the routed traffic to and from 10.244.1.2:9091. The mappings are tcp ports of the master,
in_interface eth0, to 10.244.1.2:9090, made by each backend of dnat_rule in turn, in two layouts:

- dense:  ports 10000.. one after the other (as bench/dnat_bench.py makes them);
- spread: ports 1024, 1088, 1152.., 64 apart, so that no two share a range of 64 ports, which
          is how the iptables backend groups its DNAT rules: its first packet of a flow then walks
          one jump per mapping, as a single linear chain would. nftables looks the port up in a map.
From the slave, side by side (the targets take turns, operation by operation), it measures:

- first:  through the first mapping (master:10000), the first rule of the chains;
- last:   through the last mapping (master:10000+N-1);
- routed: to 10.244.1.2:9091 directly, through a route via the master: traffic that is not
          mapped but crosses the same FORWARD chain.

Metrics: new connections per second (connect, 1 byte each way, close), request/response
latency on an open connection (1 byte each way, TCP_NODELAY), and throughput into a sink.
A row with no mappings gives the routed traffic on a master without the collection's rules,
for reference only: rows are measured one after the other, and the machine is shared and
noisy (client, server and the master's forwarding all run on it). Compare the ratios within
a row, which are measured side by side.

--collection DIR benchmarks the rules of another checkout (e.g. an export of an older commit).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time

from benchlab import REPO, BenchLab, scrub_netfilter

TRAFFIC = str(REPO / "bench" / "dataplane_traffic.py")
MASTER_IP, NS_IP = "10.211.55.122", "10.244.1.2"
FIRST_PORT, MAPPED_PORT, ROUTED_PORT = 10000, 9090, 9091
ROUTED_ONLY = [["FORWARD", "-d", f"{NS_IP}/32", "-p", "tcp", "-m", "tcp", "--dport", str(ROUTED_PORT), "-j", "ACCEPT"],
               ["FORWARD", "-s", f"{NS_IP}/32", "-p", "tcp", "-m", "tcp", "--sport", str(ROUTED_PORT), "-j", "ACCEPT"]]
METRICS = (("conn", "new connections/s"), ("rr", "request/response us"), ("tput", "throughput MB/s"))


# The host port of mapping i in each layout.
LAYOUTS = {"dense": lambda i: FIRST_PORT + i, "spread": lambda i: 1024 + 64 * i}


def mappings(count, layout="dense"):
    port = LAYOUTS[layout]
    return [dict(name=f"m{i}", protocol="tcp", port=port(i), to_address=NS_IP, to_port=MAPPED_PORT,
                 in_interface="eth0") for i in range(count)]


def build_ns1(bench):
    for argv in (["ip", "netns", "add", "ns1"],
                 ["ip", "link", "add", "veth1b", "type", "veth", "peer", "name", "veth1a", "netns", "ns1"],
                 ["ip", "addr", "add", "10.244.1.3/24", "dev", "veth1b"],
                 ["ip", "link", "set", "veth1b", "up"],
                 ["ip", "netns", "exec", "ns1", "ip", "addr", "add", f"{NS_IP}/24", "dev", "veth1a"],
                 ["ip", "netns", "exec", "ns1", "ip", "link", "set", "veth1a", "up"],
                 ["ip", "netns", "exec", "ns1", "ip", "link", "set", "lo", "up"],
                 ["ip", "netns", "exec", "ns1", "ip", "route", "add", "default", "via", "10.244.1.3"]):
        bench.sh("master", *argv)
    bench.sh("slave", "ip", "route", "add", "10.244.1.0/24", "via", MASTER_IP)


@contextlib.contextmanager
def server(bench, cpu):
    """The traffic server in the master's ns1, stopped (by its pid) at the end."""
    script = 'echo $$; exec "$@" </dev/null >/dev/null 2>&1'
    pid = int(bench.sh("master", "setsid", "-f", "sh", "-c", script, "sh", "taskset", "-c", cpu, "ip", "netns", "exec",
                       "ns1", sys.executable, TRAFFIC, "serve", str(MAPPED_PORT), str(ROUTED_PORT)))
    try:
        listening = ["ip", "netns", "exec", "ns1", "ss", "-Hltn", f"sport = :{ROUTED_PORT}"]
        deadline = time.monotonic() + 30
        while not bench.sh("master", *listening).strip():
            if time.monotonic() > deadline:
                raise RuntimeError("the traffic server does not listen")
            time.sleep(0.1)
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def firewall(bench):
    """FORWARD policy DROP, and a foreign rule that lets only the routed traffic through (after our jump)."""
    bench.sh("master", "iptables", "-P", "FORWARD", "DROP")
    for rule in ROUTED_ONLY:
        bench.sh("master", "iptables", "-A", *rule)


def measure(bench, targets, seconds, cpu):
    bench.sh("master", "conntrack", "-F")
    argv = ["taskset", "-c", cpu, sys.executable, TRAFFIC, "measure", "--seconds", str(seconds)]
    for name, address in targets.items():
        argv += ["--target", f"{name}={address}"]
    samples = json.loads(bench.sh("slave", *argv))
    medians = {}
    for metric, by_target in samples.items():
        for name, values in by_target.items():
            value = statistics.median(values)
            # Per second for connections, microseconds for round trips, MB/s for throughput.
            medians[(metric, name)] = {"conn": 1 / value, "rr": value * 1e6}.get(metric, value)
    return medians


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--seconds", type=float, default=3.0, help="per metric and size, for the three targets together")
    parser.add_argument("--cpu", default=str(os.cpu_count() - 1), help="the CPU that the client and the server run on")
    parser.add_argument("--backends", default="iptables,nftables", help="dnat_rule's backends, in turn")
    parser.add_argument("--layouts", default="dense,spread", help=f"the layouts of the ports ({', '.join(LAYOUTS)})")
    parser.add_argument("--collection", help="a checkout of the collection to benchmark instead of this one")
    args = parser.parse_args()
    if any(int(size) > 1000 for size in args.sizes.split(",")) and "spread" in args.layouts:
        parser.error("--layouts spread has room for 1000 mappings at most")
    rows = []
    with BenchLab("d", args.collection) as bench:
        scrub_netfilter(bench.lab)
        build_ns1(bench)
        bench.sh("master", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        firewall(bench)
        with server(bench, args.cpu):
            routed = f"{NS_IP}:{ROUTED_PORT}"
            rows.append(("-", "-", 0, measure(bench, {"routed": routed}, args.seconds, args.cpu)))
            for backend in args.backends.split(","):
                for layout in args.layouts.split(","):
                    for count in (int(size) for size in args.sizes.split(",")):
                        rules = mappings(count, layout)
                        args_of_run = {"rules": rules, "exclusive": True, "flush_conntrack": False, "backend": backend}
                        _seconds, result = bench.module_alone(args_of_run)
                        if result.get("backend") != backend:
                            raise RuntimeError(f"dnat_rule ran with {result.get('backend')}, not {backend}: {result}")
                        targets = {"first": f"{MASTER_IP}:{rules[0]['port']}", "last": f"{MASTER_IP}:{rules[-1]['port']}",
                                   "routed": routed}
                        rows.append((backend, layout, count, measure(bench, targets, args.seconds, args.cpu)))
                bench.module_alone({"rules": [], "exclusive": True, "flush_conntrack": False, "backend": backend})
    print(f"\ncollection: {bench.collection}\n")
    print(f"{'backend':<10}{'layout':<8}{'mappings':>8}  {'metric':<22}{'first':>9}{'last':>9}{'routed':>9}"
          f"{'last/first':>12}{'routed/first':>14}")
    for backend, layout, count, medians in rows:
        for metric, label in METRICS:
            routed = medians[(metric, "routed")]
            cells = [f"{medians[(metric, name)]:>9.0f}" if (metric, name) in medians else f"{'-':>9}"
                     for name in ("first", "last", "routed")]
            if (metric, "first") in medians:
                first, last = medians[(metric, "first")], medians[(metric, "last")]
                ratios = f"{last / first:>12.2f}{routed / first:>14.2f}"
            else:
                ratios = f"{'-':>12}{'-':>14}"
            print(f"{backend:<10}{layout:<8}{count:>8}  {label:<22}{''.join(cells)}{ratios}")
    print("\nRatios are of the values shown, side by side in the same row: for connections/s and MB/s below 1 is "
          "slower, for request/response microseconds above 1 is slower.")


if __name__ == "__main__":
    main()
