"""What rollout.yml works out between the tasks of a batch (plugin_utils/_rollout.py)."""
from __future__ import annotations

import pytest

from ansible_collections.netns.expose.plugins.plugin_utils._rollout import judge, report, restore, restored_checks

PAIR = {"netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b", "ns_address": "10.244.1.2/24",
        "host_address": "10.244.1.3/24"}
NAMES = {"netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b"}


def view(host_addresses=("10.244.1.3/24",), ns_addresses=("10.244.1.2/24",), gateway="10.244.1.3", present=True):
    if not present:
        return {"netns": {"name": "ns1", "present": False, "loopback_up": False}, "default_route": None,
                "host_end": {"ifname": "veth1b", "present": False}, "ns_end": {"ifname": "veth1a", "present": False}}
    return {"netns": {"name": "ns1", "present": True, "loopback_up": True}, "default_route": gateway,
            "host_end": {"ifname": "veth1b", "present": True, "netns": None, "addresses": list(host_addresses),
                         "up": True, "mtu": 1500},
            "ns_end": {"ifname": "veth1a", "present": True, "netns": "ns1", "addresses": list(ns_addresses),
                       "up": True, "mtu": 1500}}


def test_a_pair_the_change_makes_is_removed_by_the_rollback():
    assert restore({"ns1": view(present=False)}, [PAIR]) == {"present": [], "absent": [NAMES], "unrestorable": []}


def test_a_pair_that_was_there_goes_back_to_its_addresses_route_and_mtu():
    before = view(host_addresses=["10.244.9.3/24"], ns_addresses=["10.244.9.2/24"], gateway=None)
    assert restore({"ns1": before}, [PAIR]) == {
        "present": [{**NAMES, "host_address": "10.244.9.3/24", "ns_address": "10.244.9.2/24", "default_route": False,
                     "mtu": 1500}],
        "absent": [], "unrestorable": []}
    assert restore({"ns1": view()}, [PAIR])["present"][0]["default_route"] is True


@pytest.mark.parametrize("before", [
    view(host_addresses=["10.244.1.3/24", "10.244.1.4/24"]),
    view(gateway="10.244.1.9"),
    {**view(), "ns_end": {"ifname": "veth1a", "present": False}},
])
def test_what_a_pair_argument_cannot_say_is_left_as_the_change_made_it_and_said(before):
    restored = restore({"ns1": before}, [PAIR])
    assert restored["present"] == restored["absent"] == []
    assert restored["unrestorable"][0].startswith("pair veth1b <-> veth1a (netns ns1): before the batch")


def check(ok=True, **fields):
    return {"target": "web", "protocol": "tcp", "port": 8090, "ok": ok, "skipped": False,
            "detail": "HTTP 200" if ok else "connection refused", **fields}


PLANS = {"m1": {"targets": [{}, {}]}, "m2": {"targets": [{}]}}


def probe(slave, *oks):
    return {"item": slave, "results": [check(ok) for ok in oks]}


def test_a_failed_check_fails_its_master_and_a_batch_over_the_threshold_goes_back_whole():
    verdict = judge(["m1", "m2"], {"m1": {"applied": True}, "m2": {"applied": True}},
                    [probe("s1", True, True, False), probe("s2", True, True, True)], PLANS, 0)
    assert verdict["failed"] == ["m2"] and verdict["failed_batch"] and verdict["roll_back"] == ["m1", "m2"]
    assert verdict["problems"]["m2"] == [{"slave": "s1", "service": "web", "protocol": "tcp", "port": 8090,
                                          "what": "connection refused"}]


def test_the_threshold_must_be_exceeded_and_within_it_only_the_failed_masters_go_back():
    args = (["m1", "m2"], {"m1": {"applied": True}, "m2": {"applied": True}}, [probe("s1", True, True, False)], PLANS)
    at_threshold = judge(*args, 50)
    assert not at_threshold["failed_batch"] and at_threshold["roll_back"] == ["m2"]
    assert judge(*args, 49.9)["failed_batch"]


def test_a_master_the_role_failed_on_or_that_became_unreachable_fails():
    verdict = judge(["m1", "m2", "m3"], {"m1": {"applied": True}, "m2": {"applied": False, "error": "Publish: boom"}},
                    [probe("s1", True, True)], {"m1": PLANS["m1"]}, 100)
    assert verdict["problems"] == {"m2": [{"what": "the role failed: Publish: boom"}],
                                   "m3": [{"what": "unreachable during the batch"}]}
    assert not verdict["failed_batch"] and verdict["roll_back"] == ["m2"]  # m3 cannot be reached


def test_a_slave_that_is_down_is_left_out_and_cannot_fail_a_master():
    down = {"item": "s2", "unreachable": True, "msg": "the net namespace file does not exist"}
    verdict = judge(["m1", "m2"], {"m1": {"applied": True}, "m2": {"applied": True}},
                    [probe("s1", True, True, True), down], PLANS, 0)
    assert verdict["failed"] == [] and verdict["roll_back"] == [] and verdict["slaves_used"] == ["s1"]
    assert verdict["slaves_down"] == [{"slave": "s2", "why": "the net namespace file does not exist"}]
    alone = judge(["m1"], {"m1": {"applied": True}}, [down], {"m1": PLANS["m1"]}, 0)
    assert alone["unverified"] and not alone["failed_batch"] and alone["roll_back"] == []


def test_the_report_says_per_batch_what_failed_how_long_it_took_and_each_rollback():
    plans = {"m2": PLANS["m1"], "m3": PLANS["m2"]}
    failed = judge(["m2", "m3"], {"m2": {"applied": True}, "m3": {"applied": True}},
                   [probe("s1", True, True, False), {"item": "s2", "unreachable": True, "msg": "down"}], plans, 0)
    passed = judge(["m1"], {"m1": {"applied": True}}, [probe("s1", True, True)], {"m1": PLANS["m1"]}, 0)
    recheck = [{"item": "s1", "results": [check(target="m2: web-tcp-8090"), check(False, target="m3: web-tcp-8090")]}]
    text = report([{"verdict": passed, "seconds": 1.25},
                   {"verdict": failed, "seconds": 3.5, "rechecks": recheck,
                    "rollbacks": {"m2": {"ok": True, "unrestorable": []}, "m3": {"ok": False, "error": "Put back: boom"}}}])
    assert text.splitlines() == [
        "batch 1: passed, 1.2 s, masters m1",
        "batch 2: FAILED (1 of 2 masters), 3.5 s, masters m2, m3",
        "  master m3: tcp port 8090 (web) from slave s1: connection refused",
        "  slave s2 left out of the gate: down",
        "  master m2: rolled back, 1 checks of the mappings put back answered from the slaves",
        "  master m3: ROLLBACK FAILED: Put back: boom, 0 checks of the mappings put back answered from the slaves; "
        "web-tcp-8090 from slave s1: connection refused",
    ]


def test_the_mappings_put_back_are_checked_by_tcp_connection_and_echo_udp_left_out():
    rules = [{"name": "web", "protocol": "tcp", "port": 8090, "destination": "10.0.0.1"},
             {"name": "dns", "protocol": "udp", "port": 8053, "destination": "10.0.0.1"},
             {"name": "ping", "protocol": "icmp", "destination": "10.0.0.1"}]
    assert restored_checks({"m1": {"mappings": {"rules": rules}}, "m2": None}) == [
        {"target": "m1: web", "protocol": "tcp", "check": "tcp", "address": "10.0.0.1", "port": 8090},
        {"target": "m1: ping", "protocol": "icmp", "address": "10.0.0.1"}]
