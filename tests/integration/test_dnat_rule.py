"""dnat_rule through Ansible against a lab master: real netfilter, both backends (iptables with both of its
variants, and nftables).

Each test starts from a master whose netfilter is empty (both variants, no nftables table of ours) and whose
ip_forward is 0, and puts it back so afterwards, also when it fails. Tests about the iptables backend's rules
run with each variant; tests about what both backends do run with each of BACKENDS.
"""
from __future__ import annotations

import json
import re
import textwrap

import pytest
from master_host import (
    BACKENDS,
    MASTER,
    NFT_TABLE,
    VARIANTS,
    backend_args,
    foreign,
    ip_forward,
    netfilter,
    nft_table,
    owned,
    save,
    scrub_netfilter,
    sh,
)

MODULE = "netns.expose.dnat_rule"
WEB = dict(name="web", protocol="tcp", port=8090, to_address="10.244.1.2", to_port=9090,
           destination="10.211.55.122", in_interface="eth0")
DNS = dict(name="dns", protocol="udp", port=8053, to_address="10.244.1.2", to_port=5353, in_interface="eth0")
PING = dict(name="ping", protocol="icmp", to_address="10.244.1.2", in_interface="eth0")
WEB_MATCH = ('-A NETNS-EXPOSE-tcp-8064 -d 10.211.55.122/32 -i eth0 -p tcp -m tcp --dport 8090 '
             '-m comment --comment "netns.expose:web"')
WEB_RULES = [
    # The flows the DNAT rule maps carry bit 0x1000000 of their conntrack mark (set first: the DNAT ends the chain).
    f"{WEB_MATCH} -j CONNMARK --set-xmark 0x1000000/0x1000000",
    f"{WEB_MATCH} -j DNAT --to-destination 10.244.1.2:9090",
    '-A NETNS-EXPOSE-POST -s 10.244.1.2/32 -d 10.244.1.2/32 -p tcp -m tcp --dport 9090 '
    '-m comment --comment "netns.expose:web" -j MASQUERADE',
]
# What the mappings share: the jump to the chain of ports 8064-8127, and one FORWARD rule for every mapped flow.
SHARED_RULES = [
    '-A NETNS-EXPOSE -p tcp -m tcp --dport 8064:8127 -m comment --comment "netns.expose" -j NETNS-EXPOSE-tcp-8064',
    "-A NETNS-EXPOSE-FWD -m connmark --mark 0x1000000/0x1000000 -m conntrack --ctstate DNAT "
    '-m comment --comment "netns.expose" -j ACCEPT',
]
# What Docker leaves on a host, for the never-touch-foreign-rules tests.
DOCKER_LIKE = """\
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
*filter
:FORWARD DROP [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A DOCKER-USER -j RETURN
COMMIT
"""


@pytest.fixture
def master(lab):
    scrub_netfilter(lab)
    yield lab
    scrub_netfilter(lab)


@pytest.fixture(params=VARIANTS)
def variant(request):
    """An iptables variant, for the tests of the iptables backend."""
    return request.param


@pytest.fixture(params=BACKENDS)
def backend(request):
    """A backend (iptables-nft, iptables-legacy, nftables), for the tests of what every backend does."""
    return request.param


def dnat(run_module, variant, check=False, diff=True, **args):
    """dnat_rule with the iptables backend of one variant."""
    return run_module(MASTER, MODULE, {"backend": "iptables", "iptables": variant, **args}, check=check, diff=diff)


def run(run_module, backend, check=False, diff=True, **args):
    """dnat_rule with one of BACKENDS."""
    return run_module(MASTER, MODULE, {**backend_args(backend), **args}, check=check, diff=diff)


def ours(lab):
    """What the collection has on the master: its iptables lines (both variants) and its nftables table."""
    return {"iptables-nft": owned(save(lab, "nft")), "iptables-legacy": owned(save(lab, "legacy")),
            "nftables": nft_table(lab)}


def nft_json(lab):
    return json.loads(sh(lab, "nft", "-j", "list", "table", "ip", NFT_TABLE))["nftables"]


def test_a_mapping_is_added_as_declared_and_a_second_run_changes_nothing(master, run_module, variant):
    result = dnat(run_module, variant, **WEB)
    assert not result["failed"], result
    assert result["changed"] is True and result["iptables"] == variant
    assert sorted(owned(save(master, variant))) == sorted([
        ":NETNS-EXPOSE-FWD - [0:0]",
        '-A FORWARD -m comment --comment "netns.expose" -j NETNS-EXPOSE-FWD',
        SHARED_RULES[1],
        ":NETNS-EXPOSE - [0:0]",
        ":NETNS-EXPOSE-tcp-8064 - [0:0]",
        '-A PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE',
        SHARED_RULES[0],
        '-A NETNS-EXPOSE -m comment --comment "netns.expose/ip_forward-was-0"',
        *WEB_RULES[:2],
        ":NETNS-EXPOSE-POST - [0:0]",
        '-A POSTROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE-POST',
        WEB_RULES[2],
        *ROUTER_RULES,
    ])
    # In this order: the mark before the DNAT; the accept of the mapped flows before the router's drop.
    assert [line for line in save(master, variant) if line.startswith("-A NETNS-EXPOSE-tcp-8064")] == WEB_RULES[:2]
    assert [line for line in save(master, variant) if line.startswith("-A NETNS-EXPOSE-FWD")] == [SHARED_RULES[1], *ROUTER_RULES]
    assert ip_forward(master) == 1
    again = dnat(run_module, variant, **WEB)
    assert again["changed"] is False and again["actions"] == []


# Forwarding was 0 before the mapping: the master forwards only the mapped flows (the DNAT-ed ones) and drops the rest.
ROUTER_RULES = [
    '-A NETNS-EXPOSE-FWD -m conntrack --ctstate DNAT -m comment --comment "netns.expose" -j RETURN',
    '-A NETNS-EXPOSE-FWD -m comment --comment "netns.expose/forward-only-owned" -j DROP',
]


# The elements of web in the table ip netns_expose (hairpin_sources are given only by the role).
WEB_ELEMENTS = [
    'dnat_tcp_iif_dst { "eth0" . 10.211.55.122 . 8090 : 10.244.1.2 . 9090 }',
    "hairpin { 10.244.1.2 . 10.244.1.2 . tcp . 9090 }",
    'mark_tcp_iif_dst { "eth0" . 10.211.55.122 . 8090 }',
]


def test_nftables_a_mapping_is_elements_of_the_one_owned_table(master, run_module):
    before = netfilter(master)
    result = run(run_module, "nftables", **WEB)
    assert not result["failed"], result
    assert result["changed"] is True and result["backend"] == "nftables" and result["iptables"] is None
    assert result["mappings"] == {"web": WEB_ELEMENTS}
    assert result["actions"][-3:-1] == [
        "replace table ip netns_expose in one nft -f transaction (3 elements in 4 maps and sets, 6 rules)",
        "delete the conntrack entries of tcp port 8090 to 10.211.55.122 in one pass over the conntrack table (netlink), "
        "so that flows older than the change meet the new rules"]
    after = netfilter(master)
    assert after["iptables-nft"] == before["iptables-nft"] and after["iptables-legacy"] == before["iptables-legacy"]
    table = "\n".join(nft_table(master))
    assert '"eth0" . 10.211.55.122 . 8090 counter comment "netns.expose:web" : 10.244.1.2 . 9090' in table
    assert "set ip_forward_was_0 {" in table
    elements = {entry["map"]["name"]: entry["map"]["elem"] for entry in nft_json(master) if "map" in entry}
    assert elements["dnat_tcp_iif_dst"][0][0]["elem"]["comment"] == "netns.expose:web"
    assert ip_forward(master) == 1
    again = run(run_module, "nftables", **WEB)
    assert again["changed"] is False and again["actions"] == [] and again["counters"] == {"web": {"packets": 0, "bytes": 0}}


def test_check_mode_predicts_the_run_and_changes_nothing(master, run_module, backend):
    before = netfilter(master)
    predicted = run(run_module, backend, check=True, rules=[WEB, DNS, PING])
    assert predicted["changed"] is True
    assert netfilter(master) == before and ip_forward(master) == 0
    result = run(run_module, backend, rules=[WEB, DNS, PING])
    assert result["actions"] == predicted["actions"]
    assert result["diff"] == predicted["diff"]
    assert result["mappings"] == predicted["mappings"]
    # And the other way: a check run on the host with mappings predicts their removal, and changes nothing.
    during = netfilter(master)
    predicted = run(run_module, backend, check=True, rules=[], exclusive=True)
    assert predicted["diff"]["after"]["mappings"] == {} and netfilter(master) == during
    assert run(run_module, backend, rules=[], exclusive=True)["actions"] == predicted["actions"]


def test_foreign_rules_stay_byte_for_byte(master, run_module, backend):
    variant = "legacy" if backend == "iptables-legacy" else "nft"
    sh(master, f"iptables-{variant}-restore", "--noflush", stdin=DOCKER_LIKE)
    pristine = netfilter(master)
    result = run(run_module, backend, rules=[WEB, DNS, PING | {"local": True}])
    assert not result["failed"], result
    after_add = save(master, variant)
    assert foreign(after_add) == pristine[f"iptables-{variant}"]
    # Our FORWARD jump comes first, ahead of the host's DROP-policy rules: also with nftables, whose own
    # accept would not stop the iptables FORWARD policy.
    forward = [line for line in after_add if line.startswith("-A FORWARD")]
    assert forward[0] == '-A FORWARD -m comment --comment "netns.expose" -j NETNS-EXPOSE-FWD'
    if backend == "nftables":
        assert result["iptables"] == "nft"
        assert owned(after_add) == [":NETNS-EXPOSE-FWD - [0:0]", forward[0], SHARED_RULES[1]], "only the accept"
    assert not run(run_module, backend, rules=[DNS], exclusive=True)["failed"]
    assert foreign(save(master, variant)) == pristine[f"iptables-{variant}"]
    assert not run(run_module, backend, rules=[{"name": "dns"}], state="absent")["failed"]
    assert netfilter(master) == pristine, "absent must leave exactly the foreign rules"


def test_removing_the_last_mapping_leaves_nothing_and_restores_ip_forward(master, run_module, backend):
    pristine = netfilter(master)
    assert not run(run_module, backend, rules=[WEB, PING | {"local": True}])["failed"]
    result = run(run_module, backend, rules=[{"name": "web"}, {"name": "ping"}], state="absent")
    assert result["changed"] is True and result["mappings"] == {}
    assert netfilter(master) == pristine
    assert ip_forward(master) == 0
    assert run(run_module, backend, name="web", state="absent")["changed"] is False


def test_ip_forward_that_was_on_is_left_on(master, run_module, backend):
    sh(master, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    assert not run(run_module, backend, **WEB)["failed"]
    assert not run(run_module, backend, name="web", state="absent")["failed"]
    assert ip_forward(master) == 1


def test_exclusive_removes_owned_mappings_that_are_not_listed(master, run_module, backend):
    assert not run(run_module, backend, rules=[WEB, DNS])["failed"]
    assert run(run_module, backend, rules=[WEB])["changed"] is False  # not exclusive: dns stays
    result = run(run_module, backend, rules=[WEB], exclusive=True)
    assert result["actions"][0] == "remove mapping dns" and set(result["mappings"]) == {"web"}
    assert "dns" not in json.dumps(ours(master))


WEB_EDITED = ["-d", "10.211.55.122/32", "-i", "eth0", "-p", "tcp", "-m", "tcp", "--dport", "8099", "-m", "comment",
              "--comment", "netns.expose:web", "-j", "DNAT", "--to-destination", "10.244.1.2:9090"]
DRIFT = {
    "rule deleted by hand": (["-t", "nat", "-D", "NETNS-EXPOSE-tcp-8064", "2"], "restore missing rules of mapping web"),
    # Put back after the DNAT it would be useless: the DNAT goes and comes back after it.
    "mark deleted by hand": (["-t", "nat", "-D", "NETNS-EXPOSE-tcp-8064", "1"], "restore missing rules of mapping web"),
    "forward accept deleted by hand": (["-D", "NETNS-EXPOSE-FWD", "1"], "update the netns.expose chains and the jumps to them"),
    "jump to the range deleted by hand": (["-t", "nat", "-D", "NETNS-EXPOSE", "1"],
                                          "update the netns.expose chains and the jumps to them"),
    "jump from PREROUTING removed": (
        ["-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "netns.expose", "-j", "NETNS-EXPOSE"],
        "update the netns.expose chains and the jumps to them",
    ),
    "rule edited to another port": (["-t", "nat", "-R", "NETNS-EXPOSE-tcp-8064", "2", *WEB_EDITED], "update mapping web"),
}


@pytest.mark.parametrize("case", sorted(DRIFT), ids=sorted(DRIFT))
def test_drift_is_repaired_with_exactly_what_is_missing(master, run_module, variant, case):
    assert not dnat(run_module, variant, **WEB)["failed"]
    converged = save(master, variant)
    edit, action = DRIFT[case]
    sh(master, f"iptables-{variant}", *edit)
    assert save(master, variant) != converged
    result = dnat(run_module, variant, **WEB)
    assert result["changed"] is True and result["actions"][0].startswith(action)
    assert sorted(save(master, variant)) == sorted(converged)
    assert [line for line in save(master, variant) if line.startswith("-A NETNS-EXPOSE-tcp-8064")] == WEB_RULES[:2]
    assert dnat(run_module, variant, **WEB)["changed"] is False


def hook_changed(lab):
    """The forward chain made again by hand at another priority (a base chain's hook cannot be edited)."""
    sh(lab, "nft", "flush", "chain", "ip", NFT_TABLE, "forward")
    sh(lab, "nft", "delete", "chain", "ip", NFT_TABLE, "forward")
    sh(lab, "nft", "add chain ip netns_expose forward { type filter hook forward priority 10; policy accept; }")


def rule_replaced(lab):
    """The hairpin masquerade rule replaced by hand with one that masquerades more (and carries no comment)."""
    [handle] = [entry["rule"]["handle"] for entry in nft_json(lab) if "rule" in entry and entry["rule"]["chain"] == "postrouting"]
    sh(lab, "nft", "replace", "rule", "ip", NFT_TABLE, "postrouting", "handle", str(handle), "ct", "status", "dnat", "masquerade")


NFT_DRIFT = {
    "element deleted by hand": (["delete element ip netns_expose dnat_tcp_iif_dst { \"eth0\" . 10.211.55.122 . 8090 }"],
                                "restore missing elements of mapping web"),
    "mark deleted by hand": (["delete element ip netns_expose mark_tcp_iif_dst { \"eth0\" . 10.211.55.122 . 8090 }"],
                             "restore missing elements of mapping web"),
    "element added by hand": (["add element ip netns_expose dnat_tcp_iif_dst { \"eth1\" . 10.211.55.122 . 8090 : 10.9.9.9 . 1 }"],
                              "remove 1 elements that belong to no mapping from table ip netns_expose"),
    "table deleted": (["delete table ip netns_expose"], "add mapping web"),
    "hook of a chain changed": (hook_changed, "update the chains, maps and sets of table ip netns_expose"),
    "rule replaced by hand": (rule_replaced, "update the chains, maps and sets of table ip netns_expose"),
}


# The forward rules that only a host whose forwarding the collection turned on has (the router's drop).
NFT_ROUTER_RULES = ("\t\tct status dnat accept comment", "\t\tcounter drop comment")


def without_marker(lines):
    """The lines of nft_table without the set that records that the collection turned ip_forward on, and without
    the router's drop that goes with it."""
    start = lines.index("\tset ip_forward_was_0 {")
    end = lines.index("\t}", start)
    return [line for line in lines[:start] + lines[end + 1:] if not line.startswith(NFT_ROUTER_RULES)]


@pytest.mark.parametrize("case", sorted(NFT_DRIFT), ids=sorted(NFT_DRIFT))
def test_nftables_drift_is_repaired_by_replacing_the_table(master, run_module, case):
    assert not run(run_module, "nftables", **WEB)["failed"]
    converged = nft_table(master)
    edit, action = NFT_DRIFT[case]
    if callable(edit):
        edit(master)
    else:
        for command in edit:
            sh(master, "nft", command)
    assert nft_table(master) != converged
    result = run(run_module, "nftables", **WEB)
    assert result["changed"] is True and result["actions"][0].startswith(action), result["actions"]
    replaced = [text for text in result["actions"] if text.startswith("replace table ip netns_expose in one nft -f")]
    assert len(replaced) == 1, result["actions"]
    if case == "table deleted":
        # The record that the collection turned ip_forward on went with the table. Forwarding is on, and the run
        # cannot tell that from an administrator's choice, so it leaves the record out (and ip_forward on, later),
        # and the router's drop with it: it leaves forwarding as it finds it.
        converged = without_marker(converged)
        assert ip_forward(master) == 1
    assert nft_table(master) == converged
    assert run(run_module, "nftables", **WEB)["changed"] is False


def test_ip_forward_reset_to_0_is_repaired(master, run_module, backend):
    assert not run(run_module, backend, **WEB)["failed"]
    sh(master, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    result = run(run_module, backend, **WEB)
    assert result["actions"] == ["set net.ipv4.ip_forward = 1 (was 0)"]
    assert ip_forward(master) == 1
    assert run(run_module, backend, **WEB)["changed"] is False


def through_stand_in(run_playbook, tmp_path, options):
    """dnat_rule adding WEB and DNS with `options`, with tmp_path (a failing stand-in of a tool, which touches
    tmp_path/injected) first in PATH: its result, once the stand-in is known to have run."""
    output = run_playbook(textwrap.dedent(f"""\
        - hosts: {MASTER}
          gather_facts: false
          tasks:
            - name: add a mapping through a failing stand-in
              {MODULE}: {json.dumps({"rules": [WEB, DNS], **options})}
              environment:
                PATH: "{tmp_path}:/usr/sbin:/usr/bin:/sbin:/bin"
        """))
    assert (tmp_path / "injected").exists(), "the stand-in was not used"
    return output["plays"][0]["tasks"][0]["hosts"][MASTER]


def test_a_transaction_that_fails_half_way_leaves_the_previous_rules(master, run_module, run_playbook, variant, tmp_path):
    assert not dnat(run_module, variant, **WEB)["failed"]
    before = save(master, variant)
    # A stand-in iptables-restore that, once, adds to the nat table a rule the kernel
    # refuses at commit: the filter table (first in the input) is committed, nat is not.
    fake = tmp_path / f"iptables-{variant}-restore"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ ! -e {tmp_path}/injected ]; then
          touch {tmp_path}/injected
          sed '/^\\*nat$/,/^COMMIT$/ s/^COMMIT$/-A NETNS-EXPOSE -j REJECT\\nCOMMIT/' | /usr/sbin/iptables-{variant}-restore "$@"
          exit $?
        fi
        exec /usr/sbin/iptables-{variant}-restore "$@"
        """))
    fake.chmod(0o755)
    result = through_stand_in(run_playbook, tmp_path, {"backend": "iptables", "iptables": variant})
    assert result["failed"] is True and result["rolled_back"] is True
    assert "restored to their state before the run" in result["msg"]
    assert save(master, variant) == before


BAD_INPUT = {
    "port 0": (dict(WEB, port=0), "port: 0 is outside 1..65535"),
    "port over 65535": (dict(WEB, port=65536), "port: 65536 is outside 1..65535"),
    "port for icmp": (dict(PING, port=80), "port: icmp mappings take no ports"),
    "address not IPv4": (dict(WEB, to_address="fd00::2"), "to_address: 'fd00::2' is not an IPv4 address"),
    "CIDR for an address": (dict(WEB, destination="10.211.55.122/24"), "destination: '10.211.55.122/24' is a CIDR"),
    "bad interface": (dict(WEB, in_interface="eth0/1"), "in_interface: interface name 'eth0/1' must not contain '/'"),
    "quote in name": (dict(WEB, name='web" -j ACCEPT'), "name: "),
    "newline in name": (dict(WEB, name="web\n-A INPUT -j ACCEPT"), "name: "),
    "option in name": (dict(WEB, name="--dport"), "name: "),
    "same name twice": ({"rules": [WEB, dict(DNS, name="web")]}, "rules[1].name: 'web' is also the name of rules[0]"),
    "same match twice": ({"rules": [WEB, dict(WEB, name="web2", to_port=1)]},
                         "rules[1].port: tcp port 8090 to 10.211.55.122 on eth0 is also mapped by rules[0]"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT), ids=sorted(BAD_INPUT))
@pytest.mark.parametrize("backend_name", ["iptables-nft", "nftables"])
def test_bad_input_is_refused_before_anything_changes(master, run_module, case, backend_name):
    args, message = BAD_INPUT[case]
    before = netfilter(master)
    result = run(run_module, backend_name, **args)
    assert result["failed"] is True
    assert result["msg"].startswith(message), result["msg"]
    assert netfilter(master) == before and ip_forward(master) == 0


def test_nftables_refuses_a_name_its_element_comments_cannot_hold(master, run_module):
    before = netfilter(master)
    result = run(run_module, "nftables", **{**WEB, "name": "w" * 116})
    assert result["failed"] is True and result["msg"].startswith("name: 'wwww"), result
    assert "holds 115 after 'netns.expose:'" in result["msg"]
    assert netfilter(master) == before
    assert not run(run_module, "nftables", **{**WEB, "name": "w" * 115})["failed"]


def test_an_empty_exclusive_run_does_not_turn_ip_forward_on(master, run_module, backend):
    """Issue A: `rules: []` with exclusive on a host with ip_forward 0 maps nothing, so it changes nothing; forwarding
    goes on only with a mapping, with the marker that puts it back when the last mapping goes."""
    pristine = netfilter(master)
    result = run(run_module, backend, rules=[], exclusive=True)
    assert not result["failed"], result
    assert result["changed"] is False and result["actions"] == []
    assert ip_forward(master) == 0 and netfilter(master) == pristine
    assert not run(run_module, backend, rules=[WEB, DNS], exclusive=True)["failed"]
    assert ip_forward(master) == 1
    if backend == "nftables":
        assert "\tset ip_forward_was_0 {" in nft_table(master)
    else:
        assert '-A NETNS-EXPOSE -m comment --comment "netns.expose/ip_forward-was-0"' in save(master, backend[9:])
    result = run(run_module, backend, rules=[], exclusive=True)
    assert result["actions"][-1] == "set net.ipv4.ip_forward = 0 (restoring the value before the first mapping)"
    assert ip_forward(master) == 0 and netfilter(master) == pristine


# The rules of the release before one FORWARD rule for every flow: a rule per mapping in NETNS-EXPOSE-FWD.
OLD_SHAPE = """\
*nat
:NETNS-EXPOSE - [0:0]
:NETNS-EXPOSE-POST - [0:0]
-A PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE
-I POSTROUTING 1 -m comment --comment "netns.expose" -j NETNS-EXPOSE-POST
-A NETNS-EXPOSE -d 10.211.55.122/32 -i eth0 -p tcp -m tcp --dport 8090 -m comment --comment "netns.expose:web" \
-j DNAT --to-destination 10.244.1.2:9090
-A NETNS-EXPOSE ! -d 127.0.0.0/8 -i eth0 -p udp -m addrtype --dst-type LOCAL -m udp --dport 8053 -m comment --comment "netns.expose:dns" \
-j DNAT --to-destination 10.244.1.2:5353
-A NETNS-EXPOSE -m comment --comment "netns.expose/ip_forward-was-0"
-A NETNS-EXPOSE-POST -s 10.244.1.2/32 -d 10.244.1.2/32 -p tcp -m tcp --dport 9090 -m comment --comment "netns.expose:web" \
-j MASQUERADE
-A NETNS-EXPOSE-POST -s 10.244.1.2/32 -d 10.244.1.2/32 -p udp -m udp --dport 5353 -m comment --comment "netns.expose:dns" \
-j MASQUERADE
COMMIT
*filter
:NETNS-EXPOSE-FWD - [0:0]
-I FORWARD 1 -m comment --comment "netns.expose" -j NETNS-EXPOSE-FWD
-A NETNS-EXPOSE-FWD -m conntrack --ctstate DNAT --ctproto 6 --ctreplsrc 10.244.1.2 --ctorigdstport 8090 --ctreplsrcport 9090 \
-m comment --comment "netns.expose:web" -j ACCEPT
-A NETNS-EXPOSE-FWD -m conntrack --ctstate DNAT --ctproto 17 --ctreplsrc 10.244.1.2 --ctorigdstport 8053 --ctreplsrcport 5353 \
-m comment --comment "netns.expose:dns" -j ACCEPT
COMMIT
"""


def test_rules_of_the_previous_shape_are_converged_by_a_normal_run(master, run_module, variant):
    """Issue C: a host with a FORWARD rule per mapping gets the one shared rule by its next run, like a fresh host."""
    assert not dnat(run_module, variant, rules=[WEB, DNS])["failed"]
    fresh = save(master, variant)
    scrub_netfilter(master)
    sh(master, f"iptables-{variant}-restore", "--noflush", stdin=OLD_SHAPE)
    sh(master, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    result = dnat(run_module, variant, rules=[WEB, DNS], exclusive=True)
    assert not result["failed"], result
    assert result["actions"][:3] == ["update mapping dns (udp 8053 -> 10.244.1.2:5353)",
                                     "update mapping web (tcp 8090 -> 10.244.1.2:9090)",
                                     "update the netns.expose chains and the jumps to them"]
    assert sorted(save(master, variant)) == sorted(fresh)
    assert dnat(run_module, variant, rules=[WEB, DNS], exclusive=True)["changed"] is False
    assert not dnat(run_module, variant, rules=[], exclusive=True)["failed"]
    assert ip_forward(master) == 0, "the marker of the old rules is kept: ip_forward goes back to 0"


def conntrack_lines(lab, *argv):
    return [line for line in sh(lab, "conntrack", "-L", *argv).splitlines() if line.strip()]


@pytest.mark.parametrize("backend_name", ["iptables-nft", "nftables"])
def test_the_flows_of_many_mappings_are_deleted_in_one_pass(master, run_module, python, backend_name):
    """Issue B: the flows of 200 new mappings (one established flow each) are deleted in one step that reads the
    conntrack table once, and no other flow is: not udp to the same ports, not tcp to another port. On the system
    Python (Debian's pyroute2 0.7) and the venv's (0.9), which the module does not need for it."""
    count = 200
    rules = [dict(name=f"m{i}", protocol="tcp", port=10000 + i, to_address="10.244.1.2", to_port=9090,
                  in_interface="eth0") for i in range(count)]
    flows = "\n".join(
        f"conntrack -I -p tcp -s 10.211.55.123 -d 10.211.55.122 --sport {20000 + i} --dport {10000 + i} "
        f"-r 10.244.1.2 -q 10.211.55.123 --reply-port-src 9090 --reply-port-dst {20000 + i} --state ESTABLISHED "
        f"-u SEEN_REPLY,ASSURED -t 600\n"
        f"conntrack -I -p udp -s 10.211.55.123 -d 10.211.55.122 --sport {20000 + i} --dport {10000 + i} "
        f"-r 10.211.55.122 -q 10.211.55.123 --reply-port-src {10000 + i} --reply-port-dst {20000 + i} -t 600\n"
        f"conntrack -I -p tcp -s 10.211.55.123 -d 10.211.55.122 --sport {20000 + i} --dport 443 "
        f"-r 10.211.55.122 -q 10.211.55.123 --reply-port-src 443 --reply-port-dst {20000 + i} --state ESTABLISHED "
        f"-u SEEN_REPLY,ASSURED -t 600" for i in range(count))
    try:
        for step, args in (("add", {"rules": rules}), ("remove", {"rules": [], "exclusive": True})):
            sh(master, "conntrack", "-F")
            sh(master, "sh", "-c", f"{{\n{flows}\n}} 2>/dev/null")
            assert len(conntrack_lines(master)) == 3 * count
            result = run_module(MASTER, MODULE, {**backend_args(backend_name), **args}, python=python)
            assert not result["failed"], result
            steps = [action for action in result["actions"] if "conntrack" in action]
            assert steps == ["delete the conntrack entries of tcp port 10000, tcp port 10001, tcp port 10002 and 197 more "
                             "in one pass over the conntrack table (netlink), so that flows older than the change meet "
                             "the new rules"], step
            assert [entry["deleted"] for entry in result["conntrack"]] == [1] * count, step
            assert result["conntrack"][0] == {"protocol": "tcp", "port": 10000, "destination": None, "deleted": 1}
            assert len(conntrack_lines(master)) == 2 * count, f"{step}: only the mapped flows go"
            assert len(conntrack_lines(master, "-p", "tcp", "--orig-port-dst", "443")) == count
            if step == "add" and backend_name == "nftables":
                # One map element per mapping, and no rule: the same table as for one mapping.
                [elements] = [entry["map"]["elem"] for entry in nft_json(master)
                              if "map" in entry and entry["map"]["name"] == "dnat_tcp_iif_local"]
                assert len(elements) == count
                assert len([entry for entry in nft_json(master) if "rule" in entry]) == 7  # 5, and the router's 2
            elif step == "add":
                # Issue C: one FORWARD rule for the 200 mappings, and 4 jumps to ranges of 64 ports.
                lines = save(master, "nft")
                assert [line for line in lines if line.startswith("-A NETNS-EXPOSE-FWD")] == [SHARED_RULES[1], *ROUTER_RULES]
                assert len([line for line in lines if line.startswith("-A NETNS-EXPOSE -p tcp")]) == 4
    finally:
        sh(master, "conntrack", "-F")


def test_nftables_a_transaction_that_fails_changes_nothing(master, run_module, run_playbook, tmp_path):
    """nft -f is one transaction: a stand-in nft that adds a rule the kernel refuses makes the whole run's change
    fail, and the table stays as it was (no rollback needed)."""
    assert not run(run_module, "nftables", **WEB)["failed"]
    before = netfilter(master)
    fake = tmp_path / "nft"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = "-f" ]; then
          touch {tmp_path}/injected
          {{ cat; echo "add rule ip {NFT_TABLE} prerouting jump no_such_chain"; }} | /usr/sbin/nft "$@"
          exit $?
        fi
        exec /usr/sbin/nft "$@"
        """))
    fake.chmod(0o755)
    result = through_stand_in(run_playbook, tmp_path, {"backend": "nftables"})
    assert result["failed"] is True and result["rolled_back"] is False
    assert result["failed_action"].startswith("replace table ip netns_expose in one nft -f transaction")
    assert "nothing was changed" in result["msg"]
    assert netfilter(master) == before


def conntrack_count(lab, *argv):
    return len([line for line in sh(lab, "conntrack", "-L", *argv).splitlines() if line.strip()])


def test_switching_backends_moves_every_mapping_in_one_run_and_keeps_their_flows(master, run_module):
    """iptables -> nftables -> iptables: each run moves every mapping (also one the run does not list), leaves no
    rule or table of the other backend, keeps the marker of ip_forward, and deletes no flow whose translation
    stays the same."""
    pristine = netfilter(master)
    try:
        assert not run(run_module, "iptables-nft", rules=[WEB, DNS])["failed"]
        iptables_rules = ours(master)["iptables-nft"]
        flow = ("-p tcp -s 10.211.55.123 -d 10.211.55.122 --sport 40000 --dport 8090 -r 10.244.1.2 -q 10.211.55.123 "
                "--reply-port-src 9090 --reply-port-dst 40000 --state ESTABLISHED -u SEEN_REPLY,ASSURED -t 600").split()
        sh(master, "conntrack", "-I", *flow)
        for backend_name in ("nftables", "iptables-nft"):
            result = run(run_module, backend_name, rules=[WEB])  # dns is not listed: it moves as it is
            assert not result["failed"], result
            title = "nftables" if backend_name == "nftables" else "iptables-nft"
            assert result["actions"][:2] == [f"move mapping dns to {title}",
                                             f"move mapping web to {title} (tcp 8090 -> 10.244.1.2:9090)"]
            assert not any("conntrack" in action for action in result["actions"])
            assert conntrack_count(master, "-p", "tcp", "--orig-port-dst", "8090") == 1, "the flow was deleted"
            assert ip_forward(master) == 1
            found = ours(master)
            if backend_name == "nftables":
                assert found["iptables-nft"] == [] and found["iptables-legacy"] == []
                assert set(result["mappings"]) == {"web", "dns"} and "\tset ip_forward_was_0 {" in found["nftables"]
            else:
                assert found["nftables"] is None and sorted(found["iptables-nft"]) == sorted(iptables_rules)
            assert run(run_module, backend_name, rules=[WEB])["changed"] is False
        assert not run(run_module, "nftables", rules=[], exclusive=True)["failed"]
        assert netfilter(master) == pristine and ip_forward(master) == 0
    finally:
        sh(master, "conntrack", "-F")


def test_auto_takes_nftables_unless_iptables_has_rules_of_the_host(master, run_module):
    result = run_module(MASTER, MODULE, WEB)
    assert result["backend"] == "nftables", result
    assert result["backend_reason"] == "nft is installed and iptables has no rules of the host's own"
    assert not run_module(MASTER, MODULE, {"rules": [], "exclusive": True})["failed"]
    # Docker's rules (iptables-nft): auto keeps to iptables, so that they work as they did.
    sh(master, "iptables-nft-restore", "--noflush", stdin=DOCKER_LIKE)
    result = run_module(MASTER, MODULE, WEB)
    assert result["backend"] == "iptables" and result["iptables"] == "nft", result
    assert re.match(r"iptables-nft has \d+ rules or chains of the host's own, such as ", result["backend_reason"])
    assert nft_table(master) is None
    assert not run_module(MASTER, MODULE, {"rules": [], "exclusive": True})["failed"]
    # The same in iptables-legacy.
    scrub_netfilter(master)
    sh(master, "iptables-legacy-restore", "--noflush", stdin=DOCKER_LIKE)
    assert run_module(MASTER, MODULE, WEB)["backend"] == "iptables"
    assert not run_module(MASTER, MODULE, {"rules": [], "exclusive": True})["failed"]
