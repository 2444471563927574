"""netns.expose.probe run on the lab slave against real services on the lab master.

The services (an HTTP service that answers the demo's JSON, the UDP echo, a UDP service that never answers)
run in the master's own network namespace, on its LAN address. They are started from
here with a known pid and killed by that pid: the lab hosts share this machine's pid
namespace, so killing by name could reach other labs.

The check types (http, tcp) are tried through mappings, as verify.yml uses them: an
HTTP server, a plain TCP echo service and a TCP service that accepts and never answers,
in a namespace of the master behind a veth pair, each published on a port of the master.
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
from master_host import DEMO_REPLY, HTTP_SERVER, MASTER, scrub_netfilter, sh

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
        stack.enter_context(master_process(lab, ["python3", "-c", HTTP_SERVER, str(HTTP_PORT), DEMO_REPLY], output=log))
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
    late = ["python3", "-c", HTTP_SERVER, str(LATE_PORT), DEMO_REPLY]
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


# Check types through mappings: a namespace of the master behind a veth pair, its services published.

BEHIND = dict(netns="prb", ns_ifname="prb0", host_ifname="veth-prb", ns_address="10.244.9.2/24",
              host_address="10.244.9.1/24")
BEHIND_IP = "10.244.9.2"
# host port on the master -> port in the namespace
MAPPED_HTTP, MAPPED_ECHO, MAPPED_SILENT = (18190, 8080), (18191, 7007), (18192, 7008)
PAGE = "hello through the mapping"
# Answers every chunk a connection sends with b"echo:" + the chunk, many connections at once.
TCP_ECHO = """import socket, sys, threading
def serve(connection):
    with connection:
        while True:
            data = connection.recv(2048)
            if not data:
                return
            connection.sendall(b"echo:" + data)
server = socket.create_server(("", int(sys.argv[1])))
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""
# Accepts every connection, keeps it open and never sends a byte.
TCP_SILENT = """import socket, sys
server = socket.create_server(("", int(sys.argv[1])))
held = []
while True:
    held.append(server.accept()[0])
"""


def behind(port, **fields):
    """A check of the master's host port: the mapped service behind it answers."""
    return tcp(port, **fields)


def listening_behind(lab, port):
    return bool(sh(lab, "ip", "netns", "exec", BEHIND["netns"], "ss", "-Hltn", f"sport = :{port}").strip())


@pytest.fixture(scope="module")
def mapped(lab, modules):
    """The three TCP services in the master's namespace prb, each published on a port of the master.

    Before the mappings exist, the master refuses those ports: the checks reach the services only
    through the mappings. Everything is removed afterwards, also when a step fails.
    """
    in_ns = ["ip", "netns", "exec", BEHIND["netns"]]
    rules = [
        dict(name=f"probe-{name}", protocol="tcp", port=host_port, to_address=BEHIND_IP, to_port=ns_port,
             destination=MASTER_IP, in_interface="eth0")
        for name, (host_port, ns_port) in (("http", MAPPED_HTTP), ("echo", MAPPED_ECHO), ("silent", MAPPED_SILENT))
    ]
    with contextlib.ExitStack() as stack:
        stack.callback(scrub_netfilter, lab)
        stack.callback(modules.run_module, MASTER, "netns.expose.netns_veth", {**BEHIND, "state": "absent"})
        stack.callback(modules.run_module, MASTER, "netns.expose.dnat_rule",
                       {"rules": [{"name": rule["name"]} for rule in rules], "state": "absent"})
        scrub_netfilter(lab)
        made = modules.run_module(MASTER, "netns.expose.netns_veth", BEHIND)
        assert not made["failed"], made
        # ip netns exec execs the service (no fork): the pid is the service's.
        stack.enter_context(master_process(lab, [*in_ns, "python3", "-c", HTTP_SERVER, str(MAPPED_HTTP[1]), PAGE]))
        stack.enter_context(master_process(lab, [*in_ns, "python3", "-c", TCP_ECHO, str(MAPPED_ECHO[1])]))
        stack.enter_context(master_process(lab, [*in_ns, "python3", "-c", TCP_SILENT, str(MAPPED_SILENT[1])]))
        wait_until(lambda: all(listening_behind(lab, ns_port) for _host_port, ns_port in
                               (MAPPED_HTTP, MAPPED_ECHO, MAPPED_SILENT)), "the services in prb")
        # Control: without the mappings nothing answers on those ports of the master.
        unmapped = modules.run_module(SLAVE, MODULE, {"checks": [behind(MAPPED_HTTP[0]), behind(MAPPED_ECHO[0]),
                                                                 behind(MAPPED_SILENT[0])],
                                                      "timeout": 1, "fail_on_error": False})
        assert [r["detail"] for r in unmapped["results"]] == ["connection refused"] * 3, unmapped
        added = modules.run_module(MASTER, "netns.expose.dnat_rule", {"rules": rules})
        assert not added["failed"], added
        yield


def test_http_check_through_a_mapping(mapped, run_module):
    checks = [behind(MAPPED_HTTP[0], check="http", expect=PAGE),
              behind(MAPPED_HTTP[0], check="http", path="/nothing", status=404),
              behind(MAPPED_HTTP[0], path="/index.html", expect=PAGE)]  # protocol tcp without check: http
    result = run_module(SLAVE, MODULE, {"checks": checks, "timeout": 2})
    assert not result["failed"], result
    page, missing, default = result["results"]
    for check in (page, missing, default):
        assert (check["protocol"], check["check"], check["port"]) == ("tcp", "http", MAPPED_HTTP[0]), check
        assert isinstance(check["latency_ms"], float)
    assert (page["ok"], page["detail"], page["status"], page["body"]) == (True, "HTTP 200", 200, PAGE)
    assert (missing["ok"], missing["detail"], missing["status"]) == (True, "HTTP 404", 404)
    assert (default["ok"], default["body"]) == (True, PAGE)


def test_tcp_check_through_a_mapping_to_a_plain_tcp_echo_service(mapped, run_module):
    port = MAPPED_ECHO[0]
    checks = [behind(port, check="tcp"),
              behind(port, check="tcp", probe="ping\n", expect="echo:ping"),
              behind(port, check="tcp", probe="ping", expect="pong"),
              behind(port)]  # without check: an HTTP GET, which a plain TCP service does not answer with HTTP
    result = run_module(SLAVE, MODULE, {"checks": checks, "timeout": 2, "fail_on_error": False})
    assert not result["failed"], result
    assert result["failed_checks"] == 2
    connect, exchange, wrong, http = result["results"]
    assert [r["check"] for r in result["results"]] == ["tcp", "tcp", "tcp", "http"]
    assert (connect["ok"], connect["detail"]) == (True, "connected")
    assert isinstance(connect["latency_ms"], float)
    assert (exchange["ok"], exchange["detail"], exchange["reply"]) == (True, "reply 'echo:ping\\n'", "echo:ping\n")
    assert (wrong["ok"], wrong["detail"], wrong["reply"]) == (False, "'pong' not in reply 'echo:ping'", "echo:ping")
    assert not http["ok"] and http["detail"].startswith("not an HTTP reply"), http


def test_tcp_check_through_a_mapping_to_a_service_that_never_answers(mapped, run_module):
    port = MAPPED_SILENT[0]
    connect_only = behind(port, check="tcp")
    result = run_module(SLAVE, MODULE, {"checks": [connect_only], "timeout": 1})
    assert not result["failed"], result
    [connected] = result["results"]
    assert (connected["ok"], connected["check"], connected["detail"]) == (True, "tcp", "connected")

    asking = [connect_only, behind(port, check="tcp", probe="hello", expect="hi"), behind(port, check="tcp", expect="SSH-")]
    result = run_module(SLAVE, MODULE, {"checks": asking, "timeout": 1})
    assert result["failed"]
    assert result["msg"] == (f"2 of 3 checks failed: master tcp/{port} ({MASTER_IP}): no reply within 1 s; "
                             f"master tcp/{port} ({MASTER_IP}): no reply within 1 s")
    assert [(r["ok"], r["detail"], r["latency_ms"] is None) for r in result["results"]] == [
        (True, "connected", False), (False, "no reply within 1 s", True), (False, "no reply within 1 s", True)]


def test_a_check_type_that_contradicts_the_protocol_is_refused(mapped, run_module):
    checks = [behind(MAPPED_ECHO[0], check="tcp"), behind(MAPPED_HTTP[0]), udp(MAPPED_HTTP[0], check="http")]
    result = run_module(SLAVE, MODULE, {"checks": checks})
    assert result["failed"] and "results" not in result
    assert result["msg"] == "checks[2].check: http does not go with protocol udp (http checks are over tcp; udp takes udp)"
