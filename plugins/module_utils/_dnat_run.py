# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One call of the dnat_rule module: its options, and the read and the plan of a call.

Here rather than in the module so that plan_services can plan the call the role
will make, in check mode, with the same code.
"""
from __future__ import annotations

from ansible_collections.netns.expose.plugins.module_utils._conntrack import ConntrackTable
from ansible_collections.netns.expose.plugins.module_utils._dnat import (
    MAPPING_FIELDS,
    DnatSpec,
    connmark_from_params,
    hairpin_sources_from_params,
    mappings_from_params,
    networks_from_params,
    plan_dnat,
    read_ip_forward,
)
from ansible_collections.netns.expose.plugins.module_utils._lock import LOCK_OPTION
from ansible_collections.netns.expose.plugins.module_utils._nftables import open_backends
from ansible_collections.netns.expose.plugins.module_utils._persist import systemd_of

MAPPING_OPTIONS = dict(
    name=dict(type="str"),
    protocol=dict(type="str", choices=["tcp", "udp", "icmp"]),
    port=dict(type="int"),
    to_address=dict(type="str"),
    to_port=dict(type="int"),
    destination=dict(type="str"),
    in_interface=dict(type="str"),
    local=dict(type="bool"),
    allowed_sources=dict(type="list", elements="str"),
)
ARGUMENT_SPEC = dict(
    MAPPING_OPTIONS,
    **LOCK_OPTION,
    protocol=dict(type="str", choices=["tcp", "udp", "icmp"], default="tcp"),
    local=dict(type="bool", default=False),
    rules=dict(type="list", elements="dict", options=MAPPING_OPTIONS),
    exclusive=dict(type="bool", default=False),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    ip_forward=dict(type="bool", default=True),
    accept_forward=dict(type="bool", default=True),
    hairpin=dict(type="bool", default=True),
    hairpin_sources=dict(type="list", elements="str", default=[]),
    guarded_networks=dict(type="list", elements="str", default=[]),
    routed_networks=dict(type="list", elements="str", default=[]),
    flush_conntrack=dict(type="bool", default=True),
    connmark=dict(type="int", default=0x1000000),
    persistent=dict(type="bool", default=True),
    backend=dict(type="str", choices=["auto", "iptables", "nftables"], default="auto"),
    forward_drop_check=dict(type="bool", default=True),
    iptables=dict(type="str", choices=["auto", "nft", "legacy"], default="auto"),
)
ARGUMENT_RULES = dict(
    mutually_exclusive=[("name", "rules")],
    required_one_of=[("name", "rules")],
)


def plan_run(module, params):
    """(plan, backends) of a call with params (checked against ARGUMENT_SPEC), the host read through module.

    Raises InvalidInput, IptablesError, NftError or ForwardDropped before anything changes.
    """
    spec = DnatSpec(
        mappings=mappings_from_params({key: params[key] for key in (*MAPPING_FIELDS, "rules", "state")}),
        state=params["state"],
        exclusive=params["exclusive"],
        ip_forward=params["ip_forward"],
        accept_forward=params["accept_forward"],
        hairpin=params["hairpin"],
        hairpin_sources=hairpin_sources_from_params(params["hairpin_sources"]),
        flush_conntrack=params["flush_conntrack"],
        connmark=connmark_from_params(params["connmark"]),
        persistent=params["persistent"],
        networks=networks_from_params(params["guarded_networks"], params["routed_networks"]),
    )
    backends = open_backends(module, params["backend"], params["iptables"], params["forward_drop_check"])
    plan = plan_dnat(backends.active, spec, read_ip_forward(), conntrack=ConntrackTable(module),
                     systemd=systemd_of(module), others=backends.others)
    return plan, backends
