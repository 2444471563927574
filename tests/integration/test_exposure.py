# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What dnat_rule's guarded_networks, routed_networks and "not a router" let through, with real traffic on the lab,
with each backend (iptables-nft, iptables-legacy, nftables).

The master has ns1 (10.244.1.2, the demo service on 9090 and an unpublished server on 5432), published as tcp
10.211.55.122:8090 -> 10.244.1.2:9090; the slave has a route to 10.244.1.0/24 via the master, as a LAN host that
tries to reach the namespace directly would add. PROVEN:

1. Guard (test_a_guarded_namespace_is_reached_only_through_its_mapping): with ip_forward 0 before the mapping and
   10.244.1.0/24 and 10.244.2.0/24 guarded, the slave reaches no port of ns1 directly, published (9090) or not
   (5432), and ns2 (10.244.2.2) does not reach 10.244.1.2:9090 directly; yet the published port answers the slave,
   the master itself (local), ns2 and ns1 (hairpin) through 10.211.55.122:8090, the master reaches ns1 directly,
   and ns1's own connection to a server on the slave gets its answer (through the router drop of 2). Control: the
   same mapping with 10.244.1.0/24 in routed_networks instead lets the slave reach 10.244.1.2:5432 and :9090
   directly. (On this master the router drop of 2 stands behind the guard too: 2 and 3 prove the guard alone.)
2. Not a router (test_the_master_forwards_only_the_collections_traffic_unless_it_forwarded_before): when the module
   turns ip_forward on, the slave gets nothing from `third` (10.99.0.2, a namespace behind the master in neither
   list) through the master, and removing the mapping and the networks puts ip_forward back to 0 and leaves
   nothing of the collection's. Control: when ip_forward was 1 before the first mapping, the slave reaches `third`
   before, during and after the mapping (other forwarding is left alone), while ns1:5432, which it reached before
   the mapping, is out of its reach while the mapping is there (the guard still applies); removing it leaves
   ip_forward 1 and nothing of the collection's.
3. Coexistence (test_a_host_that_forwarded_before_keeps_its_own_forwarding_and_portmap): on a Docker-like master
   (FORWARD policy DROP, forwarding on, accept rules of its own for `third` and for 10.244.0.0/16) with a CNI-like
   pod behind the bridge cni0 published by a portmap-style DNAT (tcp 8081 -> 10.22.0.2:80), the slave reaches
   `third` and the pod's host port before, during and after the collection's mapping, which answers on 8090, while
   ns1:5432, which the host's own rules let the slave reach before the mapping, is out of its reach with it. After
   removing the mapping the host's own rules are as they were and nothing of the collection's is left.

A client that must get nothing waits NOTHING_TIMEOUT seconds; each phase's clients run at once. Everything a test
builds is registered in an Undo (test_dnat_correctness.py) as soon as it exists and removed after the test,
whether it passed or not; the master's netfilter is scrubbed last of all.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from master_host import (
    BACKENDS,
    DEMO_REPLY as MAPPED,
    DEMO_SERVICE,
    MASTER,
    RECIPE_PAIR,
    backend_args,
    foreign,
    ip_forward,
    nft_table,
    owned,
    save,
    scrub_netfilter,
    sh,
)
from test_dnat_correctness import (  # pylint: disable=import-error
    FROM_THIRD,
    MASTER_IP,
    NS_IP,
    SLAVE,
    THIRD,
    Undo,
    change,
    fetch,
    flush_conntrack,
    run_ok,
    serve_file,
    set_sysctl,
    start,
    veth_pair,
    with_module,
)

MODULE = "netns.expose.dnat_rule"
SLAVE_IP = "10.211.55.123"
NS1_NET, NS2_NET, THIRD_NET, POD_NET = "10.244.1.0/24", "10.244.2.0/24", "10.99.0.0/24", "10.22.0.0/24"
NS2 = dict(netns="ns2", ns_ifname="veth2a", host_ifname="veth2b", ns_address="10.244.2.2/24", host_address="10.244.2.3/24")
# The mapping under test: the recipe's tcp 8090 -> 10.244.1.2:9090 on the master's address, for the master's own
# clients too, with both namespace networks guarded.
WEB = dict(name="web", protocol="tcp", port=8090, to_address=NS_IP, to_port=9090, destination=MASTER_IP, local=True,
           hairpin_sources=[NS1_NET, NS2_NET], guarded_networks=[NS1_NET, NS2_NET])
# Removes the mapping and both networks, guarded or routed.
WEB_ABSENT = dict(name="web", state="absent", guarded_networks=[NS1_NET, NS2_NET])
FROM_5432 = "ns1 unpublished 5432\n"
FROM_SLAVE = "the slave's own server\n"
FROM_POD = "the pod behind cni0\n"
NOTHING_TIMEOUT = 3  # seconds for a client that must get nothing
REPLY_TIMEOUT = 15  # seconds for one that must get an answer (2 noisy cores)
# The clients of the checks: lab host and namespace.
CLIENTS = {"slave": (SLAVE, None), "master": (MASTER, None), "ns1": (MASTER, "ns1"), "ns2": (MASTER, "ns2")}
NOTHING_LEFT = {"iptables-nft": [], "iptables-legacy": [], "nftables": None}


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def run_module(modules, backend):
    """Every test runs with each backend of dnat_rule (and, for iptables, each variant)."""
    def run(host, module, args, **kwargs):
        if module == MODULE:
            args = {**backend_args(backend), **args}
        return modules.run_module(host, module, args, **kwargs)
    return run


@pytest.fixture
def undo(lab):
    """An Undo closed after the test, whatever happened; the master's netfilter is scrubbed last of all."""
    with Undo() as stack:
        stack.callback(scrub_netfilter, lab)
        yield stack


@pytest.fixture
def ns1(lab, undo, run_module, tmp_path):
    """The recipe's ns1 on a master with nothing of the collection's and ip_forward 0: the demo service on 9090, an
    unpublished server on 5432; the slave routes 10.244.1.0/24 via the master."""
    scrub_netfilter(lab)
    if ip_forward(lab) != 0:
        set_sysctl(undo, lab, MASTER, "net.ipv4.ip_forward", 0)
    assert ip_forward(lab) == 0
    veth_pair(undo, run_module, MASTER, RECIPE_PAIR)
    start(undo, lab, ["python3", str(DEMO_SERVICE), "9090"], 9090, netns="ns1")
    serve_file(undo, lab, tmp_path, FROM_5432.encode(), "0.0.0.0", 5432, netns="ns1")
    slave_route(undo, lab, NS1_NET)
    return lab


@pytest.fixture
def third(ns1, undo, run_module, tmp_path):
    """`third`, a namespace behind the master (10.99.0.2, in neither list), with a server on 8080; the slave
    routes 10.99.0.0/24 via the master."""
    veth_pair(undo, run_module, MASTER, THIRD)
    serve_file(undo, ns1, tmp_path, FROM_THIRD.encode(), "10.99.0.2", 8080, netns="third")
    slave_route(undo, ns1, THIRD_NET)
    return ns1


def slave_route(undo, lab, network):
    change(undo, lab, SLAVE, ["ip", "route", "add", network, "via", MASTER_IP],
           ["ip", "route", "del", network, "via", MASTER_IP])


def publish(undo, run_module, args):
    """The mapping on the master; removed with both networks after the test."""
    return with_module(undo, run_module, MASTER, MODULE, args, WEB_ABSENT)


def unpublish(run_module):
    return run_ok(run_module, MASTER, MODULE, WEB_ABSENT)


def reach(lab, expected):
    """What each check "<client> -> <address>:<port>" of `expected` gets over HTTP: the body, or None. All at once,
    each client waiting NOTHING_TIMEOUT seconds when `expected` says it gets nothing."""
    def one(check):
        client, target = check.split(" -> ")
        host, netns = CLIENTS[client]
        return fetch(lab, host, f"http://{target}/", netns, NOTHING_TIMEOUT if expected[check] is None else REPLY_TIMEOUT)

    with ThreadPoolExecutor(len(expected)) as pool:
        return dict(zip(expected, pool.map(one, expected)))


def collection_left(lab):
    """The collection's chains and rules (both iptables variants) and its nftables table on the master."""
    return {"iptables-nft": owned(save(lab, "nft")), "iptables-legacy": owned(save(lab, "legacy")),
            "nftables": nft_table(lab)}


# 1. Nothing of a guarded namespace is reachable but what is published.

def test_a_guarded_namespace_is_reached_only_through_its_mapping(ns1, undo, run_module, tmp_path):
    """PROVES (1): on a master whose forwarding the module turned on, a guarded namespace is reached from the LAN
    and from the master's other namespaces only through its mapping, which answers every kind of client, and its
    own connections out get their answers. Control: routed_networks opens it to the same clients."""
    lab = ns1
    veth_pair(undo, run_module, MASTER, NS2)
    serve_file(undo, lab, tmp_path, FROM_SLAVE.encode(), SLAVE_IP, 7070, host=SLAVE)

    publish(undo, run_module, WEB)
    assert ip_forward(lab) == 1, "the module did not turn forwarding on: nothing is forwarded, the checks prove nothing"
    flush_conntrack(lab)
    expected = {
        # Directly, from the LAN and from another namespace of the master: nothing, published port or not.
        "slave -> 10.244.1.2:9090": None,
        "slave -> 10.244.1.2:5432": None,
        "ns2 -> 10.244.1.2:9090": None,
        "ns2 -> 10.244.1.2:5432": None,
        # Through the mapping: the LAN, the master itself (local), ns2 and ns1 (hairpin).
        "slave -> 10.211.55.122:8090": MAPPED,
        "master -> 10.211.55.122:8090": MAPPED,
        "ns2 -> 10.211.55.122:8090": MAPPED,
        "ns1 -> 10.211.55.122:8090": MAPPED,
        # The master itself reaches its namespace (not forwarded): 5432 does answer.
        "master -> 10.244.1.2:5432": FROM_5432,
        # The namespace's own connection out gets its answer.
        "ns1 -> 10.211.55.123:7070": FROM_SLAVE,
    }
    assert reach(lab, expected) == expected

    # Control: ns1's network routed on purpose instead: the very same clients reach it directly.
    run_ok(run_module, MASTER, MODULE, {**WEB, "guarded_networks": [NS2_NET], "routed_networks": [NS1_NET]})
    flush_conntrack(lab)
    expected = {
        "slave -> 10.244.1.2:5432": FROM_5432,
        "slave -> 10.244.1.2:9090": MAPPED,
        "slave -> 10.211.55.122:8090": MAPPED,
    }
    assert reach(lab, expected) == expected, "routed_networks did not open ns1: the guard's checks prove nothing"


# 2. Not a router: the collection's forwarding is all the master forwards, unless it forwarded before.

def test_the_master_forwards_only_the_collections_traffic_unless_it_forwarded_before(third, undo, run_module):
    """PROVES (2): forwarding the module turned on carries only the collection's traffic, and goes with the last
    mapping. Control: a master that forwarded before keeps forwarding for others, the guard alone keeps ns1 out,
    and forwarding stays on after the last mapping."""
    lab = third
    # ip_forward 0 before: the module turns it on, for the collection's traffic only.
    publish(undo, run_module, WEB)
    assert ip_forward(lab) == 1
    flush_conntrack(lab)
    expected = {
        "slave -> 10.99.0.2:8080": None,
        "slave -> 10.244.1.2:5432": None,
        "slave -> 10.211.55.122:8090": MAPPED,
        "master -> 10.99.0.2:8080": FROM_THIRD,  # third's server answers (the master's own, not forwarded)
    }
    assert reach(lab, expected) == expected
    unpublish(run_module)
    assert ip_forward(lab) == 0, "removing the last mapping did not turn off the forwarding the module turned on"
    assert collection_left(lab) == NOTHING_LEFT

    # Control: a master that forwarded before the first mapping (a router) keeps forwarding for third.
    set_sysctl(undo, lab, MASTER, "net.ipv4.ip_forward", 1)
    flush_conntrack(lab)
    expected = {"slave -> 10.99.0.2:8080": FROM_THIRD, "slave -> 10.244.1.2:5432": FROM_5432}
    assert reach(lab, expected) == expected, "the master does not route for third: the check proves nothing"
    publish(undo, run_module, WEB)
    flush_conntrack(lab)
    expected = {
        "slave -> 10.99.0.2:8080": FROM_THIRD,
        "slave -> 10.244.1.2:5432": None,
        "slave -> 10.211.55.122:8090": MAPPED,
    }
    assert reach(lab, expected) == expected
    unpublish(run_module)
    assert ip_forward(lab) == 1, "the module turned off forwarding it had not turned on"
    assert collection_left(lab) == NOTHING_LEFT
    flush_conntrack(lab)
    expected = {"slave -> 10.99.0.2:8080": FROM_THIRD}
    assert reach(lab, expected) == expected


# 3. A host that forwarded before (Docker-like, with a CNI-like pod) keeps its own forwarding.

POD = "pod"
PORTMAP_CHAIN = "CNI-DN-5f1c2a4e9b7d3c8e1"  # portmap names its chain per container: CNI-DN-<17 hex digits>
# The host's own rules, as Docker and CNI's bridge, firewall and portmap plugins make them: FORWARD policy DROP,
# accepts of its own for third and the namespace subnets (10.244.0.0/16) and the pod network, and tcp 8081 of the
# host's addresses DNAT-ed to the pod's port 80.
HOST_RULES = f"""*nat
:CNI-HOSTPORT-DNAT - [0:0]
:{PORTMAP_CHAIN} - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -s {POD_NET} ! -d {POD_NET} -j MASQUERADE
-A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 8081 -j {PORTMAP_CHAIN}
-A {PORTMAP_CHAIN} -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.22.0.2:80
COMMIT
*filter
:FORWARD DROP [0:0]
:CNI-FORWARD - [0:0]
-A FORWARD -d {THIRD_NET} -j ACCEPT
-A FORWARD -s {THIRD_NET} -j ACCEPT
-A FORWARD -d 10.244.0.0/16 -j ACCEPT
-A FORWARD -s 10.244.0.0/16 -j ACCEPT
-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
-A CNI-FORWARD -d {POD_NET} -j ACCEPT
-A CNI-FORWARD -s {POD_NET} -j ACCEPT
COMMIT
"""


def cni_pod(undo, lab, tmp_path):
    """A namespace `pod` on the bridge cni0 (10.22.0.1/24) of the master, as CNI's bridge plugin attaches a
    container, with a server on 80; removed after the test."""
    change(undo, lab, MASTER, ["ip", "link", "add", "cni0", "type", "bridge"], ["ip", "link", "del", "cni0"])
    sh(lab, "ip", "addr", "add", "10.22.0.1/24", "dev", "cni0")
    sh(lab, "ip", "link", "set", "cni0", "up")
    change(undo, lab, MASTER, ["ip", "netns", "add", POD], ["ip", "netns", "del", POD])
    sh(lab, "ip", "link", "add", "vethpod", "type", "veth", "peer", "name", "eth0", "netns", POD)
    sh(lab, "ip", "link", "set", "vethpod", "master", "cni0", "up")
    for argv in (["ip", "addr", "add", "10.22.0.2/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                 ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "default", "via", "10.22.0.1"]):
        sh(lab, "ip", "netns", "exec", POD, *argv)
    serve_file(undo, lab, tmp_path, FROM_POD.encode(), "0.0.0.0", 80, netns=POD)


def test_a_host_that_forwarded_before_keeps_its_own_forwarding_and_portmap(third, undo, run_module, backend, tmp_path):
    """PROVES (3): on a Docker-like master with a CNI-like pod, the host's own forwarding and portmap flow work
    before, with and after the mapping, whose guard overrides the host's own accept for ns1 (control: before the
    mapping that accept lets the slave in), and the host's rules come out as they went in."""
    lab = third
    # The host's own rules in the iptables its firewall uses: the backend's variant (nft with nftables, as Docker
    # on Debian 12).
    variant = "legacy" if backend == "iptables-legacy" else "nft"
    cni_pod(undo, lab, tmp_path)
    set_sysctl(undo, lab, MASTER, "net.ipv4.ip_forward", 1)
    sh(lab, f"iptables-{variant}-restore", "--noflush", stdin=HOST_RULES)
    own_rules = foreign(save(lab, variant))
    flush_conntrack(lab)
    expected = {
        "slave -> 10.99.0.2:8080": FROM_THIRD,
        "slave -> 10.211.55.122:8081": FROM_POD,
        # The host's own accept lets the slave into ns1: only the guard can keep it out.
        "slave -> 10.244.1.2:5432": FROM_5432,
        "slave -> 10.211.55.122:8090": None,
    }
    assert reach(lab, expected) == expected, "the host's own forwarding does not work: the checks prove nothing"

    publish(undo, run_module, WEB)
    flush_conntrack(lab)
    expected = {
        "slave -> 10.99.0.2:8080": FROM_THIRD,
        "slave -> 10.211.55.122:8081": FROM_POD,
        "master -> 10.211.55.122:8081": FROM_POD,
        "slave -> 10.244.1.2:5432": None,
        "slave -> 10.244.1.2:9090": None,
        "slave -> 10.211.55.122:8090": MAPPED,
    }
    assert reach(lab, expected) == expected

    unpublish(run_module)
    assert collection_left(lab) == NOTHING_LEFT
    assert foreign(save(lab, variant)) == own_rules, "the host's own rules changed"
    assert ip_forward(lab) == 1
    flush_conntrack(lab)
    expected = {
        "slave -> 10.99.0.2:8080": FROM_THIRD,
        "slave -> 10.211.55.122:8081": FROM_POD,
        "slave -> 10.244.1.2:5432": FROM_5432,
        "slave -> 10.211.55.122:8090": None,
    }
    assert reach(lab, expected) == expected
