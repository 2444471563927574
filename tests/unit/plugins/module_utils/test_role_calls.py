"""plan_services' view of the role's two calls: their arguments are apply.yml's, and what each would change
(the modules' plans mocked here; tests/integration/test_role.py proves it on a lab host)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.netns.expose.plugins.module_utils import _role_calls
from ansible_collections.netns.expose.plugins.module_utils._nftables import NftError
from ansible_collections.netns.expose.plugins.module_utils._plan import Plan

APPLY = Path(__file__).resolve().parents[4] / "roles" / "expose" / "tasks" / "apply.yml"
PLAN = {"pairs": [{"netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b", "ns_address": "10.244.1.2/24",
                   "host_address": "10.244.1.3/24"}],
        "mappings": [{"name": "web-tcp-8090", "protocol": "tcp", "port": 8090, "to_address": "10.244.1.2",
                      "to_port": 9090}],
        "hairpin_sources": ["10.244.1.0/24"], "guarded_networks": ["10.244.1.0/24"], "routed_networks": []}
EMPTY = {"pairs": [], "mappings": [], "hairpin_sources": [], "guarded_networks": [], "routed_networks": []}


def apply_calls(state):
    """{module: its argument names} of apply.yml's tasks for state (not the read of an empty list's mappings)."""
    calls = {}
    for task in yaml.safe_load(APPLY.read_text(encoding="utf-8")):
        module = next((key for key in task if key.startswith("netns.expose.")), None)
        if module and f'expose_state == "{state}"' in task["when"] and not task.get("check_mode"):
            calls[module] = set(task[module])
    return calls


@pytest.mark.parametrize("state", ["present", "absent"])
def test_the_calls_take_the_arguments_of_apply_yml(state):
    assert apply_calls(state) == {
        "netns.expose.netns_veth": set(_role_calls.netns_veth_args(PLAN, state, True)),
        "netns.expose.dnat_rule": set(_role_calls.dnat_rule_args(PLAN, state, True, True, "auto")),
    }


def test_no_call_where_the_role_makes_none():
    assert _role_calls.netns_veth_args(EMPTY, "present", True) is None
    assert _role_calls.dnat_rule_args(EMPTY, "absent", True, True, "auto") is None
    # exclusive with no mapping: the call that removes every mapping of the collection
    assert _role_calls.dnat_rule_args(EMPTY, "present", True, True, "auto")["rules"] == []
    assert _role_calls.dnat_rule_args(EMPTY, "present", True, False, "auto") is None
    # A namespace with no port is guarded all the same, and its guard goes with it.
    portless = {**PLAN, "mappings": []}
    assert _role_calls.dnat_rule_args(portless, "present", True, False, "auto")["guarded_networks"] == ["10.244.1.0/24"]
    assert _role_calls.dnat_rule_args(portless, "absent", True, False, "auto")["guarded_networks"] == ["10.244.1.0/24"]


def _plan(actions, warnings=()):
    plan = Plan({})
    for action in actions:
        plan.add(action, None)
    plan.warnings.extend(warnings)
    return plan


class _Netlink:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def modules(monkeypatch):
    """The two modules' plans, as the test sets them; records the parameters each was planned with."""
    planned = {"veth": _plan([]), "dnat_plan": _plan([]), "params": {}}
    planned["dnat"] = lambda: planned["dnat_plan"]  # a test whose read fails replaces it

    class VethRun:
        def __init__(self, _netlink, params, systemd=None):
            planned["params"]["veth"] = params
            self.plan = planned["veth"]

    def plan_run(_module, params):
        planned["params"]["dnat"] = params
        return planned["dnat"](), None

    monkeypatch.setattr(_role_calls, "HAS_PYROUTE2", True)
    monkeypatch.setattr(_role_calls, "Netlink", _Netlink)
    monkeypatch.setattr(_role_calls, "systemd_of", lambda module: None)
    monkeypatch.setattr(_role_calls._netns_veth, "VethRun", VethRun)
    monkeypatch.setattr(_role_calls._dnat_run, "plan_run", plan_run)
    return planned


def test_a_host_as_declared_has_nothing_pending_and_gets_the_skipped_calls_warnings(modules):
    modules["veth"] = _plan([], ["persistent: systemd is not the service manager of this host"])
    actions, warnings = _role_calls.pending(None, PLAN, "present", True, True, "auto")
    assert actions == {"pairs": [], "mappings": []}
    assert warnings == ["persistent: systemd is not the service manager of this host"]
    # The modules were planned with their own defaults filled in, as a call of theirs gets them.
    assert modules["params"]["veth"]["pairs"][0]["default_route"] is True
    assert modules["params"]["dnat"]["flush_conntrack"] is True and modules["params"]["dnat"]["exclusive"] is True


def test_a_call_with_changes_gives_its_warnings_itself(modules):
    modules["dnat_plan"] = _plan(["add web-tcp-8090"], ["a warning of dnat_rule"])
    actions, warnings = _role_calls.pending(None, PLAN, "present", True, True, "auto")
    assert actions == {"pairs": [], "mappings": ["add web-tcp-8090"]}
    assert warnings == []


def test_what_cannot_be_read_is_unknown_so_the_call_runs(modules, monkeypatch):
    def unreadable():
        raise NftError("nft: no such table")

    modules["dnat"] = unreadable
    monkeypatch.setattr(_role_calls, "HAS_PYROUTE2", False)
    actions, _warnings = _role_calls.pending(None, PLAN, "present", True, True, "auto")
    assert actions == {"pairs": None, "mappings": None}
