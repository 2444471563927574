"""What explain.yml works out (plugin_utils/_explain.py), from what flow_probe and flow_watch return: the flows it
chooses, the report's hops and chains, and the finding for each broken stage of the path
(tests/integration/test_explain.py breaks each stage on the lab)."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput
from ansible_collections.netns.expose.plugins.plugin_utils._explain import chain_type, flows, report, table

SLAVE, MASTER, NS = "10.211.55.123", "10.211.55.122", "10.244.1.2"
PLAN = {
    "pairs": [{"netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b"}],
    "mappings": [
        {"name": "web-tcp-8090", "protocol": "tcp", "port": 8090, "to_address": NS, "to_port": 9090, "destination": MASTER},
        {"name": "web-udp-8053", "protocol": "udp", "port": 8053, "to_address": NS, "to_port": 53, "destination": MASTER},
        {"name": "web-icmp", "protocol": "icmp", "to_address": NS, "destination": MASTER},
    ],
    "targets": [
        {"target": "web", "protocol": "tcp", "address": MASTER, "port": 8090, "mapping": "web-tcp-8090", "netns": "ns1"},
        {"target": "web", "protocol": "udp", "address": MASTER, "port": 8053, "probe": "hi", "mapping": "web-udp-8053",
         "netns": "ns1"},
        {"target": "web", "protocol": "icmp", "address": MASTER, "mapping": "web-icmp", "netns": "ns1"},
    ],
}
ROUTES = {MASTER: {"dst": MASTER, "dev": "eth0", "prefsrc": SLAVE}}
BASE_CHAINS = {"ip nat PREROUTING": {"type": "nat", "hook": "prerouting"},
               "ip filter FORWARD": {"type": "filter", "hook": "forward"},
               "ip nat POSTROUTING": {"type": "nat", "hook": "postrouting"}}


def test_each_mapping_gets_a_flow_from_its_own_port_and_a_check_from_it():
    planned = flows({"m1": PLAN}, ROUTES, first_port=41000)
    assert [(flow["name"], flow["client"], flow["client_port"], flow["port"], flow["to_port"], flow["host_ifname"])
            for flow in planned["watch"]["m1"]] == [
        ("web-tcp-8090", SLAVE, 41000, 8090, 9090, "veth1b"), ("web-udp-8053", SLAVE, 41001, 8053, 53, "veth1b"),
        ("web-icmp", SLAVE, 41002, None, None, "veth1b")]
    assert planned["checks"][1] == {"target": "web", "protocol": "udp", "address": MASTER, "port": 8053, "probe": "hi",
                                    "source_port": 41001}


@pytest.mark.parametrize("chosen, names", [
    ("8090", ["web-tcp-8090"]), ("icmp,8053", ["web-udp-8053", "web-icmp"]), (["web-icmp"], ["web-icmp"]),
    ("web", ["web-tcp-8090", "web-udp-8053", "web-icmp"]), ("", ["web-tcp-8090", "web-udp-8053", "web-icmp"]),
])
def test_the_mappings_are_chosen_by_port_name_service_or_protocol(chosen, names):
    assert [flow["name"] for flow in flows({"m1": PLAN}, ROUTES, chosen=chosen)["watch"]["m1"]] == names


@pytest.mark.parametrize("kwargs, message", [
    ({"chosen": "8091"}, "expose_explain_mappings: 8091 is no mapping, service, port or protocol of the masters"),
    ({"first_port": 0}, "expose_explain_first_port: 0 is not a port from 1 to 65535"),
    ({"first_port": 65534}, "expose_explain_first_port: 65534 leaves too few ports"),
    ({"first_port": "x"}, "expose_explain_first_port: 'x' is not a port"),
    ({"first_port": True}, "expose_explain_first_port: True is not a port"),
    ({"chosen": 8090}, "expose_explain_mappings: must be a list or a comma-separated text"),
])
def test_a_bad_choice_is_refused_naming_it(kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        flows({"m1": PLAN}, ROUTES, **kwargs)


def test_a_first_port_given_as_text_on_the_command_line_is_taken():
    assert flows({"m1": PLAN}, ROUTES, first_port="40001", chosen="8090")["checks"][0]["source_port"] == 40001


def test_a_slave_without_a_route_to_the_master_is_named():
    with pytest.raises(InvalidInput, match="master m1: the slave has no route with a source address toward 10.211.55.122"):
        flows({"m1": PLAN}, {})


def test_a_chain_is_a_nat_chain_by_its_own_type_or_by_its_tables():
    chains = {**BASE_CHAINS, "ip mixed in": {"type": "nat", "hook": "input"}, "ip mixed fwd": {"type": "filter", "hook": "forward"}}
    assert chain_type("ip nat PREROUTING", chains) == "nat"
    assert chain_type("ip nat NETNS-EXPOSE-DNAT", chains) == "nat"  # a jump target in iptables' nat table
    assert chain_type("ip mixed regular", chains) is None  # a table with both: unknown
    assert chain_type("ip other x", chains) is None


def packet(hop, text, direction="in"):
    return {"hop": hop, "direction": direction, "seconds": 0.0, "packet": text}


REQUEST_IN, REQUEST_NAT = f"tcp {SLAVE}:41000 > {MASTER}:8090 [S]", f"tcp {SLAVE}:41000 > {NS}:9090 [S]"
REPLY_NAT, REPLY_OUT = f"tcp {NS}:9090 > {SLAVE}:41000 [S.]", f"tcp {MASTER}:8090 > {SLAVE}:41000 [S.]"
ENTRY = {"original": {"protocol": "tcp", "src": SLAVE, "dst": MASTER, "sport": 41000, "dport": 8090},
         "reply": {"protocol": "tcp", "src": NS, "dst": SLAVE, "sport": 9090, "dport": 41000},
         "status": ["SEEN_REPLY", "ASSURED", "DST_NAT"], "tcp_state": "TIME_WAIT", "mark": 0, "timeout": 120}


def traced(*chains):
    return {"fields": {}, "chains": [{"chain": chain, "rules": [[rule, verdict]] if rule else [], "verdict": verdict,
                                      "fields": {}} for chain, rule, verdict in chains]}


def working():
    """(planned, seen, sent) of the tcp mapping, working: what flow_watch and flow_probe return for it."""
    planned = flows({"m1": PLAN}, ROUTES, first_port=41000, chosen="8090")
    first = traced(("ip nat PREROUTING", "tcp dport 8090 dnat to 10.244.1.2:9090", "accept"),
                   ("ip filter FORWARD", "ct status dnat accept", "accept"), ("ip nat POSTROUTING", None, "policy accept"))
    later = traced(("ip filter FORWARD", "ct status dnat accept", "accept"))
    seen_flow = {
        "name": "web-tcp-8090", "flow": {**planned["watch"]["m1"][0], "in_interface": None}, "arrival": "eth0",
        "hops": [packet("master eth0", REQUEST_IN), packet("master veth1b", REQUEST_NAT, "out"),
                 packet("ns1 veth1a", REQUEST_NAT), packet("ns1 veth1a", REPLY_NAT, "out"), packet("master veth1b", REPLY_NAT),
                 packet("master eth0", REPLY_OUT, "out")],
        "chains": {"request": {"first": first, "later": later, "count": 5,
                               "hits": {"ip nat PREROUTING": 1, "ip filter FORWARD": 5, "ip nat POSTROUTING": 1}},
                   "reply": {"first": later, "later": later, "count": 4, "hits": {"ip filter FORWARD": 4}}},
        "conntrack": [copy.deepcopy(ENTRY)], "conntrack_before": [], "stale": [], "elements": [],
        "route": {"dev": "veth1b"}, "return_route": {"dev": "veth1a", "gateway": "10.244.1.3"},
        "links": {"veth1b": {"operstate": "UP", "up": True}, "veth1a": {"operstate": "UP", "up": True}},
    }
    seen = {"m1": {"finished": True, "flows": [seen_flow], "ip_forward": 1, "base_chains": BASE_CHAINS,
                   "neighbours": {"master": [{"address": SLAVE, "dev": "eth0", "mac": "02:00:00:00:00:01", "state": "REACHABLE"}],
                                  "ns1": []}}}
    sent = {"results": [{"target": "web", "protocol": "tcp", "port": 8090, "ok": True, "detail": "HTTP 200",
                         "body": "{}", "interface": "eth0", "client": SLAVE, "source_port": 41000,
                         "hops": [packet("slave eth0", REQUEST_IN, "out"), packet("slave eth0", REPLY_OUT)]}],
            "neighbours": [{"address": MASTER, "dev": "eth0", "mac": "02:00:00:00:00:02", "state": "REACHABLE"}]}
    return planned, seen, sent


def explained(planned, seen, sent):
    [flow] = report(planned, seen, sent, "s1", "r1")["flows"]
    return flow


def test_a_working_flow_is_reported_hop_by_hop_with_its_chains_and_no_finding():
    whole = report(*working(), "s1", "r1")
    [flow] = whole["flows"]
    assert flow["findings"] == [] and flow["ok"]
    assert [(hop["hop"], hop["request"], hop["reply"]) for hop in flow["hops"]] == [
        ("slave eth0", REQUEST_IN, REPLY_OUT), ("master eth0", REQUEST_IN, REPLY_OUT),
        ("master veth1b", REQUEST_NAT, REPLY_NAT), ("ns1 veth1a", REQUEST_NAT, REPLY_NAT)]
    assert [(step["chain"], step["type"], step["verdict"], step["rule"]) for step in flow["chains"]["request"]["first"]] == [
        ("ip nat PREROUTING", "nat", "accept", "tcp dport 8090 dnat to 10.244.1.2:9090"),
        ("ip filter FORWARD", "filter", "accept", "ct status dnat accept"),
        ("ip nat POSTROUTING", "nat", "policy accept", None)]
    text = table(whole)
    assert "== m1 web-tcp-8090 (tcp): ok, HTTP 200" in text
    assert ("request chains, first packet:  ip nat PREROUTING [nat] (accept) -> ip filter FORWARD [filter] (accept) -> "
            "ip nat POSTROUTING [nat] (policy accept)") in text
    assert "request chains, later packets: ip filter FORWARD [filter] (accept)" in text
    assert f"conntrack: tcp {SLAVE}:41000 > {MASTER}:8090  reply tcp {NS}:9090 > {SLAVE}:41000  [SEEN_REPLY ASSURED DST_NAT] TIME_WAIT" in text
    assert f"s1 (the slave): {MASTER} 02:00:00:00:00:02 eth0 REACHABLE" in text
    assert "FINDING" not in text


def hops_until(seen, last):
    """The master's packets only up to the capture point `last` (the request), nothing back."""
    order = ["master eth0", "master veth1b", "ns1 veth1a"]
    flow = seen["m1"]["flows"][0]
    flow["hops"] = [item for item in flow["hops"] if _source_is_client(item)
                    and order.index(item["hop"]) <= order.index(last)]


def _source_is_client(item):
    return item["packet"].split()[1].startswith(SLAVE)


def failed_probe(sent, detail="timed out after 3 s"):
    result = sent["results"][0]
    result.update(ok=False, detail=detail)
    result["hops"] = result["hops"][:1]


def ip_forward_off(_planned, seen, _sent):
    seen["m1"]["ip_forward"] = 0
    seen["m1"]["flows"][0]["route"] = {"error": "route get 10.244.1.2 from 10.211.55.123 iif eth0: RTNETLINK answers: Invalid cross-device link"}
    hops_until(seen, "master eth0")


def forward_drop(_planned, seen, _sent):
    chains = seen["m1"]["flows"][0]["chains"]["request"]
    chains["first"] = traced(("ip nat PREROUTING", "dnat to 10.244.1.2:9090", "accept"), ("ip filter FORWARD", None, "policy drop"))
    chains["later"] = None
    hops_until(seen, "master eth0")


def no_default_route(_planned, seen, _sent):
    seen["m1"]["flows"][0]["return_route"] = {"error": "route get 10.211.55.123 from 10.244.1.2: RTNETLINK answers: Network is unreachable"}
    hops_until(seen, "ns1 veth1a")


def not_listening(_planned, seen, sent):
    hops = seen["m1"]["flows"][0]["hops"]
    hops[:] = [item for item in hops if _source_is_client(item)] + [packet("ns1 veth1a", f"tcp {NS}:9090 > {SLAVE}:41000 [R.]", "out")]
    sent["results"][0]["detail"] = "connection refused"


def wrong_in_interface(_planned, seen, _sent):
    flow = seen["m1"]["flows"][0]
    flow["flow"]["in_interface"] = "eth1"
    flow["conntrack"][0]["reply"].update(src=MASTER, sport=8090)
    flow["conntrack"][0]["status"] = []
    hops_until(seen, "master eth0")


def veth_down(_planned, seen, _sent):
    seen["m1"]["flows"][0]["links"]["veth1b"] = {"operstate": "DOWN", "up": False}
    seen["m1"]["flows"][0]["route"] = {"error": "route get 10.244.1.2: RTNETLINK answers: Network is unreachable"}
    hops_until(seen, "master eth0")


def namespace_end_down(_planned, seen, _sent):
    seen["m1"]["flows"][0]["links"]["veth1a"] = {"operstate": "DOWN", "up": False}
    hops_until(seen, "master eth0")


def stale_own(_planned, seen, _sent):
    flow = seen["m1"]["flows"][0]
    flow["conntrack"][0]["reply"].update(src=MASTER, sport=8090)
    flow["conntrack"][0]["status"] = []
    flow["conntrack_before"] = copy.deepcopy(flow["conntrack"])
    hops_until(seen, "master eth0")


def mapping_missing(_planned, seen, _sent):
    flow = seen["m1"]["flows"][0]
    flow["conntrack"][0]["reply"].update(src=MASTER, sport=8090)
    flow["conntrack"][0]["status"] = []
    hops_until(seen, "master eth0")


@pytest.mark.parametrize("stage, where, cause", [
    (ip_forward_off, "master eth0", "ip_forward is 0 on m1: the DNAT-ed request is not forwarded"),
    (forward_drop, "master eth0", "ip filter FORWARD policy drop and no accept for this flow on m1"),
    (no_default_route, "ns1 veth1a", "ns1 has no route back to 10.211.55.123 on m1: route get 10.211.55.123 from 10.244.1.2: "
                                     "RTNETLINK answers: Network is unreachable (no default route via the host end veth1b?)"),
    (not_listening, "ns1 veth1a", "nothing listens on tcp 9090 in ns1 on m1: it answered 'tcp 10.244.1.2:9090 > "),
    (wrong_in_interface, "master eth0", "the mapping web-tcp-8090 matches in_interface eth1, but the request comes in on eth0 on "
                                        "m1: nothing DNAT-s it"),
    (veth_down, "master veth1b", "veth1b is down on m1: the DNAT-ed request cannot leave toward ns1"),
    (namespace_end_down, "ns1 veth1a", "veth1a is down in ns1 on m1: the pair carries nothing (ip -n ns1 link set veth1a up)"),
    (stale_own, "master eth0", "a conntrack entry from before the mapping holds the flow on m1, without DNAT: "
                               "tcp 10.211.55.123:41000 > 10.211.55.122:8090  reply tcp 10.211.55.122:8090 >"),
    (mapping_missing, "master eth0", "m1 did not DNAT the request to 10.244.1.2: is the mapping web-tcp-8090 there?"),
])
def test_a_broken_stage_is_named_by_its_hop_and_likely_cause(stage, where, cause):
    planned, seen, sent = working()
    failed_probe(sent)
    stage(planned, seen, sent)
    flow = explained(planned, seen, sent)
    assert not flow["ok"]
    assert flow["findings"][0]["hop"] == where, flow["findings"]
    assert cause in flow["findings"][0]["cause"], flow["findings"]
    assert f"FINDING at {where}: {cause}" in table(report(planned, seen, sent, "s1"))


def test_other_clients_stale_entries_are_named_even_when_the_probe_works():
    planned, seen, sent = working()
    stale = copy.deepcopy(ENTRY)
    stale["original"].update(src="10.211.55.9", sport=40001)
    stale["reply"].update(src=MASTER, sport=8090, dst="10.211.55.9", dport=40001)
    stale["status"] = []
    seen["m1"]["flows"][0]["stale"] = [stale]
    flow = explained(planned, seen, sent)
    assert flow["ok"]
    [finding] = flow["findings"]
    assert finding["hop"] == "master eth0"
    assert "1 conntrack entry of other clients' flows to 10.211.55.122:8090 on m1 does not reach 10.244.1.2" in finding["cause"]
    assert finding["cause"].endswith("conntrack -D -p tcp --orig-port-dst 8090")


def test_a_master_whose_watch_failed_is_named_for_its_flows():
    planned, _seen, sent = working()
    failed_probe(sent)
    flow = explained(planned, {"m1": {"failed": True, "msg": "flow_watch needs nft"}}, sent)
    assert flow["findings"] == [{"hop": "master m1", "cause": "the master's watch failed: flow_watch needs nft"}]
    assert "FINDING at master m1" in table(report(planned, {"m1": {"failed": True, "msg": "x"}}, sent, "s1"))
