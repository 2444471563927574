"""The nftables backend of dnat_rule: its table, its plan, switching backends, and the choice of backend, on
fabricated and captured `nft -j` output (fixtures/nft_table.json is what nft 1.0.6 printed for
fixtures/nft_table.nft)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from unittest import mock

import pytest

from ansible_collections.netns.expose.plugins.module_utils import _dnat, _nftables
from ansible_collections.netns.expose.plugins.module_utils._dnat import (
    IP_FORWARD_MARK,
    DnatSpec,
    IptablesRuleset,
    Mapping,
    Networks,
    Setup,
    forward_accept_rule,
    plan_dnat,
)
from ansible_collections.netns.expose.plugins.module_utils._iptables import parse_save
from ansible_collections.netns.expose.plugins.module_utils._nftables import (
    ForwardDropped,
    NftRuleset,
    NftState,
    build_state,
    by_name,
    choose_backend,
    forward_drop,
    mapping_elements,
    state_from_json,
    table_text,
)
from ansible_collections.netns.expose.plugins.module_utils._plan import PlanApplyError
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WEB = Mapping(name="web", protocol="tcp", port=8090, to_address="10.244.1.2", to_port=9090,
              destination="10.211.55.122", in_interface="eth0", local=True)
DNS = Mapping(name="dns", protocol="udp", port=8053, to_address="10.244.1.2", to_port=53, local=True)
PING = Mapping(name="ping", protocol="icmp", to_address="10.244.1.2", in_interface="eth0")
ALT = Mapping(name="alt", protocol="tcp", port=8091, to_address="10.244.1.3", to_port=80)
# What fixtures/nft_table.nft holds: web with two hairpin sources (the /32 is inside the /16), dns, ping, and
# alt without the mark (accept_forward false); a guarded and a routed network; ip_forward turned on by the collection.
FIXTURE_UNITS = [(WEB, Setup(sources=("10.244.0.0/16", "10.244.9.9/32"))), (DNS, Setup()),
                 (PING, Setup(sources=("10.244.0.0/16",))), (ALT, Setup(mark=None))]
FIXTURE_NETWORKS = Networks(guarded=("10.244.1.0/24", "10.244.2.0/24"), routed=("10.244.9.0/24",))


def fixture_state():
    return state_from_json(json.loads((FIXTURES / "nft_table.json").read_text()))


def desired_fixture():
    return NftRuleset.render({}, [(mapping, setup.of(mapping)) for mapping, setup in FIXTURE_UNITS], True,
                             FIXTURE_NETWORKS)


def test_a_mapping_is_elements_keyed_by_what_it_matches():
    assert mapping_elements(WEB, Setup(sources=("10.244.0.0/16", "10.244.7.7/32")).of(WEB)) == [
        ("dnat_tcp_iif_dst", '"eth0" . 10.211.55.122 . 8090', "10.244.1.2 . 9090"),
        ("mark_tcp_iif_dst", '"eth0" . 10.211.55.122 . 8090', None),
        ("dnat_tcp_src_dst", "10.244.0.0/16 . 10.211.55.122 . 8090", "10.244.1.2 . 9090"),
        ("mark_tcp_src_dst", "10.244.0.0/16 . 10.211.55.122 . 8090", None),
        ("dnat_tcp_src_dst", "10.244.7.7 . 10.211.55.122 . 8090", "10.244.1.2 . 9090"),  # a /32 as nft prints it
        ("mark_tcp_src_dst", "10.244.7.7 . 10.211.55.122 . 8090", None),
        ("hairpin", "10.244.1.2 . 10.244.1.2 . tcp . 9090", None),
        ("output_tcp_dst", "10.211.55.122 . 8090", "10.244.1.2 . 9090"),
    ]
    # No destination: any local address (the rule is behind the fib guard); icmp's "port" is its protocol.
    assert mapping_elements(DNS, Setup(hairpin=False)) == [
        ("dnat_udp_local", "8053", "10.244.1.2 . 53"), ("mark_udp_local", "8053", None),
        ("output_udp_local", "8053", "10.244.1.2 . 53")]
    assert mapping_elements(PING, Setup(mark=0x4, hairpin=False)) == [
        ("dnat_icmp_iif_local", '"eth0" . icmp', "10.244.1.2"), ("mark_icmp_iif_local_0x4", '"eth0" . icmp', None)]
    # accept_forward false: no mark, so the forward accept does not take its flows.
    assert [name for name, _key, _value in mapping_elements(ALT, Setup(mark=None))] == ["dnat_tcp_local", "hairpin"]


def test_the_table_dispatches_through_maps_and_a_mapping_adds_no_rule():
    one = NftRuleset.render({}, [(ALT, Setup())], False)
    many = NftRuleset.render({}, [(Mapping(name=f"m{i}", port=10000 + i, to_address="10.244.1.2", to_port=9090), Setup())
                                  for i in range(1000)], False)
    assert many.rules == one.rules and many.chains == one.chains and many.sets == one.sets
    assert len(many.elements["dnat_tcp_local"]) == 1000
    text = table_text(one)
    assert text.startswith("table ip netns_expose {}\ndelete table ip netns_expose\ntable ip netns_expose {\n")
    assert "\t\ttype nat hook prerouting priority dstnat; policy accept;\n" in text
    assert "\t\tfib daddr type local ip daddr != 127.0.0.0/8 jump prerouting_local comment" in text
    assert "\t\ttcp dport @mark_tcp_local ct mark set ct mark | 0x01000000 comment" in text
    assert "\t\tdnat ip addr . port to tcp dport map @dnat_tcp_local comment" in text
    assert "ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin masquerade" in text
    assert "ct mark & 0x01000000 == 0x01000000 ct status dnat counter accept" in text
    # No mapping: the table goes, in the same kind of transaction.
    assert table_text(NftState()) == "table ip netns_expose {}\ndelete table ip netns_expose\n"


def test_the_rules_go_from_the_most_specific_kind_to_the_least():
    state = desired_fixture()
    texts = [state.texts[comment] for comment in state.rules["prerouting"]]
    assert [text.split(" @")[-1] for text in texts[:-1]] == [
        "mark_tcp_iif_dst ct mark set ct mark | 0x01000000", "dnat_tcp_iif_dst",
        "mark_tcp_src_dst ct mark set ct mark | 0x01000000", "dnat_tcp_src_dst"]
    assert texts[-1] == "fib daddr type local ip daddr != 127.0.0.0/8 jump prerouting_local"
    local = [state.texts[comment].split(" @")[-1] for comment in state.rules["prerouting_local"]]
    assert local == ["dnat_tcp_local",
                     "mark_udp_local ct mark set ct mark | 0x01000000", "dnat_udp_local",
                     "mark_icmp_iif_local ct mark set ct mark | 0x01000000", "dnat_icmp_iif_local",
                     "mark_icmp_src_local ct mark set ct mark | 0x01000000", "dnat_icmp_src_local"]


def test_what_nft_prints_reads_back_as_the_table_that_was_written():
    desired, read = desired_fixture(), fixture_state()
    assert table_text(desired, {("dnat_tcp_iif_dst", '"eth0" . 10.211.55.122 . 8090'): (3, 180)}) == \
        (FIXTURES / "nft_table.nft").read_text()
    assert read.signature() == desired.signature()
    assert by_name(read) == by_name(desired)
    assert NftRuleset.forward_marker(read)
    assert by_name(read)["web"] == [
        'dnat_tcp_iif_dst { "eth0" . 10.211.55.122 . 8090 : 10.244.1.2 . 9090 }',
        "dnat_tcp_src_dst { 10.244.0.0/16 . 10.211.55.122 . 8090 : 10.244.1.2 . 9090 }",
        "hairpin { 10.244.1.2 . 10.244.1.2 . tcp . 9090 }",
        'mark_tcp_iif_dst { "eth0" . 10.211.55.122 . 8090 }',
        "mark_tcp_src_dst { 10.244.0.0/16 . 10.211.55.122 . 8090 }",
        "output_tcp_dst { 10.211.55.122 . 8090 : 10.244.1.2 . 9090 }",
    ]
    # The rules' texts come back through their comments, for the view.
    assert all(comment in read.texts for comments in read.rules.values() for comment in comments)


def test_protocols_printed_as_numbers_read_as_names():
    """A host without /etc/protocols (a minimal server, no netbase): nft prints 6 for tcp, 1 for icmp."""
    text = (FIXTURES / "nft_table.json").read_text()
    numeric = text.replace('"tcp"', "6").replace('"icmp"', "1").replace('"udp"', "17")
    assert numeric != text
    assert state_from_json(json.loads(numeric)).signature() == fixture_state().signature()


class FakeNft:
    """NftBackend stand-in: read() gives a state, commit(text) records; chains and rules for the forward check."""

    def __init__(self, state=None, chains=(), rules=None):
        self.state = state or NftState()
        self.committed = []
        self._chains = list(chains)
        self._rules = rules or {}

    def read(self):
        return self.state

    def commit(self, text):
        self.committed.append(text)

    def chains(self):
        return self._chains

    def rules(self, family, table, chain):
        return self._rules.get((family, table, chain), [])


def spec(mappings, **overrides):
    return DnatSpec(**{**dict(mappings=mappings, state="present", exclusive=False, ip_forward=True, accept_forward=True),
                       **overrides})


def nft_plan(spec_, state=None, ip_forward=0, others=(), conntrack=None, **ruleset):
    backend = FakeNft(state, **{key: ruleset.pop(key) for key in ("chains", "rules") if key in ruleset})
    active = NftRuleset(backend, backend.read(), **ruleset)
    return plan_dnat(active, spec_, ip_forward, conntrack=conntrack, others=others), backend


def fixture_spec(**overrides):
    return spec([mapping for mapping, _setup in FIXTURE_UNITS], **overrides)


def assert_consistent(plan):
    assert plan.changed == bool(plan.actions) == (plan.diff["before"] != plan.diff["after"])


def test_a_new_mapping_is_one_transaction_and_turns_ip_forward_on():
    with mock.patch.object(_dnat, "write_ip_forward") as write:
        plan, backend = nft_plan(spec([WEB]))
        assert plan.actions == [
            "add mapping web (tcp 8090 -> 10.244.1.2:9090)",
            "update the chains, maps and sets of table ip netns_expose",
            "replace table ip netns_expose in one nft -f transaction (4 elements in 5 maps and sets, 7 rules)",
            "set net.ipv4.ip_forward = 1 (was 0)",
        ]
        assert_consistent(plan)
        plan.apply()
    [text] = backend.committed
    assert "set ip_forward_was_0 {" in text and 'comment "netns.expose:web"' in text
    write.assert_called_once_with(1)
    assert plan.diff["after"]["nftables"]["sets"][0] == "map dnat_tcp_iif_dst: type ifname . ipv4_addr . inet_service : " \
                                                        "ipv4_addr . inet_service; counter"


def test_a_converged_table_plans_nothing():
    plan, backend = nft_plan(spec([mapping for mapping, _s in FIXTURE_UNITS[1:]] + [WEB], hairpin_sources=()),
                             fixture_state(), ip_forward=1)
    assert plan.actions != [], "web's hairpin sources differ"
    plan, backend = nft_plan(spec([WEB], hairpin_sources=("10.244.0.0/16", "10.244.9.9/32")), fixture_state(), ip_forward=1)
    assert plan.actions == [] and backend.committed == []
    assert_consistent(plan)


def drop_element(document, set_name, index=0):
    for entry in document["nftables"]:
        obj = entry.get("map") or entry.get("set")
        if obj and obj["name"] == set_name:
            del obj["elem"][index]
    return document


def with_document(change):
    document = json.loads((FIXTURES / "nft_table.json").read_text())
    return state_from_json(change(document) or document)


def change_chain(document, name, **fields):
    for entry in document["nftables"]:
        if "chain" in entry and entry["chain"]["name"] == name:
            entry["chain"].update(fields)


def regular_chain(document, name):
    for entry in document["nftables"]:
        if "chain" in entry and entry["chain"]["name"] == name:
            for key in ("hook", "type", "prio", "policy"):
                entry["chain"].pop(key)


def replace_rule(document, chain):
    for entry in document["nftables"]:
        if "rule" in entry and entry["rule"]["chain"] == chain:
            entry["rule"].pop("comment")
            return


def add_stray(document):
    for entry in document["nftables"]:
        if "map" in entry and entry["map"]["name"] == "dnat_udp_local":
            entry["map"]["elem"].append([{"elem": {"val": 9999, "counter": {"packets": 0, "bytes": 0}}}, {"concat": ["10.9.9.9", 1]}])


DRIFT = {
    "element deleted by hand": (lambda doc: drop_element(doc, "dnat_udp_local"),
                                "restore missing elements of mapping dns (udp 8053 -> 10.244.1.2:53)"),
    "mark deleted by hand": (lambda doc: drop_element(doc, "mark_udp_local"),
                             "restore missing elements of mapping dns (udp 8053 -> 10.244.1.2:53)"),
    "output element deleted": (lambda doc: drop_element(doc, "output_udp_local"),
                               "restore missing elements of mapping dns (udp 8053 -> 10.244.1.2:53)"),
    "hairpin element deleted": (lambda doc: drop_element(doc, "hairpin", 0), "restore missing elements of mapping"),
    "table deleted": (lambda doc: {"nftables": []}, "add mapping dns"),
    "hook of a chain changed": (lambda doc: change_chain(doc, "forward", prio=10),
                                "update the chains, maps and sets of table ip netns_expose"),
    "base chain made regular": (lambda doc: regular_chain(doc, "postrouting"),
                                "update the chains, maps and sets of table ip netns_expose"),
    "rule replaced by hand": (lambda doc: replace_rule(doc, "postrouting"),
                              "update the chains, maps and sets of table ip netns_expose"),
    "stray element": (add_stray, "remove 1 elements that belong to no mapping from table ip netns_expose"),
}


@pytest.mark.parametrize("case", sorted(DRIFT), ids=sorted(DRIFT))
def test_drift_is_repaired_by_replacing_the_table(case):
    change, first = DRIFT[case]
    # alt has no mark (accept_forward false in the fixture): not listed, it is kept as it is.
    plan, backend = nft_plan(spec([WEB, DNS, PING], hairpin_sources=("10.244.0.0/16", "10.244.9.9/32")),
                             with_document(change), ip_forward=1)
    assert plan.actions[0].startswith(first), plan.actions
    assert plan.actions[-1].startswith("replace table ip netns_expose in one nft -f transaction")
    assert_consistent(plan)
    plan.apply()
    if case != "table deleted":
        assert plan.diff["after"]["nftables"] == NftRuleset._body(desired_fixture(), [])
        [text] = backend.committed
        assert pieces(text) == pieces(table_text(desired_fixture(), with_document(change).counters))


def pieces(text):
    """The declarations, elements and rules of an nft -f text, in any order."""
    text = text.replace("elements = { ", "elements = {\n").replace(" }\n", "\n}\n")
    return sorted(piece.strip() for piece in re.split(r",\n|\n", text) if piece.strip())


def test_the_table_deleted_by_hand_comes_back_with_its_mappings_kept_and_listed():
    plan, _backend = nft_plan(spec([WEB], hairpin_sources=("10.244.0.0/16", "10.244.9.9/32")), NftState(), ip_forward=1)
    assert plan.actions[0] == "add mapping web (tcp 8090 -> 10.244.1.2:9090)"


def test_exclusive_with_nothing_deletes_the_table_and_puts_ip_forward_back():
    with mock.patch.object(_dnat, "write_ip_forward") as write:
        plan, backend = nft_plan(spec([], exclusive=True), fixture_state(), ip_forward=1)
        assert plan.actions[:4] == ["remove mapping alt", "remove mapping dns", "remove mapping ping", "remove mapping web"]
        assert plan.actions[-2:] == ["delete table ip netns_expose in one nft -f transaction",
                                     "set net.ipv4.ip_forward = 0 (restoring the value before the first mapping)"]
        assert "nftables" not in plan.diff["after"]
        assert_consistent(plan)
        plan.apply()
    assert backend.committed == ["table ip netns_expose {}\ndelete table ip netns_expose\n"]
    write.assert_called_once_with(0)


def test_absent_removes_only_the_named_mapping_and_counters_carry_over():
    plan, backend = nft_plan(spec([Mapping(name="alt")], state="absent"), fixture_state(), ip_forward=1)
    assert plan.actions[0] == "remove mapping alt"
    plan.apply()
    [text] = backend.committed
    assert '"eth0" . 10.211.55.122 . 8090 counter packets 3 bytes 180 comment "netns.expose:web"' in text
    assert "netns.expose:alt" not in text and "set ip_forward_was_0" in text


def test_counters_are_per_mapping():
    state = fixture_state()
    state.counters[("output_tcp_dst", "10.211.55.122 . 8090")] = (2, 120)
    assert NftRuleset(FakeNft(state), state).counters() == {
        "alt": {"packets": 0, "bytes": 0}, "dns": {"packets": 0, "bytes": 0}, "ping": {"packets": 0, "bytes": 0},
        "web": {"packets": 5, "bytes": 300}}


def test_a_mapping_that_matches_the_packets_of_another_owned_mapping_is_refused():
    clash = Mapping(name="web2", protocol="udp", port=8053, to_address="10.244.9.9", to_port=80)
    with pytest.raises(InvalidInput, match=r"^port: mapping 'web2' would match the same packets as mapping 'dns'"):
        nft_plan(spec([clash]), fixture_state())


def test_two_mappings_that_claim_one_key_of_a_map_the_first_keeps_it():
    """Host-side connections of two mappings that differ only by in_interface: one output element, the first's."""
    eth1 = Mapping(name="web1", protocol="tcp", port=8090, to_address="10.244.2.2", to_port=80,
                   destination="10.211.55.122", in_interface="eth1", local=True)
    state = NftRuleset.render({}, [(WEB, Setup(sources=("10.244.0.0/16",)).of(WEB)),
                                   (eth1, Setup(sources=("10.244.1.0/24",)).of(eth1))], False)
    names = by_name(state)
    assert [text for text in names["web1"] if text.startswith(("output", "dnat_tcp_src", "mark_tcp_src"))] == []
    assert [text.split(" {")[0] for text in names["web"]].count("dnat_tcp_src_dst") == 1
    # Reading it back gives the same: a second run changes nothing.
    plan, _b = nft_plan(spec([WEB, eth1], hairpin_sources=("10.244.0.0/16", "10.244.1.0/24")), state, ip_forward=1)
    assert plan.actions == []


# Switching backends

IPT_EMPTY = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n*filter\n:FORWARD {policy} [0:0]\nCOMMIT\n"


def iptables_with(mappings, setup, policy="ACCEPT", marker=True):
    rules = _dnat.render_rules({}, [(mapping, setup.of(mapping)) for mapping in mappings], marker)
    text = _dnat.restore_script(_dnat.OwnedRules(), rules)[0]
    text = text.replace("*filter\n", f"*filter\n:FORWARD {policy} [0:0]\n").replace("*nat\n", "*nat\n:PREROUTING ACCEPT [0:0]\n")
    if "*filter" not in text:
        text += f"*filter\n:FORWARD {policy} [0:0]\nCOMMIT\n"
    return parse_save(text.replace("-I POSTROUTING 1 ", "-A POSTROUTING ").replace("-I FORWARD 1 ", "-A FORWARD "))


def fake_iptables(variant="nft"):
    backend = mock.Mock(name=f"iptables-{variant}", variant=variant)
    return backend


def iptables_other(dump, variant="nft"):
    return IptablesRuleset(fake_iptables(variant), dump, root=(f"iptables-{variant}",))


def conntrack_table():
    table = mock.Mock(name="conntrack", method="netlink")
    table.delete.side_effect = lambda keys: {key: 0 for key in keys}
    return table


def test_switching_to_nftables_moves_every_mapping_in_one_run_and_leaves_no_iptables_rule():
    sources = ("10.244.0.0/16",)
    dump = iptables_with([WEB, DNS, ALT], Setup(sources=sources))
    other = iptables_other(dump)
    table = conntrack_table()
    with mock.patch.object(_dnat, "write_ip_forward") as write:
        plan, backend = nft_plan(spec([WEB, DNS], hairpin_sources=sources), ip_forward=1, others=[other], conntrack=table)
        assert plan.actions == [
            "move mapping alt to nftables",  # not listed, not exclusive: it moves as it is
            "move mapping dns to nftables (udp 8053 -> 10.244.1.2:53)",
            "move mapping web to nftables (tcp 8090 -> 10.244.1.2:9090)",
            "update the chains, maps and sets of table ip netns_expose",
            "update the netns.expose chains and the jumps to them (iptables-nft)",
            "replace table ip netns_expose in one nft -f transaction (13 elements in 12 maps and sets, 16 rules)",
            "commit the rule changes in one iptables-restore --noflush transaction (nft: filter +0 -4, nat +0 -21)",
        ]
        assert_consistent(plan)
        plan.apply()
    write.assert_not_called()  # the marker moved with the mappings: ip_forward stays as it is
    table.delete.assert_not_called(), "the same translations: their flows stay"
    [text] = backend.committed
    assert "set ip_forward_was_0" in text
    [script] = [call.args[0] for call in other.backend.commit.call_args_list]
    assert "-X NETNS-EXPOSE\n" in script and "-X NETNS-EXPOSE-FWD\n" in script
    # What moved is what the run would have made from the declaration.
    assert by_name(NftRuleset.render({}, [], False)) == {}
    moved = build_state([(name, [_nftables.parse_item(text) for text in items])
                         for name, items in plan.diff["after"]["mappings"].items()], True)
    declared = NftRuleset.render({}, [(m, Setup(sources=sources).of(m)) for m in (ALT, DNS, WEB)], True)
    assert moved.signature() == declared.signature()


def test_a_translation_that_changes_on_the_way_deletes_its_flows():
    dump = iptables_with([DNS], Setup())
    table = conntrack_table()
    changed = Mapping(name="dns", protocol="udp", port=8053, to_address="10.244.1.2", to_port=5353, local=True)
    plan, _b = nft_plan(spec([changed]), ip_forward=1, others=[iptables_other(dump)], conntrack=table)
    assert plan.actions[0] == "move mapping dns to nftables (udp 8053 -> 10.244.1.2:5353)"
    plan.apply()
    table.delete.assert_called_once_with([("udp", 8053, None)])


def test_switching_back_to_iptables_deletes_the_table():
    state = fixture_state()
    nft_other = NftRuleset(FakeNft(state), state)
    iptables = mock.Mock(name="iptables", variant="legacy")
    active = IptablesRuleset(iptables, parse_save(IPT_EMPTY.format(policy="ACCEPT")))
    plan = plan_dnat(active, spec([WEB, DNS], hairpin_sources=("10.244.0.0/16", "10.244.9.9/32")), 1, others=[nft_other])
    assert plan.actions[:4] == ["move mapping alt to iptables-legacy", "move mapping dns to iptables-legacy (udp 8053 -> 10.244.1.2:53)",
                                "move mapping ping to iptables-legacy", "move mapping web to iptables-legacy (tcp 8090 -> 10.244.1.2:9090)"]
    # The networks move too: 1 accept, 3 rules per guarded network and 2 per routed one, the router's 4, the jump.
    assert plan.actions[-2:] == ["commit the rule changes in one iptables-restore --noflush transaction (legacy: filter +14 -0, nat +28 -0)",
                                 "delete table ip netns_expose in one nft -f transaction"]
    assert_consistent(plan)
    plan.apply()
    script = iptables.commit.call_args.args[0]
    assert IP_FORWARD_MARK in script, "the marker moves too"
    # alt keeps having no mark (accept_forward false), the others have theirs.
    assert [line for line in script.splitlines() if "netns.expose:alt" in line and "CONNMARK" in line] == []
    assert nft_other.backend.committed == ["table ip netns_expose {}\ndelete table ip netns_expose\n"]


@pytest.mark.parametrize("mapping, setup", [
    (WEB, Setup(sources=("10.244.0.0/16", "10.244.9.9/32"))), (DNS, Setup()), (PING, Setup(mark=0x4, sources=("10.244.0.0/16",))),
    (ALT, Setup(mark=None, hairpin=False)),
    (Mapping(name="x", protocol="udp", port=53, to_address="10.0.0.2", to_port=5353, destination="10.0.0.1"), Setup()),
])
def test_each_backend_reads_back_the_mapping_it_made(mapping, setup):
    setup = setup.of(mapping)
    elements = mapping_elements(mapping, setup)
    items = by_name(build_state([(mapping.name, elements)], False))[mapping.name]
    expected = setup if mapping.name != "web" else Setup(setup.mark, True, ("10.244.0.0/16",))  # the /32 is inside
    assert _nftables.mapping_of_elements(mapping.name, items) == (mapping, expected)
    lines = _dnat.rules_by_mapping(_dnat.render_rules({}, [(mapping, setup)], False))[mapping.name]
    assert _dnat.mapping_of_rules(mapping.name, lines) == (mapping, setup)


# Coexistence with the host's own firewall

def test_an_iptables_forward_policy_drop_gets_the_one_owned_accept():
    marks = {0x1000000}
    drop = iptables_other(parse_save(IPT_EMPTY.format(policy="DROP")))
    rules = drop.render_other(marks)
    assert rules.chains["filter"] == {"NETNS-EXPOSE-FWD": [forward_accept_rule(0x1000000)]}
    assert rules.jumps["filter"] == {"FORWARD": '-A FORWARD -m comment --comment "netns.expose" -j NETNS-EXPOSE-FWD'}
    assert iptables_other(parse_save(IPT_EMPTY.format(policy="ACCEPT"))).render_other(marks).is_empty()
    assert drop.render_other(set()).is_empty(), "no marked mapping, no accept"
    plan, _b = nft_plan(spec([DNS]), ip_forward=1, others=[drop])
    assert "update the netns.expose chains and the jumps to them (iptables-nft)" in plan.actions
    assert plan.actions[-1] == "commit the rule changes in one iptables-restore --noflush transaction (nft: filter +2 -0)"


CHAIN = {"family": "inet", "table": "filter", "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}
ESTABLISHED = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
ADMIN_RULE = [{"match": {"op": "==", "left": {"&": [{"ct": {"key": "mark"}}, 16777216]}, "right": 16777216}},
              {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"accept": None}]


def test_a_forward_chain_of_the_host_that_drops_is_refused_before_anything_changes():
    rules = {("inet", "filter", "forward"): [(2, [ESTABLISHED, {"accept": None}])]}
    with pytest.raises(ForwardDropped) as excinfo:
        nft_plan(spec([WEB]), chains=[CHAIN], rules=rules, forward_drop_check=True)
    message = str(excinfo.value)
    assert "chain forward of table inet filter (policy drop)" in message
    assert "ct mark & 0x1000000 == 0x1000000 ct status dnat accept" in message
    assert "nft insert rule inet filter forward ct mark and 0x1000000 == 0x1000000 ct status dnat accept" in message
    assert "forward_drop_check: false" in message and message.endswith("Nothing was changed.")
    # The admin's rule, or the option, or a run without marked mappings, or removing: no refusal.
    nft_plan(spec([WEB]), chains=[CHAIN], rules={("inet", "filter", "forward"): [(3, ADMIN_RULE)]}, forward_drop_check=True)
    nft_plan(spec([WEB]), chains=[CHAIN], rules=rules, forward_drop_check=False)
    nft_plan(spec([WEB], accept_forward=False), chains=[CHAIN], rules=rules, forward_drop_check=True)
    nft_plan(spec([WEB], state="absent"), chains=[CHAIN], rules=rules, forward_drop_check=True)
    # iptables-nft's own FORWARD chain is handled by the owned accept through iptables.
    iptables_chain = dict(CHAIN, family="ip", table="filter", name="FORWARD")
    nft_plan(spec([WEB]), chains=[iptables_chain], forward_drop_check=True, iptables_forward={("ip", "filter", "FORWARD")})
    with pytest.raises(ForwardDropped, match="chain FORWARD of table ip filter"):
        nft_plan(spec([WEB]), chains=[iptables_chain], forward_drop_check=True)


def test_what_drops_forwarded_flows():
    marks = {0x1000000}
    assert forward_drop("drop", [], marks) == "policy drop"
    assert forward_drop("accept", [], marks) is None
    assert forward_drop("drop", [(1, ADMIN_RULE)], marks) is None
    assert forward_drop("drop", [(1, ADMIN_RULE)], {0x4}) == "policy drop", "another bit"
    assert forward_drop("drop", [(1, [{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                                      {"counter": None}, {"accept": None}])], marks) is None
    # firewalld's forward chain: policy accept, and a reject of everything at its end.
    reject = (9, [{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}])
    assert forward_drop("accept", [(1, [ESTABLISHED, {"accept": None}]), reject], marks) == \
        "a rule that drops or rejects everything (handle 9)"
    assert forward_drop("accept", [(1, ADMIN_RULE), reject], marks) is None
    assert forward_drop("accept", [(1, [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "x"}},
                                        {"drop": None}])], marks) is None, "not everything"


# The backend option

DOCKER_NFT = """*nat
:PREROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
COMMIT
*filter
:FORWARD DROP [0:0]
COMMIT
"""


@pytest.mark.parametrize("requested, nft, dumps, chosen", [
    ("iptables", True, {}, "iptables"),
    ("nftables", False, {}, "nftables"),
    ("auto", False, {"nft": ""}, "iptables"),
    ("auto", True, {}, "nftables"),
    ("auto", True, {"nft": IPT_EMPTY.format(policy="DROP")}, "nftables"),  # a policy is not a rule
    ("auto", True, {"nft": DOCKER_NFT}, "iptables"),
    ("auto", True, {"nft": IPT_EMPTY.format(policy="ACCEPT"), "legacy": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n"},
     "iptables"),
    # Only the collection's own rules: it moves them to nftables.
    ("auto", True, {"nft": "*nat\n:PREROUTING ACCEPT [0:0]\n:NETNS-EXPOSE - [0:0]\n"
                           '-A PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE\nCOMMIT\n'}, "nftables"),
    # iptables-nft-save's note about a native nft table named like an iptables one is no rule.
    ("auto", True, {"nft": "# Table `filter' contains incompatible base-chains, use 'nft' tool to list them.\n"
                           + IPT_EMPTY.format(policy="ACCEPT")}, "nftables"),
])
def test_auto_takes_nftables_unless_iptables_has_rules_of_the_host(requested, nft, dumps, chosen):
    backend, why = choose_backend(requested, nft, {variant: parse_save(text) for variant, text in dumps.items()})
    assert backend == chosen, why
    if requested == "auto" and chosen == "iptables" and nft:
        assert "rules or chains of the host's own" in why


def test_the_forward_accept_of_a_failed_nft_transaction_is_not_half_applied():
    """nft -f is one transaction: a failure changes nothing, and the plan says which step failed."""
    backend = FakeNft()
    backend.commit = mock.Mock(side_effect=_nftables.NftError("nft -f failed (1), nothing was changed: boom"))
    plan = plan_dnat(NftRuleset(backend, backend.read()), spec([WEB]), 1)
    with pytest.raises(PlanApplyError, match="failed to replace table ip netns_expose"):
        plan.apply()


def test_a_copy_of_the_fixture_state_is_independent():
    first, second = fixture_state(), fixture_state()
    second.elements["dnat_udp_local"].clear()
    assert first.signature() != second.signature() and copy.deepcopy(first).signature() == first.signature()


def test_a_name_too_long_for_an_element_comment_is_refused():
    nft_plan(spec([Mapping(name="a" * 115, port=1, to_address="10.0.0.1", to_port=1)]))
    with pytest.raises(InvalidInput, match=r"^name: 'a+' is 116 characters long: the nftables backend .* holds 115 "):
        nft_plan(spec([Mapping(name="a" * 116, port=1, to_address="10.0.0.1", to_port=1)]))


def test_published_reads_the_table_back_as_rules_entries():
    # The table nft printed, read without a change: every mapping with what it matches and where it goes.
    plan, _backend = nft_plan(spec([]), state=fixture_state(), ip_forward=1)
    published = {rule["name"]: rule for rule in plan.published["rules"]}
    assert {name: Mapping(**rule) for name, rule in published.items()} == {
        mapping.name: mapping for mapping, _setup in FIXTURE_UNITS}
    # The interval set holds 10.244.9.9/32 within 10.244.0.0/16: the sources that take effect.
    assert plan.published["hairpin_sources"] == ["10.244.0.0/16"]
