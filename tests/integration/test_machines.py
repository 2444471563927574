# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's machines (tests/lab/machines.py): booted Debian 12 systems reached over SSH.

The session's machines start fresh: the tests that need a fresh master come first and
only read it; the slave is the one that gets packages installed and is rebooted.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import on

import machines
import nslab

MASTER, SLAVE = "master", "slave"
# What the collection's modules need and a minimal server lacks.
ABSENT_PACKAGES = ("python3-pyroute2", "iptables", "conntrack")


def installed(lab, host, packages):
    done = lab.exec(host, ["dpkg-query", "--show", "--showformat=${db:Status-Status} ${Package}\\n", *packages])
    return sorted(line.split()[1] for line in done.stdout.splitlines() if line.startswith("installed "))


def nslab_cli(env, *args):
    return subprocess.run(["python3", nslab.__file__, *args], env=env, capture_output=True, text=True, check=False,
                          timeout=300)


# A fresh machine


def test_a_machine_is_a_fresh_minimal_server(machine_lab):
    for host in (MASTER, SLAVE):
        facts = on(machine_lab, host, "cat /proc/1/comm; systemctl is-system-running; hostname; "
                                      "python3 --version; command -v nft; command -v sshd")
        pid1, state, hostname, python, nft, sshd = facts.split("\n")[:6]
        assert (pid1, state, hostname) == ("systemd", "running", host)
        assert python.startswith("Python 3.11") and nft == "/usr/sbin/nft" and sshd == "/usr/sbin/sshd"
        assert installed(machine_lab, host, ABSENT_PACKAGES) == []
        assert on(machine_lab, host, "python3 -c 'import importlib.util as u; print(u.find_spec(\"pyroute2\"))'") == "None\n"


def test_each_machine_has_its_own_identity_network_and_cgroup(machine_lab):
    identities = {}
    for host in (MASTER, SLAVE):
        lab_host = machine_lab.hosts[host]
        machine_id, host_key = on(machine_lab, host, "cat /etc/machine-id; cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub").split()
        identities[host] = (machine_id, host_key)
        link = json.loads(on(machine_lab, host, "ip -j addr show dev eth0"))[0]
        assert link["address"] == lab_host.mac
        assert [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"] == [lab_host.address]
        # Everything the machine runs is in its own cgroup, and nothing else is.
        machine = machine_lab.machine(host)
        sshd = int(on(machine_lab, host, "cat /run/sshd.pid"))  # a pid in the machine's PID namespace
        assert sshd > 0
        assert machine.supervisor_pid() in machine.cgroup.pids()
        other = machine_lab.machine(SLAVE if host == MASTER else MASTER)
        assert not machine.cgroup.pids() & other.cgroup.pids()
    assert identities[MASTER][0] != identities[SLAVE][0]
    assert identities[MASTER][1] != identities[SLAVE][1]
    # SSH checks the host keys the lab recorded when it made the machines' disks.
    with open(machine_lab.ssh.known_hosts, encoding="utf-8") as known_hosts:
        recorded = known_hosts.read()
    for host, (_machine_id, host_key) in identities.items():
        assert f"{machine_lab.hosts[host].ip} ssh-ed25519 {host_key}" in recorded


def test_the_machines_reach_each_other_and_nothing_else(machine_lab):
    banner = on(machine_lab, SLAVE, "python3 -c 'import socket, sys; "
                f"print(socket.create_connection((sys.argv[1], 22), 3).recv(8).decode())' {machine_lab.hosts[MASTER].ip}")
    assert banner.startswith("SSH-2.0-")
    routes = json.loads(on(machine_lab, MASTER, "ip -j route show"))
    assert {route["dst"] for route in routes} == {"default", "10.211.55.0/24"}
    # The LAN's namespace holds the gateway and routes nowhere.
    lan_routes = subprocess.run(["nsenter", f"--net={machine_lab.lan_namespace}", "--", "ip", "-j", "route"],
                                capture_output=True, text=True, check=True).stdout
    assert "default" not in lan_routes


def test_the_modules_name_the_package_a_fresh_host_lacks(machine_ansible):
    netns_veth = machine_ansible.run_module(MASTER, "netns.expose.netns_veth", {
        "netns": "ns1", "ns_ifname": "veth1a", "host_ifname": "veth1b",
        "ns_address": "10.244.1.2/24", "host_address": "10.244.1.3/24"})
    assert netns_veth["failed"] and "python3-pyroute2" in netns_veth["msg"], netns_veth
    web = {"name": "web", "port": 8090, "to_address": "10.244.1.2", "to_port": 9090}
    dnat_rule = machine_ansible.run_module(MASTER, "netns.expose.dnat_rule", {**web, "backend": "iptables"})
    assert dnat_rule["failed"], dnat_rule
    assert dnat_rule["msg"].startswith("iptables: no iptables-nft-restore or iptables-legacy-restore found"), dnat_rule
    assert "the package iptables on Debian/Ubuntu" in dnat_rule["msg"]


def test_dnat_rule_needs_nothing_a_fresh_host_lacks_with_nftables(machine_ansible, machine_lab):
    """nftables is installed on a minimal Debian server, and auto takes it: no package to install."""
    web = {"name": "web", "port": 8090, "to_address": "10.244.1.2", "to_port": 9090}
    try:
        added = machine_ansible.run_module(MASTER, "netns.expose.dnat_rule", web)
        assert not added["failed"], added
        assert added["backend"] == "nftables", added
        assert "netns.expose:web" in on(machine_lab, MASTER, "nft list table ip netns_expose")
        assert machine_ansible.run_module(MASTER, "netns.expose.dnat_rule", web)["changed"] is False
    finally:
        removed = machine_ansible.run_module(MASTER, "netns.expose.dnat_rule", {"name": "web", "state": "absent"})
    assert not removed["failed"], removed
    assert "netns_expose" not in on(machine_lab, MASTER, "nft list tables")
    assert on(machine_lab, MASTER, "ls /etc/netns-expose 2>/dev/null | wc -l").strip() == "0"


def test_prerequisites_check_mode_predicts_and_changes_nothing(machine_ansible, machine_lab):
    result = machine_ansible.run_module(MASTER, "netns.expose.prerequisites",
                                        {"needs": ["pyroute2", "iptables", "conntrack"]}, check=True, diff=True)
    assert result["changed"] and not result["failed"], result
    assert result["installed"] == list(ABSENT_PACKAGES)
    assert result["actions"] == ["refresh the package index (apt-get update)",
                                 "install python3-pyroute2 iptables conntrack with apt-get"]
    assert installed(machine_lab, MASTER, ABSENT_PACKAGES) == []


# The local package source, on the slave (the master stays fresh)


def test_apt_installs_offline_from_the_local_repository(machine_lab, machine_ansible):
    # The machines have no route to a registry: their only source is the lab's repository.
    assert on(machine_lab, SLAVE, "cat /etc/apt/sources.list; ls /etc/apt/sources.list.d") == machines.REPO_SOURCES
    result = machine_ansible.run_module(SLAVE, "netns.expose.prerequisites", {"needs": ["pyroute2", "iptables", "conntrack"]})
    assert result["changed"] and not result["failed"], result
    assert installed(machine_lab, SLAVE, ABSENT_PACKAGES) == sorted(ABSENT_PACKAGES)
    assert on(machine_lab, SLAVE, "python3 -c 'import pyroute2; print(pyroute2.IPRoute.__name__)'") == "IPRoute\n"
    again = machine_ansible.run_module(SLAVE, "netns.expose.prerequisites", {"needs": ["pyroute2", "iptables", "conntrack"]})
    assert not again["changed"] and again["actions"] == [], again


def test_network_facts_names_what_prerequisites_would_install(machine_ansible):
    """The role's read: the fresh master lacks what apt would install; the slave, after the install above, nothing."""
    needs = {"needs": ["pyroute2", "iptables", "conntrack", "nftables"]}
    fresh = machine_ansible.run_module(MASTER, "netns.expose.network_facts", needs)
    assert not fresh["failed"] and fresh["missing"] == ["pyroute2", "iptables", "conntrack"], fresh
    installed_now = machine_ansible.run_module(SLAVE, "netns.expose.network_facts", needs)
    assert not installed_now["failed"] and installed_now["missing"] == [], installed_now


# Reboot


def test_a_reboot_empties_run_keeps_the_disk_and_starts_a_new_network_namespace(machine_lab, ansible_env, machine_inventory):
    lab_host = machine_lab.hosts[SLAVE]
    machine = machine_lab.machine(SLAVE)
    boots = machine.boots()
    boot_id = on(machine_lab, SLAVE, "cat /proc/sys/kernel/random/boot_id")
    # State of all kinds, as a configured master has it: files, namespaces, links, rules, sysctls, processes.
    on(machine_lab, SLAVE, """
        echo kept > /etc/lab-reboot-marker
        echo gone > /run/lab-reboot-marker
        ip netns add ns-reboot
        ip link add vreboot0 type veth peer name vreboot1
        nft add table inet lab_reboot
        echo 1 > /proc/sys/net/ipv4/ip_forward
        systemd-run --unit=lab-reboot-sleeper sleep infinity
    """)
    old_netns = os.stat(lab_host.ns("net")).st_ino
    done = nslab_cli(ansible_env, "reboot", "-i", str(machine_inventory), SLAVE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"machine {SLAVE}: rebooted (boot {boots + 1},")
    assert machine.boots() == boots + 1
    assert on(machine_lab, SLAVE, "cat /proc/sys/kernel/random/boot_id") != boot_id
    assert on(machine_lab, SLAVE, "cat /etc/lab-reboot-marker; test ! -e /run/lab-reboot-marker && echo no-run-marker") \
        == "kept\nno-run-marker\n"
    after = on(machine_lab, SLAVE, """
        ip netns list | wc -l
        ip -br link | grep -c vreboot || true
        nft list tables | wc -l
        cat /proc/sys/net/ipv4/ip_forward
        systemctl is-active lab-reboot-sleeper || true
        dpkg-query --show --showformat='${Package}\\n' python3-pyroute2
    """).split()
    assert after == ["0", "0", "0", "0", "inactive", "python3-pyroute2"]
    # A new network namespace, with the same address and MAC.
    assert os.stat(lab_host.ns("net")).st_ino != old_netns
    link = json.loads(on(machine_lab, SLAVE, "ip -j addr show dev eth0"))[0]
    assert link["address"] == lab_host.mac
    assert lab_host.ip in {a["local"] for a in link["addr_info"]}
    on(machine_lab, SLAVE, "rm /etc/lab-reboot-marker")


def test_ansible_reboot_module_brings_the_machine_back(machine_lab, machine_ansible):
    boots = machine_lab.machine(SLAVE).boots()
    result = machine_ansible.run_module(SLAVE, "ansible.builtin.reboot", {"reboot_timeout": 120})
    assert result["rebooted"] and not result["failed"], result
    assert machine_lab.machine(SLAVE).boots() == boots + 1


# Teardown


def lab_traces(lab, machine_names):
    """What of a lab of machines exists on this machine: processes, mounts, directories, cgroups."""
    traces = []
    state = os.path.join(machines.STATE_ROOT, lab.name)
    for path in (state, lab.dir, *(f"/run/systemd/nspawn/propagate/{name}" for name in machine_names)):
        if os.path.exists(path):
            traces.append(f"path {path}")
    for root in machines.cgroup_hierarchies():
        path = os.path.join(root, machines.CGROUP_DIR, lab.name)
        if os.path.exists(path):
            traces.append(f"cgroup {path}")
    for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                argv = cmdline.read().decode(errors="replace")
            with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
                mounts = mountinfo.read()
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if any(name in argv for name in machine_names) or state in argv:
            traces.append(f"process {pid}: {argv!r}")
        if state in mounts or lab.dir in mounts:
            traces.append(f"mounts of process {pid}")
    return traces


def test_teardown_after_a_killed_up_leaves_nothing_behind(make_machine_lab, ansible_env):
    lab, inventory = make_machine_lab("td")
    names = [lab.machine(host).name for host in lab.hosts]
    # Kill `nslab.py up` while the machines boot: supervisors, nspawn and half-booted machines remain.
    up = subprocess.Popen(["python3", nslab.__file__, "up", "-i", str(inventory)], env=ansible_env,  # pylint: disable=consider-using-with
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not all(lab.machine(host).boots() for host in lab.hosts):
            assert up.poll() is None, "up ended before the machines booted"
            assert time.monotonic() < deadline, "the machines never started booting"
            time.sleep(0.2)
    finally:
        os.killpg(up.pid, signal.SIGKILL)
        up.wait()
    assert lab_traces(lab, names), "nothing was running: the test proves nothing"
    done = nslab_cli(ansible_env, "down", "--lab", lab.name)
    assert done.returncode == 0, done.stderr
    assert "machine master" in done.stdout and "machine slave" in done.stdout
    assert lab_traces(lab, names) == []
    assert nslab.processes_pinning(lab.namespace_keys()) == []


def test_teardown_of_a_running_lab_leaves_nothing_behind(make_machine_lab):
    lab, _inventory = make_machine_lab("td2")
    names = [lab.machine(host).name for host in lab.hosts]
    lab.up()
    assert len(lab_traces(lab, names)) > 4
    lab.down()
    assert lab_traces(lab, names) == []


@pytest.mark.parametrize("value", ["yes", 1])
def test_lab_machine_must_be_a_boolean(tmp_path, value):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"m": {"lab_address": "10.211.55.9/24", "lab_machine": value}}}}),
                         encoding="utf-8")
    with pytest.raises(nslab.LabError, match="lab_machine must be true or false"):
        nslab.Lab.from_inventory(inventory)
