# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the collection sets up comes back at boot, with no Ansible run: on booted machines, with real reboots.

A lab of its own (master and slave machines, tests/lab/machines.yml): the master gets the
recipe's service (ns1, tcp 8090 -> 9090, udp and icmp, the demo service as a systemd unit)
from the collection's playbooks, then reboots, has its firewall reloaded, is taken back
with `absent` or `persistent: false`, and reboots again. The tests run in order on the
same master; each says what it expects to find.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from conftest import REPO, failures, machine_lab_of_its_own, on
from master_host import DEMO_REPLY, NFT_TABLE

import machines

MASTER, SLAVE = "master", "slave"
MASTER_IP = "10.211.55.122"
EXPOSE, DEMO = REPO / "playbooks" / "expose.yml", REPO / "playbooks" / "demo.yml"
EXPLAIN = REPO / "playbooks" / "explain.yml"
# A host firewall of its own, loaded at boot as Docker's would be: FORWARD policy DROP and chains of its own.
FOREIGN_RULES = """*filter
:FORWARD DROP [0:0]
:DOCKER-USER - [0:0]
:DOCKER-FORWARD - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER-USER -j RETURN
-A DOCKER-FORWARD -i docker0 -j ACCEPT
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -i docker0 -j RETURN
COMMIT
"""
FOREIGN_UNIT = """[Unit]
Description=the host's own firewall (Docker-like rules), as the lab test loads it
After=nftables.service
Before=network-pre.target
Wants=network-pre.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=iptables-nft-restore --noflush /etc/lab-firewall.rules
[Install]
WantedBy=multi-user.target
"""


# The file of the owned rules that each backend loads at boot.
RULES_FILES = {"iptables": "/etc/netns-expose/iptables.rules", "nftables": "/etc/netns-expose/nftables.nft"}


class Master:
    """The lab of two machines, and what the tests do to its master with one backend of dnat_rule."""

    def __init__(self, lab, ansible, backend):
        self.lab, self.ansible, self.backend = lab, ansible, backend

    def converge(self, check=False, diff=False, **extra_vars):
        """expose.yml then demo.yml; the run (which must not fail)."""
        extra_vars = {"expose_backend": self.backend, **extra_vars}
        runs = [self.ansible.run_playbook(playbook, extra_vars=extra_vars, check=check, diff=diff)
                for playbook in ((DEMO, EXPOSE) if extra_vars.get("expose_state") == "absent" else (EXPOSE, DEMO))]
        for run in runs:
            assert not failures(run), failures(run)
        return runs

    def changed(self, **extra_vars):
        return [task["task"]["name"] for run in self.converge(**extra_vars) for play in run["plays"]
                for task in play["tasks"] for result in task["hosts"].values() if result.get("changed")]

    def reboot(self):
        """Reboot the master; return when it has finished booting."""
        self.lab.reboot(MASTER)

    def files(self):
        """{path: content} of every file the persistence may have written, as the master has them."""
        found = on(self.lab, MASTER, "{ find /etc/netns-expose /etc/sysctl.d/90-netns-expose.conf \\( -type f -o -type l \\); "
                   "find /etc/systemd/system -name '*netns-expose*' \\( -type f -o -type l \\); } 2>/dev/null "
                   "| sort -u || true").split()
        return {path: on(self.lab, MASTER, f"if [ -L {path} ]; then printf 'symlink to %s' $(readlink {path}); else cat {path}; fi")
                for path in found}

    def state(self):
        """What of the collection is on the master now: namespaces, owned rules, ip_forward, active units."""
        return {
            "netns": on(self.lab, MASTER, "ip netns list").split(),
            "rules": self.rules(),
            "ip_forward": on(self.lab, MASTER, "cat /proc/sys/net/ipv4/ip_forward").strip(),
            "units": on(self.lab, MASTER, "systemctl list-units --all --plain --no-legend 'netns-expose*' "
                                          "| awk '$3 == \"active\" {print $1}'").split(),
        }

    def rules(self):
        """The collection's rules on the master: its iptables-nft lines and its nftables table (without counters)."""
        iptables = on(self.lab, MASTER, "iptables-nft-save 2>/dev/null || true").splitlines()
        table = on(self.lab, MASTER, f"nft list table ip {NFT_TABLE} 2>/dev/null || true")
        table = re.sub(r"counter packets \d+ bytes \d+", "counter", table).splitlines()
        return [line for line in iptables if "NETNS-EXPOSE" in line or "netns.expose" in line] + table

    def foreign_rules(self):
        """The master's rules that are not the collection's, without counters."""
        lines = on(self.lab, MASTER, "iptables-nft-save").splitlines()
        return [line.split(" [")[0] if line.startswith(":") else line for line in lines
                if not line.startswith("#") and "NETNS-EXPOSE" not in line and "netns.expose" not in line]

    def from_slave(self, url=f"http://{MASTER_IP}:8090/", host=SLAVE):
        """What the slave (or `host`) gets from url, or None."""
        done = self.lab.exec(host, ["python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                                    f"'{url}', timeout=3).read().decode())"])
        return done.stdout.strip() if done.returncode == 0 else None


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def master(request, tmp_path_factory, ansible_env):
    """A lab of its own per backend: the nftables master never has iptables installed by the role."""
    backend = request.param
    with machine_lab_of_its_own(f"p{backend[0]}", tmp_path_factory.mktemp("persistence"), ansible_env) as (lab, ansible):
        yield Master(lab, ansible, backend)


def predicted_files(runs):
    """The files the modules' diffs say a run writes ({path: content}), from a check run with --diff."""
    predicted = {}
    for run in runs:
        for play in run["plays"]:
            for task in play["tasks"]:
                for result in task["hosts"].values():
                    diff = result.get("diff")
                    if isinstance(diff, dict) and "persisted files" in diff.get("after", {}):
                        predicted.update(diff["after"]["persisted files"])
    return predicted


def test_a_check_run_predicts_the_files_that_the_run_writes(master):
    # The packages first: check mode cannot look further on a host without them.
    needs = ["pyroute2", "conntrack", "iptables" if master.backend == "iptables" else "nftables"]
    result = master.ansible.run_module(MASTER, "netns.expose.prerequisites", {"needs": needs})
    assert not result["failed"], result
    predicted = predicted_files(master.converge(check=True, diff=True))
    assert master.files() == {}, "check mode wrote files"
    assert RULES_FILES[master.backend] in predicted and "/etc/netns-expose/netns/ns1.host" in predicted
    assert not {path for path in RULES_FILES.values() if path in predicted} - {RULES_FILES[master.backend]}
    master.converge()
    written = master.files()
    assert {path: content for path, content in written.items() if "demo" not in path} == predicted
    assert master.from_slave() == DEMO_REPLY


def test_a_reboot_brings_everything_back_with_no_ansible_run(master):
    before = master.state()
    assert before["netns"][0] == "ns1" and before["ip_forward"] == "1"
    assert "netns-expose-demo-http-web.service" in before["units"]
    poller = subprocess.Popen(master.lab.command(SLAVE, ["python3", "-c", machines.POLL_UNTIL_BACK, "120"]),  # pylint: disable=consider-using-with
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the poller is asking before the reboot
        master.reboot()
        out, err = poller.communicate(timeout=150)
    finally:
        poller.kill()
    answered, body = out.split(" ", 1) if out else (None, err)
    assert body.strip() == DEMO_REPLY, f"the slave got no answer after the reboot: {err}"
    boot_started = os.stat(master.lab.machine(MASTER).boots_file).st_mtime
    seconds = float(answered) - boot_started
    print(f"from the start of the boot to the first answer on the slave: {seconds:.2f} s")
    assert 0 < seconds < 60
    after = master.state()
    assert after["netns"] == before["netns"] and after["ip_forward"] == "1"
    assert sorted(after["rules"]) == sorted(before["rules"])
    assert {"netns-expose-netns@ns1.service", "netns-expose-rules.service",
            "netns-expose-demo-http-web.service"} <= set(after["units"])
    assert master.changed() == [], "the run after the reboot changed something"


def test_explain_on_a_booted_master_over_ssh_leaves_nothing(master, tmp_path):
    # A minimal server (no tcpdump, no conntrack tool, no pyroute2 for this): the trace, the captures and the
    # conntrack entry come from nft, AF_PACKET and netlink, and the report is the same as on the namespace hosts.
    run = master.ansible.run_playbook(EXPLAIN, extra_vars={"expose_explain_dir": str(tmp_path)})
    assert not failures(run), failures(run)
    report = json.loads((tmp_path / "report.json").read_text())
    assert {flow["mapping"] for flow in report["flows"]} == {"http-web-tcp-8090", "http-web-udp-8053", "http-web-icmp"}
    for flow in report["flows"]:
        assert flow["ok"] and flow["findings"] == [], flow
        assert all(hop["request"] and hop["reply"] for hop in flow["hops"]), flow["hops"]
        assert any(step["type"] == "nat" for step in flow["chains"]["request"]["first"]), flow["chains"]
        assert "DST_NAT" in flow["conntrack"][0]["status"]
    assert on(master.lab, MASTER, "nft list tables").count("netns_expose_trace_") == 0
    assert on(master.lab, MASTER, "ls /run/netns-expose 2>/dev/null || true").strip() == ""
    assert on(master.lab, SLAVE, "ls /run/netns-expose 2>/dev/null || true").strip() == ""


def test_the_hosts_own_firewall_at_boot_stays_as_it_is_and_ours_works_too(master):
    # A Docker host has iptables: with the nftables backend, the collection keeps its one accept in FORWARD.
    result = master.ansible.run_module(MASTER, "netns.expose.prerequisites", {"needs": ["iptables"]})
    assert not result["failed"], result
    for path, text in (("/etc/lab-firewall.rules", FOREIGN_RULES), ("/etc/systemd/system/lab-firewall.service", FOREIGN_UNIT)):
        assert master.lab.exec(MASTER, ["tee", path], input=text).returncode == 0
    on(master.lab, MASTER, "systemctl daemon-reload; systemctl enable --quiet nftables.service lab-firewall.service")
    try:
        if master.backend == "nftables":
            # Its accept in the iptables FORWARD chain is made by a run that sees the DROP policy.
            on(master.lab, MASTER, "systemctl start lab-firewall.service")
            assert [name for name in master.changed() if "Publish the ports" in name], "the run added no accept"
        master.reboot()
        foreign = master.foreign_rules()
        assert ":FORWARD DROP" in foreign and "-A DOCKER-FORWARD -i docker0 -j ACCEPT" in foreign
        assert master.from_slave() == DEMO_REPLY, "the mapping does not work through the host's FORWARD DROP"
        master.reboot()
        assert master.foreign_rules() == foreign, "the host's own rules changed across a reboot"
        assert master.from_slave() == DEMO_REPLY
    finally:
        on(master.lab, MASTER, "systemctl disable --quiet nftables.service lab-firewall.service; "
                               "rm -f /etc/lab-firewall.rules /etc/systemd/system/lab-firewall.service; "
                               "systemctl daemon-reload; iptables-nft -P FORWARD ACCEPT")
        if master.backend == "nftables":
            master.converge()  # which removes the accept that the DROP policy needed


def test_a_firewall_reload_that_flushes_everything_brings_the_rules_back(master):
    def loaded_at():
        return on(master.lab, MASTER, "systemctl show --value --property=ActiveEnterTimestampMonotonic "
                                      "netns-expose-rules.service").strip()

    before = loaded_at()
    on(master.lab, MASTER, "systemctl restart nftables.service")  # its ExecStart runs `flush ruleset`
    assert loaded_at() != before, "the rules were not loaded again after the firewall reload"
    assert master.state()["rules"], "the flush left no rule of the collection, and none came back"
    assert master.from_slave() == DEMO_REPLY
    # The control: without the unit, the same reload takes the mapping away (disabled, not only stopped:
    # starting nftables.service starts the unit too, as its WantedBy= asks).
    on(master.lab, MASTER, "systemctl disable --now --quiet netns-expose-rules.service; systemctl restart nftables.service")
    assert master.state()["rules"] == [] and master.from_slave() is None
    on(master.lab, MASTER, "systemctl enable --now --quiet netns-expose-rules.service")
    assert master.from_slave() == DEMO_REPLY
    assert master.changed() == [], "enable made other links than the run does"


# The service's port open to the master itself only (its own connections come from its address), and ns1's
# subnet guarded: the slave is a client the list leaves out, and a LAN host that routes to ns1.
WEB_SERVICE = {"name": "http-web", "netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b",
               "ns_address": "10.244.1.2/24", "host_address": "10.244.1.3/24", "demo": True,
               "ports": [{"protocol": "tcp", "host_port": 8090, "ns_port": 9090, "expect": "hello world"}]}
DIRECT_URL = "http://10.244.1.2:9090/"


def test_the_guard_and_an_allow_list_come_back_at_boot_and_after_a_firewall_reload(master):
    master.converge(expose_services=[{**WEB_SERVICE, "allowed_sources": [f"{MASTER_IP}/32"]}])
    on(master.lab, SLAVE, f"ip route replace 10.244.1.0/24 via {MASTER_IP}")
    try:
        for moment in ("after the run", "after a reboot", "after a firewall reload"):
            if moment == "after a reboot":
                master.reboot()
            elif moment == "after a firewall reload":
                on(master.lab, MASTER, "systemctl restart nftables.service")  # its ExecStart runs `flush ruleset`
            assert master.from_slave() is None, f"{moment}: the slave, outside allowed_sources, got an answer"
            assert master.from_slave(DIRECT_URL) is None, f"{moment}: the slave reached ns1 directly"
            # The positive control: the master's own connection, from an address the list has.
            assert master.from_slave(host=MASTER) == DEMO_REPLY, f"{moment}: the master itself was not let in"
    finally:
        on(master.lab, SLAVE, f"ip route del 10.244.1.0/24 via {MASTER_IP} || true")
        master.converge()
    assert master.from_slave() == DEMO_REPLY, "the slave is not let in again with the list gone"


def test_persistent_false_leaves_a_host_that_loses_everything_at_reboot(master):
    master.converge(expose_persistent=False)
    assert [path for path in master.files() if "demo" not in path] == []
    assert master.from_slave() == DEMO_REPLY, "the service still works until the reboot"
    master.reboot()
    state = master.state()
    assert state["netns"] == [] and state["rules"] == [] and state["ip_forward"] == "0"
    assert master.from_slave() is None
    # The demo unit, still enabled, finds no namespace: skipped, not failing in a loop.
    assert on(master.lab, MASTER, "systemctl is-failed netns-expose-demo-http-web.service || true").strip() == "inactive"
    # Back to persistent, for the last test.
    master.converge()
    assert master.from_slave() == DEMO_REPLY


def test_absent_then_a_reboot_leaves_nothing_of_the_collection(master):
    master.converge(expose_state="absent")
    assert master.files() == {}
    master.reboot()
    assert master.state() == {"netns": [], "rules": [], "ip_forward": "0", "units": []}
    assert master.files() == {}
    assert master.from_slave() is None
