"""The network_facts module's logic: iproute2's JSON into facts with the keys and shapes of ansible.builtin.setup's.

The samples are what `ip -j addr show` and `ip -j -4 route show default` printed (iproute2 6.1, Linux 6.18, only
re-indented) in a namespace made with:

    ip link set lo up
    ip link add veth-a type veth peer name vethb; ip link add vx.1 type veth peer name vy
    ip link set veth-a up; ip link set vethb up; ip link set vx.1 up
    ip addr add 10.211.55.122/24 brd + dev veth-a
    ip addr add 10.211.55.200/24 brd + dev veth-a        # the kernel makes it secondary (same subnet)
    ip addr add 192.168.7.1/24 dev veth-a                # a second primary one (another subnet)
    ip addr add 172.16.0.1/16 dev vx.1 label vx.1:1      # an alias label
    ip addr add 10.9.0.1 peer 10.9.0.2/32 dev vx.1       # a point-to-point address
    ip addr add 10.8.0.1/24 dev vy                       # vy is down

and SETUP_FACTS is what `ansible localhost -m setup -a 'gather_subset=!all,!min,network'` (ansible-core 2.19) reported
in it with `ip route add default via 10.211.55.1`, for the keys the role reads.
"""
from __future__ import annotations

import copy
import ipaddress
import json

import pytest

from ansible_collections.netns.expose.plugins.module_utils._network_facts import (
    NetworkFactsError,
    default_ipv4,
    fact_key,
    gather,
    network_facts,
    parse,
)
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput
from ansible_collections.netns.expose.plugins.module_utils._services import services_plan

ADDR_SHOW = json.loads("""
[
{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],
 "mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,
 "link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[
  {"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo",
   "valid_life_time":4294967295,"preferred_life_time":4294967295},
  {"family":"inet6","local":"::1","prefixlen":128,"scope":"host",
   "valid_life_time":4294967295,"preferred_life_time":4294967295}]},
{"ifindex":2,"link":"veth-a","ifname":"vethb","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
 "mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,
 "link_type":"ether","address":"d6:c9:ce:d4:59:99","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[
  {"family":"inet6","local":"fe80::d4c9:ceff:fed4:5999","prefixlen":64,"scope":"link",
   "valid_life_time":4294967295,"preferred_life_time":4294967295}]},
{"ifindex":3,"link":"vethb","ifname":"veth-a","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
 "mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,
 "link_type":"ether","address":"1a:95:10:1f:9e:d8","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[
  {"family":"inet","local":"10.211.55.122","prefixlen":24,"broadcast":"10.211.55.255","scope":"global","label":"veth-a",
   "valid_life_time":4294967295,"preferred_life_time":4294967295},
  {"family":"inet","local":"192.168.7.1","prefixlen":24,"scope":"global","label":"veth-a",
   "valid_life_time":4294967295,"preferred_life_time":4294967295},
  {"family":"inet","local":"10.211.55.200","prefixlen":24,"broadcast":"10.211.55.255","scope":"global","secondary":true,"label":"veth-a",
   "valid_life_time":4294967295,"preferred_life_time":4294967295},
  {"family":"inet6","local":"fe80::1895:10ff:fe1f:9ed8","prefixlen":64,"scope":"link",
   "valid_life_time":4294967295,"preferred_life_time":4294967295}]},
{"ifindex":4,"link":"vx.1","ifname":"vy","flags":["BROADCAST","MULTICAST"],
 "mtu":1500,"qdisc":"noop","operstate":"DOWN","group":"default","txqlen":1000,
 "link_type":"ether","address":"1e:d1:3d:5f:3a:82","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[
  {"family":"inet","local":"10.8.0.1","prefixlen":24,"scope":"global","label":"vy",
   "valid_life_time":4294967295,"preferred_life_time":4294967295}]},
{"ifindex":5,"link":"vy","ifname":"vx.1","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP","M-DOWN"],
 "mtu":1500,"qdisc":"noqueue","operstate":"LOWERLAYERDOWN","group":"default","txqlen":1000,
 "link_type":"ether","address":"62:43:e3:1d:e4:a4","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[
  {"family":"inet","local":"172.16.0.1","prefixlen":16,"scope":"global","label":"vx.1:1",
   "valid_life_time":4294967295,"preferred_life_time":4294967295},
  {"family":"inet","local":"10.9.0.1","address":"10.9.0.2","prefixlen":32,"scope":"global","label":"vx.1",
   "valid_life_time":4294967295,"preferred_life_time":4294967295}]}
]
""")
# `ip -j -4 route show default`, each after its `ip route add` (with the earlier default routes deleted).
ROUTES = {
    "none": "[]",
    # default via 10.211.55.1
    "default": '[{"dst":"default","gateway":"10.211.55.1","dev":"veth-a","flags":[]}]',
    # default via 192.168.7.254 metric 50 src 192.168.7.1; default via 10.211.55.1 metric 100
    "metrics": ('[{"dst":"default","gateway":"192.168.7.254","dev":"veth-a","prefsrc":"192.168.7.1","metric":50,"flags":[]},'
                '{"dst":"default","gateway":"10.211.55.1","dev":"veth-a","metric":100,"flags":[]}]'),
    # default via 192.168.7.254
    "gateway_in_second_subnet": '[{"dst":"default","gateway":"192.168.7.254","dev":"veth-a","flags":[]}]',
    # default dev vethb (which has no IPv4 address)
    "no_address": '[{"dst":"default","dev":"vethb","scope":"link","flags":[]}]',
    # default nexthop via 10.211.55.1 nexthop via 192.168.7.254
    "multipath": ('[{"dst":"default","flags":[],"nexthops":[{"gateway":"10.211.55.1","dev":"veth-a","weight":1,"flags":[]},'
                  '{"gateway":"192.168.7.254","dev":"veth-a","weight":1,"flags":[]}]}]'),
    # unreachable default metric 10; default via 10.211.55.1 metric 20
    "unreachable": ('[{"type":"unreachable","dst":"default","metric":10,"flags":[]},'
                    '{"dst":"default","gateway":"10.211.55.1","dev":"veth-a","metric":20,"flags":[]}]'),
}
# What `ip -4 route get 8.8.8.8` answered (setup's source of default_ipv4) with each of those routes.
KERNEL_DEFAULT = {
    "none": {},
    "default": {"interface": "veth-a", "address": "10.211.55.122", "gateway": "10.211.55.1"},
    "metrics": {"interface": "veth-a", "address": "192.168.7.1", "gateway": "192.168.7.254"},
    "gateway_in_second_subnet": {"interface": "veth-a", "address": "192.168.7.1", "gateway": "192.168.7.254"},
    "no_address": {"interface": "vethb", "address": "10.211.55.122"},
    "unreachable": {},  # RTNETLINK answers: No route to host
}


def ipv4(address, prefix, broadcast=""):
    """setup's dict of an address."""
    network = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
    return {"address": address, "broadcast": broadcast, "netmask": str(network.netmask),
            "network": str(network.network_address), "prefix": str(prefix)}


# setup's facts in that namespace (with the default route via 10.211.55.1), for the keys the role reads.
SETUP_INTERFACES = ["vy", "vx.1_1", "vethb", "veth-a", "lo", "vx.1"]
SETUP_FACTS = {
    "lo": {"device": "lo", "active": True, "ipv4": ipv4("127.0.0.1", 8)},
    "vethb": {"device": "vethb", "active": True},
    "veth_a": {"device": "veth-a", "active": True, "ipv4": ipv4("10.211.55.122", 24, "10.211.55.255"),
               "ipv4_secondaries": [ipv4("192.168.7.1", 24), ipv4("10.211.55.200", 24, "10.211.55.255")]},
    "vy": {"device": "vy", "active": False, "ipv4": ipv4("10.8.0.1", 24)},
    "vx.1": {"device": "vx.1", "active": True, "ipv4": ipv4("10.9.0.1", 32)},
    "vx.1_1": {"ipv4": ipv4("172.16.0.1", 16)},
}
SETUP_DEFAULT_IPV4 = {"interface": "veth-a", "address": "10.211.55.122", "gateway": "10.211.55.1"}


def facts(route="default", links=None):
    return network_facts(copy.deepcopy(ADDR_SHOW if links is None else links), json.loads(ROUTES[route]))


def link(name, *addresses, operstate="UP"):
    """A link of `ip -j addr show`, its addresses as (local, prefixlen, {more keys})."""
    return {"ifname": name, "operstate": operstate,
            "addr_info": [{"family": "inet", "local": local, "prefixlen": prefix, "scope": "global", "label": name, **more}
                          for local, prefix, more in addresses]}


# What setup has


def test_the_facts_are_setups_for_every_key_the_role_reads():
    got = facts()
    assert sorted(got["interfaces"]) == sorted(SETUP_INTERFACES)
    assert {name.replace("-", "_"): got[name.replace("-", "_")] for name in got["interfaces"]} == SETUP_FACTS
    assert got["default_ipv4"] == SETUP_DEFAULT_IPV4
    assert set(got) == {"interfaces", "default_ipv4", *SETUP_FACTS}


def test_an_interface_with_a_dash_is_listed_by_its_name_and_its_facts_are_under_underscores():
    got = facts()
    assert "veth-a" in got["interfaces"] and "veth_a" not in got["interfaces"]
    assert got["veth_a"]["device"] == "veth-a"
    assert "veth-a" not in got
    assert fact_key("veth-a") == "veth_a"


def test_a_dot_stays_and_an_alias_label_is_an_interface_with_a_colon_made_an_underscore():
    got = facts()
    assert {"vx.1", "vx.1_1"} <= set(got["interfaces"])
    assert got["vx.1_1"] == {"ipv4": ipv4("172.16.0.1", 16)}  # no device, as setup has it
    assert got["vx.1"]["ipv4"]["address"] == "10.9.0.1"  # the labelled address is not the link's
    assert fact_key("eth0:1") == "eth0_1" and fact_key("vlan.100") == "vlan.100"


def test_the_first_primary_address_is_ipv4_then_the_other_primary_ones_then_the_secondary_ones():
    veth_a = facts()["veth_a"]
    assert veth_a["ipv4"]["address"] == "10.211.55.122"
    assert [entry["address"] for entry in veth_a["ipv4_secondaries"]] == ["192.168.7.1", "10.211.55.200"]
    assert veth_a["ipv4"]["prefix"] == "24"  # a string, as setup has it


def test_an_interface_without_ipv4_has_neither_ipv4_nor_secondaries():
    assert facts()["vethb"] == {"device": "vethb", "active": True}


def test_active_is_every_operational_state_but_down():
    got = facts()
    assert (got["vy"]["active"], got["vx.1"]["active"], got["lo"]["active"]) == (False, True, True)  # DOWN, LOWERLAYERDOWN, UNKNOWN


def test_a_point_to_point_address_is_a_host_address_without_broadcast():
    assert facts()["vx.1"]["ipv4"] == {"address": "10.9.0.1", "broadcast": "", "netmask": "255.255.255.255",
                                       "network": "10.9.0.1", "prefix": "32"}


def test_a_secondary_address_with_a_label_is_under_the_label_and_under_its_link():
    links = [link("eth0", ("10.0.0.1", 24, {}), ("10.0.0.2", 24, {"secondary": True, "label": "eth0:1"}))]
    got = network_facts(links, [])
    assert got["interfaces"] == ["eth0", "eth0_1"]
    assert got["eth0"]["ipv4_secondaries"] == got["eth0_1"]["ipv4_secondaries"] == [ipv4("10.0.0.2", 24)]


# default_ipv4


@pytest.mark.parametrize("route", sorted(KERNEL_DEFAULT))
def test_default_ipv4_is_what_the_kernel_answers_for_the_route_to_8_8_8_8(route):
    assert facts(route)["default_ipv4"] == KERNEL_DEFAULT[route]


def test_without_a_default_route_default_ipv4_is_empty_and_the_interfaces_are_all_there():
    got = facts("none")
    assert got["default_ipv4"] == {}
    assert sorted(got["interfaces"]) == sorted(SETUP_INTERFACES)


def test_a_multipath_default_route_takes_its_first_nexthop():
    assert facts("multipath")["default_ipv4"] == {"interface": "veth-a", "address": "10.211.55.122",
                                                  "gateway": "10.211.55.1"}


def test_a_default_route_through_an_interface_without_ipv4_and_no_other_address_has_no_address():
    got = default_ipv4(json.loads(ROUTES["no_address"]), [link("vethb"), link("lo", ("127.0.0.1", 8, {"scope": "host"}))])
    assert got == {"interface": "vethb"}


# What the role does with them


def test_the_role_takes_host_ip_from_the_default_routes_interface_and_refuses_overlaps():
    service = {"name": "web", "netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b",
               "ns_address": "10.244.1.2/24", "host_address": "10.244.1.3/24",
               "ports": [{"protocol": "tcp", "host_port": 8090, "ns_port": 9090}]}
    plan = services_plan([service], facts=facts())
    assert plan["mappings"][0]["destination"] == "10.211.55.122"
    plan = services_plan([{**service, "in_interface": "veth-a"}], facts=facts())
    assert plan["mappings"][0]["in_interface"] == "veth-a"
    with pytest.raises(InvalidInput, match="overlaps 192.168.7.0/24 of the host's interface veth-a"):
        services_plan([{**service, "ns_address": "192.168.7.2/24", "host_address": "192.168.7.3/24"}], facts=facts())


# Running ip


class FakeIp:
    """run_command of AnsibleModule, answering with the samples; records the argv lists."""

    def __init__(self, answers=None):
        self.answers = answers or {"addr": (0, json.dumps(ADDR_SHOW), ""), "route": (0, ROUTES["default"] + "\n", "")}
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)
        return self.answers["addr" if "addr" in argv else "route"]


def test_gather_runs_ip_twice_with_argv_lists():
    run = FakeIp()
    assert gather(run, "/usr/sbin/ip") == facts()
    assert run.calls == [["/usr/sbin/ip", "-j", "addr", "show"], ["/usr/sbin/ip", "-j", "-4", "route", "show", "default"]]


def test_gather_names_the_command_that_failed_and_what_it_said():
    run = FakeIp({"addr": (0, json.dumps(ADDR_SHOW), ""), "route": (2, "", "Error: ipv4: FIB table does not exist.\n")})
    with pytest.raises(NetworkFactsError, match=r"^ip -j -4 route show default failed \(rc 2\): Error: ipv4: FIB table"):
        gather(run, "/sbin/ip")


def test_an_ip_without_json_output_is_named():
    text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN\n"
    with pytest.raises(NetworkFactsError, match=r"^ip -j addr show did not print a JSON list \(is its iproute2 too old"):
        gather(FakeIp({"addr": (0, text, ""), "route": (0, "[]", "")}), "/sbin/ip")
    with pytest.raises(NetworkFactsError, match="did not print a JSON list"):
        parse('{"ifname": "lo"}', "ip -j addr show")


def test_no_output_is_no_entries():
    assert parse("", "ip -j -4 route show default") == []
    assert parse("[]\n", "ip -j -4 route show default") == []
