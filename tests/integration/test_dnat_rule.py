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
    ])
    # In this order: the mark before the DNAT.
    assert [line for line in save(master, variant) if line.startswith("-A NETNS-EXPOSE-tcp-8064")] == WEB_RULES[:2]
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
                         "rules[1].port: tcp port 8090 to 10.211.55.122 on eth0 is also mapped by rules[0]"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT), ids=sorted(BAD_INPUT))
def test_bad_input_is_refused_before_anything_changes(master, run_module, case):
    args, message = BAD_INPUT[case]
    before = save(master, "nft")
    result = dnat(run_module, "nft", **args)
    assert result["failed"] is True
    assert result["msg"].startswith(message), result["msg"]
    assert save(master, "nft") == before and ip_forward(master) == 0


def test_an_empty_exclusive_run_does_not_turn_ip_forward_on(master, run_module, variant):
    """Issue A: `rules: []` with exclusive on a host with ip_forward 0 maps nothing, so it changes nothing; forwarding
    goes on only with a mapping, with the marker that puts it back when the last mapping goes."""
    pristine = save(master, variant)
    result = dnat(run_module, variant, rules=[], exclusive=True)
    assert not result["failed"], result
    assert result["changed"] is False and result["actions"] == []
    assert ip_forward(master) == 0 and save(master, variant) == pristine
    assert not dnat(run_module, variant, rules=[WEB, DNS], exclusive=True)["failed"]
    assert ip_forward(master) == 1
    assert '-A NETNS-EXPOSE -m comment --comment "netns.expose/ip_forward-was-0"' in save(master, variant)
    result = dnat(run_module, variant, rules=[], exclusive=True)
    assert result["actions"][-1] == "set net.ipv4.ip_forward = 0 (restoring the value before the first mapping)"
    assert ip_forward(master) == 0 and save(master, variant) == pristine


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


def test_the_flows_of_many_mappings_are_deleted_in_one_pass(master, run_module, python):
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
            result = run_module(MASTER, MODULE, args, python=python)
            assert not result["failed"], result
            steps = [action for action in result["actions"] if "conntrack" in action]
            assert steps == ["delete the conntrack entries of tcp port 10000, tcp port 10001, tcp port 10002 and 197 more "
                             "in one pass over the conntrack table (netlink), so that flows older than the change meet "
                             "the new rules"], step
            assert [entry["deleted"] for entry in result["conntrack"]] == [1] * count, step
            assert result["conntrack"][0] == {"protocol": "tcp", "port": 10000, "destination": None, "deleted": 1}
            assert len(conntrack_lines(master)) == 2 * count, f"{step}: only the mapped flows go"
            assert len(conntrack_lines(master, "-p", "tcp", "--orig-port-dst", "443")) == count
            if step == "add":
                # Issue C: one FORWARD rule for the 200 mappings, and 4 jumps to ranges of 64 ports.
                lines = save(master, "nft")
                assert [line for line in lines if line.startswith("-A NETNS-EXPOSE-FWD")] == [SHARED_RULES[1]]
                assert len([line for line in lines if line.startswith("-A NETNS-EXPOSE -p tcp")]) == 4
    finally:
        sh(master, "conntrack", "-F")
