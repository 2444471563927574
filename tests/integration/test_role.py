"""The expose role and the two playbooks, on the lab master and slave.

Each test starts from a pristine master (its netfilter scrubbed, FORWARD policy DROP
as on a Docker host, no namespaces) and leaves it that way, also when it fails.
The services are the lab inventory's (the recipe's http-web: tcp 8090 -> 9090,
udp 8053 -> 53 and icmp, in ns1, with demo: true) unless a test says otherwise. The
role starts nothing: the lab's demo services playbook (tests/lab/demo_services.yml)
runs the demo service of the services with demo: true, as playbooks/demo.yml does
where systemd is PID 1.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import failures
from master_host import DEMO_REPLY, MASTER, collection_text, netfilter, scrub_netfilter, sh

REPO = Path(__file__).resolve().parents[2]
EXPOSE = REPO / "playbooks" / "expose.yml"
VERIFY = REPO / "playbooks" / "verify.yml"
DEMO = REPO / "tests" / "lab" / "demo_services.yml"
REPLY = json.loads(DEMO_REPLY)


def host_state(lab, host=MASTER):
    """What the role may change on a host, as it compares across runs."""
    links = json.loads(sh(lab, "ip", "-j", "-4", "addr", "show", host=host))
    return {
        "netfilter": netfilter(lab) if host == MASTER else None,
        "links": sorted((link["ifname"], [(a["local"], a["prefixlen"]) for a in link["addr_info"]]) for link in links),
        "netns": sh(lab, "ip", "netns", "list", host=host),
        "ip_forward": sh(lab, "cat", "/proc/sys/net/ipv4/ip_forward", host=host),
        "processes": sh(lab, "sh", "-c", "for ns in $(ip netns list | cut -d' ' -f1); do ip netns pids $ns; done", host=host),
    }


@pytest.fixture
def pristine(lab, run_playbook):
    """A master with FORWARD policy DROP and nothing of the role's; put back afterwards."""
    scrub_netfilter(lab)
    sh(lab, "iptables", "-P", "FORWARD", "DROP")
    before = host_state(lab)
    yield before
    run_playbook(DEMO, extra_vars={"expose_state": "absent"})
    run_playbook(EXPOSE, extra_vars={"expose_state": "absent"})
    sh(lab, "sh", "-c", "for ns in $(ip netns list | cut -d' ' -f1); do ip netns pids $ns | xargs -r kill; "
                        "ip netns del $ns; done", check=False)
    sh(lab, "ip", "link", "del", "veth1b", check=False)
    scrub_netfilter(lab)


def task_results(run, host=MASTER):
    """(task name without its role's prefix, result) of every task that ran on host, in order."""
    return [(task["task"]["name"].split(" : ")[-1], task["hosts"][host])
            for play in run["plays"] for task in play["tasks"] if host in task["hosts"]]


def changed_tasks(run, host=MASTER):
    return [name for name, result in task_results(run, host) if result.get("changed")]


def module_calls(run, host=MASTER):
    """Tasks that ran a module on the host (not skipped, not controller-side)."""
    local = {"ansible.builtin.set_fact", "ansible.builtin.include_tasks", "ansible.builtin.debug",
             "ansible.builtin.assert", "ansible.builtin.validate_argument_spec"}
    return [name for name, result in task_results(run, host) if not result.get("skipped") and result["action"] not in local]


def from_slave(lab, port=8090):
    done = lab.exec("slave", ["curl", "-s", "-m", "3", f"http://10.211.55.122:{port}/"])
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_check_predicts_the_run_then_nothing_changes_and_absent_restores_the_host(lab, pristine, run_playbook):
    check = run_playbook(EXPOSE, check=True, diff=True)
    assert not failures(check), failures(check)
    assert host_state(lab) == pristine, "a check run changed the master"
    predicted = changed_tasks(check)
    assert {"Create the namespaces and veth pairs", "Publish the ports (one transaction for every mapping)"} <= set(predicted)

    first = run_playbook(EXPOSE, diff=True)
    assert not failures(first), failures(first)
    assert changed_tasks(first) == predicted
    for name in ("Create the namespaces and veth pairs", "Publish the ports (one transaction for every mapping)"):
        assert dict(task_results(check))[name]["diff"] == dict(task_results(first))[name]["diff"], name
    assert from_slave(lab) is None, "the role started a service"
    demo_check = run_playbook(DEMO, check=True)
    assert not failures(demo_check) and changed_tasks(demo_check) == ["Converge the demo services with the lab's runner"]
    assert from_slave(lab) is None, "a check run started the demo service"
    demo = run_playbook(DEMO)
    assert not failures(demo) and changed_tasks(demo) == ["Converge the demo services with the lab's runner"]
    assert from_slave(lab) == REPLY
    # Hairpin: the service's own namespace reaches it through the master's published address too.
    hairpin = sh(lab, "ip", "netns", "exec", "ns1", "curl", "-s", "-m", "3", "http://10.211.55.122:8090/")
    assert json.loads(hairpin) == REPLY

    second = run_playbook(EXPOSE, diff=True)
    assert not failures(second), failures(second)
    assert changed_tasks(second) == []
    assert changed_tasks(run_playbook(DEMO)) == []

    verify = run_playbook(VERIFY)
    assert not failures(verify), failures(verify)

    demo_gone = run_playbook(DEMO, extra_vars={"expose_state": "absent"})
    assert not failures(demo_gone) and changed_tasks(demo_gone) == ["Converge the demo services with the lab's runner"]
    gone = run_playbook(EXPOSE, extra_vars={"expose_state": "absent"})
    assert not failures(gone), failures(gone)
    assert host_state(lab) == pristine
    assert from_slave(lab) is None
    again = run_playbook(EXPOSE, extra_vars={"expose_state": "absent"})
    assert not failures(again) and changed_tasks(again) == []


def services(count):
    """count services, each in a namespace of its own with a tcp and a udp port."""
    return [{
        "name": f"svc{i}", "netns": f"ns{i}", "ns_ifname": f"v{i}a", "host_ifname": f"v{i}b",
        "ns_address": f"10.250.{i}.2/24", "host_address": f"10.250.{i}.1/24",
        "ports": [{"protocol": "tcp", "host_port": 9000 + i, "ns_port": 80}, {"protocol": "udp", "host_port": 9100 + i}],
    } for i in range(count)]


def test_the_number_of_module_calls_does_not_grow_with_the_services(lab, pristine, run_playbook):
    calls = {}
    for count in (1, 6):
        run = run_playbook(EXPOSE, extra_vars={"expose_services": services(count)})
        assert not failures(run), failures(run)
        assert len(sh(lab, "ip", "netns", "list").splitlines()) == count
        calls[count] = module_calls(run)
    assert calls[1] == calls[6]
    # The read (services planned, missing tools, pending changes), the pairs, the mappings: the lab has
    # every tool, so no prerequisites.
    assert len(calls[6]) == 3, calls[6]
    assert not [name for name in calls[6] if name.endswith("Install what the modules need")], calls[6]


def test_a_run_that_finds_the_host_as_declared_makes_one_module_call(lab, pristine, run_playbook):
    """The read says the pairs and mappings are as declared, so their calls are skipped; a change behind the
    role's back (a firewall flush, a pair deleted) makes the read find it, and only that call runs."""
    first = run_playbook(EXPOSE)
    assert not failures(first), failures(first)
    published = host_state(lab)
    noop = run_playbook(EXPOSE)
    assert not failures(noop) and changed_tasks(noop) == []
    assert module_calls(noop) == ["Check the services against the host and read what publishing them would change"]

    scrub_netfilter(lab)  # what a firewall reload does to the mappings
    sh(lab, "iptables", "-P", "FORWARD", "DROP")
    repaired = run_playbook(EXPOSE)
    assert not failures(repaired), failures(repaired)
    assert changed_tasks(repaired) == ["Publish the ports (one transaction for every mapping)"]
    assert host_state(lab) == published

    sh(lab, "ip", "link", "del", "veth1b")
    repaired = run_playbook(EXPOSE)
    assert not failures(repaired), failures(repaired)
    assert changed_tasks(repaired) == ["Create the namespaces and veth pairs"]
    assert host_state(lab) == published


def test_exclusive_removes_mappings_no_service_lists(lab, pristine, run_playbook):
    run = run_playbook(EXPOSE, extra_vars={"expose_services": services(2)})
    assert not failures(run), failures(run)
    run = run_playbook(EXPOSE, extra_vars={"expose_services": services(1)})
    assert not failures(run), failures(run)
    rules = collection_text(lab)
    assert "svc0-tcp-9000" in rules and "svc1-" not in rules


@pytest.mark.parametrize("extra_vars, message", [
    ({"expose_services": services(2)[:1] + [{**services(2)[1], "ports": [{"protocol": "tcp", "host_port": 9000}]}]},
     r"expose_services\[1\] \(svc1\)\.ports\[0\]\.host_port: tcp port 9000 to 10\.211\.55\.122 is also mapped by "
     r"expose_services\[0\] \(svc0\)\.ports\[0\]"),
    ({"expose_services": services(2)[:1] + [{**services(2)[1], "netns": "ns0"}]},
     r"expose_services\[1\] \(svc1\)\.netns: 'ns0' already holds the pair of expose_services\[0\] \(svc0\)"),
    ({"expose_services": [{**services(1)[0], "ns_address": "10.211.55.50/24", "host_address": "10.211.55.51/24"}]},
     r"expose_services\[0\] \(svc0\)\.ns_address: 10\.211\.55\.0/24 overlaps 10\.211\.55\.0/24 of the host's interface eth0"),
    ({"expose_state": "gone"}, r"expose_state.*gone"),
    ({"expose_services": [{"name": "x"}]}, r"netns"),
])
def test_bad_input_fails_before_anything_changes(lab, pristine, run_playbook, extra_vars, message):
    run = run_playbook(EXPOSE, extra_vars=extra_vars)
    assert failures(run), "the role accepted bad input"
    assert re.search(message, " ".join(str(msg) for _name, msg in failures(run))), failures(run)
    assert host_state(lab) == pristine


def test_verify_fails_naming_the_master_and_port(lab, pristine, run_playbook):
    for playbook in (EXPOSE, DEMO):
        run = run_playbook(playbook)
        assert not failures(run), failures(run)
    assert from_slave(lab) == REPLY
    # The services stop answering (supervisor included). A process of ns1 may end between the listing and its
    # kill (kill then fails): what counts is that none is left.
    deadline = time.monotonic() + 10
    while sh(lab, "ip", "netns", "pids", "ns1").split():
        assert time.monotonic() < deadline, "the processes of ns1 did not end"
        sh(lab, "sh", "-c", "ip netns pids ns1 | xargs -r kill", check=False)
        time.sleep(0.2)
    verify = run_playbook(VERIFY, extra_vars={"expose_verify_retries": 0, "expose_verify_timeout": 1})
    messages = " ".join(str(msg) for _name, msg in failures(verify))
    assert "master master:" in messages and "tcp port 8090 (http-web) failed" in messages, messages
    assert "udp port 8053 (http-web) failed" in messages, messages


def test_switching_expose_backend_moves_the_mappings_in_one_run(lab, pristine, run_playbook):
    by_backend = {}
    for backend in ("iptables", "nftables", "iptables"):
        run = run_playbook(EXPOSE, extra_vars={"expose_backend": backend})
        assert not failures(run), failures(run)
        if not by_backend:
            assert not failures(run_playbook(DEMO))
        assert "Publish the ports (one transaction for every mapping)" in changed_tasks(run)
        assert from_slave(lab) == REPLY, f"no reply with {backend}"
        again = run_playbook(EXPOSE, extra_vars={"expose_backend": backend})
        assert changed_tasks(again) == [], f"the second run with {backend} changed something"
        found = netfilter(lab)
        iptables = [line for line in found["iptables-nft"] + found["iptables-legacy"] if "netns.expose" in line]
        nftables = [line for line in found["nftables"] if "netns_expose" in line]
        by_backend[backend] = (bool(iptables), bool(nftables))
        if backend == "nftables":
            # FORWARD policy DROP (the fixture's): only the one owned accept stays in iptables.
            assert all("NETNS-EXPOSE-FWD" in line for line in iptables), iptables
    assert by_backend == {"iptables": (True, False), "nftables": (True, True)}
