# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The expose role's calls of netns_veth and dnat_rule for a plan, and what each would change.

plan_services plans them in check mode, with the modules' own read and plan, so that the
role skips a call that would change nothing: a run that finds every host as declared makes
one module call per host. The arguments are those of roles/expose/tasks/apply.yml.
"""
from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.netns.expose.plugins.module_utils import _dnat_run, _netns_veth
from ansible_collections.netns.expose.plugins.module_utils._iptables import IptablesError
from ansible_collections.netns.expose.plugins.module_utils._netlink import HAS_PYROUTE2, Netlink
from ansible_collections.netns.expose.plugins.module_utils._nftables import ForwardDropped, NftError
from ansible_collections.netns.expose.plugins.module_utils._persist import systemd_of
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

# A call's read fails on these before anything changes; the call itself then fails with the same message.
UNREADABLE = (InvalidInput, IptablesError, NftError, ForwardDropped)


def netns_veth_args(plan, state, persistent):
    """The arguments of the role's netns_veth call, or None where the role makes none."""
    if not plan["pairs"]:
        return None
    return {"pairs": plan["pairs"], "persistent": persistent, "state": state}


def dnat_rule_args(plan, state, persistent, exclusive, backend):
    """The arguments of the role's dnat_rule call, or None where the role makes none."""
    networks = {"guarded_networks": plan["guarded_networks"], "routed_networks": plan["routed_networks"]}
    if state == "absent":
        return {"rules": plan["mappings"], **networks, "persistent": persistent, "backend": backend, "state": state} \
            if plan["mappings"] or plan["pairs"] else None
    if not (plan["mappings"] or plan["pairs"] or exclusive):
        return None
    return {"rules": plan["mappings"], "exclusive": exclusive, "hairpin_sources": plan["hairpin_sources"], **networks,
            "persistent": persistent, "backend": backend, "state": state}


def _validated(spec, rules, args):
    result = ArgumentSpecValidator(spec, **rules).validate(args)
    if result.error_messages:
        # The plan is the services' checked batch; arguments it cannot give are a bug of the collection.
        raise AssertionError(f"the role's call would be refused: {'; '.join(result.error_messages)}")
    return result.validated_parameters


def _of_skipped(plan):
    """The warnings of a call's plan when the role skips the call (nothing to do); it gives them itself otherwise."""
    return [] if plan.actions else plan.warnings


def pending(module, plan, state, persistent, exclusive, backend):
    """({"pairs": actions, "mappings": actions}, warnings) of the role's two calls.

    A call's actions are [] when it would change nothing or is not made, and None when its read fails
    (a tool missing, a conflict on the host), so that the call runs and says why. The warnings are
    those of the calls the role will skip, which cannot give them.
    """
    actions, warnings = {"pairs": [], "mappings": []}, []
    args = netns_veth_args(plan, state, persistent)
    if args is not None:
        actions["pairs"] = None
        if HAS_PYROUTE2:
            params = _validated(_netns_veth.ARGUMENT_SPEC, _netns_veth.ARGUMENT_RULES, args)
            with Netlink() as netlink:
                try:
                    veth_plan = _netns_veth.VethRun(netlink, params, systemd=systemd_of(module)).plan
                except UNREADABLE:
                    veth_plan = None
            if veth_plan is not None:
                actions["pairs"] = veth_plan.actions
                warnings += _of_skipped(veth_plan)
    args = dnat_rule_args(plan, state, persistent, exclusive, backend)
    if args is not None:
        params = _validated(_dnat_run.ARGUMENT_SPEC, _dnat_run.ARGUMENT_RULES, args)
        try:
            dnat_plan = _dnat_run.plan_run(module, params)[0]
        except UNREADABLE:
            actions["mappings"] = None
        else:
            actions["mappings"] = dnat_plan.actions
            warnings += _of_skipped(dnat_plan)
    return actions, warnings
