# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's demo services (tests/lab/demo_runner.py) in the ns1 of lab hosts made of namespaces.

The lab hosts have no systemd: the runner supervises the demo service there, with its
files in the host's directory of the lab. The role netns.expose.demo_service, which runs it
as a systemd unit, is tested on machines (test_demo_service_role.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from master_host import DEMO_REPLY as REPLY, MASTER, sh

import nslab

sys.path.insert(0, str(Path(nslab.__file__).parent))
import demo_runner  # noqa: E402  pylint: disable=wrong-import-position

HERE = Path(__file__).resolve().parent
UDP_ECHO = HERE / "udp_echo.py"
SLAVE = "slave"
WEB = {"name": "web", "netns": "ns1", "tcp_ports": [9090, 9091], "udp_ports": [5353]}
DNS = {"name": "dns", "netns": "ns1", "tcp_ports": [], "udp_ports": [53]}


class Demo:
    """The runners of the session lab's hosts, and what runs in their ns1."""

    def __init__(self, lab):
        self.lab = lab
        self.runners = {host: demo_runner.DemoRunner(lab.name, host) for host in (MASTER, SLAVE)}

    def __getitem__(self, host):
        return self.runners[host]

    def pids(self, host=MASTER):
        """The processes in the host's ns1."""
        return sorted(int(pid) for pid in sh(self.lab, "ip", "netns", "pids", "ns1", host=host).split())

    def ask(self, protocol, port, host=MASTER):
        """The reply of the service on a port of ns1, asked from inside ns1, or None."""
        argv = (["curl", "-s", "-m", "3", f"http://127.0.0.1:{port}/some/path"] if protocol == "tcp"
                else ["python3", str(UDP_ECHO), "ask", "127.0.0.1", str(port), "hello"])
        done = self.lab.exec(host, ["ip", "netns", "exec", "ns1", *argv])
        return done.stdout.strip() if done.returncode == 0 and done.stdout else None

    def processes(self, name, host=MASTER):
        """(supervisor, service) of an instance."""
        status = self[host].status()[name]
        return status["supervisor"], status["service"]


def eventually(probe, timeout=10.0):
    """probe() once it is truthy, polling for up to timeout seconds; the last falsy value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture
def demo(lab):
    """A Demo with an ns1 on the master and the slave; every demo service and ns1 are removed afterwards."""
    for host in (MASTER, SLAVE):
        sh(lab, "sh", "-c", "ip netns add ns1 && ip -n ns1 link set lo up", host=host)
    helper = Demo(lab)
    try:
        yield helper
    finally:
        for host in (MASTER, SLAVE):
            try:
                helper[host].converge([])
            finally:
                lab.exec(host, ["sh", "-c", "ip netns pids ns1 | xargs -r kill -9; ip netns del ns1"])
            assert not os.path.exists(helper[host].dir), "the runner left files"


def test_serves_http_and_udp_on_every_port_once_started_and_converges_once(demo):
    assert demo[MASTER].converge([WEB]) == {"changed": True, "started": ["web"], "restarted": [], "stopped": []}
    # Started means listening: asked right away, every port answers.
    assert demo.ask("tcp", 9090) == demo.ask("tcp", 9091) == demo.ask("udp", 5353) == REPLY
    assert demo.ask("tcp", 9092) is None, "a port that was not asked for answers"
    supervisor, service = demo.processes("web")
    assert demo.pids() == sorted([supervisor, service]), "not one supervisor and one service in ns1"
    assert sorted(os.listdir(demo[MASTER].dir)) == ["web.json", "web.log"]
    assert demo[MASTER].dir == os.path.join(demo.lab.hosts[MASTER].dir, "demo")

    assert demo[MASTER].converge([WEB])["changed"] is False
    assert demo.processes("web") == (supervisor, service), "restarted by a run that changed nothing"


def test_a_killed_service_comes_back(demo):
    demo[MASTER].converge([WEB])
    supervisor, service = demo.processes("web")
    os.kill(service, signal.SIGKILL)
    assert eventually(lambda: demo.processes("web")[1] not in (None, service), timeout=8)
    assert eventually(lambda: demo.ask("tcp", 9090) == REPLY and demo.ask("udp", 5353) == REPLY, timeout=8)
    assert demo.processes("web")[0] == supervisor
    assert demo[MASTER].converge([WEB])["changed"] is False


def test_a_killed_supervisor_takes_its_service_along_and_the_next_run_starts_both(demo):
    demo[MASTER].converge([WEB])
    os.kill(demo.processes("web")[0], signal.SIGKILL)
    assert eventually(lambda: not demo.pids(), timeout=5) is True, "the service outlived its supervisor"
    assert demo[MASTER].running("web") is False
    assert demo[MASTER].converge([WEB])["started"] == ["web"]
    assert demo.ask("tcp", 9090) == REPLY


def test_other_ports_restart_the_service_with_them(demo):
    demo[MASTER].converge([WEB])
    before = demo.processes("web")
    moved = {**WEB, "tcp_ports": [9092], "udp_ports": [5354]}

    assert demo[MASTER].converge([moved])["restarted"] == ["web"]
    assert not set(demo.processes("web")) & set(before)
    assert (demo.ask("tcp", 9092), demo.ask("udp", 5354)) == (REPLY, REPLY)
    assert (demo.ask("tcp", 9090), demo.ask("tcp", 9091), demo.ask("udp", 5353)) == (None, None, None)
    assert len(demo.pids()) == 2, "the old service is still in ns1"
    assert demo[MASTER].converge([moved])["changed"] is False


def test_check_mode_reports_changes_and_makes_none(demo):
    assert demo[MASTER].converge([WEB], check=True)["started"] == ["web"]
    assert demo.pids() == [], "check mode started something"
    assert not os.path.exists(demo[MASTER].dir), "check mode wrote files"

    demo[MASTER].converge([WEB])
    running = demo.processes("web")
    assert demo[MASTER].converge([{**WEB, "tcp_ports": [9092]}], check=True)["restarted"] == ["web"]
    assert demo[MASTER].converge([WEB], state="absent", check=True)["stopped"] == ["web"]
    assert demo.processes("web") == running
    assert demo.ask("tcp", 9090) == REPLY


def test_stop_leaves_no_process_and_no_file(demo):
    demo[MASTER].converge([WEB, DNS])
    assert (demo.ask("tcp", 9090), demo.ask("udp", 53)) == (REPLY, REPLY)  # 53: below 1024, as root here
    assert len(demo.pids()) == 4
    supervisors = [demo.processes(name)[0] for name in ("web", "dns")]

    assert demo[MASTER].converge([WEB, DNS], state="absent")["stopped"] == ["dns", "web"]
    assert demo.pids() == [], "processes left in ns1"
    assert not any(demo_runner.alive(pid) for pid in supervisors)
    assert not os.path.exists(demo[MASTER].dir), "files left"
    assert (demo.ask("tcp", 9090), demo.ask("udp", 53)) == (None, None)
    assert demo[MASTER].converge([WEB, DNS], state="absent")["changed"] is False


def test_present_stops_what_it_does_not_list_and_an_instance_without_ports(demo):
    demo[MASTER].converge([WEB, DNS])
    assert demo[MASTER].converge([WEB])["stopped"] == ["dns"]
    assert demo.ask("udp", 53) is None and demo.ask("tcp", 9090) == REPLY
    assert demo[MASTER].converge([{**WEB, "tcp_ports": [], "udp_ports": []}])["stopped"] == ["web"]
    assert demo.pids() == []


def test_hosts_that_share_run_keep_their_own_services(demo):
    """The lab's master and slave share /run and the PID namespace: the same instance runs in each one's ns1."""
    for host in (MASTER, SLAVE):
        assert demo[host].converge([WEB])["started"] == ["web"]
    assert demo[MASTER].dir != demo[SLAVE].dir
    assert demo.processes("web", MASTER)[0] != demo.processes("web", SLAVE)[0]
    assert demo.ask("tcp", 9090, host=MASTER) == demo.ask("tcp", 9090, host=SLAVE) == REPLY

    assert demo[MASTER].converge([WEB], state="absent")["stopped"] == ["web"]
    assert demo.pids(MASTER) == []
    assert demo.ask("tcp", 9090, host=SLAVE) == REPLY
    assert len(demo.pids(SLAVE)) == 2
    assert demo[SLAVE].converge([WEB])["changed"] is False


def test_a_missing_namespace_fails_naming_the_host_and_the_instance(demo):
    with pytest.raises(demo_runner.DemoError) as failed:
        demo[MASTER].converge([{**WEB, "netns": "nsmissing"}])
    assert str(failed.value).startswith(f"{MASTER}: demo service web in netns nsmissing could not be started;")
    assert 'Cannot open network namespace "nsmissing"' in str(failed.value)
    assert demo[MASTER].running("web") is False


def test_a_port_in_use_fails_the_start_with_the_service_s_log(demo):
    demo[MASTER].converge([DNS])
    with pytest.raises(demo_runner.DemoError) as failed:
        demo[MASTER].converge([DNS, {**WEB, "udp_ports": [53]}])
    assert f"{MASTER}: demo service web in netns ns1 exited (status 1) before it listened on all its ports" in str(failed.value)
    assert "Address already in use" in str(failed.value)
    assert demo[MASTER].running("web") is False and demo[MASTER].running("dns") is True
    assert len(demo.pids()) == 2, "the failed start left a process"


def test_only_an_up_namespace_host_runs_demo_services(demo):
    with pytest.raises(demo_runner.DemoError, match="nohost is not an up namespace host of lab"):
        demo_runner.DemoRunner(demo.lab.name, "nohost").start(WEB)


def test_the_cli_converges_and_reports_as_json(demo, lab_inventory, ansible_env):
    def cli(*args):
        done = subprocess.run([sys.executable, demo_runner.__file__, *args], env=ansible_env, capture_output=True,
                              text=True, check=False, timeout=60)
        return done.returncode, json.loads(done.stdout)

    assert cli("--lab", demo.lab.name, "--host", MASTER, "converge", json.dumps([WEB]), "--check") == (
        0, {"changed": True, "started": ["web"], "restarted": [], "stopped": []})
    assert cli("--lab", demo.lab.name, "--host", MASTER, "converge", json.dumps([WEB]))[1]["started"] == ["web"]
    status = cli("-i", str(lab_inventory), "status")[1]
    assert sorted(status) == [MASTER, SLAVE] and status[SLAVE] == {}
    assert status[MASTER]["web"]["running"] is True and status[MASTER]["web"]["spec"]["tcp_ports"] == [9090, 9091]
    rc, failed = cli("--lab", demo.lab.name, "--host", MASTER, "converge", json.dumps([{**WEB, "name": "a b"}]))
    assert rc == 1 and failed["failed"] is True and "the name must be unique and match" in failed["msg"]


def test_lab_down_removes_the_demo_services(make_lab):
    """nslab.py down kills the supervisors and services (they are in the lab's namespaces) and removes their files."""
    doomed = make_lab("ds")
    doomed.up()
    sh(doomed, "sh", "-c", "ip netns add ns1 && ip -n ns1 link set lo up")
    runner = demo_runner.DemoRunner(doomed.name, MASTER)
    runner.converge([WEB])
    supervisor = runner.status()["web"]["supervisor"]
    removed = doomed.down()
    assert "2 processes" in removed and not [item for item in removed if item.startswith("warning")], removed
    assert not demo_runner.alive(supervisor)
    assert not os.path.exists(runner.dir)
