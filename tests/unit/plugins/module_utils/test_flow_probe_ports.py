"""module_utils/_flow_probe.py without a network: each check's own source port, and the slave's interface toward
each address (tests/integration/test_explain.py runs flow_probe from the lab's slave)."""
from __future__ import annotations

import json

import pytest

from ansible_collections.netns.expose.plugins.module_utils._flow_probe import check_source_ports, interfaces_toward
from ansible_collections.netns.expose.plugins.module_utils._path import PathError
from ansible_collections.netns.expose.plugins.module_utils._probe import parse_checks
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput


def checks(*ports, address="10.211.55.122"):
    return parse_checks([{"target": "web", "address": address, "protocol": "icmp", **({"source_port": port} if port else {})}
                         for port in ports], 1.0, 0)


def test_each_check_needs_a_source_port_of_its_own():
    check_source_ports(checks(41000, 41001))
    with pytest.raises(InvalidInput, match=r"checks\[1\]\.source_port: is required: the flow is found by it"):
        check_source_ports(checks(41000, None))
    with pytest.raises(InvalidInput, match=r"checks\[2\]\.source_port: 41000 is also that of checks\[0\]"):
        check_source_ports(checks(41000, 41001, 41000))


def test_the_slave_captures_on_its_interface_toward_each_address():
    calls = []

    def run_command(argv):
        calls.append(argv)
        return 0, json.dumps([{"dst": argv[-1], "dev": "eth0", "prefsrc": "10.211.55.123"}]), ""
    toward = interfaces_toward(run_command, "ip", checks(1, 2) + checks(3, address="10.211.56.7"))
    assert toward == {"10.211.55.122": {"interface": "eth0", "client": "10.211.55.123"},
                      "10.211.56.7": {"interface": "eth0", "client": "10.211.55.123"}}
    assert calls == [["ip", "-j", "route", "get", "10.211.55.122"], ["ip", "-j", "route", "get", "10.211.56.7"]]
    with pytest.raises(PathError, match="route get 10.211.55.122: no interface toward it"):
        interfaces_toward(lambda argv: (0, json.dumps([{"type": "unreachable"}]), ""), "ip", checks(1))
