"""netns_veth through Ansible against a lab master: real namespaces, real netlink.

Every test starts from a pristine master (no ns1, no veth1a/veth1b) and puts it
back afterwards, also when it fails.
"""
from __future__ import annotations

import json
import subprocess

import pytest
from master_host import MASTER, sh, snapshot

ARGS = dict(
    netns="ns1",
    ns_ifname="veth1a",
    host_ifname="veth1b",
    ns_address="10.244.1.2/24",
    host_address="10.244.1.3/24",
)
MODULE = "netns.expose.netns_veth"
FULL_RECIPE = [
    "create netns ns1",
    "create veth pair veth1b <-> veth1a (in netns ns1)",
    "add address 10.244.1.3/24 to veth1b",
    "set veth1b up",
    "add address 10.244.1.2/24 to veth1a in netns ns1",
    "set veth1a up in netns ns1",
    "set default route via 10.244.1.3 in netns ns1",
]


def in_ns1(lab, *argv, check=True):
    return sh(lab, "ip", "netns", "exec", "ns1", *argv, check=check)


@pytest.fixture
def master(lab):
    """A pristine master before and after the test."""

    def scrub():
        sh(lab, "ip", "link", "del", "veth1b", check=False)
        sh(lab, "ip", "link", "del", "veth1a", check=False)
        sh(lab, "ip", "netns", "del", "ns1", check=False)
        sh(lab, "rm", "-f", "/run/netns/ns1", check=False)

    scrub()
    pristine = snapshot(lab)
    yield pristine
    scrub()


def veth(run_module, python=None, check=False, diff=True, **overrides):
    return run_module(MASTER, MODULE, {**ARGS, **overrides}, check=check, diff=diff, python=python)


def assert_recipe_state(lab, mtu=1500):
    """What the hand-made recipe leaves behind, read with iproute2."""
    ns_links = {link["ifname"]: link for link in json.loads(in_ns1(lab, "ip", "-j", "addr", "show"))}
    assert ns_links["veth1a"]["mtu"] == mtu
    assert "UP" in ns_links["veth1a"]["flags"] and "UP" in ns_links["lo"]["flags"]
    assert [(a["local"], a["prefixlen"]) for a in ns_links["veth1a"]["addr_info"] if a["family"] == "inet"] == [("10.244.1.2", 24)]
    host = json.loads(sh(lab, "ip", "-j", "addr", "show", "dev", "veth1b"))[0]
    assert host["mtu"] == mtu and "UP" in host["flags"]
    assert [(a["local"], a["prefixlen"]) for a in host["addr_info"] if a["family"] == "inet"] == [("10.244.1.3", 24)]
    routes = json.loads(in_ns1(lab, "ip", "-j", "route", "show", "default"))
    assert [(r.get("gateway"), r.get("dev")) for r in routes] == [("10.244.1.3", "veth1a")]
    # The pair carries traffic: the namespace reaches the host end.
    in_ns1(lab, "ping", "-c", "1", "-W", "2", "10.244.1.3")


def test_fresh_host_gets_the_recipe_and_a_second_run_changes_nothing(lab, master, run_module, python):
    result = veth(run_module, python)
    assert not result.get("failed"), result
    assert result["changed"] is True
    assert result["actions"] == FULL_RECIPE
    assert_recipe_state(lab)
    ends = result["interfaces"]
    assert ends["ns_end"]["name"] == "veth1a" and ends["ns_end"]["netns"] == "ns1"
    assert ends["ns_end"]["addresses"] == ["10.244.1.2/24"] and ends["ns_end"]["state"] == "up"
    mac = json.loads(sh(lab, "ip", "-j", "link", "show", "dev", "veth1b"))[0]["address"]
    assert ends["host_end"]["mac"] == mac and isinstance(ends["host_end"]["index"], int)

    again = veth(run_module, python)
    assert again["changed"] is False and again["actions"] == []
    assert again["diff"]["before"] == again["diff"]["after"]


PARTIAL_STATES = {
    # `ip netns add` leaves lo down; the module brings it up.
    "netns without veth": (
        [["ip", "netns", "add", "ns1"]],
        ["set lo up in netns ns1", *FULL_RECIPE[1:]],
    ),
    "pair with ns end still on host": (
        [["ip", "netns", "add", "ns1"], ["ip", "link", "add", "veth1b", "type", "veth", "peer", "name", "veth1a"]],
        ["set lo up in netns ns1", "move veth1a into netns ns1", *FULL_RECIPE[2:]],
    ),
    "wrong address in ns": (
        "converged",
        [["ip", "netns", "exec", "ns1", "ip", "addr", "flush", "dev", "veth1a"],
         ["ip", "netns", "exec", "ns1", "ip", "addr", "add", "10.244.1.9/24", "dev", "veth1a"],
         ["ip", "netns", "exec", "ns1", "ip", "route", "add", "default", "via", "10.244.1.3"]],
        ["remove address 10.244.1.9/24 from veth1a in netns ns1", "add address 10.244.1.2/24 to veth1a in netns ns1",
         "set default route via 10.244.1.3 in netns ns1"],
    ),
    "extra address in ns": (
        "converged",
        [["ip", "netns", "exec", "ns1", "ip", "addr", "add", "10.244.1.9/24", "dev", "veth1a"]],
        ["remove address 10.244.1.9/24 from veth1a in netns ns1"],
    ),
    "wanted address is a secondary of a wrong primary": (
        "converged",
        [["ip", "netns", "exec", "ns1", "ip", "addr", "flush", "dev", "veth1a"],
         ["ip", "netns", "exec", "ns1", "ip", "addr", "add", "10.244.1.9/24", "dev", "veth1a"],
         ["ip", "netns", "exec", "ns1", "ip", "addr", "add", "10.244.1.2/24", "dev", "veth1a"],
         ["ip", "netns", "exec", "ns1", "ip", "route", "add", "default", "via", "10.244.1.3"]],
        ["remove address 10.244.1.9/24 from veth1a in netns ns1", "add address 10.244.1.2/24 to veth1a in netns ns1",
         "set default route via 10.244.1.3 in netns ns1"],
    ),
    "missing host address": (
        "converged",
        [["ip", "addr", "flush", "dev", "veth1b"]],
        ["add address 10.244.1.3/24 to veth1b"],
    ),
    "host end down": (
        "converged",
        [["ip", "link", "set", "veth1b", "down"]],
        ["set veth1b up"],
    ),
    "route missing": (
        "converged",
        [["ip", "netns", "exec", "ns1", "ip", "route", "del", "default"]],
        ["set default route via 10.244.1.3 in netns ns1"],
    ),
    "route elsewhere": (
        "converged",
        [["ip", "netns", "exec", "ns1", "ip", "route", "replace", "default", "via", "10.244.1.99"]],
        ["set default route via 10.244.1.3 in netns ns1"],
    ),
    "mtu differs": (
        "converged",
        [["ip", "link", "set", "veth1b", "mtu", "1400"]],
        ["set mtu 1500 on veth1b"],
    ),
}


@pytest.mark.parametrize("case", sorted(PARTIAL_STATES), ids=sorted(PARTIAL_STATES))
def test_partial_state_converges_changing_only_what_differs(lab, master, run_module, python, case):
    if PARTIAL_STATES[case][0] == "converged":
        breakage, expected = PARTIAL_STATES[case][1:]
        assert not veth(run_module, python, mtu=1500).get("failed")
    else:
        breakage, expected = PARTIAL_STATES[case]
    for argv in breakage:
        sh(lab, *argv)

    before = snapshot(lab)
    predicted = veth(run_module, python, check=True, mtu=1500)
    assert snapshot(lab) == before, "check mode changed the host"
    assert predicted["changed"] is True and predicted["actions"] == expected

    result = veth(run_module, python, mtu=1500)
    assert not result.get("failed"), result
    assert result["actions"] == expected
    assert result["diff"] == predicted["diff"], "check mode predicted another diff than the run made"
    assert_recipe_state(lab)
    assert veth(run_module, python, mtu=1500)["changed"] is False


def test_check_mode_on_a_fresh_host_predicts_and_changes_nothing(lab, master, run_module):
    predicted = veth(run_module, check=True)
    assert predicted["changed"] is True and predicted["actions"] == FULL_RECIPE
    assert snapshot(lab) == master
    assert predicted["interfaces"]["ns_end"]["index"] is None  # not created, so not known
    result = veth(run_module)
    assert result["diff"] == predicted["diff"]
    assert result["interfaces"]["ns_end"]["addresses"] == predicted["interfaces"]["ns_end"]["addresses"]


def test_diff_shows_before_and_after(lab, master, run_module):
    assert not veth(run_module).get("failed")
    sh(lab, "ip", "link", "set", "veth1b", "down")
    diff = veth(run_module)["diff"]
    assert diff["before"]["host_end"]["up"] is False and diff["after"]["host_end"]["up"] is True
    assert diff["before"]["ns_end"] == diff["after"]["ns_end"]


def test_mtu_is_set_on_both_ends(lab, master, run_module):
    result = veth(run_module, mtu=1400)
    assert not result.get("failed"), result
    assert_recipe_state(lab, mtu=1400)


def test_absent_leaves_nothing_behind(lab, master, run_module, python):
    assert not veth(run_module, python).get("failed")
    check = veth(run_module, python, check=True, state="absent")
    assert check["actions"] == ["delete veth pair veth1b <-> veth1a", "delete netns ns1"]
    assert snapshot(lab) != master  # check mode removed nothing
    result = veth(run_module, python, state="absent")
    assert result["changed"] is True and result["diff"] == check["diff"]
    assert snapshot(lab) == master
    assert veth(run_module, python, state="absent")["changed"] is False


def test_absent_keeps_a_namespace_it_did_not_create(lab, master, run_module):
    sh(lab, "ip", "netns", "add", "ns1")
    assert not veth(run_module).get("failed")
    result = veth(run_module, state="absent")
    assert result["actions"] == ["delete veth pair veth1b <-> veth1a"]
    assert sh(lab, "ip", "netns", "list").split()[0] == "ns1"
    assert "veth1a" not in in_ns1(lab, "ip", "-br", "link")


BAD_INPUT = {
    "ifname too long": (dict(host_ifname="veth1b-is-too-long"), "host_ifname: "),
    "ifname with slash": (dict(ns_ifname="veth/1a"), "ns_ifname: "),
    "ifname with space": (dict(ns_ifname="veth 1a"), "ns_ifname: "),
    "netns not a file name": (dict(netns="../ns1"), "netns: "),
    "address not CIDR": (dict(ns_address="10.244.1.2"), "ns_address: "),
    "address not IPv4": (dict(ns_address="banana/24"), "ns_address: "),
    "addresses in two subnets": (dict(host_address="10.244.2.3/24"), "host_address: "),
    "addresses equal": (dict(host_address="10.244.1.2/24"), "host_address: "),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT), ids=sorted(BAD_INPUT))
def test_bad_input_is_refused_before_anything_changes(lab, master, run_module, case):
    overrides, prefix = BAD_INPUT[case]
    result = veth(run_module, **overrides)
    assert result.get("failed") is True
    assert result["msg"].startswith(prefix), result["msg"]
    assert snapshot(lab) == master


@pytest.mark.parametrize("state", ["present", "absent"])
def test_an_interface_of_another_kind_with_the_host_ifname_is_refused_and_kept(lab, master, run_module, state):
    sh(lab, "ip", "link", "add", "veth1b", "type", "bridge")
    before = snapshot(lab)
    result = veth(run_module, state=state)
    assert result.get("failed") is True
    assert result["msg"].startswith("host_ifname: 'veth1b' is already in use on the host by a bridge device"), result["msg"]
    assert snapshot(lab) == before


def test_a_netns_name_taken_by_a_plain_file_is_refused(lab, master, run_module):
    sh(lab, "touch", "/run/netns/ns1")
    result = veth(run_module)
    assert result.get("failed") is True
    assert result["msg"] == "netns: /var/run/netns/ns1 exists but is not a network namespace"
    assert "veth1b" not in sh(lab, "ip", "-br", "link")


def test_missing_pyroute2_is_reported_with_missing_required_lib(lab, master, run_module, tmp_path):
    bare = tmp_path / "bare-venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(bare)], check=True)
    result = veth(run_module, python=str(bare / "bin" / "python3"))
    assert result.get("failed") is True
    assert "Failed to import the required Python library (pyroute2)" in result["msg"]
    assert snapshot(lab) == master
