"""module_utils/_path.py without a kernel: the argv it runs and what it reads of ip's JSON
(tests/integration/test_flow_observers.py reads a lab master's)."""
from __future__ import annotations

import json

import pytest

from ansible_collections.netns.expose.plugins.module_utils._path import PathError, link_state, neighbours, route_of


def replying(rc, payload, err=""):
    calls = []

    def run_command(argv):
        calls.append(argv)
        return rc, payload if isinstance(payload, str) else json.dumps(payload), err
    return run_command, calls


def test_the_route_is_asked_as_forwarding_asks_it():
    run_command, calls = replying(0, [{"dst": "10.244.1.2", "from": "10.211.55.123", "iif": "eth0", "dev": "veth1b",
                                       "prefsrc": "10.244.1.3", "flags": [], "uid": 0, "cache": ["iif"]}])
    assert route_of(run_command, "ip", "10.244.1.2", "10.211.55.123", "eth0") == {"dev": "veth1b", "prefsrc": "10.244.1.3"}
    assert calls == [["ip", "-j", "route", "get", "10.244.1.2", "from", "10.211.55.123", "iif", "eth0"]]


def test_the_kernels_refusal_is_the_error():
    run_command, _calls = replying(2, "", "RTNETLINK answers: Invalid cross-device link\n")
    with pytest.raises(PathError, match="^route get 10.244.1.2 from 10.211.55.123 iif eth0: RTNETLINK answers: Invalid"):
        route_of(run_command, "ip", "10.244.1.2", "10.211.55.123", "eth0")


def test_neighbours_of_a_namespace_with_their_state():
    run_command, calls = replying(0, [{"dst": "10.244.1.3", "dev": "veth1a", "lladdr": "6e:1f:3a:00:11:22",
                                       "state": ["REACHABLE"]}, {"dst": "10.244.1.9", "dev": "veth1a",
                                                                 "state": ["FAILED"]}])
    assert neighbours(run_command, "ip", netns="ns1") == [
        {"address": "10.244.1.3", "dev": "veth1a", "mac": "6e:1f:3a:00:11:22", "state": "REACHABLE"},
        {"address": "10.244.1.9", "dev": "veth1a", "mac": None, "state": "FAILED"}]
    assert calls == [["ip", "-n", "ns1", "-j", "-4", "neigh", "show"]]
    with pytest.raises(PathError, match="is not JSON"):
        neighbours(replying(0, "garbage")[0], "ip")


def test_the_route_back_is_asked_in_the_namespace_as_it_sends():
    run_command, calls = replying(0, [{"dst": "10.211.55.123", "gateway": "10.244.1.3", "dev": "veth1a", "prefsrc": "10.244.1.2"}])
    assert route_of(run_command, "ip", "10.211.55.123", "10.244.1.2", netns="ns1")["gateway"] == "10.244.1.3"
    assert route_of(run_command, "ip", "10.211.55.122")["dev"] == "veth1a"
    assert calls == [["ip", "-n", "ns1", "-j", "route", "get", "10.211.55.123", "from", "10.244.1.2"],
                     ["ip", "-j", "route", "get", "10.211.55.122"]]
    with pytest.raises(PathError, match="route get 10.211.55.123 from 10.244.1.2: RTNETLINK answers: Network is unreachable"):
        route_of(replying(2, "", "RTNETLINK answers: Network is unreachable")[0], "ip", "10.211.55.123", "10.244.1.2", netns="ns1")


def test_a_link_is_up_by_its_flag_whatever_its_carrier():
    run_command, calls = replying(0, [{"ifname": "veth1a", "flags": ["NO-CARRIER", "BROADCAST", "UP"], "operstate": "LOWERLAYERDOWN"}])
    assert link_state(run_command, "ip", "veth1a", netns="ns1") == {"operstate": "LOWERLAYERDOWN", "up": True}
    assert calls == [["ip", "-n", "ns1", "-j", "link", "show", "dev", "veth1a"]]
    assert link_state(replying(0, [{"flags": ["BROADCAST"], "operstate": "DOWN"}])[0], "ip", "veth1b") == {"operstate": "DOWN", "up": False}
    with pytest.raises(PathError, match='link show dev veth9: Device "veth9" does not exist'):
        link_state(replying(1, "", 'Device "veth9" does not exist.')[0], "ip", "veth9")
