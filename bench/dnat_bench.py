"""Benchmark: dnat_rule against two baselines, for 1, 100 and 1,000 mappings.

    source hack/env.sh && python bench/dnat_bench.py [--sizes 1,100,1000] [--loop-max 100]

Runs in a lab master of its own (namespaces; nothing on the machine itself) and
prints one table. Times are wall-clock seconds of each step. The Ansible rows include
Ansible's own start-up and the controller's handling of the arguments; the
"module alone" row runs the module directly in the master (Ansible's debugging
entry point, python start-up included), which is the module time.
Compare ratios within one run: the machine is shared and noisy.

Baselines:
- loop: ansible.builtin.iptables in a loop, one task run per rule (only up to --loop-max);
- shell: the recipe's way, one `iptables -t nat -A ... -j DNAT` process per rule.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import nslab  # noqa: E402  pylint: disable=wrong-import-position
from conftest import AnsibleRunner, ansible_environment  # noqa: E402  pylint: disable=wrong-import-position
from master_host import scrub_netfilter  # noqa: E402  pylint: disable=wrong-import-position


def mappings(count):
    return [dict(name=f"m{i}", protocol="tcp", port=10000 + i, to_address="10.244.1.2", to_port=9090, in_interface="eth0")
            for i in range(count)]


def timed(step):
    start = time.monotonic()
    result = step()
    return time.monotonic() - start, result


def bench_module(ansible, count):
    rules = mappings(count)
    converge, first = timed(lambda: ansible.run_module("master", "netns.expose.dnat_rule", {"rules": rules}))
    noop, again = timed(lambda: ansible.run_module("master", "netns.expose.dnat_rule", {"rules": rules}))
    assert first["changed"] and not again["changed"], (first.get("msg"), again.get("msg"))
    remove, _gone = timed(lambda: ansible.run_module("master", "netns.expose.dnat_rule", {"rules": [], "exclusive": True}))
    return converge, noop, remove


def bench_module_alone(lab, env, workdir, count):
    """The module run directly in the master, as `python -m <module> args.json` runs it."""
    def run(args):
        args_file = workdir / "args.json"
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        argv = [sys.executable, "-m", "ansible_collections.netns.expose.plugins.modules.dnat_rule", str(args_file)]
        seconds, done = timed(lambda: lab.exec("master", argv, env=env))
        result = json.loads(done.stdout)
        assert "failed" not in result, result
        return seconds, result

    rules = mappings(count)
    converge, first = run({"rules": rules})
    noop, again = run({"rules": rules})
    remove, _gone = run({"rules": [], "exclusive": True})
    assert first["changed"] and not again["changed"]
    return converge, noop, remove


def bench_loop(ansible, count):
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
    converge, _r = timed(lambda: ansible.run_playbook(play, extra_vars={"count": count, "wanted": "present"}))
    noop, _r = timed(lambda: ansible.run_playbook(play, extra_vars={"count": count, "wanted": "present"}))
    remove, _r = timed(lambda: ansible.run_playbook(play, extra_vars={"count": count, "wanted": "absent"}))
    return converge, noop, remove


def bench_shell(lab, count):
    def each(flag):
        for i in range(count):
            lab.exec("master", ["iptables", "-t", "nat", flag, "PREROUTING", "-i", "eth0", "-p", "tcp", "--dport",
                                str(10000 + i), "-j", "DNAT", "--to-destination", "10.244.1.2:9090"])
    converge, _r = timed(lambda: each("-A"))
    return converge, None, timed(lambda: each("-D"))[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--loop-max", type=int, default=100, help="largest size for the ansible.builtin.iptables loop")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dnat-bench-"))
    inventory = workdir / "inventory.yml"
    inventory.write_text((REPO / "tests" / "lab" / "inventory.yml").read_text().replace("lab_name: expose-lab", f"lab_name: b{os.getpid()}"))
    lab = nslab.Lab.from_inventory(inventory)
    try:
        lab.up()
        env = ansible_environment()
        ansible = AnsibleRunner(inventory, workdir, env)
        module_env = dict(env, PYTHONPATH=env["ANSIBLE_COLLECTIONS_PATH"].split(":")[0])
        startup, _r = timed(lambda: ansible.run_playbook("- hosts: master\n  gather_facts: false\n  tasks: []\n"))
        rows = []
        for count in (int(size) for size in args.sizes.split(",")):
            scrub_netfilter(lab)
            rows.append(("dnat_rule module alone", count, *bench_module_alone(lab, module_env, workdir, count)))
            scrub_netfilter(lab)
            rows.append(("dnat_rule (one task)", count, *bench_module(ansible, count)))
            if count <= args.loop_max:
                scrub_netfilter(lab)
                rows.append(("ansible.builtin.iptables loop", count, *bench_loop(ansible, count)))
            scrub_netfilter(lab)
            rows.append(("shell, one iptables per rule", count, *bench_shell(lab, count)))
        print(f"\nAnsible start-up (empty play): {startup:.2f} s, included in the Ansible rows\n")
        print(f"{'method':<32}{'rules':>7}{'converge s':>12}{'no-op s':>10}{'remove s':>10}{'converge vs dnat_rule':>24}")
        ours = {row[1]: row[2] for row in rows if row[0].startswith("dnat_rule (one task)")}
        for method, count, converge, noop, remove in rows:
            noop_text = "-" if noop is None else f"{noop:.2f}"
            print(f"{method:<32}{count:>7}{converge:>12.2f}{noop_text:>10}{remove:>10.2f}{converge / ours[count]:>23.1f}x")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
