"""The module tests run the collection's modules with ModuleRunner (conftest.py), not ansible-playbook: this
proves that a module gives the same result either way, so that what those tests prove holds through Ansible.

Each call is made through Ansible (the nsenter connection, AnsiballZ) and through ModuleRunner, on the lab
master, and the two results are compared whole (but for the module's name, which only the test callback adds).
"""
from __future__ import annotations

import pytest
from master_host import MASTER, nft_table, scrub_netfilter, sh

# A pair of its own, so that the test leaves the recipe's ns1 to the other tests.
PAIR = dict(netns="nsrunner", ns_ifname="vrun1a", host_ifname="vrun1b",
            ns_address="10.250.7.2/24", host_address="10.250.7.3/24")
MAPPING = dict(name="runner-web", protocol="tcp", port=8190, to_address="10.250.7.2", to_port=9090,
               backend="nftables")


def both(ansible, modules, module, args, **kwargs):
    """(through Ansible, through ModuleRunner): the results of the same call."""
    through_ansible = ansible.run_module(MASTER, module, args, **kwargs)
    through_ansible.pop("action")  # the test callback's record of the task's module, not the module's
    return through_ansible, modules.run_module(MASTER, module, args, **kwargs)


@pytest.fixture
def clean_master(lab, modules):
    scrub_netfilter(lab)
    yield lab
    modules.run_module(MASTER, "netns.expose.netns_veth", {**PAIR, "state": "absent"})
    scrub_netfilter(lab)


def test_a_check_run_with_diff_gives_the_same_result(ansible, modules, clean_master, python):
    through_ansible, direct = both(ansible, modules, "netns.expose.netns_veth", PAIR, check=True, diff=True,
                                   python=python)
    assert through_ansible["changed"] is True and through_ansible["diff"]["before"]["netns"]["present"] is False
    assert direct == through_ansible
    assert "nsrunner" not in sh(clean_master, "ip", "netns", "list")  # both ran in check mode


def test_a_refused_argument_gives_the_same_failure(ansible, modules, clean_master):
    through_ansible, direct = both(ansible, modules, "netns.expose.dnat_rule", {**MAPPING, "port": "http"})
    through_ansible.pop("exception")  # the controller's "(traceback unavailable)" for a module without one
    assert through_ansible["failed"] is True and "port" in through_ansible["msg"]
    assert direct == through_ansible


def test_what_one_way_makes_the_other_finds_as_declared(ansible, modules, clean_master):
    made = modules.run_module(MASTER, "netns.expose.dnat_rule", MAPPING, diff=True)
    assert made["changed"] is True, made
    assert any("runner-web" in line for line in nft_table(clean_master))
    through_ansible, direct = both(ansible, modules, "netns.expose.dnat_rule", MAPPING, diff=True)
    assert through_ansible["changed"] is False and through_ansible["actions"] == []
    assert direct == through_ansible
    removed = ansible.run_module(MASTER, "netns.expose.dnat_rule", {**MAPPING, "state": "absent"})
    assert removed["changed"] is True and nft_table(clean_master) is None
