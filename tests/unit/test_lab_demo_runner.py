# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's demo runner (tests/lab/demo_runner.py) and the demo service's readiness, without a lab.

The supervisor runs here as a plain process around a stand-in service that speaks the
service's readiness protocol (READY=1 on NOTIFY_SOCKET) and binds no port; the runner's
decisions (converge) are checked against a runner whose processes are faked.
tests/integration/test_lab_demo_services.py runs the real thing in a lab host's namespace.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lab"))
sys.path.insert(0, str(REPO / "roles" / "demo_service" / "files"))
import demo_runner  # noqa: E402  pylint: disable=wrong-import-position
import demo_service  # noqa: E402  pylint: disable=wrong-import-position
import nslab  # noqa: E402  pylint: disable=wrong-import-position

WEB = {"name": "web", "netns": "ns1", "tcp_ports": [9090], "udp_ports": [53]}
# A service that says it is ready (as demo_service.py does once its ports listen) and waits;
# with an argument, it exits with that status at once instead.
STAND_IN = f"""
import os, sys, time
sys.path.insert(0, {str(REPO / "roles" / "demo_service" / "files")!r})
import demo_service
if len(sys.argv) > 1:
    sys.exit(int(sys.argv[1]))
demo_service.notify_ready()
print("stand-in", os.getpid(), flush=True)
time.sleep(300)
"""


# The demo service's side of the protocol


@pytest.mark.parametrize("abstract", [True, False])
def test_the_service_says_ready_on_the_notify_socket(tmp_path, abstract):
    address = f"\0netns-expose-test/{os.getpid()}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(5)
        assert demo_service.notify_ready({"NOTIFY_SOCKET": address.replace("\0", "@")}) is True
        assert listener.recv(64) == b"READY=1"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative"}])
def test_without_a_service_manager_the_service_says_nothing(environ):
    assert demo_service.notify_ready(environ) is False


def test_a_gone_service_manager_does_not_stop_the_service(tmp_path, capsys):
    assert demo_service.notify_ready({"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False
    assert "could not notify" in capsys.readouterr().out


# The supervisor, around the stand-in service


class Supervisor:
    """`demo_runner.py supervise` around the stand-in, with what it says on its ready fd."""

    def __init__(self, tmp_path, *stand_in_args):
        script = tmp_path / "stand_in.py"
        script.write_text(STAND_IN, encoding="utf-8")
        self.log = tmp_path / "supervisor.log"
        ready_read, ready_write = os.pipe()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(  # pylint: disable=consider-using-with
                [sys.executable, demo_runner.__file__, "supervise", "--dir", str(tmp_path), "--name", "web",
                 "--ready-fd", str(ready_write), "--", sys.executable, str(script), *stand_in_args],
                stdout=log, stderr=subprocess.STDOUT, pass_fds=(ready_write,))
        os.close(ready_write)
        with os.fdopen(ready_read, "rb") as ready:
            self.said = demo_runner._read_until(ready, (b"ready", b"failed"), 10)  # pylint: disable=protected-access

    def service(self, not_pid=None, timeout=10):
        """The pid of the supervisor's service (another than not_pid), once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [pid for pid in demo_runner.children(self.process.pid) if pid != not_pid]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no service under the supervisor:\n{self.log.read_text()}")

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def supervisor(tmp_path):
    started = []

    def start(*stand_in_args):
        started.append(Supervisor(tmp_path, *stand_in_args))
        return started[-1]

    yield start
    for one in started:
        for pid in demo_runner.children(one.process.pid):
            os.kill(pid, signal.SIGKILL)
        one.close()


def test_the_supervisor_tells_its_pid_then_that_the_service_is_ready(supervisor):
    running = supervisor()
    assert running.said == {"supervisor": str(running.process.pid), "ready": ""}
    assert running.process.poll() is None


def test_a_killed_service_comes_back_and_sigterm_stops_both(supervisor):
    running = supervisor()
    first = running.service()
    os.kill(first, signal.SIGKILL)
    second = running.service(not_pid=first)
    assert second != first and demo_runner.alive(second)
    assert "the service exited with -9; starting it again in 1 s" in running.log.read_text()

    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(10) == 0
    deadline = time.monotonic() + 5
    while demo_runner.alive(second) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not demo_runner.alive(second), "the service outlived its supervisor"


def test_a_killed_supervisor_takes_its_service_along(supervisor):
    running = supervisor()
    service = running.service()
    running.process.kill()
    running.process.wait()
    deadline = time.monotonic() + 5
    while demo_runner.alive(service) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not demo_runner.alive(service), "the service outlived its supervisor (no parent-death signal)"


def test_a_service_that_exits_before_it_is_ready_fails_the_start(supervisor):
    running = supervisor("3")
    assert running.said == {"supervisor": str(running.process.pid), "failed": "3"}
    assert running.process.wait(10) == 1, "the supervisor kept restarting a service that never started"


# The runner's bookkeeping


def test_instances_are_checked_naming_the_first_bad_one():
    demo_runner.check_instances([WEB, {**WEB, "name": "dns", "tcp_ports": []}])
    for bad, message in [
        ([WEB, WEB], r"instances\[1\] \(web\): the name must be unique"),
        ([{**WEB, "name": "a b"}], r"instances\[0\] \(a b\): the name must"),
        ([{**WEB, "netns": "../x"}], r"netns must be a name under /run/netns"),
        ([{**WEB, "tcp_ports": [0]}], r"tcp_ports must be a list of ports"),
        ([{**WEB, "udp_ports": "53"}], r"udp_ports must be a list of ports"),
        ([{**WEB, "ports": [1]}], r"must be a dict of name, netns, tcp_ports and udp_ports"),
    ]:
        with pytest.raises(demo_runner.DemoError, match=message):
            demo_runner.check_instances(bad)


def test_the_service_runs_the_role_s_script_with_its_ports():
    assert demo_runner.SCRIPT == str(REPO / "roles" / "demo_service" / "files" / "demo_service.py")
    assert demo_runner.service_argv(WEB) == ["/usr/bin/python3", demo_runner.SCRIPT, "--tcp", "9090", "--udp", "53"]
    recorded = demo_runner.spec(WEB)
    assert recorded == {**demo_runner.spec({**WEB, "tcp_ports": ["9090"]})}, "ports as strings are the same spec"
    assert recorded != demo_runner.spec({**WEB, "tcp_ports": [9091]})
    assert len(recorded["script_sha256"]) == 64


def test_files_live_in_the_lab_host_s_directory():
    runner = demo_runner.DemoRunner("lab1", "master")
    assert runner.dir == f"{nslab.LAB_ROOT}/lab1/master/demo"
    assert runner.nsenter() == ["nsenter", f"--net={nslab.LAB_ROOT}/lab1/master/net",
                                f"--mount={nslab.LAB_ROOT}/lab1/master/mnt", f"--uts={nslab.LAB_ROOT}/lab1/master/uts", "--"]


def test_a_recorded_pid_that_is_not_the_supervisor_is_not_running(tmp_path, monkeypatch):
    monkeypatch.setattr(nslab, "LAB_ROOT", str(tmp_path))
    runner = demo_runner.DemoRunner("lab1", "master")
    os.makedirs(runner.dir)
    (Path(runner.dir) / "web.json").write_text(json.dumps({"supervisor": os.getpid(), "spec": {}}), encoding="utf-8")
    assert runner.names() == ["web"]
    assert runner.running("web") is False
    assert runner.status() == {"web": {"running": False, "supervisor": None, "service": None, "spec": {}}}
    assert runner.stop("web") is False  # nothing to kill: only its files go, and the directory with them
    assert not os.path.exists(runner.dir)


def test_a_zombie_is_not_alive():
    child = subprocess.Popen(["true"])  # pylint: disable=consider-using-with
    try:
        deadline = time.monotonic() + 5
        while demo_runner.alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert Path(f"/proc/{child.pid}").exists(), "the zombie is there until it is waited for"
        assert demo_runner.alive(child.pid) is False
    finally:
        child.wait()
    assert demo_runner.alive(os.getpid()) is True


class FakeRunner(demo_runner.DemoRunner):
    """A DemoRunner whose instances run in a dict: {name: spec}."""

    def __init__(self, running):
        super().__init__("lab1", "master")
        self.runs = dict(running)
        self.calls = []

    def names(self):
        return sorted(self.runs)

    def running(self, name):
        return name in self.runs

    def _record(self, name):
        return {"spec": self.runs[name]} if name in self.runs else None

    def start(self, instance):
        self.calls.append(("start", instance["name"]))
        self.runs[instance["name"]] = demo_runner.spec(instance)
        return True

    def stop(self, name):
        self.calls.append(("stop", name))
        return self.runs.pop(name, None) is not None


def test_converge_starts_restarts_only_what_changed_and_stops_what_is_not_listed():
    dns = {"name": "dns", "netns": "ns1", "tcp_ports": [], "udp_ports": [5353]}
    runner = FakeRunner({"web": demo_runner.spec(WEB), "old": demo_runner.spec(WEB)})
    moved = {**WEB, "tcp_ports": [9091]}
    assert runner.converge([moved, dns]) == {"changed": True, "started": ["dns"], "restarted": ["web"], "stopped": ["old"]}
    assert runner.calls == [("stop", "old"), ("start", "web"), ("start", "dns")]
    runner.calls.clear()
    assert runner.converge([moved, dns]) == {"changed": False, "started": [], "restarted": [], "stopped": []}
    assert runner.calls == []


def test_an_instance_without_ports_does_not_run():
    runner = FakeRunner({"web": demo_runner.spec(WEB)})
    result = runner.converge([{**WEB, "tcp_ports": [], "udp_ports": []}])
    assert result == {"changed": True, "started": [], "restarted": [], "stopped": ["web"]}
    assert runner.runs == {}


def test_absent_stops_only_the_instances_given():
    runner = FakeRunner({"web": demo_runner.spec(WEB), "other": demo_runner.spec(WEB)})
    assert runner.converge([WEB, {**WEB, "name": "never"}], state="absent")["stopped"] == ["web"]
    assert sorted(runner.runs) == ["other"]


def test_check_mode_says_what_converge_would_do_and_does_nothing():
    runner = FakeRunner({"web": demo_runner.spec(WEB), "old": demo_runner.spec(WEB)})
    before = dict(runner.runs)
    assert runner.converge([{**WEB, "udp_ports": [54]}, {**WEB, "name": "new"}], check=True) == {
        "changed": True, "started": ["new"], "restarted": ["web"], "stopped": ["old"]}
    assert runner.converge([], state="absent", check=True)["changed"] is False
    assert runner.calls == [] and runner.runs == before


def test_converge_refuses_a_bad_state():
    with pytest.raises(demo_runner.DemoError, match="state must be present or absent"):
        FakeRunner({}).converge([], state="stopped")
