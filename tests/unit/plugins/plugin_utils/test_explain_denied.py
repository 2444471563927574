"""What explain.yml finds for a mapping with allowed_sources: a client its list leaves out is dropped at the master
as declared, or the list is not enforced; a client it lets in is explained as any other (plugin_utils/_explain.py).
The inputs are those of test_explain_findings.py, from a plan whose check carries the mapping's allowed_sources."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.netns.expose.plugins.plugin_utils._explain import flows, report, table

from test_explain_findings import (
    ENTRY,
    MASTER,
    PLAN,
    ROUTES,
    SLAVE,
    failed_probe,
    hops_until,
    packet,
    traced,
    working,
)

DENIED = "source 10.211.55.123 is not in web's allowed_sources"


def with_allowed(allowed):
    """The plan of test_explain_findings with the tcp mapping's check (the role's target) given `allowed`."""
    plan = copy.deepcopy(PLAN)
    plan["targets"][0]["allowed_sources"] = allowed
    return plan


def explained(allowed, stage=None):
    """The report's record of the tcp flow from the slave, its check carrying `allowed`, broken by `stage`."""
    _planned, seen, sent = working()
    planned = flows({"m1": with_allowed(allowed)}, ROUTES, first_port=41000, chosen="8090")
    assert planned["checks"][0]["allowed_sources"] == allowed, "the check carries the mapping's list"
    if stage is not None:
        stage(seen, sent)
    whole = report(planned, seen, sent, "s1", "r1")
    [flow] = whole["flows"]
    return flow, table(whole)


def dropped_at_arrival(seen, sent):
    """The request reaches the master's eth0, its first packet is dropped there, and nothing comes back."""
    failed_probe(sent)
    flow = seen["m1"]["flows"][0]
    flow["conntrack"] = []
    flow["chains"]["request"]["first"] = traced(("ip netns_expose prerouting", "vmap @sources_tcp_dst", "jump"),
                                                ("ip netns_expose src.web", "ip saddr != @src.web counter drop", "drop"))
    flow["chains"]["request"]["later"] = None
    hops_until(seen, "master eth0")


def denied(seen, sent):
    """A denial, as the probe reports it: nothing came back, as declared."""
    dropped_at_arrival(seen, sent)
    sent["results"][0].update(ok=True, denied=True, detail=f"denied as declared: source {SLAVE} is not in the "
                                                           "allowed_sources of web (timed out after 3 s)")


def test_a_client_outside_the_list_dropped_at_the_master_is_denied_as_declared():
    flow, text = explained(["10.211.55.128/25"], denied)
    assert flow["ok"]
    assert flow["findings"] == [{"hop": "master eth0", "cause": f"{DENIED}, dropped at master eth0 (denied as declared)"}]
    assert f"FINDING at master eth0: {DENIED}, dropped at master eth0 (denied as declared)" in text


def test_a_client_outside_the_list_whose_request_reached_the_namespace_finds_the_list_not_enforced():
    flow, _text = explained(["10.211.55.128/25"])
    [finding] = flow["findings"]
    assert finding["hop"] == "master veth1b"
    assert finding["cause"] == (f"{DENIED}, yet the request reached veth1b on m1: the list is not enforced (is mapping "
                                "web-tcp-8090 as declared? run the expose role again)")


def test_a_request_that_went_as_far_as_the_host_end_is_not_enforced_either():
    def stopped_at_host_end(seen, sent):
        failed_probe(sent)
        hops_until(seen, "master veth1b")

    flow, _text = explained(["10.211.55.128/25"], stopped_at_host_end)
    assert [finding["hop"] for finding in flow["findings"]] == ["master veth1b"]
    assert "the list is not enforced" in flow["findings"][0]["cause"]


@pytest.mark.parametrize("allowed", [None, ["10.211.55.0/24"], ["192.168.7.0/24", "10.211.55.123/32"]])
def test_a_client_the_list_lets_in_is_explained_as_any_other(allowed):
    flow, text = explained(allowed)
    assert flow["ok"] and flow["findings"] == [] and "FINDING" not in text
    # Dropped at the master all the same: a drop to explain, not a denial.
    flow, _text = explained(allowed, dropped_at_arrival)
    assert not flow["ok"]
    assert flow["findings"][0]["cause"].startswith("ip netns_expose src.web drop and no accept for this flow on m1")


def test_other_clients_stale_entries_are_named_with_the_denial():
    def denied_with_stale(seen, sent):
        denied(seen, sent)
        stale = copy.deepcopy(ENTRY)
        stale["original"].update(src="10.211.55.9", sport=40001)
        stale["reply"].update(src=MASTER, sport=8090, dst="10.211.55.9", dport=40001)
        stale["status"] = []
        seen["m1"]["flows"][0]["stale"] = [stale]

    flow, _text = explained(["10.211.55.128/25"], denied_with_stale)
    assert [finding["cause"].split(",")[0] for finding in flow["findings"]] == [
        DENIED, "1 conntrack entry of other clients' flows to 10.211.55.122:8090 on m1 does not reach 10.244.1.2 (from before "
                "the mapping"]


def test_each_flow_is_judged_by_the_list_of_its_own_check():
    """Two masters, one check each: the second master's list is the one its flow is judged by."""
    _planned, seen, sent = working()
    plans = {"m1": with_allowed(None), "m2": with_allowed(["10.211.55.128/25"])}
    planned = flows(plans, ROUTES, first_port=41000, chosen="8090")
    seen_m2 = copy.deepcopy(seen["m1"])
    seen_m2["flows"][0]["flow"]["client_port"] = 41001
    for item in seen_m2["flows"][0]["hops"]:
        item["packet"] = item["packet"].replace(":41000", ":41001")
    second = copy.deepcopy(sent["results"][0])
    second.update(source_port=41001, hops=[packet("slave eth0", f"tcp {SLAVE}:41001 > {MASTER}:8090 [S]", "out")])
    sent["results"].append(second)
    first, other = report(planned, {"m1": seen["m1"], "m2": seen_m2}, sent, "s1")["flows"]
    assert first["master"] == "m1" and first["findings"] == []
    assert other["master"] == "m2" and "the list is not enforced" in other["findings"][0]["cause"]


def test_a_denied_request_that_never_reached_the_master_is_not_called_dropped_there():
    def lost_on_the_way(seen, sent):
        denied(seen, sent)
        seen["m1"]["flows"][0]["hops"] = []  # the master's eth0 saw nothing of it

    flow, _text = explained(["10.211.55.128/25"], lost_on_the_way)
    assert flow["findings"][0]["cause"] == (f"the request did not reach m1: look at the network between the slave and "
                                            f"{MASTER}")
