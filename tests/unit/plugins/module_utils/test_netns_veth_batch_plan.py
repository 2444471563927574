"""netns_veth with `pairs`: validation across entries and the one plan of a batch (no netlink)."""
from __future__ import annotations

from unittest import mock

import pytest

from ansible_collections.netns.expose.plugins.module_utils._netlink import Link
from ansible_collections.netns.expose.plugins.module_utils._netns_veth import (
    OWNER_MARK,
    Observed,
    VethRun,
    VethSpec,
    build_batch_plan,
    build_plan,
    specs_from_params,
)
from ansible_collections.netns.expose.plugins.module_utils._plan import PlanApplyError
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput


def entry(number, **overrides):
    """Pair number N: netns bN, ends vbNn (in the netns) / vbNh (host), subnet 10.244.N.0/24."""
    return {
        "netns": f"b{number}",
        "ns_ifname": f"vb{number}n",
        "host_ifname": f"vb{number}h",
        "ns_address": f"10.244.{number}.2/24",
        "host_address": f"10.244.{number}.3/24",
        "default_route": True,
        "mtu": None,
        **overrides,
    }


def batch(*entries, state="present"):
    return {"pairs": list(entries), "state": state}


def recipe(number):
    """The actions that make pair N on a host that has nothing of it, as netns_veth plans them."""
    return [
        f"create netns b{number}",
        f"create veth pair vb{number}h <-> vb{number}n (in netns b{number})",
        f"add address 10.244.{number}.3/24 to vb{number}h",
        f"set vb{number}h up",
        f"add address 10.244.{number}.2/24 to vb{number}n in netns b{number}",
        f"set vb{number}n up in netns b{number}",
        f"set default route via 10.244.{number}.3 in netns b{number}",
    ]


def link(name, index, peer=None, addresses=(), kind="veth", alias=None):
    return Link(name=name, index=index, kind=kind, peer_index=peer, peer_in_other_netns=peer is not None,
                mac="02:00:00:00:00:%02x" % index, mtu=1500, up=True, operstate="UP", alias=alias,
                addresses=list(addresses), secondaries=[])


HOST_LINKS = {"lo": link("lo", 1, kind=None), "eth0": link("eth0", 2, kind=None)}


def made(number):
    """Pair N as the module leaves it: (host links, netns links, default gateway)."""
    host_end = link(f"vb{number}h", 10 + number, peer=2, addresses=[f"10.244.{number}.3/24"])
    ns_end = link(f"vb{number}n", 2, peer=10 + number, addresses=[f"10.244.{number}.2/24"])
    loopback = link("lo", 1, kind=None, alias=OWNER_MARK, addresses=["127.0.0.1/8"])
    return {host_end.name: host_end}, {"lo": loopback, ns_end.name: ns_end}, f"10.244.{number}.3"


class FakeNetlink:
    """What VethRun reads, from a dict of made pairs; every change is recorded on `calls`."""

    def __init__(self, *numbers, host_links=None):
        self.calls = mock.Mock(name="changes")
        self.host_links = dict(HOST_LINKS, **(host_links or {}))
        self.namespaces = {}
        for number in numbers:
            host_links, netns_links, gateway = made(number)
            self.host_links.update(host_links)
            self.namespaces[f"b{number}"] = (netns_links, gateway)

    def netns_state(self, name):
        return "present" if name in self.namespaces else "absent"

    def links(self, netns=None):
        return self.host_links if netns is None else self.namespaces[netns][0]

    def default_gateway(self, netns=None):
        return self.namespaces[netns][1]

    def __getattr__(self, name):
        return getattr(self.calls, name)


def run(netlink, params):
    return VethRun(netlink, params)


# Validation


def test_each_entry_is_validated_with_its_index_in_the_field():
    with pytest.raises(InvalidInput) as excinfo:
        specs_from_params(batch(entry(1), entry(2), entry(3, ns_address="10.244.3.2")))
    assert excinfo.value.field == "pairs[2].ns_address"
    assert str(excinfo.value).startswith("pairs[2].ns_address: '10.244.3.2' is not in CIDR notation")


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        ({"host_ifname": "a" * 16}, "host_ifname", "at most 15"),
        ({"ns_ifname": "vb2h"}, "ns_ifname", "must differ"),
        ({"netns": "a/b"}, "netns", "plain file name"),
        ({"host_address": "10.244.9.3/24"}, "host_address", "not in the subnet"),
        ({"host_address": "10.244.2.2/24"}, "host_address", "also ns_address"),
        ({"ns_address": "10.244.2.0/24"}, "ns_address", "network or broadcast"),
        ({"mtu": 40}, "mtu", "outside"),
        ({"netns": None}, "netns", "is required"),
        ({"ns_ifname": None}, "ns_ifname", "is required"),
        ({"host_ifname": None}, "host_ifname", "is required"),
        ({"ns_address": None}, "ns_address", "is required when state=present"),
        ({"host_address": None}, "host_address", "is required when state=present"),
    ],
)
def test_what_the_single_form_refuses_is_refused_in_an_entry(overrides, field, fragment):
    with pytest.raises(InvalidInput) as excinfo:
        specs_from_params(batch(entry(1), entry(2, **overrides)))
    assert excinfo.value.field == f"pairs[1].{field}"
    assert fragment in str(excinfo.value)


CONFLICTS = {
    "same host_ifname": (
        entry(3, host_ifname="vb1h"), "pairs[2].host_ifname", "'vb1h' is also the host_ifname of pairs[0]",
    ),
    "same netns and ns_ifname, other address": (
        entry(1, ns_address="10.244.1.5/24"), "pairs[2].ns_address",
        "pairs[0] declares 'vb1n' in netns 'b1' with ns_address 10.244.1.2/24, this entry with 10.244.1.5/24",
    ),
    "same netns and ns_ifname, other host end": (
        entry(2, host_ifname="vb9h"), "pairs[2].host_ifname",
        "pairs[1] declares 'vb2n' in netns 'b2' with host_ifname vb2h, this entry with vb9h",
    ),
    "same netns and ns_ifname, other mtu": (
        entry(2, mtu=1400), "pairs[2].mtu", "pairs[1] declares 'vb2n' in netns 'b2' with mtu unset, this entry with 1400",
    ),
    "same netns, another pair": (
        entry(3, netns="b1"), "pairs[2].netns", "'b1' already holds the pair of pairs[0] (ns_ifname 'vb1n')",
    ),
    "same subnet": (
        entry(3, ns_address="10.244.2.12/24", host_address="10.244.2.13/24"), "pairs[2].ns_address",
        "subnet 10.244.2.0/24 overlaps 10.244.2.0/24, the subnet of pairs[1]",
    ),
    "subnet inside another": (
        entry(3, ns_address="10.244.1.130/25", host_address="10.244.1.131/25"), "pairs[2].ns_address",
        "subnet 10.244.1.128/25 overlaps 10.244.1.0/24, the subnet of pairs[0]",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFLICTS), ids=sorted(CONFLICTS))
def test_entries_that_cannot_both_be_as_declared_are_refused(case):
    third, field, fragment = CONFLICTS[case]
    with pytest.raises(InvalidInput) as excinfo:
        specs_from_params(batch(entry(1), entry(2), third))
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(f"{field}: {fragment}"), str(excinfo.value)


def test_a_conflict_is_also_refused_by_run_before_anything_is_read():
    netlink = FakeNetlink()
    netlink.links = mock.Mock(side_effect=AssertionError("read before the input was checked"))
    with pytest.raises(InvalidInput, match=r"^pairs\[1\]\.host_ifname: "):
        run(netlink, batch(entry(1), entry(2, host_ifname="vb1h")))


def test_overlapping_subnets_do_not_matter_for_absent():
    specs = specs_from_params(batch(entry(1, ns_address=None, host_address=None), entry(2), state="absent"))
    assert [spec.ns_address for spec in specs] == [None, None]


def test_an_identical_entry_is_the_same_pair():
    specs = specs_from_params(batch(entry(1), entry(2), dict(entry(1), ns_address="10.244.1.2/24", mtu=None)))
    assert specs[2] == specs[0] and specs[2] is not specs[0]
    assert len(set(specs)) == 2
    assert [spec.prefix for spec in specs] == ["pairs[0].", "pairs[1].", "pairs[2]."]


def test_without_pairs_the_top_level_options_are_the_one_pair_and_keep_their_names():
    (spec,) = specs_from_params({**entry(1), "state": "present"})
    assert spec == VethSpec.from_params({**entry(1), "state": "present"}) and spec.prefix == ""
    with pytest.raises(InvalidInput, match=r"^ns_address: "):
        specs_from_params({**entry(1, ns_address="x"), "state": "present"})


# Planning


def test_one_plan_for_three_pairs_on_a_fresh_host_in_entry_order():
    plan = run(FakeNetlink(), batch(entry(3), entry(1), entry(2))).plan
    assert plan.actions == recipe(3) + recipe(1) + recipe(2)
    assert plan.changed
    assert sorted(plan.diff["before"]) == sorted(plan.diff["after"]) == ["b1", "b2", "b3"]
    assert plan.diff["before"]["b1"]["netns"] == {"name": "b1", "present": False, "loopback_up": False}
    assert plan.diff["after"]["b2"]["ns_end"] == {
        "ifname": "vb2n", "present": True, "netns": "b2", "addresses": ["10.244.2.2/24"], "up": True, "mtu": 1500,
    }


def test_each_pair_of_a_batch_plans_as_it_would_alone():
    """A pair's part of the batch view is the single form's view, and the batch's actions are theirs in order."""
    netlink = FakeNetlink(2)
    params = batch(entry(1, mtu=1400), entry(2, default_route=False), entry(3))
    whole = run(netlink, params).plan
    alone = [run(netlink, {**item, "state": "present"}).plan for item in params["pairs"]]
    assert whole.actions == [action for plan in alone for action in plan.actions]
    for number, plan in zip((1, 2, 3), alone):
        assert whole.diff["before"][f"b{number}"] == plan.diff["before"]
        assert whole.diff["after"][f"b{number}"] == plan.diff["after"]


def test_every_action_of_a_batch_names_its_pair():
    params = batch(entry(1), entry(2), entry(3))
    for state in ("present", "absent"):
        netlink = FakeNetlink() if state == "present" else FakeNetlink(1, 2, 3)
        for action in run(netlink, {**params, "state": state}).plan.actions:
            owners = [number for number in (1, 2, 3) if f"netns b{number}" in action or f"vb{number}h" in action]
            assert len(owners) == 1, action


def test_a_converged_batch_plans_nothing_and_the_made_pair_is_skipped():
    assert run(FakeNetlink(1, 2, 3), batch(entry(1), entry(2), entry(3))).plan.actions == []
    plan = run(FakeNetlink(2), batch(entry(1), entry(2), entry(3))).plan
    assert plan.actions == recipe(1) + recipe(3)
    assert plan.diff["before"]["b2"] == plan.diff["after"]["b2"]


def test_an_identical_entry_is_planned_once_and_reported_per_entry():
    vethrun = run(FakeNetlink(), batch(entry(1), entry(2), entry(1)))
    assert vethrun.plan.actions == recipe(1) + recipe(2)
    pairs = vethrun.outputs(applied=False)["pairs"]
    assert [item["host_end"]["name"] for item in pairs] == ["vb1h", "vb2h", "vb1h"]
    assert pairs[0] == pairs[2]


def test_apply_calls_netlink_pair_by_pair():
    netlink = FakeNetlink()
    run(netlink, batch(entry(1), entry(2, mtu=1400))).plan.apply()
    calls = netlink.calls.mock_calls
    assert calls[:3] == [
        mock.call.create_netns("b1"),
        mock.call.set_link("lo", "b1", state="up", ifalias=OWNER_MARK),
        mock.call.create_veth("vb1h", "vb1n", "b1", None),
    ]
    assert calls[8:11] == [
        mock.call.create_netns("b2"),
        mock.call.set_link("lo", "b2", state="up", ifalias=OWNER_MARK),
        mock.call.create_veth("vb2h", "vb2n", "b2", 1400),
    ]
    assert calls[-1] == mock.call.replace_default_route("10.244.2.3", "vb2n", "b2")


def test_apply_failure_names_the_pairs_step_and_what_was_done():
    netlink = FakeNetlink()
    netlink.calls.create_veth.side_effect = [None, OSError(17, "File exists")]
    with pytest.raises(PlanApplyError) as excinfo:
        run(netlink, batch(entry(1), entry(2))).plan.apply()
    assert excinfo.value.failed_step == "create veth pair vb2h <-> vb2n (in netns b2)"
    assert excinfo.value.done == recipe(1) + ["create netns b2"]


def test_absent_removes_every_pair_and_the_namespaces_the_module_made():
    netlink = FakeNetlink(1, 2, 3)
    netlink.namespaces["b2"][0]["lo"].alias = None  # b2 was made by someone else
    vethrun = run(netlink, batch(entry(1), entry(2), entry(3), state="absent"))
    assert vethrun.plan.actions == [
        "delete veth pair vb1h <-> vb1n", "delete netns b1",
        "delete veth pair vb2h <-> vb2n",
        "delete veth pair vb3h <-> vb3n", "delete netns b3",
    ]
    assert vethrun.plan.diff["after"]["b2"]["netns"]["present"] is True
    vethrun.plan.apply()
    assert netlink.calls.mock_calls == [
        mock.call.delete_link("vb1h"), mock.call.remove_netns("b1"),
        mock.call.delete_link("vb2h"),
        mock.call.delete_link("vb3h"), mock.call.remove_netns("b3"),
    ]


def test_absent_warns_about_a_kept_namespace_naming_it():
    netlink = FakeNetlink(1, 2)
    netlink.namespaces["b2"][0]["eth9"] = link("eth9", 9, kind="dummy")
    plan = run(netlink, batch(entry(1), entry(2), state="absent")).plan
    assert plan.actions == ["delete veth pair vb1h <-> vb1n", "delete netns b1", "delete veth pair vb2h <-> vb2n"]
    assert len(plan.warnings) == 1 and "netns b2" in plan.warnings[0] and "eth9" in plan.warnings[0]


def test_host_state_that_refuses_a_pair_names_its_entry_and_no_step_is_planned():
    netlink = FakeNetlink(host_links={"vb3h": link("vb3h", 30, kind="bridge")})
    with pytest.raises(InvalidInput) as excinfo:
        run(netlink, batch(entry(1), entry(2), entry(3)))
    assert str(excinfo.value) == "pairs[2].host_ifname: 'vb3h' is already in use on the host by a bridge device, not a veth"
    assert netlink.calls.mock_calls == []


def test_a_file_that_is_not_a_namespace_names_its_entry():
    netlink = FakeNetlink()
    netlink.netns_state = lambda name: "foreign" if name == "b2" else "absent"
    with pytest.raises(InvalidInput, match=r"^pairs\[1\]\.netns: .*/b2 exists but is not a network namespace"):
        run(netlink, batch(entry(1), entry(2)))


def test_batch_reads_the_host_links_once():
    netlink = FakeNetlink(1, 2, 3)
    netlink.links = mock.Mock(wraps=netlink.links)
    run(netlink, batch(entry(1), entry(2), entry(3)))
    assert netlink.links.call_args_list.count(mock.call()) == 1


def test_an_empty_batch_changes_nothing():
    vethrun = run(FakeNetlink(), batch())
    assert vethrun.plan.actions == [] and vethrun.plan.diff == {"before": {}, "after": {}}
    assert vethrun.outputs(applied=False) == {"pairs": []}


# Outputs


def test_outputs_of_a_batch_in_check_mode_are_the_prediction():
    pairs = run(FakeNetlink(2), batch(entry(1), entry(2))).outputs(applied=False)["pairs"]
    assert pairs[0]["ns_end"] == {"name": "vb1n", "netns": "b1", "index": None, "mac": None, "mtu": 1500,
                                  "addresses": ["10.244.1.2/24"], "state": "up", "operstate": None}
    assert pairs[1]["host_end"]["index"] == 12 and pairs[1]["host_end"]["addresses"] == ["10.244.2.3/24"]


def test_outputs_after_a_run_are_read_back_from_the_host():
    netlink = FakeNetlink()
    vethrun = run(netlink, batch(entry(1), entry(2)))
    host_links, netns_links, gateway = made(1)
    netlink.host_links.update(host_links)
    netlink.namespaces["b1"] = (netns_links, gateway)  # as if only b1 had been made
    pairs = vethrun.outputs(applied=True)["pairs"]
    assert pairs[0]["host_end"]["index"] == 11
    assert pairs[1] == {"host_end": None, "ns_end": None}


FRESH = Observed(netns_present=False, netns_owned=False, host_links=HOST_LINKS, netns_links={}, default_gateway=None)


def test_the_single_form_keeps_its_plan_and_outputs():
    params = {**entry(1), "state": "present"}
    single = run(FakeNetlink(), params)
    alone = build_plan(mock.Mock(), VethSpec.from_params(params), FRESH)
    assert single.plan.actions == alone.actions == recipe(1)
    assert single.plan.diff == alone.diff
    assert set(single.outputs(applied=False)) == {"interfaces"}


def test_build_batch_plan_classifies_every_pair_before_planning_any():
    specs = specs_from_params(batch(entry(1), entry(2)))
    taken = Observed(netns_present=False, netns_owned=False,
                     host_links=dict(HOST_LINKS, vb2h=link("vb2h", 20, kind=None)), netns_links={}, default_gateway=None)
    netlink = mock.Mock()
    with pytest.raises(InvalidInput, match=r"^pairs\[1\]\.host_ifname: 'vb2h' is already in use .* physical device"):
        build_batch_plan(netlink, specs, [FRESH, taken])
    assert netlink.mock_calls == []
