"""The role's services: their fields, the modules' checks under the role's names, checks across services,
the batched module arguments, and the warning about unknown expose_ variables."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput
from ansible_collections.netns.expose.plugins.module_utils._services import services_plan, unknown_variables

# Network facts as ansible.builtin.setup (gather_subset network) reports a lab master.
FACTS = {
    "interfaces": ["lo", "eth0", "eth1", "eth2", "veth1b"],
    "default_ipv4": {"interface": "eth0", "address": "10.211.55.122"},
    "lo": {"ipv4": {"address": "127.0.0.1", "netmask": "255.0.0.0"}},
    "eth0": {"ipv4": {"address": "10.211.55.122", "netmask": "255.255.255.0"},
             "ipv4_secondaries": [{"address": "192.168.7.1", "netmask": "255.255.255.0"}]},
    "eth1": {"ipv4": {"address": "172.16.0.5", "netmask": "255.255.0.0"}},
    "eth2": {"ipv4_secondaries": []},  # up, without an IPv4 address
    # The service's own host end, after a first run: not a LAN it could overlap.
    "veth1b": {"ipv4": {"address": "10.244.1.3", "netmask": "255.255.255.0"}},
}
WEB = {
    "name": "http-web", "netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b", "demo": True,
    "ns_address": "10.244.1.2/24", "host_address": "10.244.1.3/24",
    "ports": [
        {"protocol": "tcp", "host_port": 8090, "ns_port": 9090, "expect": "hello world"},
        {"protocol": "udp", "host_port": 8053, "ns_port": 53, "probe": "hi", "expect": "hello"},
        {"protocol": "icmp"},
    ],
}
DB = {
    "name": "db", "netns": "ns2", "ns_ifname": "veth2a", "host_ifname": "veth2b",
    "ns_address": "10.244.2.2/24", "host_address": "10.244.2.3/24",
    "ports": [{"protocol": "tcp", "host_port": 5432}],
    "in_interface": "eth1",
}


def plan(services, **kwargs):
    kwargs.setdefault("facts", FACTS)
    return services_plan(copy.deepcopy(services), **kwargs)


def with_changes(service, **changes):
    return {**copy.deepcopy(service), **changes}


def test_services_become_one_batch_of_pairs_and_one_of_mappings():
    result = plan([WEB, DB])
    assert result["pairs"] == [
        {"netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b",
         "ns_address": "10.244.1.2/24", "host_address": "10.244.1.3/24"},
        {"netns": "ns2", "ns_ifname": "veth2a", "host_ifname": "veth2b",
         "ns_address": "10.244.2.2/24", "host_address": "10.244.2.3/24"},
    ]
    # Without in_interface a mapping takes traffic to the host address from any interface, and the
    # host's own connections (local); host_ip is the primary address of the default route's interface.
    assert result["mappings"] == [
        {"name": "http-web-tcp-8090", "protocol": "tcp", "port": 8090, "to_address": "10.244.1.2", "to_port": 9090,
         "destination": "10.211.55.122", "local": True},
        {"name": "http-web-udp-8053", "protocol": "udp", "port": 8053, "to_address": "10.244.1.2", "to_port": 53,
         "destination": "10.211.55.122", "local": True},
        {"name": "http-web-icmp", "protocol": "icmp", "to_address": "10.244.1.2",
         "destination": "10.211.55.122", "local": True},
        # in_interface of the service; host_ip is that interface's primary address; ns_port defaults to host_port.
        {"name": "db-tcp-5432", "protocol": "tcp", "port": 5432, "to_address": "10.244.2.2", "to_port": 5432,
         "destination": "172.16.0.5", "in_interface": "eth1", "local": True},
    ]
    assert result["targets"][0] == {"target": "http-web", "protocol": "tcp", "address": "10.211.55.122", "port": 8090,
                                    "expect": "hello world", "mapping": "http-web-tcp-8090", "netns": "ns1"}
    assert result["targets"][2] == {"target": "http-web", "protocol": "icmp", "address": "10.211.55.122",
                                    "mapping": "http-web-icmp", "netns": "ns1"}
    assert result["hairpin_sources"] == ["10.244.1.0/24", "10.244.2.0/24"]
    # Only the services that ask for it get the demo service.
    assert result["demo"] == [{"name": "http-web", "netns": "ns1", "tcp_ports": [9090], "udp_ports": [53]}]


def test_role_defaults_apply_where_a_service_sets_nothing():
    result = plan([WEB], in_interface="eth1", host_ip="172.16.0.9", local=False)
    assert {(m["in_interface"], m["destination"], m["local"]) for m in result["mappings"]} == {("eth1", "172.16.0.9", False)}
    # host_ip defaults to the primary address of the role's interface.
    result = plan([WEB], in_interface="eth1")
    assert {m["destination"] for m in result["mappings"]} == {"172.16.0.5"}


def test_values_from_the_command_line_get_their_types():
    # -e key=value gives strings: the fields convert them as Ansible's own options do.
    service = with_changes(WEB, demo="no", ports=[{"protocol": "tcp", "host_port": "8090", "ns_port": "9090", "status": "204",
                                                   "check": "http", "path": "/health"}])
    result = plan([service], local="false")
    assert result["demo"] == []
    assert result["mappings"][0]["to_port"] == 9090 and result["mappings"][0]["local"] is False
    assert result["targets"][0]["status"] == 204 and result["targets"][0]["path"] == "/health"


def test_services_sharing_a_netns_with_the_same_pair_make_one_pair():
    other = with_changes(WEB, name="admin", ports=[{"protocol": "tcp", "host_port": 8091, "ns_port": 9091}])
    result = plan([WEB, other])
    assert len(result["pairs"]) == 1
    assert [m["name"] for m in result["mappings"]][-1] == "admin-tcp-8091"


def test_absent_needs_no_facts_and_names_what_to_remove():
    result = services_plan([WEB], state="absent", facts={})
    assert [m["name"] for m in result["mappings"]] == ["http-web-tcp-8090", "http-web-udp-8053", "http-web-icmp"]
    assert "destination" not in result["mappings"][0]
    assert result["pairs"][0]["netns"] == "ns1"


def test_string_ports_from_inventories_are_numbers():
    service = with_changes(WEB, ports=[{"protocol": "tcp", "host_port": "8090", "ns_port": "9090"}])
    assert plan([service])["mappings"][0]["to_port"] == 9090


def test_check_types_of_the_verification_reach_the_targets():
    service = with_changes(WEB, ports=[{"protocol": "tcp", "host_port": 22, "check": "tcp", "expect": "SSH-2.0"}])
    assert plan([service])["targets"][0]["check"] == "tcp"


@pytest.mark.parametrize("names, warned", [
    (["expose_service", "expose_services", "expose_exclusive"], [("expose_service", "expose_services")]),
    (["expose_in_interfaces", "expose_zzz", "expose_verify_timeout", "expose_plan"],
     [("expose_in_interfaces", "expose_in_interface"), ("expose_zzz", None)]),
    (["not_expose_service"], []),
])
def test_unknown_expose_variables_are_named_with_the_closest_known_one(names, warned):
    assert unknown_variables(names) == warned


@pytest.mark.parametrize("services, field, problem", [
    ([WEB, with_changes(DB, ports=[{"protocol": "udp", "host_port": 8053}], in_interface=None)],
     "expose_services[1] (db).ports[0].host_port",
     "udp port 8053 to 10.211.55.122 is also mapped by expose_services[0] (http-web).ports[1] ('http-web-udp-8053')"),
    ([WEB, with_changes(DB, ports=[{"protocol": "icmp"}], in_interface=None)],
     "expose_services[1] (db).ports[0].host_port",
     "icmp to 10.211.55.122 is also mapped by expose_services[0] (http-web).ports[2] ('http-web-icmp')"),
    ([WEB, with_changes(DB, netns="ns1")],
     "expose_services[1] (db).netns", "'ns1' already holds the pair of expose_services[0] (http-web) (ns_ifname 'veth1a')"),
    ([WEB, with_changes(DB, host_ifname="veth1b")],
     "expose_services[1] (db).host_ifname", "'veth1b' is also the host_ifname of expose_services[0] (http-web)"),
    ([WEB, with_changes(DB, ns_address="10.244.0.2/16", host_address="10.244.0.3/16")],
     "expose_services[1] (db).ns_address", "subnet 10.244.0.0/16 overlaps 10.244.1.0/24, the subnet of expose_services[0] (http-web)"),
    ([with_changes(WEB, ns_address="10.211.55.200/24", host_address="10.211.55.201/24")],
     "expose_services[0] (http-web).ns_address", "10.211.55.0/24 overlaps 10.211.55.0/24 of the host's interface eth0"),
    ([with_changes(WEB, ns_address="192.168.7.10/24", host_address="192.168.7.11/24")],
     "expose_services[0] (http-web).ns_address", "overlaps 192.168.7.0/24 of the host's interface eth0"),
    ([WEB, with_changes(DB, name="http-web")], "expose_services[1] (http-web).name", "is also the name of expose_services[0]"),
    ([with_changes(WEB, name="bad name")], "expose_services[0] (bad name).ports[0].name", "is not a valid mapping name"),
    ([with_changes(WEB, name="-x")], "expose_services[0] (-x).ports[0].name", "is not a valid mapping name"),
    ([with_changes(WEB, netns=None)], "expose_services[0] (http-web).netns", "is required"),
    ([with_changes(WEB, ports=[{"protocol": "tcp", "host_prot": 80}])], "expose_services[0] (http-web).ports[0].host_prot",
     "unknown option; did you mean host_port?"),
    ([with_changes(WEB, nets="ns1")], "expose_services[0] (http-web).nets", "unknown option; did you mean netns?"),
    ([with_changes(WEB, demo="maybe")], "expose_services[0] (http-web).demo", "'maybe' is not a boolean"),
    ([with_changes(WEB, ports=[{"host_port": "eighty"}])], "expose_services[0] (http-web).ports[0].host_port",
     "'eighty' is not an integer"),
    ([with_changes(WEB, ports={"host_port": 80})], "expose_services[0] (http-web).ports", "must be a list, not dict"),
    (["http-web"], "expose_services[0]", "must be a dictionary, not str"),
    ([with_changes(WEB, ports=[{"protocol": "udp", "host_port": 53, "check": "http"}])],
     "expose_services[0] (http-web).ports[0].check", "http does not go with protocol udp"),
    ([with_changes(WEB, host_ifname="a-very-long-interface")], "expose_services[0] (http-web).host_ifname", "at most 15"),
    ([with_changes(WEB, ns_address="10.244.1.2")], "expose_services[0] (http-web).ns_address", "not in CIDR notation"),
    ([with_changes(WEB, host_address="10.244.9.3/24")], "expose_services[0] (http-web).host_address", "not in the subnet"),
    ([with_changes(WEB, ports=[{"protocol": "tcp", "host_port": 0}])], "expose_services[0] (http-web).ports[0].host_port",
     "0 is outside 1..65535"),
    ([with_changes(WEB, ports=[{"protocol": "tcp", "host_port": 80, "ns_port": 70000}])],
     "expose_services[0] (http-web).ports[0].ns_port", "70000 is outside"),
    ([with_changes(WEB, ports=[{"protocol": "udp"}])], "expose_services[0] (http-web).ports[0].host_port", "is required"),
    ([with_changes(WEB, ports=[{"protocol": "icmp", "host_port": 1}])], "expose_services[0] (http-web).ports[0].host_port",
     "icmp mappings take no ports"),
    ([with_changes(WEB, ports=[{"protocol": "tcp", "host_port": 80, "probe": "x"}])],
     "expose_services[0] (http-web).ports[0].probe", "http checks take no probe"),
    ([with_changes(WEB, ports=[{"protocol": "udp", "host_port": 53, "expect": "x"}])],
     "expose_services[0] (http-web).ports[0].probe", "is required with expect"),
    ([with_changes(WEB, ports=[{"protocol": "sctp", "host_port": 80}])], "expose_services[0] (http-web).ports[0].protocol",
     "'sctp' is not one of tcp, udp, icmp"),
    ([with_changes(WEB, host_ip="10.211.55.0/24")], "expose_services[0] (http-web).host_ip", "is a CIDR"),
    ([with_changes(WEB, host_ip="127.0.0.1")], "expose_services[0] (http-web).host_ip", "is a loopback address"),
    ([with_changes(WEB, in_interface="eth9")], "expose_services[0] (http-web).in_interface",
     "'eth9' is not an interface of this host (it has eth0, eth1, eth2, lo, veth1b)"),
    ([with_changes(WEB, in_interface="eth9", host_ip="10.211.55.122")], "expose_services[0] (http-web).in_interface",
     "'eth9' is not an interface of this host"),
    ([with_changes(WEB, in_interface="eth2")], "expose_services[0] (http-web).in_interface",
     "'eth2' has no IPv4 address on this host to take host_ip from"),
])
def test_bad_services_are_refused_naming_the_service_and_field(services, field, problem):
    with pytest.raises(InvalidInput) as refused:
        plan(services)
    assert refused.value.field == field
    assert problem in str(refused.value)


def test_defaults_missing_on_a_host_without_a_default_route():
    facts = {key: value for key, value in FACTS.items() if key != "default_ipv4"}
    with pytest.raises(InvalidInput, match=r"^expose_host_ip: is not set and the host has no default IPv4 route"):
        plan([WEB], facts=facts)
    with pytest.raises(InvalidInput, match=r"^expose_host_ip: '10.211.55' is not an IPv4 address"):
        plan([WEB], host_ip="10.211.55")
    with pytest.raises(InvalidInput, match=r"^expose_in_interface: 'eth7' is not an interface of this host"):
        plan([WEB], in_interface="eth7")


def test_state_and_shape_are_checked():
    with pytest.raises(InvalidInput, match="^expose_state: 'gone' is not one of present, absent"):
        plan([WEB], state="gone")
    with pytest.raises(InvalidInput, match="^expose_services: must be a list of services, not dict"):
        plan({"name": "http-web"})
