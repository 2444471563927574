"""dnat_rule through Ansible against a lab master: real netfilter, both iptables variants.

Each test starts from a master whose netfilter is empty (both variants) and whose
ip_forward is 0, and puts it back so afterwards, also when it fails.
"""
from __future__ import annotations

import textwrap

import pytest
from master_host import MASTER, VARIANTS, foreign, ip_forward, owned, save, scrub_netfilter, sh

MODULE = "netns.expose.dnat_rule"
WEB = dict(name="web", protocol="tcp", port=8090, to_address="10.244.1.2", to_port=9090,
           destination="10.211.55.122", in_interface="eth0")
DNS = dict(name="dns", protocol="udp", port=8053, to_address="10.244.1.2", to_port=5353, in_interface="eth0")
PING = dict(name="ping", protocol="icmp", to_address="10.244.1.2", in_interface="eth0")
WEB_RULES = [
    '-A NETNS-EXPOSE -d 10.211.55.122/32 -i eth0 -p tcp -m tcp --dport 8090 -m comment --comment "netns.expose:web" '
    "-j DNAT --to-destination 10.244.1.2:9090",
    "-A NETNS-EXPOSE-FWD -m conntrack --ctstate DNAT --ctproto 6 --ctreplsrc 10.244.1.2 --ctorigdstport 8090 "
    '--ctreplsrcport 9090 -m comment --comment "netns.expose:web" -j ACCEPT',
    '-A NETNS-EXPOSE-POST -s 10.244.1.2/32 -d 10.244.1.2/32 -p tcp -m tcp --dport 9090 '
    '-m comment --comment "netns.expose:web" -j MASQUERADE',
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
    return request.param


def dnat(run_module, variant, check=False, diff=True, **args):
    return run_module(MASTER, MODULE, {"iptables": variant, **args}, check=check, diff=diff)


def test_a_mapping_is_added_as_declared_and_a_second_run_changes_nothing(master, run_module, variant):
    result = dnat(run_module, variant, **WEB)
    assert not result["failed"], result
    assert result["changed"] is True and result["iptables"] == variant
    assert sorted(owned(save(master, variant))) == sorted([
        ":NETNS-EXPOSE-FWD - [0:0]",
        '-A FORWARD -m comment --comment "netns.expose" -j NETNS-EXPOSE-FWD',
        WEB_RULES[1],
        ":NETNS-EXPOSE - [0:0]",
        '-A PREROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE',
        WEB_RULES[0],
        '-A NETNS-EXPOSE -m comment --comment "netns.expose/ip_forward-was-0"',
        ":NETNS-EXPOSE-POST - [0:0]",
        '-A POSTROUTING -m comment --comment "netns.expose" -j NETNS-EXPOSE-POST',
        WEB_RULES[2],
    ])
    assert ip_forward(master) == 1
    again = dnat(run_module, variant, **WEB)
    assert again["changed"] is False and again["actions"] == []


def test_check_mode_predicts_the_run_and_changes_nothing(master, run_module, variant):
    before = save(master, variant)
    predicted = dnat(run_module, variant, check=True, rules=[WEB, DNS, PING])
    assert predicted["changed"] is True
    assert save(master, variant) == before and ip_forward(master) == 0
    result = dnat(run_module, variant, rules=[WEB, DNS, PING])
    assert result["actions"] == predicted["actions"]
    assert result["diff"] == predicted["diff"]
    assert result["mappings"] == predicted["mappings"]


def test_foreign_rules_stay_byte_for_byte(master, run_module, variant):
    sh(master, f"iptables-{variant}-restore", "--noflush", stdin=DOCKER_LIKE)
    pristine = save(master, variant)
    assert not dnat(run_module, variant, rules=[WEB, DNS, PING | {"local": True}])["failed"]
    after_add = save(master, variant)
    assert foreign(after_add) == pristine
    # Our FORWARD jump comes first, ahead of the host's DROP-policy rules.
    forward = [line for line in after_add if line.startswith("-A FORWARD")]
    assert forward[0] == '-A FORWARD -m comment --comment "netns.expose" -j NETNS-EXPOSE-FWD'
    assert not dnat(run_module, variant, rules=[DNS], exclusive=True)["failed"]
    assert foreign(save(master, variant)) == pristine
    assert not dnat(run_module, variant, rules=[{"name": "dns"}], state="absent")["failed"]
    assert save(master, variant) == pristine, "absent must leave exactly the foreign rules"


def test_removing_the_last_mapping_leaves_nothing_and_restores_ip_forward(master, run_module, variant):
    pristine = save(master, variant)
    assert not dnat(run_module, variant, rules=[WEB, PING | {"local": True}])["failed"]
    result = dnat(run_module, variant, rules=[{"name": "web"}, {"name": "ping"}], state="absent")
    assert result["changed"] is True and result["mappings"] == {}
    assert save(master, variant) == pristine
    assert ip_forward(master) == 0
    assert dnat(run_module, variant, name="web", state="absent")["changed"] is False


def test_ip_forward_that_was_on_is_left_on(master, run_module, variant):
    sh(master, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    assert not dnat(run_module, variant, **WEB)["failed"]
    assert not dnat(run_module, variant, name="web", state="absent")["failed"]
    assert ip_forward(master) == 1


def test_exclusive_removes_owned_mappings_that_are_not_listed(master, run_module, variant):
    assert not dnat(run_module, variant, rules=[WEB, DNS])["failed"]
    assert dnat(run_module, variant, rules=[WEB])["changed"] is False  # not exclusive: dns stays
    result = dnat(run_module, variant, rules=[WEB], exclusive=True)
    assert result["actions"][0] == "remove mapping dns" and set(result["mappings"]) == {"web"}
    assert "dns" not in "\n".join(save(master, variant))


DRIFT = {
    "rule deleted by hand": (["-t", "nat", "-D", "NETNS-EXPOSE", "1"], "restore missing rules of mapping web"),
    "jump from PREROUTING removed": (
        ["-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "netns.expose", "-j", "NETNS-EXPOSE"],
        "update the netns.expose chains and the jumps to them",
    ),
    "rule edited to another port": (
        ["-t", "nat", "-R", "NETNS-EXPOSE", "1", "-d", "10.211.55.122/32", "-i", "eth0", "-p", "tcp", "-m", "tcp",
         "--dport", "8099", "-m", "comment", "--comment", "netns.expose:web", "-j", "DNAT", "--to-destination",
         "10.244.1.2:9090"],
        "update mapping web",
    ),
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
    assert dnat(run_module, variant, **WEB)["changed"] is False


def test_ip_forward_reset_to_0_is_repaired(master, run_module, variant):
    assert not dnat(run_module, variant, **WEB)["failed"]
    sh(master, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    result = dnat(run_module, variant, **WEB)
    assert result["actions"] == ["set net.ipv4.ip_forward = 1 (was 0)"]
    assert ip_forward(master) == 1
    assert dnat(run_module, variant, **WEB)["changed"] is False


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
    output = run_playbook(textwrap.dedent(f"""\
        - hosts: {MASTER}
          gather_facts: false
          tasks:
            - name: add a mapping through the failing iptables-restore
              {MODULE}:
                iptables: {variant}
                rules: [{WEB}, {DNS}]
              environment:
                PATH: "{tmp_path}:/usr/sbin:/usr/bin:/sbin:/bin"
        """))
    result = output["plays"][0]["tasks"][0]["hosts"][MASTER]
    assert (tmp_path / "injected").exists(), "the stand-in was not used"
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
                         "rules[1].port: same protocol, port, destination and in_interface as rules[0]"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT), ids=sorted(BAD_INPUT))
def test_bad_input_is_refused_before_anything_changes(master, run_module, case):
    args, message = BAD_INPUT[case]
    before = save(master, "nft")
    result = dnat(run_module, "nft", **args)
    assert result["failed"] is True
    assert result["msg"].startswith(message), result["msg"]
    assert save(master, "nft") == before and ip_forward(master) == 0
