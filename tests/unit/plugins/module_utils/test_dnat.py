"""Mappings, their rules and the dnat_rule plan, on fabricated iptables-save dumps."""
from __future__ import annotations

from unittest import mock

import pytest

from ansible_collections.netns.expose.plugins.module_utils import _dnat
from ansible_collections.netns.expose.plugins.module_utils._dnat import (
    IP_FORWARD_MARK,
    DnatSpec,
    Mapping,
    RolledBack,
    build_plan,
    hairpin_sources_from_params,
    mappings_from_params,
)
from ansible_collections.netns.expose.plugins.module_utils._iptables import IptablesError, parse_save
from ansible_collections.netns.expose.plugins.module_utils._plan import PlanApplyError
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

WEB = Mapping(name="web", protocol="tcp", port=8090, to_address="10.244.1.2", to_port=9090,
              destination="10.211.55.122", in_interface="eth0")
DNS = Mapping(name="dns", protocol="udp", port=8053, to_address="10.244.1.2", to_port=53)
PING = Mapping(name="ping", protocol="icmp", to_address="10.244.1.2", in_interface="eth0", local=True)
EMPTY = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"


def test_rules_are_written_as_iptables_save_prints_them():
    assert WEB.prerouting_rule() == (
        "-A NETNS-EXPOSE -d 10.211.55.122/32 -i eth0 -p tcp -m tcp --dport 8090 "
        '-m comment --comment "netns.expose:web" -j DNAT --to-destination 10.244.1.2:9090'
    )
    # Without a destination, only packets for this host's own addresses.
    assert DNS.prerouting_rule() == (
        "-A NETNS-EXPOSE ! -d 127.0.0.0/8 -p udp -m addrtype --dst-type LOCAL -m udp --dport 8053 "
        '-m comment --comment "netns.expose:dns" -j DNAT --to-destination 10.244.1.2:53'
    )
    assert PING.prerouting_rule() == (
        "-A NETNS-EXPOSE ! -d 127.0.0.0/8 -i eth0 -p icmp -m addrtype --dst-type LOCAL "
        '-m comment --comment "netns.expose:ping" -j DNAT --to-destination 10.244.1.2'
    )
    assert PING.output_rule() == (
        "-A NETNS-EXPOSE-LOCAL ! -d 127.0.0.0/8 -p icmp -m addrtype --dst-type LOCAL "
        '-m comment --comment "netns.expose:ping" -j DNAT --to-destination 10.244.1.2'
    )
    assert WEB.forward_rule() == (
        "-A NETNS-EXPOSE-FWD -m conntrack --ctstate DNAT --ctproto 6 --ctreplsrc 10.244.1.2 "
        '--ctorigdstport 8090 --ctreplsrcport 9090 -m comment --comment "netns.expose:web" -j ACCEPT'
    )


def params(**overrides):
    base = dict(name=None, protocol="tcp", port=None, to_address=None, to_port=None, destination=None,
                in_interface=None, local=False, rules=None, state="present")
    return {**base, **overrides}


def test_to_port_defaults_to_port():
    [mapping] = mappings_from_params(params(name="web", port=80, to_address="10.244.1.2"))
    assert mapping.to_port == 80


def test_rules_entries_take_the_module_local_as_default():
    mappings = mappings_from_params(params(local=True, rules=[
        dict(name="a", protocol="tcp", port=1, to_address="10.0.0.1", local=None),
        dict(name="b", protocol="tcp", port=2, to_address="10.0.0.1", local=False),
    ]))
    assert [m.local for m in mappings] == [True, False]


INJECTIONS = ['web"', "web'", "we b", "web\n-A INPUT -j ACCEPT", "--dport", "-j", 'x" -j ACCEPT #', "a" * 129, ""]


@pytest.mark.parametrize("name", INJECTIONS)
def test_names_that_would_not_survive_as_a_comment_are_refused(name):
    with pytest.raises(InvalidInput) as excinfo:
        mappings_from_params(params(name=name, port=80, to_address="10.0.0.1"))
    assert excinfo.value.field == "name"


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        (dict(port=0), "port", "outside 1..65535"),
        (dict(port=65536), "port", "outside 1..65535"),
        (dict(to_port=70000), "to_port", "outside 1..65535"),
        (dict(port=None), "port", "required for tcp"),
        (dict(protocol="icmp"), "port", "icmp mappings take no ports"),
        (dict(protocol="icmp", port=None, to_port=9090), "to_port", "icmp mappings take no ports"),
        (dict(to_address="10.244.1.2/32"), "to_address", "CIDR"),
        (dict(to_address="fd00::2"), "to_address", "not an IPv4"),
        (dict(to_address=None), "to_address", "required"),
        (dict(destination="10.211.55.0/24"), "destination", "CIDR"),
        (dict(destination="127.0.0.1"), "destination", "loopback address"),
        (dict(to_address="127.0.0.53"), "to_address", "loopback address"),
        (dict(in_interface="eth0 -j ACCEPT"), "in_interface", "must not contain"),
        (dict(in_interface="a" * 16), "in_interface", "at most 15"),
    ],
)
def test_bad_mapping_input_names_the_field(overrides, field, fragment):
    with pytest.raises(InvalidInput) as excinfo:
        mappings_from_params(params(**{**dict(name="web", port=8090, to_address="10.244.1.2"), **overrides}))
    assert str(excinfo.value).startswith(f"{field}: ") and fragment in str(excinfo.value)


def test_list_errors_name_the_entry():
    with pytest.raises(InvalidInput, match=r"^rules\[1\]\.port: 0 is outside"):
        mappings_from_params(params(rules=[dict(name="a", port=1, to_address="10.0.0.1"), dict(name="b", port=0, to_address="10.0.0.1")]))


def test_duplicate_names_and_duplicate_matches_in_one_list_are_refused():
    with pytest.raises(InvalidInput, match=r"^rules\[1\]\.name: 'a' is also the name of rules\[0\]"):
        mappings_from_params(params(rules=[dict(name="a", port=1, to_address="10.0.0.1"), dict(name="a", port=2, to_address="10.0.0.1")]))
    with pytest.raises(InvalidInput, match=r"^rules\[1\]\.port: same protocol, port, destination and in_interface as rules\[0\] \('a'\)"):
        mappings_from_params(params(rules=[dict(name="a", port=1, to_address="10.0.0.1"), dict(name="b", port=1, to_address="10.0.0.2")]))


def test_absent_needs_only_names():
    assert mappings_from_params(params(name="web", state="absent")) == [Mapping(name="web")]


def spec(mappings, **overrides):
    return DnatSpec(**{**dict(mappings=mappings, state="present", exclusive=False, ip_forward=True, accept_forward=True), **overrides})


def backend(dump_text=EMPTY):
    fake = mock.Mock(name="backend", variant="nft")
    fake.read.return_value = parse_save(dump_text)
    return fake


def save_with(mappings, ip_forward_mark=False, extra_nat="", extra_filter="", hairpin=True):
    """An iptables-save dump where the given mappings are in place."""
    nat = [m.prerouting_rule() for m in mappings] + [m.output_rule() for m in mappings if m.local]
    if ip_forward_mark:
        nat.append(IP_FORWARD_MARK)
    fwd = [m.forward_rule() for m in mappings]
    jumps = ['-A PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE']
    chains = [":NETNS-EXPOSE - [0:0]"]
    if any(m.local for m in mappings):
        jumps.append('-A OUTPUT -m comment --comment "netns.expose" -j NETNS-EXPOSE-LOCAL')
        chains.append(":NETNS-EXPOSE-LOCAL - [0:0]")
    if hairpin and mappings:
        jumps.append('-A POSTROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE-POST')
        chains.append(":NETNS-EXPOSE-POST - [0:0]")
        nat += [m.hairpin_masquerade_rule() for m in mappings]
    return "\n".join([
        "*nat", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]", *chains,
        *jumps, *nat, *filter(None, [extra_nat]), "COMMIT",
        "*filter", ":FORWARD DROP [0:0]", ":NETNS-EXPOSE-FWD - [0:0]",
        '-A FORWARD -m comment --comment "netns.expose" -j NETNS-EXPOSE-FWD', *fwd, *filter(None, [extra_filter]), "COMMIT", "",
    ])


def plan_of(spec_, dump_text=EMPTY, ip_forward=0):
    fake = backend(dump_text)
    return build_plan(fake, spec_, fake.read(), ip_forward), fake


def assert_consistent(plan):
    assert plan.changed == bool(plan.actions) == (plan.diff["before"] != plan.diff["after"])


def test_a_new_mapping_is_one_transaction_and_turns_ip_forward_on():
    with mock.patch.object(_dnat, "write_ip_forward") as write:
        plan, fake = plan_of(spec([WEB]))
    assert plan.actions == [
        "add mapping web (tcp 8090 -> 10.244.1.2:9090)",
        "update the netns.expose chains and the jumps to them",
        "commit the rule changes in one iptables-restore --noflush transaction (nft: filter +2 -0, nat +5 -0)",
        "set net.ipv4.ip_forward = 1 (was 0)",
    ]
    assert_consistent(plan)
    plan.apply()
    script = fake.commit.call_args.args[0]
    assert fake.commit.call_count == 1
    assert IP_FORWARD_MARK in script and WEB.prerouting_rule() in script and WEB.forward_rule() in script
    write.assert_called_once_with(1)


def test_converged_host_plans_nothing():
    plan, _fake = plan_of(spec([WEB, DNS, PING]), save_with([WEB, DNS, PING], ip_forward_mark=True), ip_forward=1)
    assert plan.actions == []
    assert_consistent(plan)


def test_forwarding_already_on_is_not_marked_and_never_turned_off():
    plan, fake = plan_of(spec([WEB]), ip_forward=1)
    assert not any("ip_forward" in action for action in plan.actions)
    plan.apply()
    assert IP_FORWARD_MARK not in fake.commit.call_args.args[0]
    plan, _fake = plan_of(spec([WEB], state="absent"), save_with([WEB]), ip_forward=1)
    assert not any("ip_forward" in action for action in plan.actions)


def test_ip_forward_reset_by_hand_is_turned_on_again():
    plan, _fake = plan_of(spec([WEB]), save_with([WEB], ip_forward_mark=True), ip_forward=0)
    assert plan.actions == ["set net.ipv4.ip_forward = 1 (was 0)"]


@pytest.mark.parametrize("drift, expected", [
    (lambda text: text.replace(WEB.forward_rule() + "\n", ""), "restore missing rules of mapping web (tcp 8090 -> 10.244.1.2:9090)"),
    (lambda text: text.replace("--dport 8090", "--dport 8099", 1), "update mapping web (tcp 8090 -> 10.244.1.2:9090)"),
    (lambda text: text.replace('-A PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE\n', ""),
     "update the netns.expose chains and the jumps to them"),
])
def test_drift_is_repaired_with_exactly_what_is_missing(drift, expected):
    plan, fake = plan_of(spec([WEB]), drift(save_with([WEB], ip_forward_mark=True)), ip_forward=1)
    assert plan.actions[0] == expected
    assert plan.actions[-1].startswith("commit the rule changes")
    assert_consistent(plan)
    plan.apply()
    assert fake.commit.call_args.args[0].count("\n-A ") + fake.commit.call_args.args[0].count("\n-I ") == 1


def test_stray_rules_in_our_chains_are_removed():
    plan, _fake = plan_of(spec([WEB]), save_with([WEB], ip_forward_mark=True, extra_nat="-A NETNS-EXPOSE -j ACCEPT"), ip_forward=1)
    assert plan.actions[0] == "remove 1 rules that belong to no mapping from the netns.expose chains"


def test_without_exclusive_other_mappings_stay_and_with_it_they_go():
    dump = save_with([WEB, DNS], ip_forward_mark=True)
    plan, _fake = plan_of(spec([WEB]), dump, ip_forward=1)
    assert plan.actions == []
    plan, _fake = plan_of(spec([WEB], exclusive=True), dump, ip_forward=1)
    assert plan.actions[0] == "remove mapping dns"
    assert set(plan.diff["after"]["mappings"]) == {"web"}


def test_removing_the_last_mapping_removes_chains_jumps_and_restores_ip_forward():
    with mock.patch.object(_dnat, "write_ip_forward") as write:
        plan, fake = plan_of(spec([Mapping(name="web")], state="absent"), save_with([WEB], ip_forward_mark=True), ip_forward=1)
        assert plan.actions[0] == "remove mapping web"
        assert plan.actions[-1] == "set net.ipv4.ip_forward = 0 (restoring the value before the first mapping)"
        plan.apply()
    script = fake.commit.call_args.args[0]
    assert "-X NETNS-EXPOSE\n" in script and "-X NETNS-EXPOSE-FWD\n" in script
    write.assert_called_once_with(0)


def test_a_mapping_that_matches_the_packets_of_another_owned_mapping_is_refused():
    clash = Mapping(name="web2", protocol="tcp", port=8090, to_address="10.244.9.9", to_port=80,
                    destination="10.211.55.122", in_interface="eth0")
    with pytest.raises(InvalidInput, match=r"^port: mapping 'web2' would match the same packets as mapping 'web'"):
        plan_of(spec([clash]), save_with([WEB]))
    # Replacing web itself, or exclusive (web goes), is fine.
    plan_of(spec([clash], exclusive=True), save_with([WEB]))


def test_a_failed_transaction_is_rolled_back_to_the_rules_before_the_run():
    before = save_with([WEB], ip_forward_mark=True)
    half_applied = save_with([WEB, DNS], ip_forward_mark=True)  # nat committed, filter failed
    plan, fake = plan_of(spec([WEB, DNS]), before, ip_forward=1)
    fake.read.return_value = parse_save(half_applied)
    fake.commit.side_effect = [IptablesError("iptables-nft-restore failed (4): line 3: RULE_APPEND failed"), None]
    with pytest.raises(PlanApplyError) as excinfo:
        plan.apply()
    assert isinstance(excinfo.value.__cause__, RolledBack)
    undo = fake.commit.call_args_list[1].args[0]
    assert "-D" + DNS.prerouting_rule()[2:] in undo and "-D" + DNS.forward_rule()[2:] in undo
    assert WEB.prerouting_rule()[3:] not in undo


def test_hairpin_rules_map_the_hosts_own_namespaces_and_masquerade_only_the_same_namespace_flow():
    assert WEB.hairpin_prerouting_rules(("10.244.0.0/16",)) == [
        "-A NETNS-EXPOSE -s 10.244.0.0/16 -d 10.211.55.122/32 -p tcp -m tcp --dport 8090 "
        '-m comment --comment "netns.expose:web" -j DNAT --to-destination 10.244.1.2:9090'
    ]
    # Without in_interface the mapping's own rule already matches clients on any interface.
    assert DNS.hairpin_prerouting_rules(("10.244.0.0/16",)) == []
    assert WEB.hairpin_masquerade_rule() == (
        "-A NETNS-EXPOSE-POST -s 10.244.1.2/32 -d 10.244.1.2/32 -p tcp -m tcp --dport 9090 "
        '-m comment --comment "netns.expose:web" -j MASQUERADE'
    )
    assert PING.hairpin_masquerade_rule() == (
        '-A NETNS-EXPOSE-POST -s 10.244.1.2/32 -d 10.244.1.2/32 -p icmp -m comment --comment "netns.expose:ping" -j MASQUERADE'
    )


def test_hairpin_is_an_option_and_its_jump_comes_first_in_postrouting():
    plan, fake = plan_of(spec([WEB], hairpin_sources=("10.244.0.0/16",)), ip_forward=1)
    plan.apply()
    script = fake.commit.call_args.args[0]
    assert '-I POSTROUTING 1 -m comment --comment "netns.expose" -j NETNS-EXPOSE-POST' in script
    assert WEB.hairpin_prerouting_rules(("10.244.0.0/16",))[0] in script
    plan, fake = plan_of(spec([WEB], hairpin=False), ip_forward=1)
    plan.apply()
    assert "NETNS-EXPOSE-POST" not in fake.commit.call_args.args[0]


@pytest.mark.parametrize("value, problem", [("10.244.1.2/24", "has host bits set"), ("fe80::/64", "is not an IPv4 network"),
                                            ("nonsense", "is not an IPv4 network")])
def test_hairpin_sources_must_be_ipv4_networks(value, problem):
    with pytest.raises(InvalidInput, match=r"^hairpin_sources\[1\]: ") as excinfo:
        hairpin_sources_from_params(["10.244.0.0/16", value])
    assert problem in str(excinfo.value)
    assert hairpin_sources_from_params(["10.244.2.0/24", "10.244.1.0/24", "10.244.2.0/24"]) == ("10.244.1.0/24", "10.244.2.0/24")


def conntrack_table(binary="/usr/sbin/conntrack", deleted=2):
    table = mock.Mock(name="conntrack", binary=binary)
    table.delete.return_value = deleted
    return table


def conntrack_actions(plan):
    return [action for action in plan.actions if "conntrack" in action]


def test_flows_of_a_mapping_that_is_added_changed_or_removed_are_deleted_and_reported():
    table = conntrack_table()
    added = build_plan(backend(), spec([DNS]), parse_save(EMPTY), 1, conntrack=table)
    assert conntrack_actions(added) == [
        "delete the conntrack entries of udp port 8053, so that flows older than the change meet the new rules"]
    assert added.conntrack == [{"protocol": "udp", "port": 8053, "destination": None, "deleted": None}]
    added.apply()
    table.delete.assert_called_once_with("udp", 8053, None)
    assert added.conntrack[0]["deleted"] == 2

    # A port edited by hand: the flows of the wrong port and of the right one.
    drifted = save_with([WEB], ip_forward_mark=True).replace("--dport 8090", "--dport 8099", 1)
    changed = build_plan(backend(), spec([WEB]), parse_save(drifted), 1, conntrack=conntrack_table())
    assert [(entry["port"], entry["destination"]) for entry in changed.conntrack] == [
        (8090, "10.211.55.122"), (8099, "10.211.55.122")]

    removed = build_plan(backend(), spec([Mapping(name="ping")], state="absent"), parse_save(save_with([WEB, PING])), 1,
                         conntrack=conntrack_table())
    assert [(entry["protocol"], entry["port"]) for entry in removed.conntrack] == [("icmp", None)]


def test_no_change_deletes_no_flows_and_a_missing_tool_is_a_warning():
    converged = build_plan(backend(), spec([WEB]), parse_save(save_with([WEB], ip_forward_mark=True)), 1,
                           conntrack=conntrack_table())
    assert converged.actions == [] and converged.conntrack == []
    without_tool = build_plan(backend(), spec([WEB]), parse_save(EMPTY), 1, conntrack=conntrack_table(binary=None))
    assert conntrack_actions(without_tool) == [] and without_tool.conntrack == []
    assert without_tool.warnings and "install conntrack" in without_tool.warnings[0]
    skipped = build_plan(backend(), spec([WEB], flush_conntrack=False), parse_save(EMPTY), 1, conntrack=conntrack_table())
    assert conntrack_actions(skipped) == [] and not skipped.warnings
