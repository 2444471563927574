"""What explains a mapped flow, on a lab master with the collection's real mappings (each backend), the demo
service in ns1 and curl on the slave:

- module_utils/_trace.py, the kernel's own trace: which chains the first packet of a flow crosses (the nat
  chains, where the DNAT is decided) and the later ones (translated by conntrack, the filter chains only);
  the trace leaves nothing behind, also when the traced block fails;
- module_utils/_capture.py, the packets at each hop: the destination rewritten by the DNAT between the
  master's LAN interface and the veth pair on the way in, the source restored on the way out;
- module_utils/_conntrack.py's reading of the flow's entry: the reply tuple comes from the service;
- module_utils/_path.py: the route of the DNAT-ed request (refused with ip_forward off), the ARP entries;
- the module flow_watch, which puts them together on the master, run as its documentation says (async, a
  request from the slave in between).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import DNAT_BACKENDS, failures, with_backend
from master_host import DEMO_REPLY, DEMO_SERVICE, MASTER, RECIPE_PAIR, sh
from test_dnat_correctness import Undo, mapping, start, veth_pair  # pylint: disable=import-error

from ansible_collections.netns.expose.plugins.module_utils._trace import TABLE_PREFIX, Flow

SLAVE, SLAVE_IP, MASTER_IP = "slave", "10.211.55.123", "10.211.55.122"
RUN_PARENT = "/run/netns-expose"  # flow_watch's runs are under its explain/
# Each trace's own client port: a flow that reused one would meet the TIME_WAIT of the last (and its conntrack entry).
CLIENT_PORTS = itertools.count(20000 + os.getpid() % 10000, 7)
WEB = dict(name="web", protocol="tcp", port=8090, to_address="10.244.1.2", to_port=9090, in_interface="eth0")
# Runs in a lab host: captures at the points of argv[1] ([hop, interface, netns path or null]) the packets to or
# from client port argv[2], says "capturing", waits for a line on stdin, then prints them as JSON.
CAPTURE_DRIVER = """
import json, sys
from ansible_collections.netns.expose.plugins.module_utils._capture import Capture
port = int(sys.argv[2])
with Capture(json.loads(sys.argv[1]), lambda protocol, src, dst, sport, dport: port in (sport, dport)) as capture:
    print("capturing", flush=True)
    sys.stdin.readline()
print(json.dumps([[p.hop, p.direction, p.tuple_text()] for p in capture.packets]), flush=True)
"""
# Runs in the master: its conntrack entries whose original source port is argv[1], as JSON (after a line on stdin).
CONNTRACK_DRIVER = """
import json, sys
from ansible_collections.netns.expose.plugins.module_utils._conntrack import NetlinkConntrack
print("reading", flush=True)
sys.stdin.readline()
table = NetlinkConntrack()
try:
    print(json.dumps([entry for entry in table.described() if (entry["original"] or {}).get("sport") == int(sys.argv[1])]))
finally:
    table.close()
"""
# Runs in the master: the route of the DNAT-ed request and the neighbour entries of the master and ns1, as JSON
# (the route's error instead, when the kernel refuses it), after a line on stdin.
PATH_DRIVER = """
import json, subprocess, sys
from ansible_collections.netns.expose.plugins.module_utils._path import PathError, neighbours, route_of
def run(argv):
    done = subprocess.run(argv, capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr
print("reading", flush=True)
sys.stdin.readline()
try:
    route = route_of(run, "ip", "10.244.1.2", sys.argv[1], "eth0")
except PathError as exc:
    route = str(exc)
print(json.dumps({"route": route, "master": neighbours(run, "ip"), "ns1": neighbours(run, "ip", netns="ns1")}))
"""
# Runs in the master: arms the trace for the flow of argv[1], says "armed", waits for a line on stdin (or EOF),
# then prints the traced packets as JSON; with argv[2] == "fail" the traced block raises instead.
DRIVER = """
import json, sys
from ansible_collections.netns.expose.plugins.module_utils._trace import Flow, Trace
trace = Trace("nft", [Flow(**json.loads(sys.argv[1]))], "pytest")
try:
    with trace:
        print("armed", flush=True)
        sys.stdin.readline()
        if sys.argv[2] == "fail":
            raise RuntimeError("the traced block failed")
finally:
    print(json.dumps([{"fields": p.fields, "hops": [[h.chain, h.rules, h.verdict] for h in p.hops]}
                      for p in trace.packets]), flush=True)
"""


@pytest.fixture(params=DNAT_BACKENDS)
def published(request, lab, modules):
    """The recipe's pair and tcp mapping on the master with a backend, the demo service in ns1; removed after."""
    run_module = with_backend(modules.run_module, request.param)
    with Undo() as undo:
        veth_pair(undo, run_module, MASTER, RECIPE_PAIR)
        mapping(undo, run_module, WEB)
        start(undo, lab, ["python3", str(DEMO_SERVICE), "9090"], 9090, netns="ns1")
        yield request.param


def driven(lab, host, code, *args):
    """A driver (code, run with args) started in a lab host, as a Popen with pipes; its first line read."""
    env = {**os.environ, "PYTHONPATH": os.environ["ANSIBLE_COLLECTIONS_PATH"]}
    driver = subprocess.Popen(lab.command(host, [sys.executable, "-c", code, *args]), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return driver, driver.stdout.readline().strip()


def finish(driver):
    """(the driver's last line as JSON, its return code, stderr), once told to go on; killed if it hangs."""
    try:
        out, err = driver.communicate("\n", timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    return json.loads(out.splitlines()[-1]) if out.strip() else None, driver.returncode, err


def curl(lab, client_port):
    return lab.exec(SLAVE, ["curl", "-s", "-m", "5", "--local-port", str(client_port),
                            f"http://{MASTER_IP}:8090/"]).stdout


def traced(lab, outcome="pass"):
    """Run the trace driver in the master around one curl from the slave: (packets, body, client port, rc, stderr)."""
    client_port = next(CLIENT_PORTS)
    flow = dict(protocol="tcp", client=SLAVE_IP, client_port=client_port, address=MASTER_IP, port=8090)
    driver, first = driven(lab, MASTER, DRIVER, json.dumps(flow), outcome)
    body = curl(lab, client_port) if first == "armed" else None
    packets, returncode, err = finish(driver)
    assert first == "armed", err
    return packets, body, client_port, returncode, err


def trace_tables(lab):
    return [line for line in sh(lab, "nft", "list", "tables").splitlines() if TABLE_PREFIX in line]


def nat_chains(packet):
    """The nat chains a packet crossed: iptables-nft's nat table, or the owned table's nat chains."""
    return [chain for chain, _rules, _verdict in packet["hops"]
            if chain.startswith(("ip nat ", "ip netns_expose prerouting", "ip netns_expose postrouting"))]


def test_the_first_packet_crosses_the_nat_chains_and_the_later_ones_do_not(lab, published):
    packets, body, client_port, returncode, err = traced(lab)
    assert returncode == 0, err
    assert body == DEMO_REPLY
    assert trace_tables(lab) == [], "the trace table outlived the trace"
    flow = Flow("tcp", SLAVE_IP, client_port, MASTER_IP, 8090)
    requests = [packet for packet in packets if flow.is_request(packet["fields"])]
    replies = [packet for packet in packets if flow.is_reply(packet["fields"])]
    assert len(requests) >= 3 and len(replies) >= 2, packets  # SYN, ACK, GET, ...; SYN-ACK, the reply, ...
    first, later = requests[0], requests[1:]
    assert first["fields"]["tcp_flags"] == "syn"
    chains = [chain for chain, _rules, _verdict in first["hops"]]
    if published == "nftables":
        # The mapping is a map element: the rule that looks the flow up in the map DNATs it (and accepts).
        assert any(rule.startswith("dnat ") and verdict == "accept" for chain, rules, _verdict in first["hops"]
                   if chain == "ip netns_expose prerouting_local" for rule, verdict in rules), first["hops"]
        assert chains.index("ip netns_expose prerouting") < chains.index("ip netns_expose forward") \
            < chains.index("ip netns_expose postrouting"), chains
    else:  # iptables-nft: its chains are nftables chains
        assert chains.index("ip nat PREROUTING") < chains.index("ip filter FORWARD") < chains.index("ip nat POSTROUTING")
        assert any("DNAT" in rule.upper() or "dnat" in rule for hop in first["hops"] for rule, _verdict in hop[1]
                   if "NETNS-EXPOSE" in hop[0]), first["hops"]
    forward = "ip netns_expose forward" if published == "nftables" else "ip filter FORWARD"
    for packet in later + replies:
        packet_chains = [chain for chain, _rules, _verdict in packet["hops"]]
        assert forward in packet_chains, packet
        assert nat_chains(packet) == [], f"a later packet met a nat chain: {packet}"


def test_the_trace_table_goes_also_when_the_traced_block_fails(lab, published):
    _packets, _body, _port, returncode, err = traced(lab, outcome="fail")
    assert returncode != 0 and "the traced block failed" in err
    assert trace_tables(lab) == []


def test_each_hop_shows_the_packet_as_the_dnat_left_it(lab, published):
    """The walkthrough's tcpdump on the slave's eth0, the master's eth0, veth1b and veth1a in ns1: the request
    keeps the slave as source and has its destination rewritten from the master's address and port to the
    service's between eth0 and veth1b; the reply has its source put back on the way out."""
    client_port = next(CLIENT_PORTS)
    master_points = [["master eth0", "eth0", None], ["veth1b", "veth1b", None], ["ns1 veth1a", "veth1a", "/run/netns/ns1"]]
    master, master_first = driven(lab, MASTER, CAPTURE_DRIVER, json.dumps(master_points), str(client_port))
    slave, slave_first = driven(lab, SLAVE, CAPTURE_DRIVER, json.dumps([["slave eth0", "eth0", None]]), str(client_port))
    body = curl(lab, client_port) if (master_first, slave_first) == ("capturing", "capturing") else None
    (seen_master, rc_master, err_master), (seen_slave, rc_slave, err_slave) = finish(master), finish(slave)
    assert (rc_master, rc_slave) == (0, 0), (err_master, err_slave)
    assert body == DEMO_REPLY
    client, mapped, service = f"{SLAVE_IP}:{client_port}", f"{MASTER_IP}:8090", "10.244.1.2:9090"
    seen = {tuple(packet) for packet in seen_master + seen_slave}
    syn, syn_ack = "[S]", "[S.]"
    assert {("slave eth0", "out", f"tcp {client} > {mapped} {syn}"),
            ("master eth0", "in", f"tcp {client} > {mapped} {syn}"),
            ("veth1b", "out", f"tcp {client} > {service} {syn}"),
            ("ns1 veth1a", "in", f"tcp {client} > {service} {syn}"),
            ("ns1 veth1a", "out", f"tcp {service} > {client} {syn_ack}"),
            ("veth1b", "in", f"tcp {service} > {client} {syn_ack}"),
            ("master eth0", "out", f"tcp {mapped} > {client} {syn_ack}"),
            ("slave eth0", "in", f"tcp {mapped} > {client} {syn_ack}")} <= seen, sorted(seen)
    # In order: the SYN reaches ns1 after the slave sent it, the SYN-ACK the slave after ns1 sent it.
    order = [tuple(packet) for packet in seen_master + seen_slave]
    assert seen_master.index(["ns1 veth1a", "in", f"tcp {client} > {service} {syn}"]) \
        < seen_master.index(["ns1 veth1a", "out", f"tcp {service} > {client} {syn_ack}"]), order


def test_the_conntrack_entry_shows_the_dnat(lab, published):
    client_port = next(CLIENT_PORTS)
    assert curl(lab, client_port) == DEMO_REPLY
    driver, first = driven(lab, MASTER, CONNTRACK_DRIVER, str(client_port))
    entries, returncode, err = finish(driver)
    assert (first, returncode) == ("reading", 0), err
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["original"] == {"protocol": "tcp", "src": SLAVE_IP, "dst": MASTER_IP, "sport": client_port, "dport": 8090}
    assert entry["reply"] == {"protocol": "tcp", "src": "10.244.1.2", "dst": SLAVE_IP, "sport": 9090, "dport": client_port}
    assert {"DST_NAT", "SEEN_REPLY"} <= set(entry["status"]) and "SRC_NAT" not in entry["status"], entry
    assert entry["mark"] & 0x1000000, entry  # the connmark bit of the mapped flows (accept_forward)
    assert entry["tcp_state"] in ("TIME_WAIT", "CLOSE", "FIN_WAIT", "LAST_ACK", "CLOSE_WAIT"), entry  # curl is done


def read_path(lab):
    driver, first = driven(lab, MASTER, PATH_DRIVER, SLAVE_IP)
    path, returncode, err = finish(driver)
    assert (first, returncode) == ("reading", 0), err
    return path


def test_the_route_and_the_neighbours_of_the_mapped_flow(lab, published):
    assert curl(lab, next(CLIENT_PORTS)) == DEMO_REPLY
    path = read_path(lab)
    assert path["route"]["dev"] == "veth1b", path
    entries = {(entry["address"], entry["dev"]): entry for entry in path["master"]}
    assert entries[(SLAVE_IP, "eth0")]["mac"] and entries[("10.244.1.2", "veth1b")]["mac"], path["master"]
    assert any(entry["address"] == "10.244.1.3" and entry["dev"] == "veth1a" and entry["mac"] for entry in path["ns1"])
    was = sh(lab, "sysctl", "-n", "net.ipv4.ip_forward").strip()
    sh(lab, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    try:
        refused = read_path(lab)["route"]
    finally:
        sh(lab, "sysctl", "-qw", f"net.ipv4.ip_forward={was}")
    assert isinstance(refused, str) and "route get 10.244.1.2" in refused, refused


WATCH_PLAY = """
- name: Watch the mapping while the slave sends one request
  hosts: master
  gather_facts: false
  tasks:
    - name: Watch
      netns.expose.flow_watch:
        run_id: "{{ run_id }}"
        flows:
          - {name: web, protocol: tcp, client: 10.211.55.123, client_port: "{{ client_port }}", address: 10.211.55.122,
             port: 8090, to_address: 10.244.1.2, to_port: 9090, in_interface: eth0, host_ifname: veth1b, netns: ns1,
             ns_ifname: veth1a}
      async: 60
      poll: 0
      register: watch
    - name: Wait until the master watches
      ansible.builtin.wait_for:
        path: "/run/netns-expose/explain/{{ run_id }}/ready"
        timeout: 30

# Its own play, not delegate_to: the lab's connection variables name the host they are templated for.
- name: One request from the slave, from the flow's port
  hosts: slave
  gather_facts: false
  tasks:
    - name: One request from the slave
      ansible.builtin.command:
        argv: [curl, -s, -m, "5", --local-port, "{{ client_port }}", "http://10.211.55.122:8090/"]
      changed_when: false

- name: Collect what the master saw
  hosts: master
  gather_facts: false
  tasks:
    - name: Say the probes are over
      ansible.builtin.file:
        path: "/run/netns-expose/explain/{{ run_id }}/done"
        state: touch
        mode: "0600"
    - name: Collect what the master saw
      ansible.builtin.async_status:
        jid: "{{ watch.ansible_job_id }}"
      register: seen
      until: seen.finished
      retries: 60
      delay: 1
"""


def watch_over(lab, run_dir):
    """Once the playbook is over, also when it failed: the watch told to end, and gone with its directory; True
    when nothing of it is left (the lab's teardown would kill a watch still running, before it cleans up)."""
    lab.exec(MASTER, ["touch", f"{run_dir}/done"])
    deadline = time.monotonic() + 30
    while lab.exec(MASTER, ["test", "-e", run_dir]).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    return lab.exec(MASTER, ["test", "-e", run_dir]).returncode != 0 and trace_tables(lab) == []


def test_flow_watch_reports_the_flow_hop_by_hop_and_chain_by_chain(lab, published, run_playbook):
    client_port = next(CLIENT_PORTS)
    run_dir = f"{RUN_PARENT}/explain/w{client_port}"
    try:
        run = run_playbook(WATCH_PLAY, extra_vars={"run_id": f"w{client_port}", "client_port": client_port})
    finally:
        assert watch_over(lab, run_dir), "the watch left its directory or its trace table"
    assert not failures(run), failures(run)
    seen = next(task["hosts"]["master"] for play in run["plays"] for task in play["tasks"]
                if task["task"]["name"] == "Collect what the master saw")
    assert seen["finished"] and seen["ip_forward"] == 1
    (flow,) = seen["flows"]
    client = f"{SLAVE_IP}:{client_port}"
    hops = {(hop["hop"], hop["direction"], hop["packet"]) for hop in flow["hops"]}
    assert {("master eth0", "in", f"tcp {client} > {MASTER_IP}:8090 [S]"),
            ("master veth1b", "out", f"tcp {client} > 10.244.1.2:9090 [S]"),
            ("ns1 veth1a", "in", f"tcp {client} > 10.244.1.2:9090 [S]")} <= hops, sorted(hops)
    first, later = flow["chains"]["request"]["first"], flow["chains"]["request"]["later"]
    assert nat_chains({"hops": [[c["chain"], c["rules"], c["verdict"]] for c in first["chains"]]})
    assert not nat_chains({"hops": [[c["chain"], c["rules"], c["verdict"]] for c in later["chains"]]})
    (entry,) = flow["conntrack"]
    assert entry["reply"]["src"] == "10.244.1.2" and "DST_NAT" in entry["status"]
    assert flow["route"]["dev"] == "veth1b"
    assert any(neighbour["address"] == "10.244.1.3" for neighbour in seen["neighbours"]["ns1"])
