"""netns_veth with `pairs` through Ansible against a lab master: many pairs in one module call.

Every test starts from a master without the batch's namespaces and links, and
puts it back so afterwards, also when it fails.
"""
from __future__ import annotations

import json

import pytest
from master_host import MASTER, sh, snapshot

MODULE = "netns.expose.netns_veth"
NUMBERS = (1, 2, 3)


def pair(number, **overrides):
    """Pair N: netns batchN, ends btNn (in the netns) and btNh (host), subnet 10.244.(20+N).0/24."""
    return {
        "netns": f"batch{number}",
        "ns_ifname": f"bt{number}n",
        "host_ifname": f"bt{number}h",
        "ns_address": f"10.244.{20 + number}.2/24",
        "host_address": f"10.244.{20 + number}.3/24",
        **overrides,
    }


# Three services as a role would declare them: one with a smaller MTU, one without a default route.
PAIRS = [pair(1), pair(2, mtu=1400), pair(3, default_route=False)]


def recipe(number, mtu=None, default_route=True):
    """The actions that make pair N on a master that has nothing of it."""
    netns, ns_end, host_end, subnet = f"batch{number}", f"bt{number}n", f"bt{number}h", f"10.244.{20 + number}"
    actions = [f"create netns {netns}", f"create veth pair {host_end} <-> {ns_end} (in netns {netns})"]
    actions += [f"add address {subnet}.3/24 to {host_end}", f"set {host_end} up"]
    actions += [f"add address {subnet}.2/24 to {ns_end} in netns {netns}", f"set {ns_end} up in netns {netns}"]
    if default_route:
        actions.append(f"set default route via {subnet}.3 in netns {netns}")
    return actions


RECIPES = {1: recipe(1), 2: recipe(2, mtu=1400), 3: recipe(3, default_route=False)}


@pytest.fixture
def master(lab):
    """A master without the batch's namespaces and links, before and after the test."""

    def scrub():
        for number in NUMBERS:
            sh(lab, "ip", "link", "del", f"bt{number}h", check=False)
            sh(lab, "ip", "netns", "del", f"batch{number}", check=False)
            sh(lab, "rm", "-f", f"/run/netns/batch{number}", check=False)

    scrub()
    pristine = snapshot(lab)
    yield pristine
    scrub()


def veths(run_module, pairs, python=None, check=False, state="present"):
    return run_module(MASTER, MODULE, {"pairs": pairs, "state": state}, check=check, diff=True, python=python)


def assert_one_call_for(result, numbers):
    """One task result (not a loop) that has every pair's interfaces, in entry order."""
    assert not result["failed"], result
    assert "results" not in result and "interfaces" not in result
    assert [item["host_end"]["name"] for item in result["pairs"]] == [f"bt{number}h" for number in numbers]
    assert [item["ns_end"]["netns"] for item in result["pairs"]] == [f"batch{number}" for number in numbers]


def settled(pairs):
    """The pairs result without operstate, which the kernel settles on its own time."""
    return [{role: {key: value for key, value in end.items() if key != "operstate"} for role, end in item.items()}
            for item in pairs]


def assert_pair_made(lab, number, mtu=1500, default_route=True):
    """Pair N as declared, read with iproute2, and carrying traffic."""
    netns, subnet = f"batch{number}", f"10.244.{20 + number}"
    in_netns = ("ip", "netns", "exec", netns)
    ns_end = json.loads(sh(lab, *in_netns, "ip", "-j", "addr", "show", "dev", f"bt{number}n"))[0]
    host_end = json.loads(sh(lab, "ip", "-j", "addr", "show", "dev", f"bt{number}h"))[0]
    for end, address in ((ns_end, f"{subnet}.2"), (host_end, f"{subnet}.3")):
        assert end["mtu"] == mtu and "UP" in end["flags"]
        assert [(a["local"], a["prefixlen"]) for a in end["addr_info"] if a["family"] == "inet"] == [(address, 24)]
    routes = json.loads(sh(lab, *in_netns, "ip", "-j", "route", "show", "default"))
    assert [r.get("gateway") for r in routes] == ([f"{subnet}.3"] if default_route else [])
    sh(lab, *in_netns, "ping", "-c", "1", "-W", "2", f"{subnet}.3")


def assert_batch_made(lab):
    assert_pair_made(lab, 1)
    assert_pair_made(lab, 2, mtu=1400)
    assert_pair_made(lab, 3, default_route=False)


def test_three_pairs_converge_from_scratch_in_one_call_and_a_second_run_changes_nothing(lab, master, run_module, python):
    predicted = veths(run_module, PAIRS, python, check=True)
    assert snapshot(lab) == master, "check mode changed the master"
    expected = RECIPES[1] + RECIPES[2] + RECIPES[3]
    assert predicted["changed"] is True and predicted["actions"] == expected
    assert_one_call_for(predicted, NUMBERS)

    result = veths(run_module, PAIRS, python)
    assert_one_call_for(result, NUMBERS)
    assert result["changed"] is True and result["actions"] == expected
    assert result["diff"] == predicted["diff"], "check mode predicted another diff than the run made"
    assert sorted(result["diff"]["after"]) == ["batch1", "batch2", "batch3"]
    assert_batch_made(lab)
    for item in result["pairs"]:
        mac = json.loads(sh(lab, "ip", "-j", "link", "show", "dev", item["host_end"]["name"]))[0]["address"]
        assert item["host_end"]["mac"] == mac and isinstance(item["ns_end"]["index"], int)
    assert [item["ns_end"]["mtu"] for item in result["pairs"]] == [1500, 1400, 1500]

    again = veths(run_module, PAIRS, python)
    assert again["changed"] is False and again["actions"] == []
    assert again["diff"]["before"] == again["diff"]["after"]
    assert settled(again["pairs"]) == settled(result["pairs"])


def test_a_partial_state_with_one_pair_made_converges_changing_only_the_others(lab, master, run_module, python):
    made = run_module(MASTER, MODULE, PAIRS[1], python=python)  # the single form, as before pairs existed
    assert not made["failed"], made
    before = snapshot(lab)

    predicted = veths(run_module, PAIRS, python, check=True)
    assert snapshot(lab) == before, "check mode changed the master"
    assert predicted["actions"] == RECIPES[1] + RECIPES[3]

    result = veths(run_module, PAIRS, python)
    assert_one_call_for(result, NUMBERS)
    assert result["actions"] == predicted["actions"] and result["diff"] == predicted["diff"]
    assert result["diff"]["before"]["batch2"] == result["diff"]["after"]["batch2"]
    assert result["pairs"][1]["host_end"]["index"] == made["interfaces"]["host_end"]["index"], "pair 2 was remade"
    assert_batch_made(lab)
    assert veths(run_module, PAIRS, python)["changed"] is False


def test_absent_removes_every_pair_and_leaves_the_master_as_it_was(lab, master, run_module, python):
    assert not veths(run_module, PAIRS, python)["failed"]
    made = snapshot(lab)
    names_only = [{key: item[key] for key in ("netns", "ns_ifname", "host_ifname")} for item in PAIRS]

    predicted = veths(run_module, names_only, python, check=True, state="absent")
    assert snapshot(lab) == made, "check mode changed the master"
    assert predicted["actions"] == [
        action
        for number in NUMBERS
        for action in (f"delete veth pair bt{number}h <-> bt{number}n", f"delete netns batch{number}")
    ]

    result = veths(run_module, names_only, python, state="absent")
    assert not result["failed"], result
    assert "results" not in result and result["pairs"] == [{"host_end": None, "ns_end": None}] * 3
    assert result["actions"] == predicted["actions"] and result["diff"] == predicted["diff"]
    assert snapshot(lab) == master
    assert veths(run_module, names_only, python, state="absent")["changed"] is False


def test_absent_keeps_a_namespace_the_module_did_not_create(lab, master, run_module):
    sh(lab, "ip", "netns", "add", "batch2")
    assert not veths(run_module, PAIRS)["failed"]
    result = veths(run_module, PAIRS, state="absent")
    assert "delete netns batch2" not in result["actions"]
    assert "delete veth pair bt2h <-> bt2n" in result["actions"] and "delete netns batch3" in result["actions"]
    assert [line.split()[0] for line in sh(lab, "ip", "netns", "list").splitlines()] == ["batch2"]
    assert sh(lab, "ip", "netns", "exec", "batch2", "ip", "-br", "link").split()[0] == "lo"
    assert "bt2n" not in sh(lab, "ip", "netns", "exec", "batch2", "ip", "-br", "link")


def test_an_entry_repeated_as_is_makes_one_pair_with_a_result_per_entry(lab, master, run_module):
    result = veths(run_module, [PAIRS[0], PAIRS[1], dict(PAIRS[0])])
    assert_one_call_for(result, (1, 2, 1))
    assert result["actions"] == RECIPES[1] + RECIPES[2]
    assert result["pairs"][0] == result["pairs"][2]
    assert sorted(result["diff"]["after"]) == ["batch1", "batch2"]


BAD_INPUT = {
    "same host_ifname in two pairs": (
        [PAIRS[0], PAIRS[1], pair(3, host_ifname="bt1h")],
        "pairs[2].host_ifname: 'bt1h' is also the host_ifname of pairs[0]",
    ),
    "same netns and ns_ifname, other address": (
        [PAIRS[0], PAIRS[1], pair(1, ns_address="10.244.21.5/24")],
        "pairs[2].ns_address: pairs[0] declares 'bt1n' in netns 'batch1' with ns_address 10.244.21.2/24, "
        "this entry with 10.244.21.5/24",
    ),
    "same netns, another pair": (
        [PAIRS[0], PAIRS[1], pair(3, netns="batch1")],
        "pairs[2].netns: 'batch1' already holds the pair of pairs[0]",
    ),
    "overlapping subnets": (
        [PAIRS[0], PAIRS[1], pair(3, ns_address="10.244.20.2/23", host_address="10.244.20.3/23")],
        "pairs[2].ns_address: subnet 10.244.20.0/23 overlaps 10.244.21.0/24, the subnet of pairs[0]",
    ),
    "bad address in an entry": (
        [PAIRS[0], PAIRS[1], pair(3, ns_address="10.244.23.2")],
        "pairs[2].ns_address: '10.244.23.2' is not in CIDR notation",
    ),
    "missing option in an entry": (
        [PAIRS[0], {key: value for key, value in PAIRS[1].items() if key != "host_ifname"}],
        "pairs[1].host_ifname: is required",
    ),
    "missing address in an entry": (
        [PAIRS[0], {key: value for key, value in PAIRS[1].items() if key != "host_address"}],
        "pairs[1].host_address: is required when state=present",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT), ids=sorted(BAD_INPUT))
def test_bad_input_across_pairs_is_refused_naming_the_entry_before_anything_changes(lab, master, run_module, case):
    pairs, message = BAD_INPUT[case]
    result = veths(run_module, pairs)
    assert result["failed"] is True
    assert result["msg"].startswith(message), result["msg"]
    assert snapshot(lab) == master


@pytest.mark.parametrize(
    "args, message",
    [
        ({"pairs": PAIRS, "netns": "batch9"}, "parameters are mutually exclusive: pairs|netns"),
        ({"pairs": PAIRS, "mtu": 1400}, "parameters are mutually exclusive: pairs|mtu"),
        ({"pairs": [dict(PAIRS[0], state="absent")]}, "Unsupported parameters"),
        ({"ns_ifname": "bt1n", "host_ifname": "bt1h"}, "one of the following is required: netns, pairs"),
        ({key: value for key, value in PAIRS[0].items() if key != "ns_ifname"}, "ns_ifname: is required"),
        ({key: value for key, value in PAIRS[0].items() if key != "host_address"},
         "host_address: is required when state=present"),
    ],
    ids=["pairs and netns", "pairs and mtu", "state in an entry", "neither netns nor pairs",
         "single form without ns_ifname", "single form without host_address"],
)
def test_the_forms_are_not_mixed_and_the_single_form_names_what_it_misses(lab, master, run_module, args, message):
    result = run_module(MASTER, MODULE, args)
    assert result["failed"] is True
    assert result["msg"].startswith(message), result["msg"]
    assert snapshot(lab) == master


@pytest.mark.parametrize("state", ["present", "absent"])
def test_a_name_taken_on_the_host_refuses_the_whole_batch_naming_the_entry(lab, master, run_module, state):
    sh(lab, "ip", "link", "add", "bt3h", "type", "bridge")  # the master fixture deletes it
    before = snapshot(lab)
    result = veths(run_module, PAIRS, state=state)
    assert result["failed"] is True
    assert result["msg"] == "pairs[2].host_ifname: 'bt3h' is already in use on the host by a bridge device, not a veth"
    assert snapshot(lab) == before
