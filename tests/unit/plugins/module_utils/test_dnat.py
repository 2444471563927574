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
    connmark_from_params,
    dispatch_rule,
    forward_accept_rule,
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


MARK = "0x1000000/0x1000000"
FWD_ACCEPT = (f"-A NETNS-EXPOSE-FWD -m connmark --mark {MARK} -m conntrack --ctstate DNAT "
              '-m comment --comment "netns.expose" -j ACCEPT')


def test_rules_are_written_as_iptables_save_prints_them():
    web_match = ("-A NETNS-EXPOSE-tcp-8064 -d 10.211.55.122/32 -i eth0 -p tcp -m tcp --dport 8090 "
                 '-m comment --comment "netns.expose:web"')
    # The mark first: the DNAT ends the chain.
    assert WEB.prerouting_rules(0x1000000) == [
        f"{web_match} -j CONNMARK --set-xmark {MARK}",
        f"{web_match} -j DNAT --to-destination 10.244.1.2:9090",
    ]
    assert WEB.prerouting_rules() == [f"{web_match} -j DNAT --to-destination 10.244.1.2:9090"]
    # Without a destination, only packets for this host's own addresses; the port before addrtype.
    assert DNS.prerouting_rules() == [
        "-A NETNS-EXPOSE-udp-8000 ! -d 127.0.0.0/8 -p udp -m udp --dport 8053 -m addrtype --dst-type LOCAL "
        '-m comment --comment "netns.expose:dns" -j DNAT --to-destination 10.244.1.2:53'
    ]
    assert PING.prerouting_rules() == [
        "-A NETNS-EXPOSE-icmp ! -d 127.0.0.0/8 -i eth0 -p icmp -m addrtype --dst-type LOCAL "
        '-m comment --comment "netns.expose:ping" -j DNAT --to-destination 10.244.1.2'
    ]
    assert PING.output_rule() == (
        "-A NETNS-EXPOSE-LOCAL-icmp ! -d 127.0.0.0/8 -p icmp -m addrtype --dst-type LOCAL "
        '-m comment --comment "netns.expose:ping" -j DNAT --to-destination 10.244.1.2'
    )
    assert forward_accept_rule(0x1000000) == FWD_ACCEPT
    assert dispatch_rule("NETNS-EXPOSE-tcp-8064") == (
        '-A NETNS-EXPOSE -p tcp -m tcp --dport 8064:8127 -m comment --comment "netns.expose" -j NETNS-EXPOSE-tcp-8064')
    assert dispatch_rule("NETNS-EXPOSE-LOCAL-icmp") == (
        '-A NETNS-EXPOSE-LOCAL -p icmp -m comment --comment "netns.expose" -j NETNS-EXPOSE-LOCAL-icmp')


@pytest.mark.parametrize("port, chain", [(1, "NETNS-EXPOSE-tcp-0"), (63, "NETNS-EXPOSE-tcp-0"), (64, "NETNS-EXPOSE-tcp-64"),
                                         (65535, "NETNS-EXPOSE-tcp-65472")])
def test_mappings_are_filed_by_ranges_of_64_ports(port, chain):
    mapping = Mapping(name="m", port=port, to_address="10.0.0.1", to_port=80)
    assert mapping.chain("NETNS-EXPOSE") == chain
    assert len(mapping.chain("NETNS-EXPOSE-LOCAL")) <= 28, "iptables chain names have at most 28 characters"
    first = int(chain.rsplit("-", 1)[1])
    assert dispatch_rule(chain).endswith(f"--dport {first}:{first + 63} -m comment --comment \"netns.expose\" -j {chain}")


@pytest.mark.parametrize("value", [0, 3, 0x1000001, 1 << 32, -1])
def test_connmark_must_be_one_bit(value):
    with pytest.raises(InvalidInput, match=r"^connmark: .* is not a single bit"):
        connmark_from_params(value)
    assert connmark_from_params(0x4) == 0x4 and connmark_from_params(None) == 0x1000000


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
    with pytest.raises(InvalidInput, match=r"^rules\[1\]\.port: tcp port 1 is also mapped by rules\[0\] \('a'\)"):
        mappings_from_params(params(rules=[dict(name="a", port=1, to_address="10.0.0.1"), dict(name="b", port=1, to_address="10.0.0.2")]))


def test_absent_needs_only_names():
    assert mappings_from_params(params(name="web", state="absent")) == [Mapping(name="web")]


def spec(mappings, **overrides):
    return DnatSpec(**{**dict(mappings=mappings, state="present", exclusive=False, ip_forward=True, accept_forward=True), **overrides})


def backend(dump_text=EMPTY):
    fake = mock.Mock(name="backend", variant="nft")
    fake.read.return_value = parse_save(dump_text)
    return fake


def save_with(mappings, ip_forward_mark=False, extra_nat="", extra_filter="", hairpin=True, mark=0x1000000):
    """An iptables-save dump where the given mappings are in place, as the module puts them."""
    chains = {}  # nat chain -> lines

    def add(line):
        chains.setdefault(line.split()[1], []).append(line)

    for m in mappings:
        for line in m.prerouting_rules(mark):
            add(line)
        if m.local:
            add(m.output_rule())
        if hairpin:
            add(m.hairpin_masquerade_rule())
    for chain in sorted(chain for chain in list(chains) if chain.startswith(("NETNS-EXPOSE-tcp", "NETNS-EXPOSE-udp",
                                                                             "NETNS-EXPOSE-icmp", "NETNS-EXPOSE-LOCAL-"))):
        add(dispatch_rule(chain))
    if ip_forward_mark:
        add(IP_FORWARD_MARK)
    jumps = ['-A PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE']
    if "NETNS-EXPOSE-LOCAL" in chains:
        jumps.append('-A OUTPUT -m comment --comment "netns.expose" -j NETNS-EXPOSE-LOCAL')
    if "NETNS-EXPOSE-POST" in chains:
        jumps.append('-A POSTROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE-POST')
    fwd = [forward_accept_rule(mark)] if mark and mappings else []
    if ip_forward_mark and mappings:
        fwd += _dnat.router_rules(_dnat.Networks())
    return "\n".join([
        "*nat", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
        *(f":{chain} - [0:0]" for chain in chains), *jumps, *(line for lines in chains.values() for line in lines),
        *filter(None, [extra_nat]), "COMMIT",
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
        "commit the rule changes in one iptables-restore --noflush transaction (nft: filter +4 -0, nat +7 -0)",
        "set net.ipv4.ip_forward = 1 (was 0)",
    ]
    assert_consistent(plan)
    plan.apply()
    script = fake.commit.call_args.args[0]
    assert fake.commit.call_count == 1
    assert IP_FORWARD_MARK in script and FWD_ACCEPT in script
    assert all(line in script for line in WEB.prerouting_rules(0x1000000))
    assert ":NETNS-EXPOSE-tcp-8064 - [0:0]" in script and dispatch_rule("NETNS-EXPOSE-tcp-8064") in script
    write.assert_called_once_with(1)


def test_an_empty_exclusive_run_does_not_turn_ip_forward_on():
    """Issue A: with nothing mapped ip_forward stays as it is; it only goes on with a mapping, and with its marker."""
    with mock.patch.object(_dnat, "write_ip_forward") as write:
        plan, fake = plan_of(spec([], exclusive=True), ip_forward=0)
        assert plan.actions == [] and not plan.changed
        plan.apply()
        write.assert_not_called()
        fake.commit.assert_not_called()
        # Every mapping absent, ip_forward 0, no marker: the same.
        plan, _fake = plan_of(spec([Mapping(name="web")], state="absent"), ip_forward=0)
        assert plan.actions == []
        # The host had mappings the collection turned forwarding on for: they go, and forwarding goes back to 0.
        plan, _fake = plan_of(spec([], exclusive=True), save_with([WEB], ip_forward_mark=True), ip_forward=1)
        assert plan.actions[0] == "remove mapping web"
        assert plan.actions[-1] == "set net.ipv4.ip_forward = 0 (restoring the value before the first mapping)"


def test_forwarding_turned_on_is_always_marked():
    for mappings in ([WEB], [WEB, DNS, PING]):
        plan, fake = plan_of(spec(mappings, exclusive=True), ip_forward=0)
        assert plan.actions[-1] == "set net.ipv4.ip_forward = 1 (was 0)"
        plan.apply()
        assert IP_FORWARD_MARK in fake.commit.call_args.args[0]


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


WEB_MARK, WEB_DNAT = WEB.prerouting_rules(0x1000000)


@pytest.mark.parametrize("drift, expected, script", [
    # In NETNS-EXPOSE-FWD the order counts (the router drop ends it): put back in its place.
    (lambda text: text.replace(FWD_ACCEPT + "\n", ""), "update the netns.expose chains and the jumps to them",
     ["-I NETNS-EXPOSE-FWD 1" + FWD_ACCEPT[len("-A NETNS-EXPOSE-FWD"):]]),
    (lambda text: text.replace(WEB_DNAT + "\n", ""), "restore missing rules of mapping web (tcp 8090 -> 10.244.1.2:9090)",
     [WEB_DNAT]),
    # The mark must come before the DNAT: both go, and come back in order.
    (lambda text: text.replace(WEB_MARK + "\n", ""), "restore missing rules of mapping web (tcp 8090 -> 10.244.1.2:9090)",
     ["-D" + WEB_DNAT[2:], WEB_MARK, WEB_DNAT]),
    (lambda text: text.replace(WEB_MARK + "\n", "").replace(WEB_DNAT + "\n", WEB_DNAT + "\n" + WEB_MARK + "\n"),
     "update mapping web (tcp 8090 -> 10.244.1.2:9090)", ["-D" + WEB_DNAT[2:], "-D" + WEB_MARK[2:], WEB_MARK, WEB_DNAT]),
    (lambda text: text.replace("--dport 8090", "--dport 8099", 1), "update mapping web (tcp 8090 -> 10.244.1.2:9090)",
     ["-D" + WEB_MARK.replace("--dport 8090", "--dport 8099")[2:], "-D" + WEB_DNAT[2:], WEB_MARK, WEB_DNAT]),
    (lambda text: text.replace('-A PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE\n', ""),
     "update the netns.expose chains and the jumps to them", ['-A PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE']),
])
def test_drift_is_repaired_with_exactly_what_is_missing(drift, expected, script):
    plan, fake = plan_of(spec([WEB]), drift(save_with([WEB], ip_forward_mark=True)), ip_forward=1)
    assert plan.actions[0] == expected
    assert plan.actions[-1].startswith("commit the rule changes")
    assert_consistent(plan)
    plan.apply()
    lines = fake.commit.call_args.args[0].splitlines()
    assert [line for line in lines if line[:2] in ("-A", "-D", "-I")] == script


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
    assert "-D" + dispatch_rule("NETNS-EXPOSE-udp-8000")[2:] in undo
    assert "-F NETNS-EXPOSE-udp-8000\n" in undo and "-X NETNS-EXPOSE-udp-8000\n" in undo
    assert WEB_DNAT[3:] not in undo


def test_hairpin_rules_map_the_hosts_own_namespaces_and_masquerade_only_the_same_namespace_flow():
    assert WEB.hairpin_prerouting_rules(("10.244.0.0/16",)) == [
        "-A NETNS-EXPOSE-tcp-8064 -s 10.244.0.0/16 -d 10.211.55.122/32 -p tcp -m tcp --dport 8090 "
        '-m comment --comment "netns.expose:web" -j DNAT --to-destination 10.244.1.2:9090'
    ]
    # Hairpin flows cross FORWARD too: marked like the others.
    assert [line.rsplit(" -j ", 1)[1] for line in WEB.hairpin_prerouting_rules(("10.244.0.0/16",), 0x1000000)] == [
        f"CONNMARK --set-xmark {MARK}", "DNAT --to-destination 10.244.1.2:9090"]
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
    assert all(line in script for line in WEB.hairpin_prerouting_rules(("10.244.0.0/16",), 0x1000000))
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


def conntrack_table(method="netlink", deleted=2):
    """A ConntrackTable stand-in: delete(keys) deletes `deleted` entries of each key."""
    table = mock.Mock(name="conntrack", method=method)
    table.delete.side_effect = lambda keys: {key: deleted for key in keys}
    return table


def conntrack_actions(plan):
    return [action for action in plan.actions if "conntrack" in action]


def test_flows_of_a_mapping_that_is_added_changed_or_removed_are_deleted_and_reported():
    table = conntrack_table()
    added = build_plan(backend(), spec([DNS]), parse_save(EMPTY), 1, conntrack=table)
    assert conntrack_actions(added) == [
        "delete the conntrack entries of udp port 8053 in one pass over the conntrack table (netlink), "
        "so that flows older than the change meet the new rules"]
    assert added.conntrack == [{"protocol": "udp", "port": 8053, "destination": None, "deleted": None}]
    added.apply()
    table.delete.assert_called_once_with([("udp", 8053, None)])
    assert added.conntrack[0]["deleted"] == 2

    # A port edited by hand: the flows of the wrong port and of the right one.
    drifted = save_with([WEB], ip_forward_mark=True).replace("--dport 8090", "--dport 8099", 2)
    changed = build_plan(backend(), spec([WEB]), parse_save(drifted), 1, conntrack=conntrack_table())
    assert [(entry["port"], entry["destination"]) for entry in changed.conntrack] == [
        (8090, "10.211.55.122"), (8099, "10.211.55.122")]

    removed = build_plan(backend(), spec([Mapping(name="ping")], state="absent"), parse_save(save_with([WEB, PING])), 1,
                         conntrack=conntrack_table())
    assert [(entry["protocol"], entry["port"]) for entry in removed.conntrack] == [("icmp", None)]


def test_the_flows_of_a_thousand_mappings_are_deleted_in_one_step():
    """Issue B: one pass over the table whatever the number of mappings, not one conntrack process each."""
    many = [Mapping(name=f"m{i}", protocol="tcp", port=10000 + i, to_address="10.244.1.2", to_port=9090,
                    in_interface="eth0") for i in range(1000)]
    table = conntrack_table(deleted=1)
    plan = build_plan(backend(), spec(many), parse_save(EMPTY), 1, conntrack=table)
    assert conntrack_actions(plan) == [
        "delete the conntrack entries of tcp port 10000, tcp port 10001, tcp port 10002 and 997 more in one pass over "
        "the conntrack table (netlink), so that flows older than the change meet the new rules"]
    plan.apply()
    assert table.delete.call_count == 1
    assert len(plan.conntrack) == 1000 and {entry["deleted"] for entry in plan.conntrack} == {1}
    assert plan.conntrack[-1] == {"protocol": "tcp", "port": 10999, "destination": None, "deleted": 1}


def test_no_change_deletes_no_flows_and_no_way_to_delete_them_is_a_warning():
    converged = build_plan(backend(), spec([WEB]), parse_save(save_with([WEB], ip_forward_mark=True)), 1,
                           conntrack=conntrack_table())
    assert converged.actions == [] and converged.conntrack == []
    without = build_plan(backend(), spec([WEB]), parse_save(EMPTY), 1, conntrack=conntrack_table(method=None))
    assert conntrack_actions(without) == [] and without.conntrack == []
    assert without.warnings and "install conntrack" in without.warnings[0]
    tool = build_plan(backend(), spec([WEB]), parse_save(EMPTY), 1, conntrack=conntrack_table(method="conntrack tool"))
    assert "(conntrack tool)" in conntrack_actions(tool)[0]
    skipped = build_plan(backend(), spec([WEB], flush_conntrack=False), parse_save(EMPTY), 1, conntrack=conntrack_table())
    assert conntrack_actions(skipped) == [] and not skipped.warnings


# Issue C: one FORWARD rule for every mapped flow.

def test_forward_has_one_rule_for_any_number_of_mappings():
    many = [Mapping(name=f"m{i}", protocol="tcp", port=10000 + i, to_address="10.244.1.2", to_port=9090,
                    in_interface="eth0") for i in range(1000)]
    plan, fake = plan_of(spec(many), ip_forward=1)
    plan.apply()
    script = fake.commit.call_args.args[0]
    assert [line for line in script.splitlines() if line.startswith("-A NETNS-EXPOSE-FWD")] == [FWD_ACCEPT]
    # The nat side: 16 ranges of 64 ports, each with its jump; the mark right before each DNAT.
    dispatch = [line for line in script.splitlines() if line.startswith("-A NETNS-EXPOSE -p tcp")]
    assert len(dispatch) == 16 and dispatch[0] == dispatch_rule("NETNS-EXPOSE-tcp-9984")
    lines = script.splitlines()
    for mapping in many[::97]:
        mark, dnat = mapping.prerouting_rules(0x1000000)
        assert lines.index(mark) + 1 == lines.index(dnat)


def test_without_accept_forward_a_mapping_is_not_marked_and_forward_gets_nothing():
    plan, fake = plan_of(spec([WEB], accept_forward=False), ip_forward=1)
    plan.apply()
    script = fake.commit.call_args.args[0]
    assert "CONNMARK" not in script and "NETNS-EXPOSE-FWD" not in script
    # Another mapping that wants it does not change the first (not exclusive: web stays as it is).
    plan, fake = plan_of(spec([DNS]), save_with([WEB], mark=None, ip_forward_mark=True), ip_forward=1)
    plan.apply()
    script = fake.commit.call_args.args[0]
    assert FWD_ACCEPT[len("-A NETNS-EXPOSE-FWD"):] in script and WEB_DNAT[3:] not in script
    assert [line for line in script.splitlines() if "CONNMARK" in line] == DNS.prerouting_rules(0x1000000)[:1]


OLD_SHAPE = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:NETNS-EXPOSE - [0:0]
:NETNS-EXPOSE-POST - [0:0]
-A PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE
-A POSTROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE-POST
-A NETNS-EXPOSE -d 10.211.55.122/32 -i eth0 -p tcp -m tcp --dport 8090 \
-m comment --comment "netns.expose:web" -j DNAT --to-destination 10.244.1.2:9090
-A NETNS-EXPOSE ! -d 127.0.0.0/8 -p udp -m addrtype --dst-type LOCAL -m udp --dport 8053 \
-m comment --comment "netns.expose:dns" -j DNAT --to-destination 10.244.1.2:53
-A NETNS-EXPOSE -m comment --comment "netns.expose/ip_forward-was-0"
-A NETNS-EXPOSE-POST -s 10.244.1.2/32 -d 10.244.1.2/32 -p tcp -m tcp --dport 9090 -m comment --comment "netns.expose:web" -j MASQUERADE
-A NETNS-EXPOSE-POST -s 10.244.1.2/32 -d 10.244.1.2/32 -p udp -m udp --dport 53 -m comment --comment "netns.expose:dns" -j MASQUERADE
COMMIT
*filter
:FORWARD DROP [0:0]
:NETNS-EXPOSE-FWD - [0:0]
-A FORWARD -m comment --comment "netns.expose" -j NETNS-EXPOSE-FWD
-A NETNS-EXPOSE-FWD -m conntrack --ctstate DNAT --ctproto 6 --ctreplsrc 10.244.1.2 --ctorigdstport 8090 --ctreplsrcport 9090 \
-m comment --comment "netns.expose:web" -j ACCEPT
-A NETNS-EXPOSE-FWD -m conntrack --ctstate DNAT --ctproto 17 --ctreplsrc 10.244.1.2 --ctorigdstport 8053 --ctreplsrcport 53 \
-m comment --comment "netns.expose:dns" -j ACCEPT
COMMIT
"""


def test_rules_of_the_previous_shape_are_converged_by_a_normal_run():
    table = conntrack_table()
    plan, fake = plan_of(spec([WEB, DNS], exclusive=True), OLD_SHAPE, ip_forward=1)
    plan = build_plan(fake, spec([WEB, DNS], exclusive=True), parse_save(OLD_SHAPE), 1, conntrack=table)
    assert plan.actions[:3] == ["update mapping dns (udp 8053 -> 10.244.1.2:53)", "update mapping web (tcp 8090 -> 10.244.1.2:9090)",
                                "update the netns.expose chains and the jumps to them"]
    assert_consistent(plan)
    plan.apply()
    # The flows of every mapping start again, and get the mark.
    table.delete.assert_called_once_with([("tcp", 8090, "10.211.55.122"), ("udp", 8053, None)])
    converged = save_with([WEB, DNS], ip_forward_mark=True)
    assert build_plan(backend(converged), spec([WEB, DNS], exclusive=True), parse_save(converged), 1).actions == []
    script = fake.commit.call_args.args[0]
    assert "--ctorigdstport" in script and all(f"-D NETNS-EXPOSE-FWD -m conntrack --ctstate DNAT --ctproto {n}" in script
                                               for n in (6, 17))
    assert "MASQUERADE" not in script, "the hairpin rules have the same shape: untouched"


def test_another_connmark_changes_every_mapping():
    table = conntrack_table()
    plan = build_plan(backend(), spec([WEB, DNS], connmark=0x2000000), parse_save(save_with([WEB, DNS], ip_forward_mark=True)),
                      1, conntrack=table)
    assert [action.split(" (")[0] for action in plan.actions[:3]] == ["update mapping dns", "update mapping web",
                                                                      "update the netns.expose chains and the jumps to them"]
    assert len(plan.conntrack) == 2
    converged = save_with([WEB, DNS], ip_forward_mark=True, mark=0x2000000)
    assert "0x2000000/0x2000000 -m conntrack --ctstate DNAT" in converged
    assert build_plan(backend(), spec([WEB, DNS], connmark=0x2000000), parse_save(converged), 1).actions == []


def test_published_gives_back_the_owned_mappings_as_rules_entries():
    sources = ("10.244.1.0/24",)
    plan, _fake = plan_of(spec([WEB, DNS, PING], hairpin_sources=sources))
    assert plan.published == {
        "rules": [{key: value for key, value in vars(mapping).items() if value is not None} for mapping in (DNS, PING, WEB)],
        "hairpin_sources": list(sources),  # kept by the mappings with an in_interface
        "guarded_networks": [], "routed_networks": [],
    }
    # What was published, given back, makes the very same rules.
    again, _fake = plan_of(spec([Mapping(**rule) for rule in plan.published["rules"]],
                                hairpin_sources=tuple(plan.published["hairpin_sources"]), exclusive=True))
    assert again.after == plan.after
