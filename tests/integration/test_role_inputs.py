# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a new user types, on the lab master: a misspelt variable, booleans from the command line,
an interface the host does not have, and clients on the master and in a namespace the role did not make.

Each test starts from a master with nothing of the role's and FORWARD policy DROP, and puts it back.
The demo service's script, started by the test in ns1, answers for the service.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import failures
from master_host import DEMO_SERVICE, MASTER, collection_text, netfilter, nft_elements, scrub_netfilter, sh

REPO = Path(__file__).resolve().parents[2]
EXPOSE = REPO / "playbooks" / "expose.yml"
MASTER_IP = "10.211.55.122"
# The lab inventory's service (ns1 behind veth1b, tcp 8090 -> 9090), without the demo.
WEB = {"name": "http-web", "netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b",
       "ns_address": "10.244.1.2/24", "host_address": "10.244.1.3/24",
       "ports": [{"protocol": "tcp", "host_port": 8090, "ns_port": 9090}]}
# A namespace the role did not make, as another runtime's container: 10.88.0.2 behind "cni-like" on the master.
OTHER_NETNS, OTHER_HOST_END, OTHER_ADDRESS = "other-rt", "cni-like", "10.88.0.2"


def netfilter_and_links(lab):
    return {"netfilter": netfilter(lab),
            "links": sh(lab, "ip", "-br", "-4", "addr"), "netns": sh(lab, "ip", "netns", "list"),
            "ip_forward": sh(lab, "cat", "/proc/sys/net/ipv4/ip_forward")}


@pytest.fixture
def master(lab, run_playbook):
    """A master with nothing of the role's and FORWARD policy DROP; an HTTP server in ns1 once it exists."""
    scrub_netfilter(lab)
    sh(lab, "iptables", "-P", "FORWARD", "DROP")
    servers = []

    def serve():
        """Start the HTTP server in ns1 (made by the role); wait until it listens."""
        server = subprocess.Popen(  # pylint: disable=consider-using-with
            lab.command(MASTER, ["ip", "netns", "exec", "ns1", "python3", str(DEMO_SERVICE), "--tcp", "9090"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        servers.append(server)
        for _attempt in range(100):
            if "9090" in sh(lab, "ip", "netns", "exec", "ns1", "ss", "-Hltn"):
                return
            if server.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"the HTTP server in ns1 did not start: {server.stderr.read() if server.poll() is not None else 'no port'}")

    yield serve
    for server in servers:
        sh(lab, "sh", "-c", "ip netns pids ns1 | xargs -r kill", check=False)
        server.wait(timeout=10)
    run_playbook(EXPOSE, extra_vars={"expose_state": "absent", "expose_services": [WEB]})
    sh(lab, "ip", "netns", "del", OTHER_NETNS, check=False)
    sh(lab, "ip", "link", "del", OTHER_HOST_END, check=False)
    scrub_netfilter(lab)


def get(lab, host, *prefix):
    """curl the master's address and port 8090 from a lab host (in a namespace of it with prefix); the exit code."""
    return lab.exec(host, [*prefix, "curl", "-s", "-o", "/dev/null", "-m", "3", f"http://{MASTER_IP}:8090/"]).returncode


def test_a_misspelt_services_variable_does_not_unpublish_the_host(lab, master, run_playbook):
    run = run_playbook(EXPOSE, extra_vars={"expose_services": [WEB]})
    assert not failures(run), failures(run)
    before = netfilter_and_links(lab)
    # expose_service (singular): expose_services is then empty (the lab inventory's own list is overridden).
    run = run_playbook(EXPOSE, extra_vars={"expose_service": [WEB], "expose_services": []})
    [(task, message)] = failures(run)
    assert task.endswith("Refuse to remove every mapping unless asked to")
    assert message.startswith("expose_services is empty, and master has mappings of the collection: http-web-tcp-8090.")
    assert "expose_allow_empty=true" in message
    assert "expose_service is not a variable of the netns.expose.expose role; did you mean expose_services?" \
        in warnings(run)
    assert netfilter_and_links(lab) == before
    # Asked for explicitly, an empty list removes every mapping (and gives ip_forward back).
    run = run_playbook(EXPOSE, extra_vars={"expose_services": []}, extra_args=["-e", "expose_allow_empty=true"])
    assert not failures(run), failures(run)
    after = netfilter_and_links(lab)
    assert "netns.expose" not in collection_text(lab)
    assert after["ip_forward"] == "0\n"


@pytest.mark.parametrize("falsy", ["false", "no", "0"])
def test_booleans_given_on_the_command_line_as_text(lab, master, run_playbook, falsy):
    run = run_playbook(EXPOSE, extra_vars={"expose_services": [WEB, {**WEB, "name": "admin", "ports": [
        {"protocol": "tcp", "host_port": 8091, "ns_port": 9091}]}]})
    assert not failures(run), failures(run)
    assert "netns.expose:http-web-tcp-8090" in nft_elements(lab)["output_tcp_dst"], "no local mapping to take away"
    # Without admin, and not exclusive: admin's mapping stays; no local rule; no package manager.
    run = run_playbook(EXPOSE, extra_vars={"expose_services": [WEB]},
                       extra_args=["-e", f"expose_exclusive={falsy}", "-e", f"expose_local_clients={falsy}",
                                   "-e", f"expose_manage_packages={falsy}", "-e", f"expose_allow_empty={falsy}"])
    assert not failures(run), failures(run)
    # auto took nftables (the master has no iptables rules of its own).
    elements = nft_elements(lab)
    assert "netns.expose:admin-tcp-8091" in elements["dnat_tcp_dst"]
    assert not [name for name, comments in elements.items()
                if name.startswith("output_") and "netns.expose:http-web-tcp-8090" in comments]
    assert not [name for name, _result in task_names_run(run) if name.endswith("Install what the modules need")]


def warnings(run):
    """The warnings of every task of a run (Ansible hands them to the stdout callback with the task's result)."""
    return [warning for _name, result in task_names_run(run) for warning in result.get("warnings", [])]


def task_names_run(run):
    return [(task["task"]["name"], result) for play in run["plays"] for task in play["tasks"]
            for result in task["hosts"].values() if not result.get("skipped")]


def test_a_bad_boolean_is_refused_before_anything_changes(lab, master, run_playbook):
    before = netfilter_and_links(lab)
    run = run_playbook(EXPOSE, extra_vars={"expose_services": [WEB]}, extra_args=["-e", "expose_exclusive=maybe"])
    [(task, message)] = failures(run)
    assert "Validating arguments" in task
    assert "expose_exclusive" in message and "maybe" in message
    assert netfilter_and_links(lab) == before


@pytest.mark.parametrize("service_changes, field", [
    ({"in_interface": "eth9"}, "expose_services[0] (http-web).in_interface"),
    ({"in_interface": "eth9", "host_ip": MASTER_IP}, "expose_services[0] (http-web).in_interface"),
])
def test_an_interface_the_host_does_not_have_is_refused(lab, master, run_playbook, service_changes, field):
    before = netfilter_and_links(lab)
    run = run_playbook(EXPOSE, extra_vars={"expose_services": [{**WEB, **service_changes}]})
    [(_task, message)] = failures(run)
    assert f"{field}: 'eth9' is not an interface of this host (it has eth0, lo)" in message
    assert netfilter_and_links(lab) == before


def test_a_typo_in_a_service_field_names_the_service_and_suggests_the_field(lab, master, run_playbook):
    service = {**WEB, "ports": [{"protocol": "tcp", "host_prot": 8090}]}
    run = run_playbook(EXPOSE, extra_vars={"expose_services": [WEB, {**service, "name": "db", "netns": "ns2"}]})
    [(_task, message)] = failures(run)
    assert message == "expose_services[1] (db).ports[0].host_prot: unknown option; did you mean host_port?"
    assert "argument_spec_data" not in str(run)


def make_other_runtime_namespace(lab):
    """A namespace joined to the master as another runtime joins its containers: its own veth and subnet."""
    sh(lab, "ip", "netns", "add", OTHER_NETNS)
    sh(lab, "ip", "link", "add", OTHER_HOST_END, "type", "veth", "peer", "name", "eth0", "netns", OTHER_NETNS)
    sh(lab, "ip", "addr", "add", "10.88.0.1/16", "dev", OTHER_HOST_END)
    sh(lab, "ip", "link", "set", OTHER_HOST_END, "up")
    inside = ["ip", "netns", "exec", OTHER_NETNS]
    sh(lab, *inside, "ip", "addr", "add", f"{OTHER_ADDRESS}/16", "dev", "eth0")
    sh(lab, *inside, "ip", "link", "set", "eth0", "up")
    sh(lab, *inside, "ip", "route", "add", "default", "via", "10.88.0.1")
    # Forwarded on a FORWARD DROP host: the runtime's own rule for its subnet, as CNI's bridge plugin adds.
    sh(lab, "iptables", "-I", "FORWARD", "-s", "10.88.0.0/16", "-j", "ACCEPT")
    return inside


def test_by_default_a_port_answers_the_lan_the_master_and_any_namespace_on_it(lab, master, run_playbook):
    run = run_playbook(EXPOSE, extra_vars={"expose_services": [WEB]})
    assert not failures(run), failures(run)
    master()
    inside_other = make_other_runtime_namespace(lab)
    assert get(lab, "slave") == 0, "from the LAN"
    assert get(lab, MASTER) == 0, "from the master itself"
    assert get(lab, MASTER, *inside_other) == 0, "from a namespace the role did not make"
    assert get(lab, MASTER, "ip", "netns", "exec", "ns1") == 0, "from the service's own namespace (hairpin)"


def test_in_interface_restricts_a_port_to_the_lan_and_the_roles_namespaces(lab, master, run_playbook):
    run = run_playbook(EXPOSE, extra_vars={"expose_services": [WEB], "expose_in_interface": "eth0",
                                           "expose_local_clients": False})
    assert not failures(run), failures(run)
    master()
    inside_other = make_other_runtime_namespace(lab)
    assert get(lab, "slave") == 0
    assert get(lab, MASTER, "ip", "netns", "exec", "ns1") == 0, "the role's own namespaces still reach it"
    assert get(lab, MASTER) != 0, "the master's own connections are left out (expose_local_clients false)"
    assert get(lab, MASTER, *inside_other) != 0, "restricted to eth0"
