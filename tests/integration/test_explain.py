"""playbooks/explain.yml on the lab, with each backend: the recipe's services exposed by the role on a master whose
FORWARD policy is DROP, the demo service in ns1, and the slave sending the requests.

A working mapping is explained hop by hop (the DNAT on the way in, the source restored on the way out), chain by
chain (the nat chains for the first packet only), with its conntrack entry, routes and ARP entries, in JSON, as text
and as pictures, and nothing stays on the hosts. Then each stage of the path is broken in turn, and the report must
name the hop where the flow stopped and the likely cause; verify, when a check fails, points at explain.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from conftest import failures
from master_host import MASTER, scrub_netfilter, sh
from test_end_to_end import ask_udp_from  # pylint: disable=import-error
from test_explain_picture import check_picture, chromium, svg_size  # pylint: disable=import-error

REPO = Path(__file__).resolve().parents[2]
EXPOSE = REPO / "playbooks" / "expose.yml"
VERIFY = REPO / "playbooks" / "verify.yml"
EXPLAIN = REPO / "playbooks" / "explain.yml"
DEMO = REPO / "tests" / "lab" / "demo_services.yml"
SLAVE_IP, MASTER_IP, NS_IP = "10.211.55.123", "10.211.55.122", "10.244.1.2"
HOPS = ["slave eth0", "master eth0", "master veth1b", "ns1 veth1a"]
# The lab inventory's udp mapping as the role declares it (in_interface: any).
UDP_MAPPING = dict(name="http-web-udp-8053", protocol="udp", port=8053, to_address=NS_IP, to_port=53,
                   destination=MASTER_IP, local=True)


class Exposed:
    """The lab with the inventory's services exposed with one backend, and the demo service running."""

    def __init__(self, lab, ansible, backend):
        self.lab, self.ansible, self.backend = lab, ansible, backend

    def converge(self, **extra):
        """expose.yml and the demo services, as declared (with extra variables): what every test starts from."""
        for playbook in (EXPOSE, DEMO):
            run = self.ansible.run_playbook(playbook, extra_vars={"expose_backend": self.backend, **extra})
            assert not failures(run), failures(run)

    def explain(self, directory, **extra):
        run = self.ansible.run_playbook(EXPLAIN, extra_vars={"expose_explain_dir": str(directory), **extra})
        assert not failures(run), failures(run)
        return json.loads((directory / "report.json").read_text()), (directory / "report.txt").read_text()

    def reply(self):
        done = self.lab.exec("slave", ["curl", "-s", "-m", "3", f"http://{MASTER_IP}:8090/"])
        return done.stdout if done.returncode == 0 else None


@pytest.fixture(scope="module", params=("nftables", "iptables"))
def exposed(request, lab, ansible):
    scrub_netfilter(lab)
    sh(lab, "iptables", "-P", "FORWARD", "DROP")
    state = Exposed(lab, ansible, request.param)
    try:
        state.converge()
        yield state
    finally:
        ansible.run_playbook(DEMO, extra_vars={"expose_state": "absent"})
        ansible.run_playbook(EXPOSE, extra_vars={"expose_state": "absent"})
        sh(lab, "sh", "-c", "for ns in $(ip netns list | cut -d' ' -f1); do ip netns pids $ns | xargs -r kill; "
                            "ip netns del $ns; done", check=False)
        sh(lab, "ip", "link", "del", "veth1b", check=False)
        scrub_netfilter(lab)


@pytest.fixture
def working(exposed):
    """The mapping answers before the test (an earlier test put back what it broke)."""
    assert exposed.reply(), "the mapping does not answer before the test"
    return exposed


def flow_of(report, mapping):
    [flow] = [flow for flow in report["flows"] if flow["mapping"] == mapping]
    return flow


def hop(flow, name):
    [found] = [item for item in flow["hops"] if item["hop"] == name]
    return found


def nothing_left(lab, run_id):
    """Neither the run's trace table on the master nor its directory (the lab hosts share this machine's /run)."""
    assert run_id and f"netns_expose_trace_{run_id}" not in sh(lab, "nft", "list", "tables")
    assert not Path("/run/netns-expose/explain", run_id).exists()


def test_a_working_mapping_is_explained_hop_by_hop_and_chain_by_chain(working, tmp_path):
    report, text = working.explain(tmp_path)
    assert {flow["mapping"] for flow in report["flows"]} == {"http-web-tcp-8090", "http-web-udp-8053", "http-web-icmp"}
    for flow in report["flows"]:
        assert flow["ok"] and flow["findings"] == [], flow
        assert [item["hop"] for item in flow["hops"]] == HOPS
        assert all(item["packets"]["request"] >= 2 and item["packets"]["reply"] >= 2 for item in flow["hops"]), flow["hops"]
        # The first packet crosses the nat chains, where the DNAT is decided; the later ones do not, nor the replies.
        chains = flow["chains"]
        assert any(step["type"] == "nat" for step in chains["request"]["first"]), chains
        assert chains["request"]["later"] and not any(step["type"] == "nat" for step in chains["request"]["later"]), chains
        assert not any(step["type"] == "nat" for step in chains["reply"]["first"] + chains["reply"]["later"]), chains
        assert any(step["type"] == "filter" and step["verdict"] == "accept" for step in chains["request"]["later"]), chains
        [entry] = flow["conntrack"]
        assert "DST_NAT" in entry["status"] and entry["reply"]["src"] == NS_IP and entry["original"]["dst"] == MASTER_IP
        assert flow["route"]["dev"] == "veth1b" and flow["return_route"]["gateway"] == "10.244.1.3"
        if working.backend == "nftables":  # the map element the first packet matched, counted
            assert any(element["set"].startswith("dnat_") and element["run_packets"] == 1 for element in flow["elements"]), flow
    web = flow_of(report, "http-web-tcp-8090")
    port = web["ends"]["client_port"]
    # The destination rewritten between eth0 and veth1b on the way in, the source restored on the way out.
    assert hop(web, "slave eth0")["request"] == f"tcp {SLAVE_IP}:{port} > {MASTER_IP}:8090 [S]"
    assert hop(web, "master eth0")["request"] == f"tcp {SLAVE_IP}:{port} > {MASTER_IP}:8090 [S]"
    assert hop(web, "master veth1b")["request"] == f"tcp {SLAVE_IP}:{port} > {NS_IP}:9090 [S]"
    assert hop(web, "ns1 veth1a")["reply"] == f"tcp {NS_IP}:9090 > {SLAVE_IP}:{port} [S.]"
    assert hop(web, "slave eth0")["reply"] == f"tcp {MASTER_IP}:8090 > {SLAVE_IP}:{port} [S.]"
    assert "Age" in web["answer"]
    icmp = flow_of(report, "http-web-icmp")
    assert hop(icmp, "master veth1b")["request"].startswith(f"icmp {SLAVE_IP} > {NS_IP} echo request id {icmp['ends']['client_port']}")
    # The ARP entries of each side.
    assert MASTER_IP in {entry["address"] for entry in report["slave"]["neighbours"]}
    assert {NS_IP, SLAVE_IP} <= {entry["address"] for entry in report["masters"][MASTER]["neighbours"]["master"]}
    assert "10.244.1.3" in {entry["address"] for entry in report["masters"][MASTER]["neighbours"]["ns1"]}
    # For people: a table per mapping; the pictures, SVG and PNG.
    assert "== master http-web-tcp-8090 (tcp): ok" in text and "request chains, first packet:" in text
    opens_in_a_browser(tmp_path, web)
    for flow in report["flows"]:
        svg = tmp_path / f"master-{flow['mapping']}.svg"
        assert ElementTree.parse(svg).getroot().tag.endswith("svg")
        check_picture((tmp_path / f"master-{flow['mapping']}.png").read_bytes(), svg_size(svg.read_text()), flow)
    nothing_left(working.lab, report["run_id"])


def opens_in_a_browser(directory, flow):
    """The flow's picture as explain.yml wrote it, in a headless Chromium: drawn, at its size, red only for findings."""
    svg = directory / f"{flow['master']}-{flow['mapping']}.svg"
    size = svg_size(svg.read_text())
    shots = directory / "browser"
    shots.mkdir()
    chromium(shots, f"--screenshot={shots / 'shot.png'}", f"--window-size={size[0]},{size[1]}", f"file://{svg}")
    check_picture((shots / "shot.png").read_bytes(), size, flow)


def the_finding(report, mapping):
    flow = flow_of(report, mapping)
    assert not flow["ok"] and flow["findings"], flow
    return flow["findings"][0]


def test_ip_forward_off(working, tmp_path):
    sh(working.lab, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    try:
        report, text = working.explain(tmp_path, expose_explain_mappings="8090")
    finally:
        sh(working.lab, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    finding = the_finding(report, "http-web-tcp-8090")
    assert finding["hop"] == "master eth0" and "ip_forward is 0 on master" in finding["cause"], finding
    assert "FINDING at master eth0: ip_forward is 0 on master" in text
    opens_in_a_browser(tmp_path, flow_of(report, "http-web-tcp-8090"))


def test_no_forwarding_accept_on_a_forward_drop_host(working, tmp_path):
    sh(working.lab, "iptables", "-F", "FORWARD")  # the backend's accept (or its jump) goes, the policy DROP stays
    try:
        report, _text = working.explain(tmp_path, expose_explain_mappings="8090")
    finally:
        working.converge()
    finding = the_finding(report, "http-web-tcp-8090")
    assert finding["hop"] == "master eth0", finding
    assert "ip filter FORWARD policy drop and no accept for this flow on master" in finding["cause"], finding


def test_no_default_route_in_the_namespace(working, tmp_path):
    sh(working.lab, "ip", "-n", "ns1", "route", "del", "default")
    try:
        report, _text = working.explain(tmp_path, expose_explain_mappings="8090")
    finally:
        sh(working.lab, "ip", "-n", "ns1", "route", "replace", "default", "via", "10.244.1.3")
    finding = the_finding(report, "http-web-tcp-8090")
    assert finding["hop"] == "ns1 veth1a" and f"ns1 has no route back to {SLAVE_IP} on master" in finding["cause"], finding


def stop_services(lab):
    # A process of ns1 may end between the listing and its kill (kill then fails): what counts is that none is left.
    deadline = time.monotonic() + 10
    while sh(lab, "ip", "netns", "pids", "ns1").split():
        assert time.monotonic() < deadline, "the processes of ns1 did not end"
        sh(lab, "sh", "-c", "ip netns pids ns1 | xargs -r kill", check=False)
        time.sleep(0.2)


def test_the_service_not_listening_and_verify_points_at_explain(working, tmp_path):
    stop_services(working.lab)
    try:
        report, _text = working.explain(tmp_path)
        verify = working.ansible.run_playbook(VERIFY, extra_vars={"expose_verify_retries": 0, "expose_verify_timeout": 1})
    finally:
        working.converge()
    tcp, udp = the_finding(report, "http-web-tcp-8090"), the_finding(report, "http-web-udp-8053")
    assert tcp["hop"] == "ns1 veth1a" and "nothing listens on tcp 9090 in ns1 on master" in tcp["cause"], tcp
    assert udp["hop"] == "ns1 veth1a" and "nothing listens on udp 53 in ns1 on master" in udp["cause"], udp
    assert flow_of(report, "http-web-icmp")["ok"]  # the namespace's kernel still answers pings
    messages = " ".join(str(message) for _name, message in failures(verify))
    assert "netns.expose.explain -e expose_explain_masters=master -e expose_explain_mappings=8090,8053" in messages, messages


def test_the_wrong_in_interface(working, tmp_path):
    wrong = {"expose_in_interface": "eth9", "expose_host_ip": MASTER_IP}
    sh(working.lab, "ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p")  # no dummy module here
    try:
        sh(working.lab, "ip", "addr", "add", "10.9.9.1/24", "dev", "eth9")
        working.converge(**wrong)
        report, _text = working.explain(tmp_path, expose_explain_mappings="8090", **wrong)
    finally:
        sh(working.lab, "ip", "link", "del", "eth9", check=False)
        working.converge()
    finding = the_finding(report, "http-web-tcp-8090")
    assert finding["hop"] == "master eth0", finding
    assert "matches in_interface eth9, but the request comes in on eth0 on master" in finding["cause"], finding


def test_the_veth_host_end_down(working, tmp_path):
    sh(working.lab, "ip", "link", "set", "veth1b", "down")
    try:
        report, _text = working.explain(tmp_path, expose_explain_mappings="8090")
    finally:
        sh(working.lab, "ip", "link", "set", "veth1b", "up")
    finding = the_finding(report, "http-web-tcp-8090")
    assert finding["hop"] == "master veth1b" and "veth1b is down on master" in finding["cause"], finding


def test_the_veth_namespace_end_down(working, tmp_path):
    sh(working.lab, "ip", "-n", "ns1", "link", "set", "veth1a", "down")
    try:
        report, _text = working.explain(tmp_path, expose_explain_mappings="8090")
    finally:
        # Down, the link lost its routes: the default route too.
        sh(working.lab, "ip", "-n", "ns1", "link", "set", "veth1a", "up")
        sh(working.lab, "ip", "-n", "ns1", "route", "replace", "default", "via", "10.244.1.3")
    finding = the_finding(report, "http-web-tcp-8090")
    assert finding["hop"] == "ns1 veth1a" and "veth1a is down in ns1 on master" in finding["cause"], finding


def test_a_stale_conntrack_entry(working, tmp_path, run_module):
    # A client's flow that started while the mapping was not there (the master answered port unreachable); the
    # mapping comes back without deleting the flows of its port, as a tool without flush_conntrack would.
    mapping = {**UDP_MAPPING, "backend": working.backend, "flush_conntrack": False}
    try:
        assert not run_module(MASTER, "netns.expose.dnat_rule", {**mapping, "state": "absent"})["failed"]
        assert ask_udp_from(working.lab, 40001) is None
        assert not run_module(MASTER, "netns.expose.dnat_rule", mapping)["failed"]
        assert ask_udp_from(working.lab, 40001) is None, "the flow was mapped: it is not stale"
        # That very flow, explained from its port: held by the entry without DNAT.
        own, _text = working.explain(tmp_path / "own", expose_explain_mappings="8053", expose_explain_first_port=40001)
        # Another client's flow works, and the report names the stale entry of the other one.
        assert ask_udp_from(working.lab, 40001) is None
        other, _text = working.explain(tmp_path / "other", expose_explain_mappings="8053")
    finally:
        working.converge()
    finding = the_finding(own, "http-web-udp-8053")
    assert finding["hop"] == "master eth0", finding
    assert "a conntrack entry from before the mapping holds the flow on master, without DNAT" in finding["cause"], finding
    flow = flow_of(other, "http-web-udp-8053")
    assert flow["ok"], flow
    [stale] = flow["findings"]
    assert stale["hop"] == "master eth0" and f"{SLAVE_IP}:40001" in stale["cause"], stale
    assert "conntrack -D -p udp --orig-port-dst 8053" in stale["cause"], stale


def test_a_client_outside_allowed_sources(working, tmp_path):
    # The tcp port open to the master itself only: the slave's flow is dropped at the master, as declared.
    inventory = yaml.safe_load((REPO / "tests" / "lab" / "inventory.yml").read_text())
    [service] = inventory["all"]["children"]["lab"]["children"]["masters"]["vars"]["expose_services"]
    listed = {"expose_services": [dict(service, ports=[dict(service["ports"][0], allowed_sources=[f"{MASTER_IP}/32"]),
                                                       *service["ports"][1:]])]}
    try:
        working.converge(**listed)
        report, text = working.explain(tmp_path, expose_explain_mappings="8090", **listed)
    finally:
        working.converge()
    flow = flow_of(report, "http-web-tcp-8090")
    assert flow["ok"] and flow["detail"].startswith("denied as declared"), flow
    [finding] = flow["findings"]
    assert finding == {"hop": "master eth0", "cause": f"source {SLAVE_IP} is not in http-web's allowed_sources, dropped "
                                                      "at master eth0 (denied as declared)"}, finding
    assert not hop(flow, "master veth1b")["request"], "the denied request went on toward ns1"
    assert f"FINDING at master eth0: source {SLAVE_IP} is not in http-web's allowed_sources" in text
