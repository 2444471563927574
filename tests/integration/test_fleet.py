"""A fleet: two masters and two slaves, one inventory, the same two playbooks.

The service is declared once for the group `masters`; each master publishes it on
its own address (one of them on a per-host address and port, from host_vars), and
verify.yml checks every master from every slave.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import LAB_INVENTORY, AnsibleRunner, failures, session_lab_name
from master_host import DEMO_REPLY, collection_text

import nslab

REPO = Path(__file__).resolve().parents[2]
EXPOSE = REPO / "playbooks" / "expose.yml"
VERIFY = REPO / "playbooks" / "verify.yml"
# The demo service of the services with demo: true, on the lab's masters (no systemd there).
DEMO = REPO / "tests" / "lab" / "demo_services.yml"
REPLY = json.loads(DEMO_REPLY)
MASTERS = {"m1": "10.211.55.122", "m2": "10.211.55.124"}
SLAVES = {"s1": "10.211.55.123", "s2": "10.211.55.125"}
SERVICE = {
    "name": "http-web", "netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b",
    "ns_address": "10.244.1.2/24", "host_address": "10.244.1.3/24",
    "ports": [{"protocol": "tcp", "host_port": 8090, "ns_port": 9090, "expect": "hello world"},
              {"protocol": "udp", "host_port": 8053, "ns_port": 53, "probe": "hi", "expect": "hello world"},
              {"protocol": "icmp"}],
    "demo": True,
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, ansible_env):
    """The fleet's lab and an AnsibleRunner for it; taken down at the end whatever happens."""
    inventory = yaml.safe_load(LAB_INVENTORY.read_text(encoding="utf-8"))
    lab_group = inventory["all"]["children"]["lab"]
    lab_group["vars"]["lab_name"] = f"{session_lab_name()}-fleet"
    masters, slaves = lab_group["children"]["masters"], lab_group["children"]["slaves"]
    masters["hosts"] = {name: {"lab_address": f"{address}/24"} for name, address in MASTERS.items()}
    masters["vars"] = {"expose_services": [SERVICE]}
    slaves["hosts"] = {name: {"lab_address": f"{address}/24"} for name, address in SLAVES.items()}
    # m2 publishes its service on another port: host_vars override the group's services.
    masters["hosts"]["m2"]["expose_services"] = [
        {**SERVICE, "ports": [{**SERVICE["ports"][0], "host_port": 8091}, *SERVICE["ports"][1:]]}]
    workdir = tmp_path_factory.mktemp("fleet")
    path = workdir / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    lab = nslab.Lab.from_inventory(path)
    try:
        lab.up()
        yield lab, AnsibleRunner(path, workdir, ansible_env)
    finally:
        lab.down()


def get(lab, slave, address, port):
    done = lab.exec(slave, ["curl", "-s", "-m", "3", f"http://{address}:{port}/"])
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_every_slave_reaches_every_master_and_the_fleet_converges(fleet):
    lab, ansible = fleet
    pristine = {host: lab.exec(host, ["iptables-save"]).stdout.count("\n-A ") for host in MASTERS}

    for playbook in (EXPOSE, DEMO):
        first = ansible.run_playbook(playbook)
        assert not failures(first), failures(first)
    for slave in SLAVES:
        assert get(lab, slave, MASTERS["m1"], 8090) == REPLY
        assert get(lab, slave, MASTERS["m2"], 8091) == REPLY
        assert get(lab, slave, MASTERS["m2"], 8090) is None, "m2 publishes 8091, not the group's 8090"

    for playbook in (EXPOSE, DEMO):
        second = ansible.run_playbook(playbook)
        assert not failures(second), failures(second)
        assert not [task["task"]["name"] for play in second["plays"] for task in play["tasks"]
                    for result in task["hosts"].values() if result.get("changed")]

    verify = ansible.run_playbook(VERIFY)
    assert not failures(verify), failures(verify)
    # One probe call per slave checks every master.
    master_of = {address: master for master, address in MASTERS.items()}
    probed = {(slave, master_of[check["address"]], check["protocol"], check["port"]): check["ok"]
              for play in verify["plays"] for task in play["tasks"] if task["task"]["name"].startswith("Probe")
              for slave, result in task["hosts"].items() for check in result["results"]}
    assert probed == {(slave, master, protocol, port): True
                      for slave in SLAVES for master in MASTERS
                      for protocol, port in [("tcp", 8090 if master == "m1" else 8091), ("udp", 8053), ("icmp", None)]}

    # One master's service stops answering: verify fails naming that master and its port.
    lab.exec("m2", ["sh", "-c", "ip netns pids ns1 | xargs -r kill"])
    broken = ansible.run_playbook(VERIFY, extra_vars={"expose_verify_retries": 0, "expose_verify_timeout": 1})
    messages = json.dumps(failures(broken))
    assert "master m2: tcp port 8091 (http-web) failed" in messages and "master m1" not in messages, messages

    for playbook in (DEMO, EXPOSE):
        gone = ansible.run_playbook(playbook, extra_vars={"expose_state": "absent"})
        assert not failures(gone), failures(gone)
    for host in MASTERS:
        assert lab.exec(host, ["ip", "netns", "list"]).stdout == ""
        assert "netns.expose" not in collection_text(lab, host)
        assert lab.exec(host, ["iptables-save"]).stdout.count("\n-A ") == pristine[host]
