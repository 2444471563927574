"""module_utils/_watch.py without a kernel: the flows it is given, refused naming the field, and where it captures
(tests/integration/test_flow_observers.py runs flow_watch on the lab)."""
from __future__ import annotations

import pytest

from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput
from ansible_collections.netns.expose.plugins.module_utils._watch import (  # pylint: disable=protected-access
    _stale,
    capture_points,
    flows_from_params,
    remove_run_directory,
)

WEB = {"name": "web", "protocol": "tcp", "client": "10.211.55.123", "client_port": 41001, "address": "10.211.55.122",
       "port": 8090, "to_address": "10.244.1.2", "to_port": 9090, "in_interface": "eth0", "host_ifname": "veth1b",
       "netns": "ns1", "ns_ifname": "veth1a"}


def test_each_interface_is_captured_once_in_its_namespace():
    dns = {**WEB, "name": "dns", "protocol": "udp", "client_port": 41002, "port": 8053, "to_port": 53}
    db = {**WEB, "name": "db", "client_port": 41003, "port": 5432, "to_address": "10.244.2.2", "to_port": 5432,
          "host_ifname": "veth2b", "netns": "ns2", "ns_ifname": "veth2a"}
    assert capture_points(flows_from_params([WEB, dns, db]), {"10.211.55.123": "eth0"}) == [
        ("master eth0", "eth0", None), ("master veth1b", "veth1b", None), ("ns1 veth1a", "veth1a", "/run/netns/ns1"),
        ("master veth2b", "veth2b", None), ("ns2 veth2a", "veth2a", "/run/netns/ns2")]


@pytest.mark.parametrize("change, message", [
    ({"client": "10.211.55"}, r"flows\[0\]\.client: "),
    ({"client_port": 70000}, r"flows\[0\]\.client_port: 70000 is outside 1\.\.65535"),
    ({"in_interface": "eth0 x"}, r"flows\[0\]\.in_interface: "),
    ({"netns": "../x"}, r"flows\[0\]\.netns: "),
    ({"protocol": "sctp"}, r"flows\[0\]\.protocol: 'sctp' cannot be traced; tcp, udp or icmp"),
    ({"protocol": "icmp"}, r"flows\[0\]\.port: must not be set for icmp, which has no ports"),
    ({"port": None}, r"flows\[0\]\.port: is required"),
    ({"to_address": None}, r"flows\[0\]\.to_address: is required"),
])
def test_a_bad_flow_is_refused_naming_its_field(change, message):
    with pytest.raises(InvalidInput, match=message):
        flows_from_params([{**WEB, **change}])


def test_an_icmp_flow_is_an_echo_with_its_identifier_and_the_mappings_interface_is_optional():
    [watched] = flows_from_params([{**WEB, "protocol": "icmp", "port": None, "to_port": None, "in_interface": None}])
    assert (watched.flow.protocol, watched.flow.client_port, watched.flow.port, watched.to_port, watched.in_interface) == \
        ("icmp", 41001, None, None, None)


def test_the_stale_entries_of_a_mapping_are_other_clients_flows_that_miss_its_target():
    [web] = flows_from_params([WEB])

    def entry(sport, reply_src, reply_sport=9090, dport=8090, protocol="tcp"):
        return {"original": {"protocol": protocol, "src": "10.211.55.9", "dst": "10.211.55.122", "sport": sport, "dport": dport},
                "reply": {"protocol": protocol, "src": reply_src, "dst": "10.211.55.9", "sport": reply_sport, "dport": sport}}
    assert _stale(entry(5000, "10.211.55.122", 8090), web)  # from before the mapping: the master itself answered
    assert _stale(entry(5001, "10.244.9.9"), web)  # from before the mapping changed its target
    assert not _stale(entry(5002, "10.244.1.2"), web)  # DNAT-ed to the target
    assert not _stale(entry(5003, "10.211.55.122", 8091, dport=8091), web)  # another port
    assert not _stale(entry(5004, "10.211.55.122", protocol="udp"), web)  # another protocol
    own = entry(41001, "10.211.55.122", 8090)
    own["original"]["src"] = "10.211.55.123"
    assert not _stale(own, web)  # the probe's own flow is reported as its own


def test_each_flow_needs_its_own_client_port():
    with pytest.raises(InvalidInput, match="flows: two flows have one client_port"):
        flows_from_params([WEB, {**WEB, "name": "again"}])


def test_a_run_leaves_its_parents_only_to_another_run(tmp_path):
    runs = tmp_path / "netns-expose" / "explain"
    (runs / "r1").mkdir(parents=True)
    (runs / "r2").mkdir()
    remove_run_directory(str(runs / "r1"))
    assert sorted(path.name for path in runs.iterdir()) == ["r2"]  # r2's run goes on
    remove_run_directory(str(runs / "r2"))
    assert list(tmp_path.iterdir()) == []
