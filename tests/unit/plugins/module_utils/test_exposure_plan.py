r"""What a host exposes, planned for both backends: the namespace networks (guarded, routed) and the router drop,
the mappings' allowed_sources, and the conntrack entries a change of those cuts.

Every plan is checked for check-mode consistency, applied, read back and planned again:
- iptables: the scripts a plan commits are run by iptables_restore() below, a model of
  `iptables-restore --noflush` (it refuses what iptables-restore refuses: deleting a missing rule, declaring an
  existing chain, inserting past the end, deleting a chain that is not empty or is jumped to), and the rules are
  read back with parse_save from what it prints as iptables-save does. It gave what iptables-nft and
  iptables-legacy 1.8.9 gave, in a throwaway namespace, for scripts such as these tests make (every kind of
  rule of the mappings, networks, router drop and lists, then inserts and deletes in NETNS-EXPOSE-FWD).
- nftables: what nft prints is read back with state_from_json from fixtures/nft_allowed.json (two mappings with
  allowed_sources, one with in_interface, hairpin sources and local, one udp without destination, with local; a
  guarded network; a DNAT counter and a denied counter carried over); the other tests plan again on the table as
  the plan rendered it, which that fixture shows nft gives back unchanged.

fixtures/nft_allowed.nft is `table_text(allowed_state(), ALLOWED_COUNTERS, ALLOWED_DENIED)` of this module
(test_the_allowed_fixture_is_the_table_text_of_its_mappings checks it), and fixtures/nft_allowed.json is what
nft 1.0.6 printed for it, made as root in a throwaway network namespace (never the machine's own ruleset), in
tests/unit/plugins/module_utils:

    ip netns add nx-fixture
    ip netns exec nx-fixture nft -f fixtures/nft_allowed.nft
    ip netns exec nx-fixture nft -j list table ip netns_expose | python3 -c 'import json, sys
    entries = json.load(sys.stdin)["nftables"]
    print("{\"nftables\": [\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]}")' > fixtures/nft_allowed.json
    ip netns del nx-fixture
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ansible_collections.netns.expose.plugins.module_utils import _conntrack, _dnat
from ansible_collections.netns.expose.plugins.module_utils._dnat import (
    FORWARD_CHAIN,
    RULES_FILE,
    SOURCES_CHAIN,
    SOURCES_LOCAL_CHAIN,
    IptablesRuleset,
    Mapping,
    Networks,
    Setup,
    allowed_chain,
    forward_accept_rule,
    network_rules,
    networks_from_params,
    persisted_files,
    plan_dnat,
    resolve_networks,
    router_rules,
)
from ansible_collections.netns.expose.plugins.module_utils._iptables import chain_changes, parse_save
from ansible_collections.netns.expose.plugins.module_utils._nftables import (
    NftRuleset,
    NftState,
    by_name,
    mapping_elements,
    mapping_of_elements,
    networks_of_state,
    state_from_json,
    table_text,
)
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

from test_conntrack import FakeKernel, entry_message, fake_table, ip_tuple, ports
from test_dnat import EMPTY, assert_consistent, backend, spec
from test_nftables import FIXTURES, FakeNft

HAIRPIN = ("10.244.0.0/16",)
# Hairpin clients (10.244.0.0/16) are let in by web's own list, not by dns's.
WEB = Mapping(name="http-web", protocol="tcp", port=8090, to_address="10.244.1.2", to_port=9090,
              destination="10.211.55.122", in_interface="eth0", local=True,
              allowed_sources=("10.211.55.0/24", "10.244.0.0/16", "192.168.7.7/32"))
DNS = Mapping(name="dns", protocol="udp", port=8053, to_address="10.244.1.2", to_port=53, local=True,
              allowed_sources=("10.211.55.0/25",))
OPEN = Mapping(name="open", protocol="tcp", port=8091, to_address="10.244.2.2", to_port=80)
GUARDED = Networks(guarded=("10.244.1.0/24",))
BOTH = Networks(guarded=("10.244.1.0/24", "10.244.2.0/24"), routed=("10.244.9.0/24",))
WEB_KEY, DNS_KEY = ("tcp", 8090, "10.211.55.122"), ("udp", 8053, None)

# What fixtures/nft_allowed.nft holds.
ALLOWED_UNITS = [(WEB, Setup(sources=HAIRPIN)), (DNS, Setup())]
ALLOWED_COUNTERS = {("dnat_tcp_iif_dst", '"eth0" . 10.211.55.122 . 8090'): (3, 180)}
ALLOWED_DENIED = {"src.http-web": (4, 240)}


def allowed_state():
    return NftRuleset.render({}, [(mapping, setup.of(mapping)) for mapping, setup in ALLOWED_UNITS], False, GUARDED)


def allowed_fixture():
    return state_from_json(json.loads((FIXTURES / "nft_allowed.json").read_text()))


# The hosts: what a backend holds, changed by what the plans commit


def iptables_restore(dump_text, script):
    """The iptables-save text after `iptables-restore --noflush` ran `script` over `dump_text`."""
    tables, chains = {}, None
    for line in dump_text.splitlines():
        if line.startswith("*"):
            chains = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            chains[name] = (policy, [])
        elif line.startswith("-A "):
            chains[line.split()[1]][1].append(line)
    for line in script.splitlines():
        if line.startswith("*"):
            chains = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            name = line[1:].split()[0]
            assert name not in chains, f"{line!r} would flush the chain"
            chains[name] = ("-", [])
        elif line.startswith(("-A ", "-I ", "-D ")):
            command, chain, rest = line.split(" ", 2)
            rules = chains.setdefault(chain, ("ACCEPT", []))[1]  # a built-in chain of a table not in the dump
            if command == "-I":
                position, rest = rest.split(" ", 1)
                assert 1 <= int(position) <= len(rules) + 1, f"{line!r}: index of insertion too big"
                rules.insert(int(position) - 1, f"-A {chain} {rest}")
            elif command == "-A":
                rules.append(f"-A {chain} {rest}")
            else:
                assert f"-A {chain} {rest}" in rules, f"{line!r}: no such rule"
                rules.remove(f"-A {chain} {rest}")
        elif line.startswith("-F "):
            chains[line.split()[1]][1].clear()
        elif line.startswith("-X "):
            name = line.split()[1]
            assert not chains[name][1], f"{line!r}: the chain is not empty"
            assert not any(rule.endswith(f" -j {name}") for _policy, rules in chains.values() for rule in rules), \
                f"{line!r}: the chain is jumped to"
            del chains[name]
    lines = []
    for table, table_chains in tables.items():
        lines += [f"*{table}", *(f":{name} {policy} [0:0]" for name, (policy, _rules) in table_chains.items())]
        lines += [rule for _policy, rules in table_chains.values() for rule in rules] + ["COMMIT"]
    return "\n".join(lines) + "\n"


class IptablesHost:
    """A host of the iptables backend (variant nft): its iptables-save text."""

    def __init__(self, dump=EMPTY):
        self.dump = dump
        self.scripts = []  # what the last plan committed

    def ruleset(self, other=False):
        return IptablesRuleset(backend(self.dump), parse_save(self.dump), root=("iptables-nft",) if other else ())

    def settle(self, ruleset):
        self.scripts = [call.args[0] for call in ruleset.backend.commit.call_args_list]
        for script in self.scripts:
            self.dump = iptables_restore(self.dump, script)

    def forward_chain(self):
        return parse_save(self.dump).table_lines("filter", FORWARD_CHAIN)


class RecordingNft(NftRuleset):
    """The nftables ruleset, keeping the table its plan commits."""

    desired = None

    def plan_commit(self, plan, desired):
        self.desired = desired
        super().plan_commit(plan, desired)


class NftHost:
    """A host of the nftables backend: its owned table."""

    def __init__(self, state=None):
        self.state = state or NftState()

    def ruleset(self, other=False):  # pylint: disable=unused-argument
        """The table as the planner sees it, whether nftables is the run's backend or the other one."""
        return RecordingNft(FakeNft(self.state), self.state)

    def settle(self, ruleset):
        if ruleset.backend.committed:
            self.state = ruleset.desired

    def forward_rules(self):
        return [self.state.texts[comment] for comment in self.state.rules.get("forward", [])]


HOSTS = {"iptables": IptablesHost, "nftables": NftHost}


class FakeConntrack:
    """A ConntrackTable: records what it is asked to delete."""

    method = "netlink"

    def __init__(self):
        self.calls = []

    def delete(self, keys, kept=None):
        self.calls.append((list(keys), kept))
        return {key: 1 for key in keys}


def plan_on(host, spec_, others=(), conntrack=None):
    """The plan of a run on host (the other backends' hosts in others), as read now."""
    active, rulesets = host.ruleset(), [other.ruleset(other=True) for other in others]
    return plan_dnat(active, spec_, _dnat.read_ip_forward(), conntrack=conntrack, others=rulesets), active, rulesets


def run(host, spec_, others=(), conntrack=None):
    """Plan, check the plan's consistency, apply it, and settle every host into what was committed."""
    plan, active, rulesets = plan_on(host, spec_, others, conntrack)
    assert_consistent(plan)
    plan.apply()
    for each, ruleset in zip((host, *others), (active, *rulesets)):
        each.settle(ruleset)
    return plan


def assert_converged(host, spec_, others=()):
    plan, _active, _rulesets = plan_on(host, spec_, others)
    assert plan.actions == [], "a second run changes something"
    assert not plan.changed and plan.diff["before"] == plan.diff["after"]


def mappings_of(host):
    """{name: (Mapping, Setup)} as the host's backend reads its mappings back."""
    ruleset = host.ruleset()
    return {name: ruleset.parse(name, items) for name, items in ruleset.by_name(ruleset.current).items() if name}


def full_spec(mappings=(WEB, DNS), **overrides):
    return spec(list(mappings), **{"hairpin_sources": HAIRPIN, "networks": GUARDED, **overrides})


# The namespace networks


def test_networks_from_params_are_sorted_per_list():
    assert networks_from_params(["10.244.2.0/24", "10.244.1.0/24"], ["10.244.9.0/24"]) == Networks(
        ("10.244.1.0/24", "10.244.2.0/24"), ("10.244.9.0/24",))
    assert networks_from_params(None, None) == Networks() and not Networks()
    assert networks_from_params([], ["10.244.9.5/32"]) == Networks((), ("10.244.9.5/32",))


@pytest.mark.parametrize("guarded, routed, field, problem", [
    (["10.244.1.0/24", "10.244.2"], [], "guarded_networks[1]", "'10.244.2' is not an IPv4 network in CIDR notation"),
    (["10.244.1.0/24"], ["10.244.9.1/24"], "routed_networks[0]", "has host bits set"),
    (["fd00::/64"], [], "guarded_networks[0]", "is not an IPv4 network"),
    (["10.244.0.0/16"], ["10.244.9.0/24"], "routed_networks[0]",
     "10.244.9.0/24 overlaps 10.244.0.0/16 of guarded_networks[0]: a namespace network is either guarded or routed, once"),
    (["10.244.1.0/24", "10.244.1.128/25"], [], "guarded_networks[1]", "overlaps 10.244.1.0/24 of guarded_networks[0]"),
    ([], ["10.244.9.0/24", "10.244.9.0/24"], "routed_networks[1]", "overlaps 10.244.9.0/24 of routed_networks[0]"),
])
def test_a_bad_or_overlapping_network_is_refused_naming_its_entry(guarded, routed, field, problem):
    with pytest.raises(InvalidInput) as refused:
        networks_from_params(guarded, routed)
    assert refused.value.field == field and problem in str(refused.value)


CURRENT = Networks(("10.244.1.0/24", "10.244.2.0/24"), ("10.244.9.0/24",))


@pytest.mark.parametrize("listed, state, exclusive, after", [
    (Networks(("10.244.3.0/24",)), "present", False, Networks(("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"),
                                                              ("10.244.9.0/24",))),
    # A listed network replaces every one it overlaps, in either list.
    (Networks(("10.244.0.0/16",)), "present", False, Networks(("10.244.0.0/16",))),
    # Routed now, guarded before.
    (Networks((), ("10.244.2.0/24",)), "present", False, Networks(("10.244.1.0/24",), ("10.244.2.0/24", "10.244.9.0/24"))),
    (Networks(("10.244.3.0/24",)), "present", True, Networks(("10.244.3.0/24",))),
    (Networks(), "present", True, Networks()),
    (Networks(("10.244.1.0/24",), ("10.244.9.0/24",)), "absent", False, Networks(("10.244.2.0/24",))),
    (Networks(("10.244.0.0/16",)), "absent", True, Networks()),
    (Networks(("10.245.0.0/16",)), "absent", False, CURRENT),
])
def test_the_runs_networks_replace_those_they_overlap(listed, state, exclusive, after):
    assert resolve_networks(spec([], state=state, exclusive=exclusive, networks=listed), CURRENT) == after


@pytest.mark.parametrize("kind", sorted(HOSTS))
def test_networks_are_planned_applied_read_back_and_converged(kind):
    host = HOSTS[kind]()
    plan = run(host, full_spec([OPEN], networks=BOTH))
    assert "namespace networks: guard 10.244.1.0/24, 10.244.2.0/24; route 10.244.9.0/24" in plan.actions
    assert plan.diff["after"]["networks"] == BOTH.view() and plan.diff["before"]["networks"] == Networks().view()
    assert (plan.published["guarded_networks"], plan.published["routed_networks"]) == (list(BOTH.guarded), list(BOTH.routed))
    assert host.ruleset().networks(host.ruleset().current) == BOTH
    assert_converged(host, full_spec([OPEN], networks=BOTH))
    # Not exclusive: a run that lists no network leaves them; one that lists a network replaces what it overlaps.
    assert_converged(host, full_spec([OPEN], networks=Networks()))
    plan = run(host, full_spec([OPEN], networks=Networks((), ("10.244.2.0/24",))))
    assert "namespace networks: stop guarding 10.244.2.0/24; route 10.244.2.0/24" in plan.actions
    assert host.ruleset().networks(host.ruleset().current) == Networks(("10.244.1.0/24",), ("10.244.2.0/24", "10.244.9.0/24"))
    plan = run(host, spec([], state="absent", networks=Networks(("10.244.0.0/16",))))
    assert "namespace networks: stop guarding 10.244.1.0/24; stop routing 10.244.2.0/24, 10.244.9.0/24" in plan.actions
    assert host.ruleset().networks(host.ruleset().current) == Networks()


def test_iptables_forward_chain_guards_routes_then_drops_what_the_collection_does_not_own():
    host = IptablesHost()
    run(host, full_spec([OPEN], networks=BOTH))  # ip_forward was 0: the collection turns it on
    assert _dnat.read_ip_forward() == 1
    assert host.forward_chain() == [forward_accept_rule(_dnat.DEFAULT_CONNMARK), *network_rules(BOTH), *router_rules(BOTH)]
    chain = host.forward_chain()
    # Each guarded network: its DNAT-ed flows and replies return before its drop; the router drop ends the chain.
    for network in BOTH.guarded:
        mine = [line for line in chain if f"-d {network} " in line]
        assert [line.rsplit(" -j ", 1)[1] for line in mine] == ["RETURN", "RETURN", "DROP"]
    assert chain[-1] == '-A NETNS-EXPOSE-FWD -m comment --comment "netns.expose/forward-only-owned" -j DROP'


@pytest.mark.parametrize("kind", sorted(HOSTS))
def test_the_router_drop_needs_the_marker_and_a_mapping(kind):
    # Forwarding on before the collection: the networks are guarded, the rest is left to the host.
    _dnat.write_ip_forward(1)
    host = HOSTS[kind]()
    run(host, full_spec([OPEN]))
    assert host.ruleset().forward_marker(host.ruleset().current) is False
    rules = host.forward_chain() if kind == "iptables" else host.forward_rules()
    assert not any("forward-only-owned" in rule or rule == "counter drop" for rule in rules)
    # Forwarding turned on by the collection, but no mapping: it only guards, and leaves ip_forward as it is.
    _dnat.write_ip_forward(0)
    host = HOSTS[kind]()
    plan = run(host, spec([], networks=GUARDED))
    assert not any("ip_forward" in action for action in plan.actions) and _dnat.read_ip_forward() == 0
    rules = host.forward_chain() if kind == "iptables" else host.forward_rules()
    assert rules and not any("forward-only-owned" in rule or rule == "counter drop" for rule in rules)
    # The first mapping: forwarding on, with the marker and the router drop last.
    run(host, full_spec([OPEN]))
    assert _dnat.read_ip_forward() == 1 and host.ruleset().forward_marker(host.ruleset().current)
    rules = host.forward_chain() if kind == "iptables" else host.forward_rules()
    assert rules[-1] == ('-A NETNS-EXPOSE-FWD -m comment --comment "netns.expose/forward-only-owned" -j DROP'
                         if kind == "iptables" else "counter drop")
    # The last mapping goes: forwarding back to 0, the router drop with it; the networks stay guarded.
    plan = run(host, spec([Mapping(name="open")], state="absent"))
    assert plan.actions[-1] == "set net.ipv4.ip_forward = 0 (restoring the value before the first mapping)"
    rules = host.forward_chain() if kind == "iptables" else host.forward_rules()
    assert rules and not any("forward-only-owned" in rule or rule == "counter drop" for rule in rules)
    assert host.ruleset().networks(host.ruleset().current) == GUARDED
    assert_converged(host, spec([], networks=GUARDED))


def test_networks_and_mappings_move_to_nftables_and_leave_nothing_in_iptables():
    ipt = IptablesHost()
    run(ipt, full_spec(networks=BOTH))
    nft = NftHost()
    plan = run(nft, spec([]), others=[ipt])
    assert plan.actions[:2] == ["move mapping dns to nftables", "move mapping http-web to nftables"]
    assert not any(action.startswith("namespace networks") for action in plan.actions), "they moved, unchanged"
    assert networks_of_state(nft.state) == BOTH
    # All that stays in iptables is the accept of the mapped flows, as its FORWARD policy is DROP.
    assert ipt.forward_chain() == [forward_accept_rule(_dnat.DEFAULT_CONNMARK)]
    assert ipt.ruleset().networks(ipt.ruleset().current) == Networks()
    assert not any(ipt.ruleset().current.chains[table] for table in ("nat", "mangle"))
    # The mappings kept their lists on the way.
    assert {name: mapping for name, (mapping, _setup) in mappings_of(nft).items()} == {"dns": DNS, "http-web": WEB}
    assert (plan.published["guarded_networks"], plan.published["routed_networks"]) == (list(BOTH.guarded), list(BOTH.routed))
    assert_converged(nft, full_spec(networks=BOTH), others=[ipt])


def test_networks_and_mappings_move_back_to_iptables_and_the_table_goes():
    _dnat.write_ip_forward(1)  # on before the collection: the fixture's table has no marker
    nft = NftHost(allowed_fixture())
    ipt = IptablesHost()
    plan = run(ipt, spec([]), others=[nft])
    assert plan.actions[-1] == "delete table ip netns_expose in one nft -f transaction"
    assert not nft.state.exists
    assert ipt.ruleset().networks(ipt.ruleset().current) == GUARDED
    moved = mappings_of(ipt)
    assert moved == {mapping.name: (mapping, setup.of(mapping)) for mapping, setup in ALLOWED_UNITS}
    assert_converged(ipt, spec([WEB, DNS], hairpin_sources=HAIRPIN, networks=GUARDED), others=[nft])


# The order of NETNS-EXPOSE-FWD: what is missing goes in at its place


def fwd(name):
    return f'-A {FORWARD_CHAIN} -d 10.0.0.{ord(name) - 96}/32 -m comment --comment "netns.expose/{name}" -j RETURN'


A, B, C, D, X = (fwd(name) for name in "abcdx")


def insert(position, line):
    return f"-I {FORWARD_CHAIN} {position}{line[len(f'-A {FORWARD_CHAIN}'):]}"


def chain_after(have, delete, append):
    dump = "*filter\n:FORWARD DROP [0:0]\n:NETNS-EXPOSE-FWD - [0:0]\n" + "".join(f"{line}\n" for line in have) + "COMMIT\n"
    script = "\n".join(["*filter", *("-D" + line[2:] for line in delete), *append, "COMMIT"])
    return parse_save(iptables_restore(dump, script)).table_lines("filter", FORWARD_CHAIN)


@pytest.mark.parametrize("have, want, delete, append", [
    ([A, C], [A, B, C], [], [insert(2, B)]),
    ([B], [A, B], [], [insert(1, A)]),
    ([A, X, C], [A, B, C, D], [X], [insert(2, B), insert(4, D)]),
    ([A, B, C], [A, C], [B], []),
    ([A, C], [A, C, D], [], [D]),
    ([C, X], [A, B, C], [X], [insert(1, A), insert(2, B)]),
    # What stays is out of order: the whole chain again.
    ([C, A], [A, C], [C, A], [A, C]),
    ([A, B, C], [A, C, B], [A, B, C], [A, C, B]),
    ([C, X, A], [A, C], [C, X, A], [A, C]),
])
def test_an_ordered_chain_gets_what_is_missing_inserted_at_its_place(have, want, delete, append):
    assert chain_changes(have, want, ordered=True) == (delete, append)
    assert chain_after(have, delete, append) == want


def test_a_chain_that_is_not_ordered_gets_what_is_missing_appended():
    delete, append = chain_changes([A, C], [A, B, C])
    assert (delete, append) == ([], [B]) and chain_after([A, C], delete, append) == [A, C, B]


def forward_edits(script):
    return [line for line in script.splitlines() if line.split(" ", 2)[1:2] == [FORWARD_CHAIN]]


def test_a_routed_network_added_goes_in_at_its_place_and_the_rest_stays():
    host = IptablesHost()
    run(host, full_spec([OPEN]))  # guarded 10.244.1.0/24, and the router drop
    run(host, full_spec([OPEN], networks=Networks((), ("10.244.9.0/24",))))
    after = Networks(GUARDED.guarded, ("10.244.9.0/24",))
    [script] = host.scripts
    routed = [line for line in network_rules(after) if "routed" in line]
    assert forward_edits(script) == [insert(5 + index, line) for index, line in enumerate(routed)]
    assert host.forward_chain() == [forward_accept_rule(_dnat.DEFAULT_CONNMARK), *network_rules(after), *router_rules(after)]
    assert_converged(host, full_spec([OPEN]))


def test_a_guarded_network_added_or_removed_leaves_the_chain_in_order():
    host = IptablesHost()
    run(host, full_spec([OPEN]))
    run(host, full_spec([OPEN], networks=Networks(("10.244.2.0/24",))))
    after = Networks(("10.244.1.0/24", "10.244.2.0/24"))
    assert host.forward_chain() == [forward_accept_rule(_dnat.DEFAULT_CONNMARK), *network_rules(after), *router_rules(after)]
    before = host.forward_chain()
    run(host, spec([], state="absent", networks=Networks(("10.244.1.0/24",))))
    [script] = host.scripts
    assert forward_edits(script) == ["-D" + line[2:] for line in before if "10.244.1.0/24" in line], \
        "only deleted: what stays is in order"
    after = Networks(("10.244.2.0/24",))
    assert host.forward_chain() == [forward_accept_rule(_dnat.DEFAULT_CONNMARK), *network_rules(after), *router_rules(after)]


def test_a_guarded_network_added_is_only_inserted():
    host = IptablesHost()
    run(host, full_spec([OPEN]))
    run(host, full_spec([OPEN], networks=Networks(("10.244.2.0/24",))))
    [script] = host.scripts
    assert all(line.startswith(f"-I {FORWARD_CHAIN} ") for line in forward_edits(script)), forward_edits(script)


def reordered_by_hand(dump, line, position=0):
    """The dump with `line` of NETNS-EXPOSE-FWD moved to `position` in the chain."""
    lines = dump.splitlines()
    lines.remove(line)
    first = next(index for index, text in enumerate(lines) if text.startswith(f"-A {FORWARD_CHAIN} "))
    lines.insert(first + position, line)
    return "\n".join(lines) + "\n"


ROUTER_DROP = f'-A {FORWARD_CHAIN} -m comment --comment "netns.expose/forward-only-owned" -j DROP'


def test_a_forward_chain_reordered_by_hand_is_written_again_in_its_order():
    host = IptablesHost()
    run(host, full_spec([OPEN]))
    wanted = host.forward_chain()
    host.dump = reordered_by_hand(host.dump, ROUTER_DROP)  # the drop first: nothing is forwarded any more
    plan, active, _others = plan_on(host, full_spec([OPEN]))
    assert plan.actions == ["update the netns.expose chains and the jumps to them",
                            "commit the rule changes in one iptables-restore --noflush transaction (nft: filter +7 -7)"]
    plan.apply()
    host.settle(active)
    assert host.forward_chain() == wanted
    assert_converged(host, full_spec([OPEN]))


def test_a_forward_chain_reordered_by_hand_shows_in_the_diff():
    host = IptablesHost()
    run(host, full_spec([OPEN]))
    host.dump = reordered_by_hand(host.dump, ROUTER_DROP)
    plan, _active, _others = plan_on(host, full_spec([OPEN]))
    assert_consistent(plan)


def test_the_boot_file_restores_the_forward_chain_in_its_order():
    host = IptablesHost()
    run(host, full_spec([OPEN], networks=BOTH))
    files = persisted_files("nft", host.ruleset().current)
    booted = IptablesHost(iptables_restore(EMPTY, files[RULES_FILE]))
    assert booted.forward_chain() == host.forward_chain()
    assert_converged(booted, full_spec([OPEN], networks=BOTH))


# allowed_sources


@pytest.mark.parametrize("kind", sorted(HOSTS))
def test_allowed_sources_are_planned_applied_read_back_and_converged(kind):
    host = HOSTS[kind]()
    plan = run(host, full_spec([WEB, DNS, OPEN]))
    assert plan.actions[:3] == ["add mapping dns (udp 8053 -> 10.244.1.2:53, from 10.211.55.0/25)",
                                "add mapping http-web (tcp 8090 -> 10.244.1.2:9090, from 10.211.55.0/24, 10.244.0.0/16, "
                                "192.168.7.7/32)",
                                "add mapping open (tcp 8091 -> 10.244.2.2:80)"]
    read = mappings_of(host)
    assert {name: mapping for name, (mapping, _setup) in read.items()} == {"dns": DNS, "http-web": WEB, "open": OPEN}
    assert read["http-web"][1] == Setup(sources=HAIRPIN)
    published = {rule["name"]: rule.get("allowed_sources") for rule in plan.published["rules"]}
    assert published == {"dns": list(DNS.allowed_sources), "http-web": list(WEB.allowed_sources), "open": None}
    assert_converged(host, full_spec([WEB, DNS, OPEN]))


def test_iptables_checks_only_new_flows_and_drops_after_the_last_allowed_network():
    host = IptablesHost()
    run(host, full_spec([WEB, DNS, OPEN]))
    mangle = parse_save(host.dump)
    sources, local = mangle.table_lines("mangle", SOURCES_CHAIN), mangle.table_lines("mangle", SOURCES_LOCAL_CHAIN)
    for lines in (sources, local):
        assert "-m conntrack ! --ctstate NEW" in lines[0] and lines[0].endswith(" -j RETURN")
    web_chain, dns_chain = allowed_chain("http-web"), allowed_chain("dns")
    assert web_chain != dns_chain and len(web_chain) <= 28
    # web: its own match and its hairpin source jump to its chain, and the host's own connections (local).
    assert [line.rsplit(" -j ", 1)[1] for line in sources if "netns.expose:http-web" in line] == [web_chain, web_chain]
    assert any(" -s 10.244.0.0/16 " in line for line in sources if "netns.expose:http-web" in line)
    assert sorted(line.rsplit(" -j ", 1)[1] for line in local[1:]) == sorted([web_chain, dns_chain])
    assert not any("netns.expose:open" in line for line in sources + local), "no list, no check"
    web = mangle.table_lines("mangle", web_chain)
    assert [line.split(" -j ")[1] for line in web] == ["RETURN"] * 3 + ["DROP"]
    assert [line.split()[3] for line in web[:3]] == list(WEB.allowed_sources)
    # Without any list, no mangle chain at all.
    run(host, full_spec([OPEN], exclusive=True))
    assert IptablesHost(host.dump).ruleset().current.chains["mangle"] == {}
    assert "-j NETNS-EXPOSE-SRC" not in host.dump


def test_nftables_checks_the_list_before_the_dnat_of_each_kind():
    state = allowed_state()
    prerouting = [state.texts[comment] for comment in state.rules["prerouting"]]
    # The verdict map of a kind comes before its mark and DNAT: a denied flow is dropped before it is translated.
    assert prerouting.index("iifname . ip daddr . tcp dport vmap @sources_tcp_iif_dst") < \
        prerouting.index("dnat ip addr . port to iifname . ip daddr . tcp dport map @dnat_tcp_iif_dst")
    assert prerouting.index("ip saddr . ip daddr . tcp dport vmap @sources_tcp_src_dst") < \
        prerouting.index("dnat ip addr . port to ip saddr . ip daddr . tcp dport map @dnat_tcp_src_dst")
    output_local = [state.texts[comment] for comment in state.rules["output_local"]]
    assert output_local == ["udp dport vmap @sources_output_udp_local", "dnat ip addr . port to udp dport map @output_udp_local"]
    assert [state.texts[comment] for comment in state.rules["src.http-web"]] == ["ip saddr != @src.http-web counter drop"]
    assert [key for key, _value, _owner in state.elements["src.http-web"]] == ["10.211.55.0/24", "10.244.0.0/16", "192.168.7.7"]
    verdicts = {(name, value) for name, key, value in mapping_elements(WEB, Setup(sources=HAIRPIN).of(WEB))
                if name.startswith("sources")}
    assert verdicts == {(name, "jump src.http-web") for name in ("sources_tcp_iif_dst", "sources_tcp_src_dst",
                                                                 "sources_output_tcp_dst")}
    assert not any(name.startswith(("sources", "src.")) for name, _key, _value in mapping_elements(OPEN, Setup()))


@pytest.mark.parametrize("start, end", [("iptables", "nftables"), ("nftables", "iptables")])
def test_allowed_sources_move_between_backends_with_their_mappings(start, end):
    _dnat.write_ip_forward(1)
    old = HOSTS[start]()
    run(old, full_spec([WEB, DNS, OPEN]))
    new = HOSTS[end]()
    table = FakeConntrack()
    plan = run(new, spec([]), others=[old], conntrack=table)
    assert [action for action in plan.actions if action.startswith("move")] == [
        f"move mapping {name} to {new.ruleset().title}" for name in ("dns", "http-web", "open")]
    assert table.calls == [], "the same translations and lists: the flows stay"
    assert mappings_of(new) == {mapping.name: (mapping, Setup(sources=HAIRPIN).of(mapping)) for mapping in (WEB, DNS, OPEN)}
    assert mappings_of(old) == {}
    assert {rule["name"]: rule.get("allowed_sources") for rule in plan.published["rules"]} == {
        "dns": list(DNS.allowed_sources), "http-web": list(WEB.allowed_sources), "open": None}
    assert_converged(new, full_spec([WEB, DNS, OPEN]), others=[old])


@pytest.mark.parametrize("kind", sorted(HOSTS))
def test_what_was_published_given_back_with_exclusive_makes_the_same_state(kind):
    host = HOSTS[kind]()
    plan = run(host, full_spec([WEB, DNS, OPEN], networks=BOTH))
    published = plan.published
    again = spec([Mapping(**{key: tuple(value) if isinstance(value, list) else value for key, value in rule.items()})
                  for rule in published["rules"]], exclusive=True, hairpin_sources=tuple(published["hairpin_sources"]),
                 networks=networks_from_params(published["guarded_networks"], published["routed_networks"]))
    assert_converged(host, again)
    fresh = HOSTS[kind]()
    _dnat.write_ip_forward(0)
    replayed = run(fresh, again)
    assert replayed.diff["after"] == plan.diff["after"] and replayed.published == published


def test_nftables_counts_the_denied_clients_and_carries_the_count_over():
    _dnat.write_ip_forward(1)
    host = NftHost(allowed_fixture())
    assert host.ruleset().counters()["http-web"] == {"packets": 3, "bytes": 180, "denied": 4}
    assert host.ruleset().counters()["dns"] == {"packets": 0, "bytes": 0, "denied": 0}
    active = host.ruleset()
    plan = plan_dnat(active, full_spec([OPEN]), 1)
    plan.apply()
    [text] = active.backend.committed
    assert "ip saddr != @src.http-web counter packets 4 bytes 240 drop" in text
    assert '"eth0" . 10.211.55.122 . 8090 counter packets 3 bytes 180' in text


def test_allowed_sources_of_every_address_survive_iptables_save():
    everyone = replace(OPEN, allowed_sources=("0.0.0.0/0",))
    host = IptablesHost()
    run(host, spec([everyone]))
    host.dump = host.dump.replace(" -s 0.0.0.0/0 ", " ")  # as iptables-save prints the rule
    assert_converged(host, spec([everyone]))


# What a change of the list does to the flows: the clients still allowed keep theirs


def list_change(kind, before, after, **overrides):
    """The plan (applied) and the conntrack calls of a run that takes web from `before` to `after`."""
    _dnat.write_ip_forward(1)
    host = HOSTS[kind]()
    run(host, full_spec([before], **overrides))
    table = FakeConntrack()
    plan = run(host, full_spec([after], **overrides), conntrack=table)
    return plan, table, host


@pytest.mark.parametrize("kind", sorted(HOSTS))
def test_a_change_of_the_list_only_cuts_the_flows_of_the_sources_no_longer_allowed(kind):
    narrower = replace(WEB, allowed_sources=("10.211.55.0/25", "10.244.0.0/16"))
    plan, table, host = list_change(kind, WEB, narrower)
    assert plan.actions[0] == "update mapping http-web (tcp 8090 -> 10.244.1.2:9090, from 10.211.55.0/25, 10.244.0.0/16)"
    assert plan.actions[-1].startswith("delete the conntrack entries of tcp port 8090 to 10.211.55.122 "
                                       "(from the sources no longer allowed) in one pass")
    assert table.calls == [([WEB_KEY], {WEB_KEY: narrower.allowed_sources})], "a cut, not a deletion of every flow"
    assert plan.conntrack == [{"protocol": "tcp", "port": 8090, "destination": "10.211.55.122", "deleted": 1,
                               "kept_sources": list(narrower.allowed_sources)}]
    assert mappings_of(host)["http-web"][0] == narrower
    if kind == "iptables":
        [script] = host.scripts
        assert script.startswith("*mangle\n") and "*nat" not in script and "*filter" not in script, \
            "only the list's own rules change"
    assert_converged(host, full_spec([narrower]))
    plan, table, _host = list_change(kind, WEB, narrower, flush_conntrack=False)
    assert table.calls == [] and not any("conntrack" in action for action in plan.actions)


@pytest.mark.parametrize("kind", sorted(HOSTS))
def test_a_list_given_to_a_mapping_cuts_the_others_and_a_list_taken_away_cuts_nothing(kind):
    plan, table, _host = list_change(kind, replace(DNS, allowed_sources=None), DNS)
    assert table.calls == [([DNS_KEY], {DNS_KEY: DNS.allowed_sources})]
    assert plan.conntrack[0]["kept_sources"] == ["10.211.55.0/25"]
    plan, table, _host = list_change(kind, DNS, replace(DNS, allowed_sources=None))
    assert table.calls == [] and plan.conntrack == []
    assert plan.actions[0] == "update mapping dns (udp 8053 -> 10.244.1.2:53)"


@pytest.mark.parametrize("kind", sorted(HOSTS))
@pytest.mark.parametrize("changed", [dict(port=8099), dict(to_port=9091), dict(in_interface="eth1")])
def test_a_change_of_what_the_mapping_translates_deletes_every_flow_of_it(kind, changed):
    after = replace(WEB, allowed_sources=("10.211.55.0/25",), **changed)
    plan, table, _host = list_change(kind, WEB, after)
    [(keys, kept)] = table.calls
    assert kept is None and WEB_KEY in keys and ("tcp", after.port, "10.211.55.122") in keys
    assert all("kept_sources" not in entry for entry in plan.conntrack)


@pytest.mark.parametrize("kind", sorted(HOSTS))
def test_a_list_changed_with_the_hairpin_sources_deletes_every_flow_of_the_mapping(kind):
    _dnat.write_ip_forward(1)
    host = HOSTS[kind]()
    run(host, full_spec([WEB]))
    table = FakeConntrack()
    run(host, full_spec([replace(WEB, allowed_sources=("10.211.55.0/24",))], hairpin_sources=("10.244.1.0/24",)),
        conntrack=table)
    assert table.calls == [([WEB_KEY], None)], "the setup changed too: not only the list"


def test_a_list_changed_on_the_way_to_the_other_backend_cuts_the_flows():
    _dnat.write_ip_forward(1)
    ipt = IptablesHost()
    run(ipt, full_spec([WEB]))
    nft = NftHost()
    narrower = replace(WEB, allowed_sources=("10.211.55.0/25",))
    table = FakeConntrack()
    plan = run(nft, full_spec([narrower]), others=[ipt], conntrack=table)
    assert plan.actions[0] == "move mapping http-web to nftables (tcp 8090 -> 10.244.1.2:9090, from 10.211.55.0/25)"
    assert table.calls == [([WEB_KEY], {WEB_KEY: ("10.211.55.0/25",)})]


@pytest.mark.parametrize("kind", sorted(HOSTS))
def test_a_list_given_to_a_mapping_is_an_update(kind):
    plan, _table, _host = list_change(kind, replace(DNS, allowed_sources=None), DNS)
    assert plan.actions[0] == "update mapping dns (udp 8053 -> 10.244.1.2:53, from 10.211.55.0/25)"


def entry_from(source, dport, ident, protonum=6, dst="10.211.55.122"):
    """A conntrack entry (a ctnetlink message) of a flow from `source` to dst:dport, DNAT-ed to 10.244.1.2."""
    orig = ip_tuple(1, source, dst, ports(protonum, 40000, dport))
    reply = ip_tuple(2, "10.244.1.2", source, ports(protonum, 9090, 40000))
    return entry_message(orig, reply, ident)


def test_over_netlink_the_entries_of_the_sources_still_allowed_are_kept():
    entries = [entry_from("10.211.55.9", 8090, 1), entry_from("10.211.55.200", 8090, 2), entry_from("192.168.7.7", 8090, 3),
               entry_from("10.244.3.3", 8090, 4), entry_from("10.211.55.200", 8053, 5, protonum=17),
               entry_from("10.211.55.200", 8091, 6)]
    kernel = FakeKernel(entries)
    counts = _conntrack.delete_over_netlink([WEB_KEY, DNS_KEY], table=fake_table(kernel),
                                            kept={WEB_KEY: ("10.211.55.0/25", "192.168.7.7/32")})
    # web: only the clients outside its new list; dns (no kept sources): every entry of it.
    assert sorted(kernel.deleted) == [2, 4, 5]
    assert counts == {WEB_KEY: 2, DNS_KEY: 1}


# The table nft printed for mappings with allowed_sources


def test_the_allowed_fixture_is_the_table_text_of_its_mappings():
    assert table_text(allowed_state(), ALLOWED_COUNTERS, ALLOWED_DENIED) == (FIXTURES / "nft_allowed.nft").read_text()


def test_what_nft_prints_reads_back_as_the_table_with_the_allowed_sources():
    read, rendered = allowed_fixture(), allowed_state()
    assert read.signature() == rendered.signature()
    assert by_name(read) == by_name(rendered)
    assert all(comment in read.texts for comments in read.rules.values() for comment in comments)
    assert networks_of_state(read) == GUARDED
    assert read.denied == {"src.dns": (0, 0), "src.http-web": (4, 240)}
    for mapping, setup in ALLOWED_UNITS:
        assert mapping_of_elements(mapping.name, by_name(read)[mapping.name]) == (mapping, setup.of(mapping))
    assert by_name(read)["http-web"][-3:] == ["src.http-web { 10.211.55.0/24 }", "src.http-web { 10.244.0.0/16 }",
                                              "src.http-web { 192.168.7.7 }"]


def test_a_converged_table_with_allowed_sources_plans_nothing():
    _dnat.write_ip_forward(1)
    assert_converged(NftHost(allowed_fixture()), full_spec())
    # The list in another order, or not collapsed, is the same list once validated.
    listed = _dnat.mapping_from_params("", {"name": "dns", "protocol": "udp", "port": 8053, "to_address": "10.244.1.2",
                                            "to_port": 53, "local": True,
                                            "allowed_sources": ["10.211.55.64/26", "10.211.55.0/26"]}, "present")
    assert_converged(NftHost(allowed_fixture()), full_spec([WEB, listed]))
