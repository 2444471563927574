"""Planning logic of netns_veth, on fabricated host states (no netlink)."""
from __future__ import annotations

from unittest import mock

import pytest

from ansible_collections.netns.expose.plugins.module_utils._netlink import Link
from ansible_collections.netns.expose.plugins.module_utils._netns_veth import (
    OWNER_MARK,
    Observed,
    VethSpec,
    build_plan,
    read_state,
)
from ansible_collections.netns.expose.plugins.module_utils._plan import PlanApplyError
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

PARAMS = dict(
    netns="ns1",
    ns_ifname="veth1a",
    host_ifname="veth1b",
    ns_address="10.244.1.2/24",
    host_address="10.244.1.3/24",
    default_route=True,
    mtu=None,
    state="present",
)


def spec(**overrides):
    return VethSpec.from_params({**PARAMS, **overrides})


def link(name, index, kind="veth", peer=None, other_netns=True, addresses=(), up=True, mtu=1500, alias=None, secondaries=()):
    return Link(
        name=name,
        index=index,
        kind=kind,
        peer_index=peer,
        peer_in_other_netns=other_netns,
        mac="02:00:00:00:00:%02x" % index,
        mtu=mtu,
        up=up,
        operstate="UP" if up else "DOWN",
        alias=alias,
        addresses=list(addresses),
        secondaries=list(secondaries),
    )


def loopback(owned=True, up=True):
    return link("lo", 1, kind=None, up=up, alias=OWNER_MARK if owned else None, addresses=["127.0.0.1/8"])


def converged(**changes):
    """The host after the recipe: every field as declared; `changes` override parts."""
    host_end = changes.pop("host_end", link("veth1b", 7, peer=2, addresses=["10.244.1.3/24"]))
    ns_end = changes.pop("ns_end", link("veth1a", 2, peer=7, addresses=["10.244.1.2/24"]))
    netns_links = {"lo": changes.pop("lo", loopback())}
    if ns_end is not None:
        netns_links[ns_end.name] = ns_end
    netns_links.update(changes.pop("extra_netns_links", {}))
    host_links = {"lo": link("lo", 1, kind=None), "eth0": link("eth0", 3, kind=None)}
    if host_end is not None:
        host_links[host_end.name] = host_end
    host_links.update(changes.pop("extra_host_links", {}))
    observed = Observed(
        netns_present=changes.pop("netns_present", True),
        netns_owned=netns_links["lo"].alias == OWNER_MARK,
        host_links=host_links,
        netns_links=netns_links,
        default_gateway=changes.pop("default_gateway", "10.244.1.3"),
    )
    assert not changes, changes
    return observed


FRESH = Observed(netns_present=False, netns_owned=False, host_links={"eth0": link("eth0", 3, kind=None)}, netns_links={}, default_gateway=None)


def plan_with_netlink(observed, **overrides):
    netlink = mock.Mock(name="netlink")
    return build_plan(netlink, spec(**overrides), observed), netlink


def plan_for(observed, **overrides):
    return plan_with_netlink(observed, **overrides)[0]


def assert_consistent(plan):
    """changed, the diff and the action list come from one plan and must agree."""
    assert plan.changed == bool(plan.actions) == (plan.diff["before"] != plan.diff["after"])


def test_fresh_host_gets_the_whole_recipe_in_order():
    plan, netlink = plan_with_netlink(FRESH)
    assert plan.actions == [
        "create netns ns1",
        "create veth pair veth1b <-> veth1a (in netns ns1)",
        "add address 10.244.1.3/24 to veth1b",
        "set veth1b up",
        "add address 10.244.1.2/24 to veth1a in netns ns1",
        "set veth1a up in netns ns1",
        "set default route via 10.244.1.3 in netns ns1",
    ]
    assert_consistent(plan)
    assert plan.diff["after"]["ns_end"] == {
        "ifname": "veth1a", "present": True, "netns": "ns1", "addresses": ["10.244.1.2/24"], "up": True, "mtu": 1500,
    }
    assert netlink.mock_calls == [], "planning must not touch the host"


def test_apply_calls_netlink_in_plan_order_with_exact_arguments():
    plan, netlink = plan_with_netlink(FRESH, mtu=1400)
    plan.apply()
    assert netlink.mock_calls == [
        mock.call.create_netns("ns1"),
        mock.call.set_link("lo", "ns1", state="up", ifalias=OWNER_MARK),
        mock.call.create_veth("veth1b", "veth1a", "ns1", 1400),
        mock.call.add_address("veth1b", "10.244.1.3/24", None),
        mock.call.set_link("veth1b", None, state="up"),
        mock.call.add_address("veth1a", "10.244.1.2/24", "ns1"),
        mock.call.set_link("veth1a", "ns1", state="up"),
        mock.call.replace_default_route("10.244.1.3", "veth1a", "ns1"),
    ]


def test_converged_host_plans_nothing():
    plan = plan_for(converged())
    assert plan.actions == []
    assert_consistent(plan)


def test_netns_without_pair_gets_only_the_pair_and_its_settings():
    plan = plan_for(converged(host_end=None, ns_end=None, default_gateway=None))
    assert plan.actions[0] == "create veth pair veth1b <-> veth1a (in netns ns1)"
    assert "create netns ns1" not in plan.actions
    assert_consistent(plan)


def test_ns_end_still_on_host_is_moved_and_reconfigured():
    host_end = link("veth1b", 7, peer=8, other_netns=False, addresses=["10.244.1.3/24"])
    ns_end_on_host = link("veth1a", 8, peer=7, other_netns=False, addresses=["10.244.1.2/24"])
    observed = converged(host_end=host_end, ns_end=None, extra_host_links={"veth1a": ns_end_on_host}, default_gateway=None)
    plan = plan_for(observed)
    # Moving drops the addresses and takes the link down, so both come back.
    assert plan.actions == [
        "move veth1a into netns ns1",
        "add address 10.244.1.2/24 to veth1a in netns ns1",
        "set veth1a up in netns ns1",
        "set default route via 10.244.1.3 in netns ns1",
    ]
    assert plan.diff["before"]["ns_end"]["netns"] is None
    assert plan.diff["after"]["ns_end"]["netns"] == "ns1"


def test_wrong_address_is_replaced_and_the_route_it_takes_along_is_restored():
    observed = converged(ns_end=link("veth1a", 2, peer=7, addresses=["10.244.1.9/24"]))
    plan = plan_for(observed)
    # Removing the last address drops the routes via the link, so the default route comes back.
    assert plan.actions == [
        "remove address 10.244.1.9/24 from veth1a in netns ns1",
        "add address 10.244.1.2/24 to veth1a in netns ns1",
        "set default route via 10.244.1.3 in netns ns1",
    ]
    assert_consistent(plan)


def test_an_extra_address_is_removed_and_nothing_else_changes():
    observed = converged(ns_end=link("veth1a", 2, peer=7, addresses=["10.244.1.2/24", "10.244.1.9/24"]))
    plan = plan_for(observed)
    assert plan.actions == ["remove address 10.244.1.9/24 from veth1a in netns ns1"]
    assert_consistent(plan)


def test_a_primary_removed_takes_its_secondaries_along_and_the_wanted_one_comes_back():
    addresses = ["10.244.1.9/24", "10.244.1.8/24", "10.244.1.2/24"]
    observed = converged(ns_end=link("veth1a", 2, peer=7, addresses=addresses, secondaries=addresses[1:]))
    plan = plan_for(observed)
    assert plan.actions == [
        "remove address 10.244.1.9/24 from veth1a in netns ns1",
        "add address 10.244.1.2/24 to veth1a in netns ns1",
        "set default route via 10.244.1.3 in netns ns1",
    ]
    assert_consistent(plan)


def test_missing_host_address_is_added():
    plan = plan_for(converged(host_end=link("veth1b", 7, peer=2)))
    assert plan.actions == ["add address 10.244.1.3/24 to veth1b"]


def test_down_links_are_set_up():
    observed = converged(host_end=link("veth1b", 7, peer=2, addresses=["10.244.1.3/24"], up=False), lo=loopback(up=False))
    plan = plan_for(observed)
    assert plan.actions == ["set lo up in netns ns1", "set veth1b up"]


@pytest.mark.parametrize("gateway", [None, "10.244.1.99"])
def test_missing_or_foreign_default_route_is_replaced(gateway):
    plan = plan_for(converged(default_gateway=gateway))
    assert plan.actions == ["set default route via 10.244.1.3 in netns ns1"]


def test_default_route_false_leaves_routes_alone():
    plan = plan_for(converged(default_gateway="10.244.1.99"), default_route=False)
    assert plan.actions == []


def test_mtu_differences_are_fixed_on_each_end_that_differs():
    observed = converged(ns_end=link("veth1a", 2, peer=7, addresses=["10.244.1.2/24"], mtu=9000))
    plan = plan_for(observed, mtu=1400)
    assert plan.actions == ["set mtu 1400 on veth1b", "set mtu 1400 on veth1a in netns ns1"]
    plan = plan_for(converged(), mtu=1500)
    assert plan.actions == []


def test_absent_removes_pair_and_owned_netns():
    plan, netlink = plan_with_netlink(converged(), state="absent")
    assert plan.actions == ["delete veth pair veth1b <-> veth1a", "delete netns ns1"]
    assert_consistent(plan)
    plan.apply()
    assert netlink.mock_calls == [mock.call.delete_link("veth1b"), mock.call.remove_netns("ns1")]


def test_absent_keeps_a_netns_it_did_not_create():
    plan = plan_for(converged(lo=loopback(owned=False)), state="absent")
    assert plan.actions == ["delete veth pair veth1b <-> veth1a"]


def test_absent_keeps_owned_netns_that_holds_other_interfaces():
    plan = plan_for(converged(extra_netns_links={"eth9": link("eth9", 9, kind="dummy")}), state="absent")
    assert plan.actions == ["delete veth pair veth1b <-> veth1a"]
    assert "eth9" in plan.warnings[0]


def test_absent_on_clean_host_plans_nothing():
    plan = plan_for(FRESH, state="absent")
    assert plan.actions == []
    assert_consistent(plan)


@pytest.mark.parametrize(
    "observed, field",
    [
        (converged(host_end=link("veth1b", 7, kind=None), ns_end=None), "host_ifname"),
        (converged(host_end=link("veth1b", 7, kind="bridge"), ns_end=None), "host_ifname"),
        # veth1b pairs with some other interface in another namespace.
        (converged(host_end=link("veth1b", 7, peer=5), ns_end=None), "host_ifname"),
        # veth1b pairs with a host interface that is not veth1a.
        (converged(host_end=link("veth1b", 7, peer=9, other_netns=False), ns_end=None,
                   extra_host_links={"other": link("other", 9, peer=7, other_netns=False)}), "host_ifname"),
        # ns1 already has a veth1a of its own.
        (converged(host_end=None, ns_end=link("veth1a", 2, kind="dummy")), "ns_ifname"),
    ],
)
@pytest.mark.parametrize("state", ["present", "absent"])
def test_names_used_by_something_else_are_refused(observed, field, state):
    with pytest.raises(InvalidInput) as excinfo:
        plan_for(observed, state=state)
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(f"{field}: ")


def test_a_file_in_run_netns_that_is_not_a_namespace_is_refused():
    netlink = mock.Mock(name="netlink")
    netlink.netns_state.return_value = "foreign"
    with pytest.raises(InvalidInput, match=r"^netns: .*/ns1 exists but is not a network namespace"):
        read_state(netlink, spec())
    netlink.links.assert_not_called()


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        ({"host_ifname": "a" * 16}, "host_ifname", "at most 15"),
        ({"ns_ifname": "veth/1"}, "ns_ifname", "'/'"),
        ({"ns_ifname": "veth 1"}, "ns_ifname", "' '"),
        ({"ns_ifname": "veth\t1"}, "ns_ifname", "'\\t'"),
        ({"host_ifname": ""}, "host_ifname", "empty"),
        ({"ns_ifname": "veth1b"}, "ns_ifname", "must differ"),
        ({"netns": "a/b"}, "netns", "plain file name"),
        ({"netns": ".."}, "netns", "plain file name"),
        ({"netns": "ns\n1"}, "netns", "whitespace"),
        ({"ns_address": "10.244.1.2"}, "ns_address", "CIDR"),
        ({"host_address": "10.244.1.300/24"}, "host_address", "not an IPv4"),
        ({"host_address": "fd00::1/64"}, "host_address", "not an IPv4"),
        ({"host_address": "10.244.2.3/24"}, "host_address", "not in the subnet"),
        ({"host_address": "10.244.1.2/24"}, "host_address", "also ns_address"),
        ({"ns_address": "10.244.1.0/24"}, "ns_address", "network or broadcast"),
        ({"ns_address": "10.244.1.2/32"}, "ns_address", "no room"),
        ({"mtu": 40}, "mtu", "outside"),
    ],
)
def test_bad_input_is_refused_naming_the_field(overrides, field, fragment):
    with pytest.raises(InvalidInput) as excinfo:
        spec(**overrides)
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(f"{field}: ")
    assert fragment in str(excinfo.value)


def test_absent_needs_no_addresses():
    assert spec(state="absent", ns_address=None, host_address=None).ns_address is None


def test_apply_failure_names_the_step_and_what_was_done():
    plan, netlink = plan_with_netlink(FRESH)
    netlink.add_address.side_effect = OSError(17, "File exists")
    with pytest.raises(PlanApplyError) as excinfo:
        plan.apply()
    assert excinfo.value.failed_step == "add address 10.244.1.3/24 to veth1b"
    assert excinfo.value.done == ["create netns ns1", "create veth pair veth1b <-> veth1a (in netns ns1)"]
