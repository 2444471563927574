"""The probe module's logic: validation, attempts against loopback servers, ping output, retries, results."""
from __future__ import annotations

import http.server
import socket
import threading
from unittest import mock

import pytest

from ansible_collections.netns.expose.plugins.module_utils import _probe
from ansible_collections.netns.expose.plugins.module_utils._probe import (
    TEXT_LIMIT,
    Check,
    Prober,
    failure_message,
    parse_checks,
    ping_argv,
    ping_latency,
)
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

LOOPBACK = "127.0.0.1"
PING = "/usr/bin/ping"
IPUTILS_REPLY = """PING 10.211.55.122 (10.211.55.122) 56(84) bytes of data.
64 bytes from 10.211.55.122: icmp_seq=1 ttl=64 time=0.045 ms

--- 10.211.55.122 ping statistics ---
1 packets transmitted, 1 received, 0% packet loss, time 0ms
rtt min/avg/max/mdev = 0.045/0.045/0.045/0.000 ms
"""
IPUTILS_NO_REPLY = """PING 10.211.55.200 (10.211.55.200) 56(84) bytes of data.

--- 10.211.55.200 ping statistics ---
1 packets transmitted, 0 received, 100% packet loss, time 0ms
"""
BUSYBOX_REPLY = """PING 10.211.55.122 (10.211.55.122): 56 data bytes
64 bytes from 10.211.55.122: seq=0 ttl=64 time=12.372 ms
"""


def tcp(**fields):
    return {"target": "master", "address": "10.211.55.122", "protocol": "tcp", "port": 8090, **fields}


def udp(**fields):
    return {"target": "master", "address": "10.211.55.122", "protocol": "udp", "port": 8053, **fields}


def icmp(**fields):
    return {"target": "master", "address": "10.211.55.122", "protocol": "icmp", **fields}


def refused(checks, timeout=3.0, retries=0):
    with pytest.raises(InvalidInput) as caught:
        parse_checks(checks, timeout, retries)
    return str(caught.value)


# Validation


def test_valid_checks_get_their_defaults():
    assert parse_checks([tcp(), udp(probe="ping", expect="pong"), icmp(), udp()], 3.0, 0) == [
        Check("master", "10.211.55.122", "tcp", 8090, path="/", status=200),
        Check("master", "10.211.55.122", "udp", 8053, probe="ping", expect="pong"),
        Check("master", "10.211.55.122", "icmp"),
        Check("master", "10.211.55.122", "udp", 8053),
    ]


def test_values_as_templating_may_deliver_them_are_taken():
    # Ports and statuses from inventory strings, numeric labels and expectations from YAML.
    [check] = parse_checks([tcp(target=2024, port="8090", status="204", expect=42, path=None)], 3.0, 0)
    assert (check.target, check.port, check.status, check.expect, check.path) == ("2024", 8090, 204, "42", "/")


def test_no_checks_is_nothing_to_do():
    assert not parse_checks([], 3.0, 0)


@pytest.mark.parametrize(
    "checks, message",
    [
        ([tcp(), {"address": "10.211.55.122", "protocol": "tcp", "port": 80}], "checks[1].target: is required"),
        ([tcp(address="")], "checks[0].address: is required"),
        ([tcp(protocol=None)], "checks[0].protocol: is required"),
        ([tcp(), tcp(), tcp(protocol="sctp")], "checks[2].protocol: 'sctp' is not one of tcp, udp, icmp"),
        ([tcp(), tcp(), tcp(port=None)], "checks[2].port: is required for tcp"),
        ([udp(port=None)], "checks[0].port: is required for udp"),
        ([tcp(port=0)], "checks[0].port: 0 is outside 1..65535"),
        ([tcp(port=65536)], "checks[0].port: 65536 is outside 1..65535"),
        ([tcp(port="http")], "checks[0].port: must be an integer, got 'http'"),
        ([tcp(port=True)], "checks[0].port: must be an integer, got True"),
        ([icmp(port=7)], "checks[0].port: icmp checks take no port (only tcp and udp do)"),
        ([udp(path="/x")], "checks[0].path: udp checks take no path (only tcp do)"),
        ([icmp(status=200)], "checks[0].status: icmp checks take no status (only tcp do)"),
        ([icmp(expect="x")], "checks[0].expect: icmp checks take no expect (only tcp and udp do)"),
        ([tcp(probe="x")], "checks[0].probe: tcp checks take no probe (only udp do)"),
        ([udp(expect="pong")], "checks[0].probe: is required with expect"),
        ([tcp(address="10.211.55.122/24")], "checks[0].address: '10.211.55.122/24' is a CIDR"),
        ([tcp(address="master.lab")], "checks[0].address: 'master.lab' is not an IPv4 address"),
        ([tcp(address="fe80::1")], "checks[0].address: 'fe80::1' is not an IPv4 address"),
        ([tcp(path="health")], "checks[0].path: 'health' must start with '/'"),
        ([tcp(path="/a b")], "checks[0].path: '/a b' must not contain whitespace"),
        ([tcp(status=99)], "checks[0].status: 99 is outside 100..599"),
        ([tcp(expect="")], "checks[0].expect: must not be empty"),
        ([tcp(target=["a"])], "checks[0].target: must be a string, got list"),
        ([tcp(prot="udp")], "checks[0].prot: is not an option of a check"),
        ([tcp(), "master:8090"], "checks[1]: must be a dict, got str"),
    ],
)
def test_bad_checks_are_refused_naming_the_field_and_index(checks, message):
    assert refused(checks).startswith(message)


@pytest.mark.parametrize(
    "timeout, retries, message",
    [
        (0.0, 0, "timeout: must be a number of seconds greater than 0, got 0"),
        (-1.0, 0, "timeout: must be a number of seconds greater than 0, got -1"),
        (float("inf"), 0, "timeout: must be a number of seconds greater than 0, got inf"),
        (3.0, -1, "retries: -1 must be 0 or more"),
    ],
)
def test_bad_settings_are_refused(timeout, retries, message):
    assert refused([tcp()], timeout, retries) == message


# ping


def test_ping_argv_is_one_request_with_whole_seconds():
    assert ping_argv(PING, "10.211.55.122", 3.0) == [PING, "-n", "-c", "1", "-W", "3", "10.211.55.122"]
    assert ping_argv(PING, "10.211.55.122", 1.2)[5] == "2"
    assert ping_argv(PING, "10.211.55.122", 0.2)[5] == "1"


@pytest.mark.parametrize(
    "output, latency",
    [(IPUTILS_REPLY, 0.0), (BUSYBOX_REPLY, 12.4), ("64 bytes from 10.0.0.1: icmp_seq=1 ttl=64 time=1.26 ms", 1.3),
     ("reply time<1 ms", 1.0), (IPUTILS_NO_REPLY, None), ("", None)],
)
def test_ping_latency_is_read_from_its_output(output, latency):
    assert ping_latency(output) == latency


def run_icmp(rc, out="", err="", timeout=3.0):
    run_command = mock.Mock(return_value=(rc, out, err))
    [result] = Prober(timeout, 0, ping=PING, run_command=run_command).run_all(parse_checks([icmp()], timeout, 0))
    return result, run_command


def test_icmp_ok_takes_the_round_trip_ping_printed():
    result, run_command = run_icmp(0, BUSYBOX_REPLY)
    run_command.assert_called_once_with([PING, "-n", "-c", "1", "-W", "3", "10.211.55.122"])
    assert result == dict(target="master", address="10.211.55.122", protocol="icmp", port=None, ok=True, skipped=False,
                          latency_ms=12.4, attempts=1, detail="echo reply")


def test_icmp_ok_without_a_time_in_the_output_is_measured():
    result = run_icmp(0, "1 packets transmitted, 1 received")[0]
    assert result["ok"] and isinstance(result["latency_ms"], float) and result["latency_ms"] >= 0


def test_icmp_without_reply_fails_without_latency():
    result = run_icmp(1, IPUTILS_NO_REPLY, timeout=0.5)[0]
    assert (result["ok"], result["latency_ms"], result["detail"]) == (False, None, "no reply within 1 s")


def test_icmp_error_says_what_ping_said():
    result = run_icmp(2, "", "ping: connect: Network is unreachable\n")[0]
    assert result["detail"] == "ping failed (rc 2): ping: connect: Network is unreachable"


# tcp and udp against loopback servers


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the name http.server calls)
        status, body = {"/": (200, "hello from loopback"), "/big": (200, "x" * (TEXT_LIMIT + 100) + "tail")}.get(
            self.path, (404, "not here"))
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_port():
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def udp_echo_port():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((LOOPBACK, 0))

    def echo():
        while True:
            try:
                data, peer = server.recvfrom(2048)
            except OSError:  # closed
                return
            if data != b"ignore me":
                server.sendto(b"echo:" + data, peer)

    threading.Thread(target=echo, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def free_port(kind):
    """A loopback port nothing listens on (bound a moment, then closed)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def probe(*checks, timeout=2.0, retries=0, sleep=None):
    prober = Prober(timeout, retries, sleep=sleep or mock.Mock())
    return prober.run_all(parse_checks(list(checks), timeout, retries))


def test_tcp_ok_records_status_body_and_latency(http_port):
    [result] = probe(tcp(address=LOOPBACK, port=http_port, expect="hello"))
    latency = result.pop("latency_ms")
    assert isinstance(latency, float) and 0 <= latency < 2000
    assert result == dict(target="master", address=LOOPBACK, protocol="tcp", port=http_port, ok=True, skipped=False,
                          attempts=1, detail="HTTP 200", status=200, body="hello from loopback")


def test_tcp_wrong_answers_fail_with_the_answer(http_port):
    missing, wrong_status, wanted_404 = probe(
        tcp(address=LOOPBACK, port=http_port, expect="goodbye"),
        tcp(address=LOOPBACK, port=http_port, path="/nothing"),
        tcp(address=LOOPBACK, port=http_port, path="/nothing", status=404, expect="not here"),
    )
    assert (missing["ok"], missing["detail"], missing["body"]) == (False, "'goodbye' not in body", "hello from loopback")
    assert isinstance(missing["latency_ms"], float)
    assert (wrong_status["ok"], wrong_status["detail"], wrong_status["status"]) == (False, "HTTP 404, expected 200", 404)
    assert (wanted_404["ok"], wanted_404["detail"]) == (True, "HTTP 404")


def test_tcp_body_is_searched_whole_but_kept_truncated(http_port):
    [result] = probe(tcp(address=LOOPBACK, port=http_port, path="/big", expect="tail"))
    assert result["ok"] and len(result["body"]) == TEXT_LIMIT


def test_tcp_refused_has_no_latency():
    [result] = probe(tcp(address=LOOPBACK, port=free_port(socket.SOCK_STREAM)))
    assert (result["ok"], result["detail"], result["latency_ms"]) == (False, "connection refused", None)
    assert "status" not in result and "body" not in result


def test_tcp_silent_service_times_out():
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind((LOOPBACK, 0))
        silent.listen()
        [result] = probe(tcp(address=LOOPBACK, port=silent.getsockname()[1]), timeout=0.3)
    assert (result["ok"], result["detail"], result["latency_ms"]) == (False, "timed out after 0.3 s", None)


def test_udp_reply_is_checked_and_recorded(udp_echo_port):
    good, bad, any_reply = probe(
        udp(address=LOOPBACK, port=udp_echo_port, probe="ping", expect="echo:ping"),
        udp(address=LOOPBACK, port=udp_echo_port, probe="ping", expect="pong"),
        udp(address=LOOPBACK, port=udp_echo_port, probe="anything"),
    )
    assert (good["ok"], good["detail"], good["reply"]) == (True, "reply 'echo:ping'", "echo:ping")
    assert isinstance(good["latency_ms"], float)
    assert (bad["ok"], bad["detail"]) == (False, "'pong' not in reply 'echo:ping'")
    assert (any_reply["ok"], any_reply["reply"]) == (True, "echo:anything")


def test_udp_without_reply_times_out(udp_echo_port):
    [result] = probe(udp(address=LOOPBACK, port=udp_echo_port, probe="ignore me"), timeout=0.3)
    assert (result["ok"], result["detail"], result["latency_ms"]) == (False, "no reply within 0.3 s", None)
    assert "reply" not in result


def test_udp_to_a_closed_port_is_refused():
    [result] = probe(udp(address=LOOPBACK, port=free_port(socket.SOCK_DGRAM), probe="ping"))
    assert (result["ok"], result["detail"]) == (False, "connection refused")


def test_udp_without_probe_and_expect_is_skipped_and_sends_nothing():
    with mock.patch.object(socket, "socket") as new_socket:
        [result] = probe(udp())
    new_socket.assert_not_called()
    assert (result["ok"], result["skipped"], result["attempts"], result["latency_ms"]) == (False, True, 0, None)
    assert result["detail"].startswith("skipped")


# Retries and results


def test_retries_stop_at_the_first_success():
    answers = [_probe.Attempt(False, "connection refused"), _probe.Attempt(False, "connection refused"),
               _probe.Attempt(True, "HTTP 200", 1.5, {"status": 200, "body": "up"})]
    sleep = mock.Mock()
    with mock.patch.object(_probe, "http_attempt", side_effect=answers) as http_attempt:
        [result] = probe(tcp(), retries=5, sleep=sleep)
    assert http_attempt.call_count == 3
    assert sleep.call_args_list == [mock.call(_probe.RETRY_PAUSE)] * 2
    assert (result["ok"], result["attempts"], result["latency_ms"], result["body"]) == (True, 3, 1.5, "up")


def test_retries_report_the_last_failure():
    with mock.patch.object(_probe, "http_attempt", return_value=_probe.Attempt(False, "connection refused")) as attempt:
        [result] = probe(tcp(), retries=2)
    assert attempt.call_count == 3
    assert (result["ok"], result["attempts"], result["detail"]) == (False, 3, "connection refused")


def test_results_keep_the_input_order(http_port):
    checks = [tcp(target=f"m{index}", address=LOOPBACK, port=http_port) for index in range(20)]
    assert [result["target"] for result in probe(*checks)] == [f"m{index}" for index in range(20)]


def test_failure_message_names_each_failed_check_not_the_others():
    results = [
        dict(target="master", address="10.211.55.122", protocol="tcp", port=8090, ok=True, skipped=False, detail="HTTP 200"),
        dict(target="master", address="10.211.55.122", protocol="udp", port=8053, ok=False, skipped=False,
             detail="no reply within 3 s"),
        dict(target="master2", address="10.211.55.124", protocol="icmp", port=None, ok=False, skipped=False,
             detail="no reply within 3 s"),
        dict(target="master", address="10.211.55.122", protocol="udp", port=8054, ok=False, skipped=True, detail="skipped"),
    ]
    assert failure_message(results) == (
        "2 of 4 checks failed: master udp/8053 (10.211.55.122): no reply within 3 s; "
        "master2 icmp (10.211.55.124): no reply within 3 s"
    )
