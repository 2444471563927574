"""The probe module's logic: validation, attempts against loopback servers, ICMP packets, retries, results."""
from __future__ import annotations

import contextlib
import errno
import http.server
import socket
import struct
import threading
import time
from unittest import mock

import pytest

from ansible_collections.netns.expose.plugins.module_utils import _probe
from ansible_collections.netns.expose.plugins.module_utils._probe import (
    TEXT_LIMIT,
    Check,
    Prober,
    echo_request,
    failure_message,
    icmp_checksum,
    open_icmp_socket,
    parse_checks,
    parse_echo_reply,
)
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput

LOOPBACK = "127.0.0.1"
MASTER_IP = "10.211.55.122"
ICMP_SOCKET = (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
ICMP_RAW_SOCKET = (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)


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


@pytest.mark.parametrize(
    "protocol, check", [("tcp", "http"), ("udp", "udp"), ("icmp", "icmp")],
)
def test_without_check_the_protocol_gives_the_check_type(protocol, check):
    entry = {"tcp": tcp(), "udp": udp(), "icmp": icmp()}[protocol]
    [parsed] = parse_checks([entry, {**entry, "check": None}], 3.0, 0)[:1]
    assert (parsed.protocol, parsed.check) == (protocol, check)
    assert parse_checks([{**entry, "check": None}], 3.0, 0) == [parsed]
    assert parse_checks([{**entry, "check": check}], 3.0, 0) == [parsed]


def test_the_check_type_alone_gives_the_protocol():
    entries = [tcp(protocol=None, check="http"), tcp(protocol=None, check="tcp"), udp(protocol=None, check="udp"),
               icmp(protocol=None, check="icmp")]
    assert [(c.protocol, c.check) for c in parse_checks(entries, 3.0, 0)] == [
        ("tcp", "http"), ("tcp", "tcp"), ("udp", "udp"), ("icmp", "icmp")]


def test_tcp_checks_take_a_probe_an_expect_or_neither():
    connect, banner, exchange, any_reply = parse_checks([
        tcp(check="tcp"), tcp(check="tcp", expect="SSH-"), tcp(check="tcp", probe="ping\n", expect="pong"),
        tcp(check="tcp", probe="hello"),
    ], 3.0, 0)
    assert connect == Check("master", "10.211.55.122", "tcp", 8090, check="tcp")
    assert (banner.probe, banner.expect) == (None, "SSH-")
    assert (exchange.probe, exchange.expect) == ("ping\n", "pong")
    assert (any_reply.probe, any_reply.expect) == ("hello", None)
    assert not any(check.skipped for check in (connect, banner, exchange, any_reply))


def test_the_keys_the_role_passes_may_be_null():
    """The role's targets carry every key, null where a port does not set it."""
    keys = dict(check=None, path=None, status=None, expect=None, probe=None)
    web, echo, ping = parse_checks([tcp(**keys), udp(**keys), icmp(**{**keys, "port": None})], 3.0, 0)
    assert (web.check, web.path, web.status) == ("http", "/", 200)
    assert (echo.check, echo.skipped) == ("udp", True)
    assert (ping.check, ping.port) == ("icmp", None)


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
        ([icmp(port=7)], "checks[0].port: icmp checks take no port (only http, tcp and udp do)"),
        ([udp(path="/x")], "checks[0].path: udp checks take no path (only http do)"),
        ([icmp(status=200)], "checks[0].status: icmp checks take no status (only http do)"),
        ([icmp(expect="x")], "checks[0].expect: icmp checks take no expect (only http, tcp and udp do)"),
        ([tcp(probe="x")], "checks[0].probe: http checks take no probe (only tcp and udp do); protocol tcp without "
                           "check is an http check: set check: tcp for a plain TCP exchange"),
        ([tcp(check="http", probe="x")], "checks[0].probe: http checks take no probe (only tcp and udp do)"),
        ([tcp(check="tcp", path="/")], "checks[0].path: tcp checks take no path (only http do)"),
        ([tcp(check="tcp", status=200)], "checks[0].status: tcp checks take no status (only http do)"),
        ([tcp(check="tcp", probe="")], "checks[0].probe: must not be empty"),
        ([tcp(), tcp(), udp(check="http")],
         "checks[2].check: http does not go with protocol udp (http checks are over tcp; udp takes udp)"),
        ([udp(check="tcp")], "checks[0].check: tcp does not go with protocol udp (tcp checks are over tcp; udp takes udp)"),
        ([tcp(check="udp")], "checks[0].check: udp does not go with protocol tcp (udp checks are over udp; "
                             "tcp takes http and tcp)"),
        ([icmp(check="http")], "checks[0].check: http does not go with protocol icmp"),
        ([tcp(check="ssh")], "checks[0].check: 'ssh' is not one of http, tcp, udp, icmp"),
        ([tcp(check=["tcp"])], "checks[0].check: must be a string, got list"),
        ([tcp(protocol=None, check=None)], "checks[0].protocol: is required (or check, which implies it)"),
        ([tcp(protocol=None, check="tcp", port=None)], "checks[0].port: is required for tcp"),
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


# icmp: packets


def test_checksum_of_known_data():
    assert icmp_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D  # the example of RFC 1071
    assert icmp_checksum(b"\x01") == 0xFEFF  # an odd byte is padded with a zero
    # An echo request iputils ping sent (-s 4 -p 61) and its reply: with the checksum in, the sum is zero.
    request, reply = bytes.fromhex("080056a64058000161000000"), bytes.fromhex("00005ea64058000161000000")
    assert icmp_checksum(request[:2] + b"\0\0" + request[4:]) == 0x56A6
    assert icmp_checksum(reply[:2] + b"\0\0" + reply[4:]) == 0x5EA6
    assert icmp_checksum(request) == icmp_checksum(reply) == 0


def test_echo_request_bytes():
    assert echo_request(0x1234, 1, b"hi") == bytes.fromhex("0800 7d61 1234 0001 6869")  # type, code, checksum, id, seq, data
    assert echo_request(0x4058, 1, bytes.fromhex("61000000")) == bytes.fromhex("080056a64058000161000000")  # as ping


def ip_header(source, destination, length, header_words=5):
    """An IPv4 header (protocol ICMP) with header_words 32-bit words; options are NOPs."""
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | header_words, 0, length + 4 * header_words, 0, 0, 64, 1, 0,
                         socket.inet_aton(source), socket.inet_aton(destination))
    return header + b"\x01" * (4 * (header_words - 5))


def echo_reply(identifier, sequence, payload, kind=0, raw=False, source=MASTER_IP):
    """What a socket receives for a reply (kind 0; another kind for other ICMP packets), with an IP header if raw."""
    body = bytearray(echo_request(identifier, sequence, payload))
    body[0], body[2:4] = kind, b"\0\0"
    body[2:4] = icmp_checksum(bytes(body)).to_bytes(2, "big")
    return (ip_header(source, "10.211.55.123", len(body)) if raw else b"") + bytes(body)


def test_a_reply_is_parsed_after_its_ip_header():
    reply = echo_reply(0xBEEF, 7, b"payload", raw=True)
    assert reply[:1] == b"\x45" and len(reply) == 20 + 8 + 7
    assert parse_echo_reply(reply, raw=True) == (0xBEEF, 7, b"payload")
    with_options = ip_header(MASTER_IP, "10.211.55.123", 15, header_words=6) + echo_reply(0xBEEF, 7, b"payload")
    assert parse_echo_reply(with_options, raw=True) == (0xBEEF, 7, b"payload")
    # A ping socket hands over the ICMP message alone.
    assert parse_echo_reply(echo_reply(0xBEEF, 7, b"payload"), raw=False) == (0xBEEF, 7, b"payload")


@pytest.mark.parametrize(
    "data, raw",
    [
        (echo_reply(1, 1, b"x", kind=8, raw=True), True),  # an echo request (ours, looped back to a raw socket)
        (echo_reply(1, 1, b"x", kind=3, raw=True), True),  # destination unreachable
        (echo_reply(1, 1, b"x", kind=8), False),
        (echo_reply(1, 1, b"x", raw=True)[:24], True),  # cut short
        (b"\x60" + echo_reply(1, 1, b"x", raw=True)[1:], True),  # not IPv4
        (b"", True),
    ],
)
def test_what_is_not_an_echo_reply_is_none(data, raw):
    assert parse_echo_reply(data, raw) is None


# icmp: attempts with fake sockets


class FakeIcmpSocket:
    """Records what is sent; answers recvfrom with what answer(request, raw, port) gives, then times out."""

    def __init__(self, raw, answer, port):
        self.raw, self.answer, self.port = raw, answer, port
        self.sent, self.received, self.closed, self.bound = [], [], False, []

    def bind(self, address):
        self.bound.append(address)

    def settimeout(self, seconds):
        assert seconds > 0

    def sendto(self, data, address):
        self.sent.append((data, address))
        self.received = list(self.answer(data, self.raw, self.port))

    def getsockname(self):
        return ("0.0.0.0", self.port)

    def recvfrom(self, size):
        if not self.received:
            raise socket.timeout("timed out")
        data, source = self.received.pop(0)
        return data[:size], (source, 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


class FakeSockets:
    """A socket factory: refuses the kinds in refuse (kind -> OSError), makes FakeIcmpSockets of the others."""

    def __init__(self, answer, refuse=None, port=4321):
        self.answer, self.refuse, self.port = answer, refuse or {}, port
        self.opened, self.made = [], []

    def __call__(self, family, kind, proto):
        self.opened.append((family, kind, proto))
        if kind in self.refuse:
            raise self.refuse[kind]
        made = FakeIcmpSocket(kind == socket.SOCK_RAW, self.answer, self.port)
        self.made.append(made)
        return made


def replying(request, raw, port):
    """The target's reply: a ping socket sees the kernel's identifier, its socket's port."""
    _kind, _code, _sum, identifier, sequence = struct.unpack_from("!BBHHH", request)
    yield echo_reply(identifier if raw else port, sequence, request[8:], raw=raw), MASTER_IP


def silent(request, raw, port):
    return []


def run_fake_icmp(sockets, timeout=3.0):
    [result] = Prober(timeout, 0, new_socket=sockets).run_all(parse_checks([icmp()], timeout, 0))
    return result


EACCES = PermissionError(errno.EACCES, "Permission denied")
EPERM = PermissionError(errno.EPERM, "Operation not permitted")


def test_icmp_uses_a_ping_socket_when_it_may():
    sockets = FakeSockets(replying)
    result = run_fake_icmp(sockets)
    assert sockets.opened == [ICMP_SOCKET]
    [(request, address)] = sockets.made[0].sent
    assert address == (MASTER_IP, 0)
    assert request[:2] == b"\x08\x00" and icmp_checksum(request) == 0 and len(request) == 8 + _probe.ECHO_PAYLOAD_SIZE
    assert sockets.made[0].closed
    latency = result.pop("latency_ms")
    assert isinstance(latency, float) and 0 <= latency < 3000
    assert result == dict(target="master", address=MASTER_IP, protocol="icmp", check="icmp", port=None, ok=True,
                          skipped=False, attempts=1, detail="echo reply")


def test_icmp_falls_back_to_a_raw_socket_when_the_ping_socket_is_refused():
    sockets = FakeSockets(replying, refuse={socket.SOCK_DGRAM: EACCES})
    result = run_fake_icmp(sockets)
    assert sockets.opened == [ICMP_SOCKET, ICMP_RAW_SOCKET]
    assert (result["ok"], result["detail"]) == (True, "echo reply")
    unsupported = FakeSockets(replying, refuse={socket.SOCK_DGRAM: OSError(errno.EPROTONOSUPPORT, "Protocol not supported")})
    assert run_fake_icmp(unsupported)["ok"] and unsupported.opened == [ICMP_SOCKET, ICMP_RAW_SOCKET]


def test_icmp_without_any_socket_fails_saying_what_it_needs():
    sockets = FakeSockets(replying, refuse={socket.SOCK_DGRAM: EACCES, socket.SOCK_RAW: EPERM})
    result = run_fake_icmp(sockets)
    assert sockets.opened == [ICMP_SOCKET, ICMP_RAW_SOCKET]
    assert (result["ok"], result["latency_ms"], result["detail"]) == (
        False, None, "cannot open an ICMP socket: operation not permitted (needs root or net.ipv4.ping_group_range)")


def test_icmp_socket_errors_other_than_refusal_are_not_retried_raw():
    sockets = FakeSockets(replying, refuse={socket.SOCK_DGRAM: OSError(errno.EMFILE, "Too many open files")})
    with pytest.raises(_probe.IcmpUnavailable, match=r"^cannot open an ICMP socket: too many open files$"):
        open_icmp_socket(sockets)
    assert sockets.opened == [ICMP_SOCKET]


def test_icmp_passes_over_what_is_not_its_reply():
    def crowded(request, raw, port):
        _kind, _code, _sum, identifier, sequence = struct.unpack_from("!BBHHH", request)
        payload = request[8:]
        yield echo_reply(identifier, sequence, payload, kind=8, raw=True), MASTER_IP  # our request, looped back
        yield echo_reply(identifier ^ 1, sequence, payload, raw=True), MASTER_IP  # another program's id
        yield echo_reply(identifier, sequence ^ 1, payload, raw=True), MASTER_IP  # an earlier request
        yield echo_reply(identifier, sequence, payload[::-1], raw=True), MASTER_IP  # not our payload
        yield echo_reply(identifier, sequence, payload, kind=3, raw=True), MASTER_IP  # unreachable
        yield echo_reply(identifier, sequence, payload, raw=True), "10.211.55.9"  # another host
        if wanted:
            yield echo_reply(identifier, sequence, payload, raw=True), MASTER_IP

    wanted = True
    sockets = FakeSockets(crowded, refuse={socket.SOCK_DGRAM: EACCES})
    assert run_fake_icmp(sockets)["ok"]
    assert not sockets.made[0].received
    wanted = False
    result = run_fake_icmp(FakeSockets(crowded, refuse={socket.SOCK_DGRAM: EACCES}), timeout=0.5)
    assert (result["ok"], result["latency_ms"], result["detail"]) == (False, None, "no reply within 0.5 s")


def test_a_ping_socket_reply_must_carry_the_kernels_identifier():
    def own_identifier(request, raw, port):  # the identifier the module chose, not the socket's
        _kind, _code, _sum, identifier, sequence = struct.unpack_from("!BBHHH", request)
        yield echo_reply(identifier, sequence, request[8:]), MASTER_IP

    with mock.patch.object(_probe.random, "getrandbits", return_value=0x1111):
        result = run_fake_icmp(FakeSockets(own_identifier, port=4321), timeout=0.5)
    assert (result["ok"], result["detail"]) == (False, "no reply within 0.5 s")


def test_icmp_without_reply_fails_without_latency():
    result = run_fake_icmp(FakeSockets(silent), timeout=0.5)
    assert (result["ok"], result["latency_ms"], result["detail"]) == (False, None, "no reply within 0.5 s")


def test_icmp_send_error_is_the_reason():
    class Unreachable(FakeIcmpSocket):
        def sendto(self, data, address):
            raise OSError(errno.ENETUNREACH, "Network is unreachable")

    result = run_fake_icmp(lambda *args: Unreachable(False, silent, 1))
    assert (result["ok"], result["detail"]) == (False, "network is unreachable")


def test_icmp_to_loopback_for_real():
    try:
        open_icmp_socket()[0].close()
    except _probe.IcmpUnavailable as exc:
        pytest.skip(str(exc))
    results = probe(icmp(address=LOOPBACK), icmp(address="127.0.0.2"))
    assert [(r["ok"], r["detail"]) for r in results] == [(True, "echo reply")] * 2
    assert all(isinstance(r["latency_ms"], float) for r in results)


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
    assert result == dict(target="master", address=LOOPBACK, protocol="tcp", check="http", port=http_port, ok=True,
                          skipped=False, attempts=1, detail="HTTP 200", status=200, body="hello from loopback")


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


# tcp checks (no HTTP) against loopback servers


@contextlib.contextmanager
def tcp_server(handle):
    """A loopback TCP server that runs handle(connection) in a thread for each connection; yields its port."""
    server = socket.socket()
    server.bind((LOOPBACK, 0))
    server.listen()

    def run(connection):
        with connection:
            handle(connection)

    def serve():
        while True:
            try:
                connection, _peer = server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=run, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()


def echo_lines(connection):
    while True:
        data = connection.recv(2048)
        if not data:
            return
        connection.sendall(b"echo:" + data)


def silent_until_closed(connection):
    """Accepts, reads, never answers."""
    connection.settimeout(5)
    try:
        while connection.recv(2048):
            pass
    except OSError:
        pass


def test_tcp_echo_service_passes_every_kind_of_tcp_check_and_fails_http():
    with tcp_server(echo_lines) as port:
        connect, exchange, any_reply, wrong, web = probe(
            tcp(address=LOOPBACK, port=port, check="tcp"),
            tcp(address=LOOPBACK, port=port, check="tcp", probe="ping\n", expect="echo:ping"),
            tcp(address=LOOPBACK, port=port, check="tcp", probe="hello"),
            tcp(address=LOOPBACK, port=port, check="tcp", probe="ping", expect="pong"),
            tcp(address=LOOPBACK, port=port), timeout=0.5)
    assert (connect["ok"], connect["check"], connect["protocol"], connect["detail"]) == (True, "tcp", "tcp", "connected")
    assert isinstance(connect["latency_ms"], float) and "reply" not in connect
    assert (exchange["ok"], exchange["detail"], exchange["reply"]) == (True, "reply 'echo:ping\\n'", "echo:ping\n")
    assert isinstance(exchange["latency_ms"], float)
    assert (any_reply["ok"], any_reply["reply"]) == (True, "echo:hello")
    assert (wrong["ok"], wrong["detail"], wrong["reply"]) == (False, "'pong' not in reply 'echo:ping'", "echo:ping")
    assert (web["ok"], web["check"]) == (False, "http")
    assert web["detail"].startswith("not an HTTP reply"), web


def test_tcp_banner_is_read_without_a_probe():
    def banner(connection):
        connection.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        silent_until_closed(connection)

    with tcp_server(banner) as port:
        ssh, other = probe(tcp(address=LOOPBACK, port=port, check="tcp", expect="SSH-2.0"),
                           tcp(address=LOOPBACK, port=port, check="tcp", expect="220 "), timeout=0.3)
    assert (ssh["ok"], ssh["reply"]) == (True, "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    # It said something, just not that: the reply is the reason, not a timeout.
    assert (other["ok"], other["detail"]) == (False, "'220 ' not in reply 'SSH-2.0-OpenSSH_9.2p1 Debian-2\\r\\n'")


def test_tcp_expect_is_found_across_reads():
    def slowly(connection):
        connection.recv(2048)
        for part in (b"hel", b"lo wo", b"rld"):
            connection.sendall(part)
            time.sleep(0.05)
        silent_until_closed(connection)

    with tcp_server(slowly) as port:
        [result] = probe(tcp(address=LOOPBACK, port=port, check="tcp", probe="?", expect="world"), timeout=2)
    assert (result["ok"], result["reply"]) == (True, "hello world")


def test_tcp_silent_service_passes_connect_only_and_fails_with_expect():
    with tcp_server(silent_until_closed) as port:
        connect, asked, banner = probe(
            tcp(address=LOOPBACK, port=port, check="tcp"),
            tcp(address=LOOPBACK, port=port, check="tcp", probe="ping", expect="pong"),
            tcp(address=LOOPBACK, port=port, check="tcp", expect="SSH-"), timeout=0.3)
    assert (connect["ok"], connect["detail"]) == (True, "connected")
    for result in (asked, banner):
        assert (result["ok"], result["detail"], result["latency_ms"]) == (False, "no reply within 0.3 s", None)
        assert "reply" not in result


def test_tcp_service_that_closes_without_a_word_fails():
    with tcp_server(lambda connection: connection.recv(2048)) as port:  # reads the probe, so it closes with a FIN
        [result] = probe(tcp(address=LOOPBACK, port=port, check="tcp", probe="ping", expect="pong"), timeout=1)
    assert (result["ok"], result["detail"], result["latency_ms"]) == (False, "connection closed without a reply", None)


def test_tcp_check_to_a_closed_port_is_refused():
    port = free_port(socket.SOCK_STREAM)
    connect, asked = probe(tcp(address=LOOPBACK, port=port, check="tcp"),
                           tcp(address=LOOPBACK, port=port, check="tcp", probe="x", expect="y"))
    for result in (connect, asked):
        assert (result["ok"], result["detail"], result["latency_ms"]) == (False, "connection refused", None)


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


def test_a_check_comes_from_its_source_port():
    """Over loopback, the service sees each check come from the check's source_port (icmp: the echo identifier)."""
    tcp_source, udp_source = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    seen = {}
    with socket.socket() as listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagrams:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        datagrams.bind((LOOPBACK, 0))

        def serve():
            connection, seen["tcp"] = listener.accept()
            with connection:
                connection.sendall(b"hello\n")
            data, seen["udp"] = datagrams.recvfrom(100)
            datagrams.sendto(b"echo:" + data, seen["udp"])
        server = threading.Thread(target=serve, daemon=True)
        server.start()
        tcp_result, udp_result = probe(
            tcp(address=LOOPBACK, port=listener.getsockname()[1], check="tcp", expect="hello", source_port=tcp_source),
            udp(address=LOOPBACK, port=datagrams.getsockname()[1], probe="x", expect="echo:x", source_port=udp_source))
        server.join(timeout=5)
    assert tcp_result["ok"] and udp_result["ok"], (tcp_result, udp_result)
    assert seen == {"tcp": (LOOPBACK, tcp_source), "udp": (LOOPBACK, udp_source)}


def test_an_echo_carries_the_source_port_as_its_identifier():
    # A raw socket: the module writes the identifier; a ping socket: the kernel takes its port, so it is bound to it.
    raw = FakeSockets(replying, refuse={socket.SOCK_DGRAM: EACCES})
    [result] = Prober(1.0, 0, new_socket=raw).run_all(parse_checks([icmp(source_port=4321)], 1.0, 0))
    assert result["ok"] and struct.unpack_from("!BBHHH", raw.made[0].sent[0][0])[3] == 4321
    ping = FakeSockets(replying, port=4321)
    [result] = Prober(1.0, 0, new_socket=ping).run_all(parse_checks([icmp(source_port=4321)], 1.0, 0))
    assert result["ok"] and ping.made[0].bound == [("", 4321)]


def test_source_port_is_checked_as_a_port():
    with pytest.raises(InvalidInput, match=r"checks\[0\]\.source_port: 70000 is outside 1\.\.65535"):
        parse_checks([tcp(source_port=70000)], 1.0, 0)
