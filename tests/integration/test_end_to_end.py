"""The recipe end to end: services in the master's ns1, reached from the slave through the mappings.

A real HTTP server and a UDP service run in ns1; the slave uses curl, a UDP client
and ping. The master's FORWARD policy is DROP (as with Docker), and the master
itself ignores pings, so each check passes only through its mapping.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DNAT_BACKENDS, with_backend
from master_host import DEMO_REPLY as REPLY, DEMO_SERVICE, RECIPE_PAIR as VETH, scrub_netfilter, sh

HERE = Path(__file__).resolve().parent
UDP_ECHO = HERE / "udp_echo.py"
MAPPINGS = [
    dict(name="web", protocol="tcp", port=8090, to_address="10.244.1.2", to_port=9090, destination="10.211.55.122",
         in_interface="eth0"),
    dict(name="dns", protocol="udp", port=8053, to_address="10.244.1.2", to_port=5353, in_interface="eth0"),
    dict(name="ping", protocol="icmp", to_address="10.244.1.2", in_interface="eth0"),
]


@pytest.fixture(scope="module")
def services(lab, modules):
    """ns1 with its pair on the master, the two services in it; all removed afterwards."""
    scrub_netfilter(lab)
    sh(lab, "iptables", "-P", "FORWARD", "DROP")
    sh(lab, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")
    try:
        assert not modules.run_module("master", "netns.expose.netns_veth", VETH)["failed"]
        for service in (f"python3 {DEMO_SERVICE} 9090", f"python3 {UDP_ECHO} serve 5353"):
            # Detached from our pipes, or waiting for its output would never end.
            sh(lab, "sh", "-c", f"setsid -f ip netns exec ns1 {service} </dev/null >/dev/null 2>&1")
        # Both listen before the tests start.
        sh(lab, "sh", "-c", "for i in $(seq 50); do ip netns exec ns1 ss -Hltun | grep -q ':9090' && "
                            "ip netns exec ns1 ss -Hlun | grep -q ':5353' && exit 0; sleep 0.1; done; exit 1")
        yield lab
    finally:
        # Only the processes in this lab master's ns1 (pkill would reach other labs too).
        sh(lab, "sh", "-c", "ip netns pids ns1 | xargs -r kill", check=False)
        modules.run_module("master", "netns.expose.netns_veth", {**VETH, "state": "absent"})
        sh(lab, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=0")
        scrub_netfilter(lab)


@pytest.fixture(scope="module", params=DNAT_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def run_module(modules, backend):
    """Every test runs with each backend of dnat_rule."""
    return with_backend(modules.run_module, backend)


def from_slave(lab, *argv):
    return lab.exec("slave", list(argv))


def reachable(lab):
    """What the slave gets through each mapping: the reply, or None."""
    http = from_slave(lab, "curl", "-s", "-m", "3", "http://10.211.55.122:8090/")
    udp = from_slave(lab, "python3", str(UDP_ECHO), "ask", "10.211.55.122", "8053", "hello")
    ping = from_slave(lab, "ping", "-c", "1", "-W", "2", "10.211.55.122")
    return {
        "tcp": http.stdout if http.returncode == 0 else None,
        "udp": udp.stdout.strip() if udp.returncode == 0 else None,
        "icmp": ping.returncode == 0 or None,
    }


def test_the_slave_reaches_each_service_only_through_its_mapping(services, run_module):
    lab = services
    assert reachable(lab) == {"tcp": None, "udp": None, "icmp": None}, "reachable before any mapping"

    added = run_module("master", "netns.expose.dnat_rule", {"rules": MAPPINGS})
    assert not added["failed"], added
    assert reachable(lab) == {"tcp": REPLY, "udp": "echo:hello", "icmp": True}

    names = [{"name": mapping["name"]} for mapping in MAPPINGS]
    removed = run_module("master", "netns.expose.dnat_rule", {"rules": names, "state": "absent"})
    assert not removed["failed"], removed
    assert reachable(lab) == {"tcp": None, "udp": None, "icmp": None}, "reachable after the mappings were removed"


def test_each_mapping_carries_only_its_own_protocol(services, run_module):
    lab = services
    try:
        assert not run_module("master", "netns.expose.dnat_rule", MAPPINGS[0])["failed"]
        assert reachable(lab) == {"tcp": REPLY, "udp": None, "icmp": None}
    finally:
        run_module("master", "netns.expose.dnat_rule", {"name": "web", "state": "absent"})


def from_master(lab):
    """curl on the master itself to its own LAN address and the mapped port: the reply, or None."""
    http = lab.exec("master", ["curl", "-s", "-m", "3", "http://10.211.55.122:8090/"])
    return http.stdout if http.returncode == 0 else None


@pytest.mark.parametrize("local", [False, True])
def test_local_maps_connections_that_start_on_the_master(services, run_module, local):
    lab = services
    web = {**MAPPINGS[0], "local": local}
    try:
        assert not run_module("master", "netns.expose.dnat_rule", web)["failed"]
        assert reachable(lab)["tcp"] == REPLY
        assert from_master(lab) == (REPLY if local else None)
    finally:
        run_module("master", "netns.expose.dnat_rule", {"name": "web", "state": "absent"})
    assert from_master(lab) is None


def ask_udp_from(lab, source_port):
    """The slave asks the udp mapping from one fixed source port (one conntrack flow): the reply, or None."""
    done = from_slave(lab, "python3", str(UDP_ECHO), "ask", "10.211.55.122", "8053", "hello", str(source_port))
    return done.stdout.strip() if done.returncode == 0 else None


def test_flows_that_predate_a_change_are_deleted_so_they_meet_the_new_rules(services, run_module):
    lab = services
    dns = {**MAPPINGS[1], "flush_conntrack": True}
    # A stateful rule, as on any host with a firewall or Docker: the master tracks flows from the first datagram
    # (a namespace with no rule that needs conntrack tracks nothing, and nothing could go stale).
    stateful = ["INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"]
    sh(lab, "iptables", "-I", *stateful)
    # A router (forwarding on, FORWARD policy ACCEPT): otherwise removing the last mapping would stop an old
    # flow on its own, by removing its ACCEPT rule and by setting ip_forward back to 0.
    sh(lab, "iptables", "-P", "FORWARD", "ACCEPT")
    sh(lab, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    try:
        # Control: without deleting its conntrack entry, a flow that started before the mapping keeps bypassing it
        # (the master answered the first datagram with port unreachable), and one that started while the mapping
        # existed keeps reaching ns1 after the mapping is gone.
        assert ask_udp_from(lab, 40001) is None
        assert not run_module("master", "netns.expose.dnat_rule", {**dns, "flush_conntrack": False})["failed"]
        assert ask_udp_from(lab, 40001) is None, "the stale flow was mapped: the control proves nothing"
        assert ask_udp_from(lab, 40002) == "echo:hello"
        assert not run_module("master", "netns.expose.dnat_rule",
                              {"name": "dns", "state": "absent", "flush_conntrack": False})["failed"]
        assert ask_udp_from(lab, 40002) == "echo:hello", "the old flow lost its DNAT: the control proves nothing"
        sh(lab, "conntrack", "-F", check=False)

        # With the module deleting the flows of the mapping's port when it is added, and when it is removed.
        assert ask_udp_from(lab, 40003) is None
        added = run_module("master", "netns.expose.dnat_rule", dns)
        assert not added["failed"], added
        assert added["conntrack"] == [{"protocol": "udp", "port": 8053, "destination": None, "deleted": 1}]
        assert ask_udp_from(lab, 40003) == "echo:hello"
        removed = run_module("master", "netns.expose.dnat_rule", {"name": "dns", "state": "absent"})
        assert not removed["failed"], removed
        assert removed["conntrack"][0]["deleted"] >= 1
        assert ask_udp_from(lab, 40003) is None
    finally:
        run_module("master", "netns.expose.dnat_rule", {"name": "dns", "state": "absent"})
        sh(lab, "iptables", "-D", *stateful, check=False)
        sh(lab, "iptables", "-P", "FORWARD", "DROP")
        sh(lab, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        sh(lab, "conntrack", "-F", check=False)


def from_netns(lab, netns):
    """curl from a namespace of the master to the master's published address: the reply, or None."""
    http = lab.exec("master", ["ip", "netns", "exec", netns, "curl", "-s", "-m", "3", "http://10.211.55.122:8090/"])
    return http.stdout if http.returncode == 0 else None


def test_hairpin_clients_in_the_masters_namespaces_reach_the_mapping(services, run_module):
    """A client in ns1 (the service's own namespace) and one in ns2 reach the service through 10.211.55.122:8090."""
    lab = services
    ns2 = dict(netns="ns2", ns_ifname="veth2a", host_ifname="veth2b", ns_address="10.244.2.2/24", host_address="10.244.2.3/24")
    web = {**MAPPINGS[0], "hairpin_sources": ["10.244.1.0/24", "10.244.2.0/24"]}
    try:
        assert not run_module("master", "netns.expose.netns_veth", ns2)["failed"]
        assert not run_module("master", "netns.expose.dnat_rule", {**web, "hairpin": False})["failed"]
        assert reachable(lab)["tcp"] == REPLY
        assert (from_netns(lab, "ns1"), from_netns(lab, "ns2")) == (None, None), "reachable without hairpin"
        assert not run_module("master", "netns.expose.dnat_rule", web)["failed"]
        assert (from_netns(lab, "ns1"), from_netns(lab, "ns2")) == (REPLY, REPLY)
        assert reachable(lab)["tcp"] == REPLY
    finally:
        run_module("master", "netns.expose.dnat_rule", {"name": "web", "state": "absent"})
        run_module("master", "netns.expose.netns_veth", {**ns2, "state": "absent"})


# Coexistence of the nftables backend with the host's own firewall. In nftables an accept in one table does not
# stop a drop in another base chain of the same hook.

@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_nftables_backend_passes_an_iptables_forward_policy_drop_with_its_one_owned_accept(services, modules, variant):
    """Docker-like: the FORWARD policy of one iptables variant is DROP (the other's ACCEPT)."""
    lab = services
    other = "legacy" if variant == "nft" else "nft"
    sh(lab, f"iptables-{variant}", "-P", "FORWARD", "DROP")
    sh(lab, f"iptables-{other}", "-P", "FORWARD", "ACCEPT")
    try:
        added = modules.run_module("master", "netns.expose.dnat_rule", {**MAPPINGS[0], "backend": "nftables"})
        assert not added["failed"], added
        assert added["backend"] == "nftables" and added["iptables"] == variant
        assert reachable(lab)["tcp"] == REPLY
        forward = [line for line in sh(lab, f"iptables-{variant}-save", "-t", "filter").splitlines() if "netns.expose" in line]
        assert forward == ['-A FORWARD -m comment --comment "netns.expose" -j NETNS-EXPOSE-FWD',
                           '-A NETNS-EXPOSE-FWD -m connmark --mark 0x1000000/0x1000000 -m conntrack --ctstate DNAT '
                           '-m comment --comment "netns.expose" -j ACCEPT']
        # Control: without that accept the policy drops the mapped flow.
        sh(lab, f"iptables-{variant}", "-D", "FORWARD", "-m", "comment", "--comment", "netns.expose", "-j", "NETNS-EXPOSE-FWD")
        sh(lab, "conntrack", "-F")
        assert reachable(lab)["tcp"] is None, "reachable without the accept: the test proves nothing"
        assert modules.run_module("master", "netns.expose.dnat_rule", {**MAPPINGS[0], "backend": "nftables"})["changed"]
        assert reachable(lab)["tcp"] == REPLY
    finally:
        modules.run_module("master", "netns.expose.dnat_rule", {"name": "web", "state": "absent", "backend": "nftables"})
        sh(lab, "iptables-legacy", "-P", "FORWARD", "ACCEPT")
        sh(lab, "iptables-nft", "-P", "FORWARD", "DROP")
    assert "netns.expose" not in sh(lab, f"iptables-{variant}-save")


HOST_FIREWALL = """table inet filter {
    chain forward {
        type filter hook forward priority filter; policy drop;
    }
}
"""
ACCEPT_MAPPED = "ct mark and 0x1000000 == 0x1000000 ct status dnat accept"


def test_nftables_backend_refuses_a_host_firewall_that_drops_its_flows_and_names_the_rule_to_add(services, modules):
    """A typical /etc/nftables.conf: a forward chain with policy drop in a table of the host's own."""
    lab = services
    web = {**MAPPINGS[0], "backend": "nftables"}
    sh(lab, "nft", "-f", "-", stdin=HOST_FIREWALL)
    try:
        refused = modules.run_module("master", "netns.expose.dnat_rule", web)
        assert refused["failed"]
        assert "chain forward of table inet filter (policy drop)" in refused["msg"]
        assert f"nft insert rule inet filter forward {ACCEPT_MAPPED}" in refused["msg"]
        assert lab.exec("master", ["nft", "list", "table", "ip", "netns_expose"]).returncode != 0, "changed something"
        # Control: told to go ahead anyway, the mapping is made and the host's firewall drops its flows.
        forced = modules.run_module("master", "netns.expose.dnat_rule", {**web, "forward_drop_check": False})
        assert not forced["failed"], forced
        assert reachable(lab)["tcp"] is None, "reachable through policy drop: the test proves nothing"
        # The rule the message names, added by the host's administrator, lets exactly the mapped flows through.
        sh(lab, "nft", "insert", "rule", "inet", "filter", "forward", *ACCEPT_MAPPED.split())
        sh(lab, "conntrack", "-F")
        again = modules.run_module("master", "netns.expose.dnat_rule", web)
        assert not again["failed"] and again["changed"] is False, again
        assert reachable(lab)["tcp"] == REPLY
        assert "table inet filter" in sh(lab, "nft", "list", "tables")
    finally:
        modules.run_module("master", "netns.expose.dnat_rule", {"name": "web", "state": "absent", "backend": "nftables"})
        sh(lab, "nft", "delete", "table", "inet", "filter", check=False)
