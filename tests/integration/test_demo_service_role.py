# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role netns.expose.demo_service on a booted machine, whose PID 1 is systemd.

A lab of one machine of its own (the session's machines stay fresh for test_machines.py),
with a namespace ns1 made by `ip netns add`: the role needs no package the machine lacks.
Each test starts with no demo unit on the machine and leaves none, also when it fails.
"""
from __future__ import annotations

import time

import pytest
from conftest import failures, machine_lab_of_its_own, on
from master_host import DEMO_REPLY


MASTER = "master"
SCRIPT = "/usr/local/libexec/netns-expose-demo/demo_service.py"
WEB = {"name": "web", "netns": "ns1", "tcp_ports": [9090], "udp_ports": [5353]}
DNS = {"name": "dns", "netns": "ns1", "tcp_ports": [], "udp_ports": [53]}
PLAYBOOK = """
- name: The demo services
  hosts: masters
  gather_facts: false
  roles:
    - role: netns.expose.demo_service
"""
# From inside ns1 on the machine: the reply of the service on a tcp port (HTTP GET) or a udp port.
ASK = """
import socket, sys, urllib.request
protocol, port = sys.argv[1], int(sys.argv[2])
try:
    if protocol == "tcp":
        print(urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=3).read().decode())
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(b"hello", ("127.0.0.1", port))
            print(sock.recv(4096).decode())
except OSError as exc:
    print("no answer:", exc)
"""


@pytest.fixture(scope="module")
def machine(tmp_path_factory, ansible_env):
    """(Lab, AnsibleRunner) of one machine, master, with an ns1; taken down at the end whatever happens."""
    # One machine is enough: each boot costs seconds.
    with machine_lab_of_its_own("ds", tmp_path_factory.mktemp("demo-machine"), ansible_env, without=["slaves"]) as own:
        on(own[0], MASTER, "ip netns add ns1 && ip -n ns1 link set lo up")
        yield own


class Demo:
    def __init__(self, lab, ansible):
        self.lab, self.ansible = lab, ansible

    def run(self, instances, state="present", check=False, diff=False):
        """Apply the role; return the run (see conftest.failures)."""
        return self.ansible.run_playbook(PLAYBOOK, extra_vars={"demo_service_instances": instances,
                                                               "demo_service_state": state}, check=check, diff=diff)

    def converge(self, instances, state="present", check=False, diff=False):
        """Apply the role, which must not fail; return the names of the tasks that changed something."""
        run = self.run(instances, state, check, diff)
        assert not failures(run), failures(run)
        return [task["task"]["name"].split(" : ")[-1] for play in run["plays"] for task in play["tasks"]
                for result in task["hosts"].values() if result.get("changed")]

    def show(self, name):
        """ActiveState, SubState, MainPID and NetworkNamespacePath of an instance's unit."""
        out = on(self.lab, MASTER, f"systemctl show --property=ActiveState,SubState,MainPID,NetworkNamespacePath "
                                   f"netns-expose-demo-{name}.service")
        return dict(line.split("=", 1) for line in out.splitlines())

    def main_pid(self, name):
        show = self.show(name)
        assert (show["ActiveState"], show["SubState"]) == ("active", "running"), show
        return int(show["MainPID"])

    def in_ns1(self, pid):
        """Whether a process is in ns1 (its network namespace is the one /run/netns/ns1 holds)."""
        inodes = on(self.lab, MASTER, f"stat --dereference --format=%i /proc/{pid}/ns/net /run/netns/ns1").split()
        return inodes[0] == inodes[1]

    def ask(self, protocol, port):
        """The reply of the service on a port, asked from inside ns1."""
        return on(self.lab, MASTER, f"nsenter --net=/run/netns/ns1 python3 -c '{ASK}' {protocol} {port}").strip()

    def leftovers(self):
        """Demo units (files or loaded), the script's directory and processes in ns1."""
        return on(self.lab, MASTER, "ls /etc/systemd/system | grep netns-expose-demo || true; "
                                    "ls -d /usr/local/libexec/netns-expose-demo 2>/dev/null || true; "
                                    "systemctl list-units --all --plain --no-legend 'netns-expose-demo-*' || true; "
                                    "ip netns pids ns1").split()


@pytest.fixture
def demo(machine):
    helper = Demo(*machine)
    assert helper.leftovers() == [], "an earlier test left demo services"
    try:
        yield helper
    finally:
        helper.converge([WEB, DNS], state="absent")
        assert helper.leftovers() == []


def test_check_mode_changes_nothing_then_present_runs_the_unit_in_ns1_once(demo):
    predicted = demo.converge([WEB], check=True, diff=True)
    assert {"Install the demo service's script", "Write the demo units"} <= set(predicted)
    assert demo.leftovers() == [], "check mode changed the machine"

    assert demo.converge([WEB], diff=True) == [
        "Create the demo service's directory", "Install the demo service's script", "Write the demo units",
        "Enable and start the demo units (restart those whose unit or script changed)"]
    pid = demo.main_pid("web")
    assert demo.show("web")["NetworkNamespacePath"] == "/run/netns/ns1"
    assert demo.in_ns1(pid)
    # Started means listening (Type=notify): asked right away, every port answers.
    assert demo.ask("tcp", 9090) == demo.ask("udp", 5353) == DEMO_REPLY
    assert demo.ask("tcp", 9091).startswith("no answer")
    assert on(demo.lab, MASTER, "systemctl is-enabled netns-expose-demo-web.service").strip() == "enabled"

    assert demo.converge([WEB]) == []
    assert demo.converge([WEB], check=True, diff=True) == []
    assert demo.main_pid("web") == pid, "a run that changed nothing restarted the unit"


def test_it_restarts_when_its_ports_or_script_change_and_when_it_dies(demo):
    demo.converge([WEB])
    first = demo.main_pid("web")

    assert demo.converge([{**WEB, "tcp_ports": [9091]}]) == [
        "Write the demo units", "Enable and start the demo units (restart those whose unit or script changed)"]
    second = demo.main_pid("web")
    assert second != first
    assert demo.ask("tcp", 9091) == DEMO_REPLY and demo.ask("tcp", 9090).startswith("no answer")

    on(demo.lab, MASTER, f"echo '# changed' >> {SCRIPT}")
    assert demo.converge([{**WEB, "tcp_ports": [9091]}]) == [
        "Install the demo service's script", "Enable and start the demo units (restart those whose unit or script changed)"]
    third = demo.main_pid("web")
    assert third != second

    on(demo.lab, MASTER, f"kill -9 {third}")  # Restart=on-failure
    deadline = time.monotonic() + 15
    while demo.show("web")["MainPID"] in (str(third), "0") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert demo.main_pid("web") != third
    assert demo.ask("tcp", 9091) == DEMO_REPLY


def test_absent_and_unlisted_units_leave_nothing(demo):
    demo.converge([WEB, DNS])
    assert demo.ask("udp", 53) == DEMO_REPLY  # below 1024: the unit has CAP_NET_BIND_SERVICE
    assert demo.in_ns1(demo.main_pid("dns"))

    # dns is no longer listed: present stops and removes it (demo_service_exclusive).
    assert "Remove the demo units that go" in demo.converge([WEB])
    assert "netns-expose-demo-dns.service" not in demo.leftovers()
    assert demo.ask("udp", 53).startswith("no answer")
    # An instance without a port does not run.
    assert "Stop and disable the demo units that go" in demo.converge([{**WEB, "tcp_ports": [], "udp_ports": []}])
    assert demo.leftovers() == [], "no unit left: the script goes too"

    demo.converge([WEB])
    assert demo.converge([WEB], state="absent", check=True) != []
    assert demo.main_pid("web")
    assert demo.converge([WEB], state="absent") == [
        "Stop and disable the demo units that go", "Remove the demo units that go",
        "Remove the demo service's script when no demo unit is left"]
    assert demo.leftovers() == []
    assert demo.converge([WEB], state="absent") == []


def test_a_missing_namespace_fails_naming_the_host_and_the_instance(demo):
    run = demo.run([{**WEB, "netns": "nsmissing"}])
    assert [message for _task, message in failures(run)] == [
        f"{MASTER}: demo service web: no network namespace /run/netns/nsmissing"]
    assert demo.leftovers() == []


@pytest.mark.parametrize("instances, message", [
    ([WEB, WEB], "master: demo_service_instances[1].name: 'web' is also the name of an earlier instance"),
    ([{**WEB, "name": "a/b"}], "master: demo_service_instances[0].name: 'a/b' is not a valid instance name"),
    ([{**WEB, "tcp_ports": [70000]}], "master: demo_service_instances[0].tcp_ports[0]: 70000 is outside 1..65535"),
])
def test_bad_instances_fail_before_anything_changes(demo, instances, message):
    run = demo.run(instances)
    [(_task, said)] = failures(run)
    assert said.startswith(message), said
    assert demo.leftovers() == []


def test_a_host_without_systemd_fails_naming_it(ansible, lab):
    """The lab's namespace hosts have no systemd of their own (this machine's PID 1 is not systemd)."""
    if lab.exec(MASTER, ["test", "-d", "/run/systemd/system"]).returncode == 0:
        pytest.skip("this machine runs systemd: the lab hosts see its /run/systemd/system")
    run = ansible.run_playbook(PLAYBOOK, extra_vars={"demo_service_instances": [WEB]})
    assert [message for _task, message in failures(run)] == [
        f"{MASTER}: the demo service runs as a systemd unit, and systemd is not PID 1 on this host (no /run/systemd/system)"]
