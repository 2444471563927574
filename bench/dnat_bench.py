"""Benchmark: dnat_rule against two baselines, for 1, 100 and 1,000 mappings.

    source hack/env.sh && python bench/dnat_bench.py [--sizes 1,100,1000] [--loop-max 100] [--repeat 3]
                                                     [--backends iptables,nftables] [--collection DIR]

Runs in a lab master of its own (namespaces; nothing on the machine itself) and
prints one table. Times are wall-clock seconds of each step. The Ansible rows include
Ansible's own start-up and the controller's handling of the arguments; the
"module alone" rows run the module directly in the master (Ansible's debugging
entry point, python start-up included), which is the module time.
Compare ratios within one run: the machine is shared and noisy.

dnat_rule runs with each of its backends (iptables: the owned chains, one iptables-restore;
nftables: the owned table, one nft -f), as users run it: deleting the conntrack entries of the mappings it
adds or removes (flush_conntrack, the default). Before each converge and each remove,
the master's conntrack table gets one established flow per mapped port, and twice as
many that are not the mappings' (udp to the same ports, tcp to port 443): the converge
and the remove must delete exactly the former (checked). The deletion alone (the
collection's own code, run in the master on the same table) gives its share of the
module's converge; the same steps with flush_conntrack: false are shown next to them.
Module-alone times are the median of --repeat runs.

Baselines:
- loop: ansible.builtin.iptables in a loop, one task run per rule (only up to --loop-max);
- shell: the recipe's way, one `iptables -t nat -A ... -j DNAT` process per rule.

--collection DIR benchmarks the dnat_rule of another checkout (e.g. an export of an older commit).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from benchlab import REPO, BenchLab, scrub_netfilter, timed

FIRST_PORT = 10000
FLOWS = str(REPO / "bench" / "conntrack_flows.py")


def mappings(count):
    return [dict(name=f"m{i}", protocol="tcp", port=FIRST_PORT + i, to_address="10.244.1.2", to_port=9090,
                 in_interface="eth0") for i in range(count)]


def add_flows(bench, count):
    bench.sh("master", "conntrack", "-F")
    bench.sh("master", sys.executable, FLOWS, "add", str(FIRST_PORT), str(count))


def check_flows(bench, count, expected_mapped):
    found = json.loads(bench.sh("master", sys.executable, FLOWS, "count", str(FIRST_PORT), str(count)))
    expected = {"mapped": expected_mapped, "other": 2 * count}
    if found != expected:
        raise AssertionError(f"conntrack after the run: {found}, expected {expected}")


def converge_noop_remove(bench, run, count, flush, backend):
    """(converge, no-op, remove) seconds of one run of each step, flows present before converge and remove."""
    rules = mappings(count)
    scrub_netfilter(bench.lab)
    add_flows(bench, count)
    common = {"flush_conntrack": flush, "backend": backend}
    converge, first = run({"rules": rules, **common})
    if first["backend"] != backend:
        raise AssertionError(f"dnat_rule ran with {first['backend']}, not {backend}")
    check_flows(bench, count, 0 if flush else count)
    noop, again = run({"rules": rules, **common})
    if not first["changed"] or again["changed"]:
        raise AssertionError(f"converge changed={first['changed']}, no-op changed={again['changed']}")
    add_flows(bench, count)
    remove, _gone = run({"rules": [], "exclusive": True, **common})
    check_flows(bench, count, 0 if flush else count)
    return converge, noop, remove


def median_runs(bench, count, flush, repeat, backend):
    runs = [converge_noop_remove(bench, bench.module_alone, count, flush, backend) for _run in range(repeat)]
    return tuple(statistics.median(step) for step in zip(*runs))


def deletion_alone(bench, count, repeat):
    """Median seconds of the collection's deletion of the mappings' flows, on a table like the converge's."""
    runs = []
    for _run in range(repeat):
        add_flows(bench, count)
        done = bench.lab.exec("master", [sys.executable, FLOWS, "delete", str(FIRST_PORT), str(count)], env=bench.module_env)
        if done.returncode != 0:
            raise RuntimeError(f"timing the deletion failed: {done.stderr}")
        check_flows(bench, count, 0)
        runs.append(float(done.stdout))
    return statistics.median(runs)


def bench_loop(bench, count):
    play = """
- hosts: master
  gather_facts: false
  tasks:
    - name: one rule per iteration
      ansible.builtin.iptables:
        table: nat
        chain: PREROUTING
        in_interface: eth0
        protocol: tcp
        destination_port: "{{ 10000 + item }}"
        jump: DNAT
        to_destination: "10.244.1.2:9090"
        state: "{{ wanted }}"
      loop: "{{ range(count | int) | list }}"
"""
    run = bench.ansible.run_playbook
    converge, _r = timed(lambda: run(play, extra_vars={"count": count, "wanted": "present"}))
    noop, _r = timed(lambda: run(play, extra_vars={"count": count, "wanted": "present"}))
    remove, _r = timed(lambda: run(play, extra_vars={"count": count, "wanted": "absent"}))
    return converge, noop, remove


def bench_shell(bench, count):
    def each(flag):
        for i in range(count):
            bench.lab.exec("master", ["iptables", "-t", "nat", flag, "PREROUTING", "-i", "eth0", "-p", "tcp", "--dport",
                                      str(FIRST_PORT + i), "-j", "DNAT", "--to-destination", "10.244.1.2:9090"])
    converge, _r = timed(lambda: each("-A"))
    return converge, None, timed(lambda: each("-D"))[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--loop-max", type=int, default=100, help="largest size for the ansible.builtin.iptables loop")
    parser.add_argument("--repeat", type=int, default=3, help="module-alone runs per size (the median is printed)")
    parser.add_argument("--backends", default="iptables,nftables", help="dnat_rule's backends, each in its rows")
    parser.add_argument("--collection", help="a checkout of the collection to benchmark instead of this one")
    args = parser.parse_args()
    with BenchLab("b", args.collection) as bench:
        startup, _r = timed(lambda: bench.ansible.run_playbook("- hosts: master\n  gather_facts: false\n  tasks: []\n"))
        rows = []
        for count in (int(size) for size in args.sizes.split(",")):
            deletion = deletion_alone(bench, count, args.repeat)
            for backend in args.backends.split(","):
                alone = median_runs(bench, count, True, args.repeat, backend)
                alone_off = median_runs(bench, count, False, args.repeat, backend)
                rows.append((f"dnat_rule {backend}, module alone", count, *alone,
                             f"{alone[0] / alone[1]:.1f}x", f"{deletion:.2f}", f"{min(1.0, deletion / alone[0]):.0%}"))
                rows.append(("  same, flush_conntrack: false", count, *alone_off, f"{alone_off[0] / alone_off[1]:.1f}x",
                             "", ""))
                task = converge_noop_remove(bench, bench.task, count, True, backend)
                rows.append((f"dnat_rule {backend}, one task", count, *task, f"{task[0] / task[1]:.1f}x", "", ""))
            if count <= args.loop_max:
                scrub_netfilter(bench.lab)
                rows.append(("ansible.builtin.iptables loop", count, *bench_loop(bench, count), "", "", ""))
            scrub_netfilter(bench.lab)
            rows.append(("shell, one iptables per rule", count, *bench_shell(bench, count), "", "", ""))
        print(f"\ncollection: {bench.collection}")
        print(f"Ansible start-up (empty play): {startup:.2f} s, included in the Ansible rows\n")
        print(f"{'method':<36}{'rules':>7}{'converge s':>12}{'no-op s':>10}{'remove s':>10}"
              f"{'converge/no-op':>16}{'deletion s':>12}{'of converge':>13}")
        for method, count, converge, noop, remove, ratio, deletion, deletion_share in rows:
            noop_text = "-" if noop is None else f"{noop:.2f}"
            print(f"{method:<36}{count:>7}{converge:>12.2f}{noop_text:>10}{remove:>10.2f}{ratio:>16}"
                  f"{deletion:>12}{deletion_share:>13}")
        print("\ndeletion s: the collection's deletion of the mappings' flows alone (one per mapping, among twice as many "
              "that stay), in the master; of converge: its share of the module-alone converge.")


if __name__ == "__main__":
    main()
