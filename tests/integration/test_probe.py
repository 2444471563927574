"""netns.expose.probe run on the lab slave against real services on the lab master.

The services (the demo HTTP service, the UDP echo, a UDP service that never answers)
run in the master's own network namespace, on its LAN address. They are started from
here with a known pid and killed by that pid: the lab hosts share this machine's pid
namespace, so killing by name could reach other labs.
"""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from master_host import DEMO_SERVICE, MASTER, sh

HERE = Path(__file__).resolve().parent
UDP_ECHO = HERE / "udp_echo.py"
MODULE = "netns.expose.probe"
SLAVE = "slave"
MASTER_IP = "10.211.55.122"
NOBODY_IP = "10.211.55.200"  # on the lab LAN, where no host has it
HTTP_PORT, CLOSED_PORT, LATE_PORT = 18090, 18091, 18092
ECHO_PORT, SILENT_PORT, UNASKED_PORT = 18053, 18054, 18055
DEMO_TEXT = "hello world!"
# Takes datagrams and never answers.
SILENT_UDP = f"import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('', {SILENT_PORT}))\ntime.sleep(3600)"
# Waits until the host has refused a TCP connection (its OutRsts counter grows), then execs argv:
# a service that is surely not up for the module's first attempt, and is up for a later one.
AFTER_FIRST_REFUSAL = """import os, sys, time
def out_rsts():
    names, values = [line.split() for line in open('/proc/net/snmp') if line.startswith('Tcp:')]
    return int(values[names.index('OutRsts')])
before = out_rsts()
print('waiting', flush=True)
while out_rsts() == before:
    time.sleep(0.05)
os.execvp(sys.argv[1], sys.argv[1:])
"""


def tcp(port=HTTP_PORT, **fields):
    return {"target": MASTER, "address": MASTER_IP, "protocol": "tcp", "port": port, **fields}


def udp(port, **fields):
    return {"target": MASTER, "address": MASTER_IP, "protocol": "udp", "port": port, **fields}


def icmp(address=MASTER_IP, target=MASTER):
    return {"target": target, "address": address, "protocol": "icmp"}


@contextlib.contextmanager
def master_process(lab, argv, output=None):
    """argv running in the lab master, in a session of its own; killed by its pid afterwards."""
    # nsenter execs argv (it forks only for a pid namespace), so the pid is argv's.
    process = subprocess.Popen(lab.command(MASTER, argv), stdin=subprocess.DEVNULL, stdout=output or subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def wait_until(condition, what, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def listening(lab, kind, port):
    """Whether a socket of kind ('t' for TCP, 'u' for UDP) listens on port in the master."""
    return bool(sh(lab, "ss", f"-Hln{kind}", f"sport = :{port}").strip())


@pytest.fixture(scope="module")
def http_log(lab, tmp_path_factory):
    """The master's services up for the module's tests; yields the HTTP service's request log."""
    log_path = tmp_path_factory.mktemp("probe") / "http.log"
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(log_path.open("w", encoding="utf-8"))
        stack.enter_context(master_process(lab, ["python3", str(DEMO_SERVICE), str(HTTP_PORT)], output=log))
        stack.enter_context(master_process(lab, ["python3", str(UDP_ECHO), "serve", str(ECHO_PORT)]))
        stack.enter_context(master_process(lab, ["python3", "-c", SILENT_UDP]))
        wait_until(lambda: listening(lab, "t", HTTP_PORT) and listening(lab, "u", ECHO_PORT)
                   and listening(lab, "u", SILENT_PORT), "the master's services")
        yield log_path


def by_endpoint(results):
    return {(r["target"], r["protocol"], r["port"], r["address"]): r for r in results}


def test_every_service_answers_in_one_call(http_log, run_module):
    checks = [tcp(expect=DEMO_TEXT), udp(ECHO_PORT, probe="ping", expect="echo:ping"), icmp()]
    result = run_module(SLAVE, MODULE, {"checks": checks})
    assert not result["failed"], result
    assert result["changed"] is False and result["failed_checks"] == 0
    web, echo, ping = result["results"]
    assert (web["protocol"], echo["protocol"], ping["protocol"]) == ("tcp", "udp", "icmp")
    assert (web["ok"], web["detail"], web["status"], web["attempts"]) == (True, "HTTP 200", 200, 1)
    assert DEMO_TEXT in web["body"]
    assert (echo["ok"], echo["detail"], echo["reply"]) == (True, "reply 'echo:ping'", "echo:ping")
    assert (ping["ok"], ping["port"], ping["detail"]) == (True, None, "echo reply")
    for check in (web, echo, ping):
        assert not check["skipped"] and check["target"] == MASTER and check["address"] == MASTER_IP
        assert isinstance(check["latency_ms"], float) and 0 <= check["latency_ms"] < 3000


def test_failures_are_only_reported_without_fail_on_error(http_log, run_module):
    checks = [
        tcp(expect="goodbye"),
        tcp(CLOSED_PORT),
        udp(SILENT_PORT, probe="anybody there?"),
        udp(UNASKED_PORT),
        icmp(NOBODY_IP, target="ghost"),
        tcp(),
    ]
    result = run_module(SLAVE, MODULE, {"checks": checks, "timeout": 1, "fail_on_error": False})
    assert not result["failed"], result
    assert result["changed"] is False and result["failed_checks"] == 4
    shown = [(r["ok"], r["skipped"], r["detail"], r["latency_ms"] is None) for r in result["results"]]
    assert shown == [
        (False, False, "'goodbye' not in body", False),  # it answered, with the wrong text
        (False, False, "connection refused", True),
        (False, False, "no reply within 1 s", True),
        (False, True, "skipped: without probe and expect nothing tells what the service answers", True),
        (False, False, "no reply within 1 s", True),
        (True, False, "HTTP 200", False),
    ]
    assert DEMO_TEXT in result["results"][0]["body"]


def test_fail_on_error_names_each_failed_target_and_port(http_log, run_module):
    checks = [tcp(), tcp(CLOSED_PORT), icmp(NOBODY_IP, target="ghost")]
    result = run_module(SLAVE, MODULE, {"checks": checks, "timeout": 1})
    assert result["failed"]
    assert result["msg"] == (
        f"2 of 3 checks failed: master tcp/{CLOSED_PORT} ({MASTER_IP}): connection refused; "
        f"ghost icmp ({NOBODY_IP}): no reply within 1 s"
    )
    assert result["failed_checks"] == 2
    assert [r["ok"] for r in result["results"]] == [True, False, False]


def test_icmp_needs_no_ping_program(run_playbook, tmp_path):
    """The module pings by itself: run with a PATH where no ping is, it still gets the master's echo reply.

    The lab hosts share this machine's filesystem. The old module found ping with Ansible's
    get_bin_path, which searches PATH and then /sbin, /usr/sbin and /usr/local/sbin: ping must not
    be in those, and a task with the same PATH must fail to run ping, for the test to prove anything.
    """
    assert not [directory for directory in ("/sbin", "/usr/sbin", "/usr/local/sbin")
                if os.path.exists(os.path.join(directory, "ping"))]
    no_programs = tmp_path / "no-programs"
    no_programs.mkdir()
    play = {
        "name": "probe without ping", "hosts": SLAVE, "gather_facts": False,
        "environment": {"PATH": str(no_programs)},
        "tasks": [
            {"name": "ping is not there", "ansible.builtin.command": {"argv": ["ping", "-n", "-c", "1", "-W", "1", MASTER_IP]},
             "ignore_errors": True},
            {"name": "probe", MODULE: {"checks": [icmp(), icmp(NOBODY_IP, target="ghost")], "timeout": 1,
                                       "fail_on_error": False}},
        ],
    }
    run = run_playbook(yaml.safe_dump([play], sort_keys=False))
    ping_run, probed = (task["hosts"][SLAVE] for task in run["plays"][0]["tasks"])
    # What run_command says when the program is not found: the errno of the failed exec.
    assert ping_run.get("failed") and (ping_run["rc"], ping_run["msg"]) == (errno.ENOENT, "Error executing command."), ping_run
    assert not probed.get("failed"), probed
    assert probed["failed_checks"] == 1
    master, ghost = probed["results"]
    assert (master["ok"], master["detail"]) == (True, "echo reply"), master
    assert isinstance(master["latency_ms"], float) and 0 <= master["latency_ms"] < 1000
    assert (ghost["ok"], ghost["detail"], ghost["latency_ms"]) == (False, "no reply within 1 s", None)


def test_retries_pick_up_a_service_that_starts_late(lab, run_module):
    late = ["python3", str(DEMO_SERVICE), str(LATE_PORT)]
    read_end, write_end = os.pipe()
    with open(read_end, encoding="utf-8") as reader, open(write_end, "w", encoding="utf-8") as writer:
        with master_process(lab, ["python3", "-c", AFTER_FIRST_REFUSAL, *late], output=writer):
            writer.close()  # the starter holds it: its death ends the readline
            assert reader.readline().strip() == "waiting"
            result = run_module(SLAVE, MODULE, {"checks": [tcp(LATE_PORT, expect=DEMO_TEXT)], "timeout": 1, "retries": 10})
    assert not result["failed"], result
    [late_web] = result["results"]
    assert late_web["ok"] and late_web["attempts"] >= 2, late_web


def test_check_mode_probes_too(http_log, run_module):
    checks = [tcp(), tcp(CLOSED_PORT)]
    result = run_module(SLAVE, MODULE, {"checks": checks, "fail_on_error": False}, check=True)
    assert not result["failed"], result
    assert result["changed"] is False
    assert [(r["ok"], r["detail"]) for r in result["results"]] == [(True, "HTTP 200"), (False, "connection refused")]


def test_an_invalid_check_is_refused_before_any_traffic(http_log, run_module):
    def requests():
        return http_log.read_text(encoding="utf-8").count("GET /")

    before = requests()
    refused = run_module(SLAVE, MODULE, {"checks": [tcp(), tcp(port=None)]})
    assert refused["failed"]
    assert refused["msg"] == "checks[1].port: is required for tcp"
    assert requests() == before, "the valid check was sent although another one was refused"
    # The log does show a check that is sent.
    assert not run_module(SLAVE, MODULE, {"checks": [tcp()]})["failed"]
    wait_until(lambda: requests() == before + 1, "the request in the HTTP service's log", seconds=5)
