# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks of the probe module: validation, one attempt per check type, retries, results.

Every check is validated (messages name it as checks[<index>].<field>) before any
packet is sent. The checks then run side by side, each with its own retries, and
their results come back in input order.

A check has a protocol (tcp, udp, icmp) and a check type that says what is done over it:
http (a GET over tcp), tcp (a connection, optionally a probe and an expected reply),
udp (a datagram and its reply), icmp (an echo request). Without a check type, protocol
tcp is an http check, as before check types existed.
"""
from __future__ import annotations

import errno
import http.client
import math
import os
import random
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ansible_collections.netns.expose.plugins.module_utils._validation import (
    InvalidInput,
    address_in,
    check_allowed_sources,
    check_integer,
    check_port,
    check_protocol,
    parse_ipv4_address,
)

CHECK_TYPES = ("http", "tcp", "udp", "icmp")
CHECK_PROTOCOL = {"http": "tcp", "tcp": "tcp", "udp": "udp", "icmp": "icmp"}  # what each check type runs over
DEFAULT_CHECK = {"tcp": "http", "udp": "udp", "icmp": "icmp"}  # the check type of a protocol without `check`
CHECK_FIELDS = ("target", "address", "protocol", "check", "port", "path", "expect", "probe", "status", "source_port",
                "allowed_sources")
# Which check types take a field at all; the others refuse it rather than ignore it.
FIELD_CHECKS = {
    "port": ("http", "tcp", "udp"),
    "path": ("http",),
    "status": ("http",),
    "expect": ("http", "tcp", "udp"),
    "probe": ("tcp", "udp"),
}
TEXT_LIMIT = 4096  # characters of a body or reply kept in the result
READ_LIMIT = 1 << 20  # bytes of a body searched for `expect`
DETAIL_LIMIT = 60  # characters of a reply quoted in `detail`
RETRY_PAUSE = 1.0  # seconds between the attempts of a check
MAX_PARALLEL = 16
USER_AGENT = "netns.expose.probe"
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
ECHO_PAYLOAD_SIZE = 56  # random bytes in an echo request, as many as ping sends
# How the kernel refuses a socket the process may not have: then the next kind is tried.
ICMP_REFUSED = (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT)


@dataclass(frozen=True)
class Check:
    target: str
    address: str
    protocol: str
    port: int | None = None
    path: str = "/"
    expect: str | None = None
    probe: str | None = None
    status: int = 200
    check: str | None = None  # the check type; None takes the protocol's default (DEFAULT_CHECK)
    source_port: int | None = None  # the port the check's packets come from (icmp: the echo's identifier); None: any
    # The mapping's allowed_sources (None: every client): from a source outside them, the check expects nothing back.
    allowed_sources: tuple | None = None

    def source_address(self):
        """What to bind the check's socket to: the source port on any address, or None."""
        return None if self.source_port is None else ("", self.source_port)

    def __post_init__(self):
        if self.check is None:
            object.__setattr__(self, "check", DEFAULT_CHECK[self.protocol])

    @property
    def skipped(self):
        """A UDP service answers what it likes: without a probe and an expectation there is nothing to check."""
        return self.check == "udp" and self.probe is None and self.expect is None


@dataclass
class Attempt:
    """What one try of a check got."""

    ok: bool
    detail: str
    latency_ms: float | None = None  # set when something answered
    extra: dict | None = None  # status and body (tcp) or reply (udp)


def endpoint(protocol, port):
    """'tcp/8090', or 'icmp': how messages name a service."""
    return protocol if port is None else f"{protocol}/{port}"


def _text(field, value):
    """A text field; YAML numbers (expect: 42) are taken as their text."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInput(field, f"must be a string, got {type(value).__name__}")
    return str(value)


def _path(field, value):
    path = _text(field, value)
    if not path.startswith("/"):
        raise InvalidInput(field, f"{path!r} must start with '/'")
    if any(char.isspace() or not char.isprintable() for char in path):
        raise InvalidInput(field, f"{path!r} must not contain whitespace or control characters (percent-encode them)")
    return path


def _one_of(names):
    """'http', 'http and tcp', 'http, tcp and udp'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _protocol_and_check(prefix, given):
    """(protocol, check type) of an entry: either may be left out, not both; they must agree."""
    protocol = check = None
    if given.get("protocol", "") != "":
        protocol = check_protocol(f"{prefix}.protocol", _text(f"{prefix}.protocol", given["protocol"]))
    if given.get("check", "") != "":
        check = _text(f"{prefix}.check", given["check"])
        if check not in CHECK_TYPES:
            raise InvalidInput(f"{prefix}.check", f"{check!r} is not one of {', '.join(CHECK_TYPES)}")
    if protocol is None and check is None:
        raise InvalidInput(f"{prefix}.protocol", "is required (or check, which implies it)")
    if protocol is None:
        return CHECK_PROTOCOL[check], check
    if check is None:
        return protocol, DEFAULT_CHECK[protocol]
    if CHECK_PROTOCOL[check] != protocol:
        over = [name for name in CHECK_TYPES if CHECK_PROTOCOL[name] == protocol]
        raise InvalidInput(f"{prefix}.check", f"{check} does not go with protocol {protocol} "
                                              f"({check} checks are over {CHECK_PROTOCOL[check]}; "
                                              f"{protocol} takes {_one_of(over)})")
    return protocol, check


def parse_check(index, item):
    """Validate checks[index] into a Check."""
    prefix = f"checks[{index}]"
    if not isinstance(item, dict):
        raise InvalidInput(prefix, f"must be a dict, got {type(item).__name__}")
    unknown = sorted(set(item) - set(CHECK_FIELDS))
    if unknown:
        raise InvalidInput(f"{prefix}.{unknown[0]}", f"is not an option of a check (those are {', '.join(CHECK_FIELDS)})")
    given = {key: value for key, value in item.items() if value is not None}
    for field in ("target", "address"):
        if field not in given or given[field] == "":
            raise InvalidInput(f"{prefix}.{field}", "is required")
    protocol, kind = _protocol_and_check(prefix, given)
    for field, kinds in FIELD_CHECKS.items():
        if field in given and kind not in kinds:
            hint = ""
            if "check" not in given and protocol == "tcp" and "tcp" in kinds:
                hint = "; protocol tcp without check is an http check: set check: tcp for a plain TCP exchange"
            raise InvalidInput(f"{prefix}.{field}", f"{kind} checks take no {field} (only {_one_of(kinds)} do){hint}")
    if protocol != "icmp" and "port" not in given:
        raise InvalidInput(f"{prefix}.port", f"is required for {protocol}")
    if kind == "udp" and "expect" in given and "probe" not in given:
        raise InvalidInput(f"{prefix}.probe", "is required with expect: it is the datagram that asks for the reply")
    check = Check(
        target=_text(f"{prefix}.target", given["target"]),
        address=str(parse_ipv4_address(f"{prefix}.address", _text(f"{prefix}.address", given["address"]))),
        protocol=protocol,
        check=kind,
        port=check_port(f"{prefix}.port", given["port"]) if "port" in given else None,
        path=_path(f"{prefix}.path", given["path"]) if "path" in given else "/",
        expect=_text(f"{prefix}.expect", given["expect"]) if "expect" in given else None,
        probe=_text(f"{prefix}.probe", given["probe"]) if "probe" in given else None,
        status=check_integer(f"{prefix}.status", given["status"], 100, 599) if "status" in given else 200,
        source_port=check_port(f"{prefix}.source_port", given["source_port"]) if "source_port" in given else None,
        allowed_sources=check_allowed_sources(f"{prefix}.allowed_sources", given["allowed_sources"]) if "allowed_sources" in given else None,
    )
    if check.expect == "":
        raise InvalidInput(f"{prefix}.expect", "must not be empty (it would match anything)")
    if check.check == "tcp" and check.probe == "":
        raise InvalidInput(f"{prefix}.probe", "must not be empty (leave it out to only read what the service says first)")
    return check


def source_towards(address):
    """The address this host's packets to `address` come from (the route's preferred source); sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((address, 9))
        return sock.getsockname()[0]


def parse_checks(checks, timeout, retries):
    """Validate the module's options; return the Checks in input order."""
    if not (math.isfinite(timeout) and timeout > 0):
        raise InvalidInput("timeout", f"must be a number of seconds greater than 0, got {timeout:g}")
    if retries < 0:
        raise InvalidInput("retries", f"{retries} must be 0 or more")
    return [parse_check(index, item) for index, item in enumerate(checks)]


def _seconds(timeout):
    return f"{timeout:g} s"


def _elapsed_ms(started):
    return round((time.monotonic() - started) * 1000, 1)


def _quote(text):
    return repr(text if len(text) <= DETAIL_LIMIT else text[:DETAIL_LIMIT] + "...")


def _reason(exc):
    """What an OSError says, starting lower case ('permission denied')."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


def _socket_error(exc, timeout):
    """A short reason for a failed connection or exchange."""
    if isinstance(exc, socket.timeout):
        return f"timed out after {_seconds(timeout)}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return _reason(exc)


def http_attempt(check, timeout):
    """GET http://address:port/path, without proxies or redirects: the service itself must answer."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(check.address, check.port, timeout=timeout, source_address=check.source_address())
    try:
        connection.request("GET", check.path, headers={"User-Agent": USER_AGENT, "Connection": "close"})
        response = connection.getresponse()
        body = response.read(READ_LIMIT).decode("utf-8", errors="replace")
    except OSError as exc:
        return Attempt(False, _socket_error(exc, timeout))
    except http.client.HTTPException as exc:
        return Attempt(False, f"not an HTTP reply ({type(exc).__name__})", _elapsed_ms(started))
    finally:
        connection.close()
    latency = _elapsed_ms(started)
    extra = {"status": response.status, "body": body[:TEXT_LIMIT]}
    if response.status != check.status:
        return Attempt(False, f"HTTP {response.status}, expected {check.status}", latency, extra)
    if check.expect is not None and check.expect not in body:
        return Attempt(False, f"{check.expect!r} not in body", latency, extra)
    return Attempt(True, f"HTTP {response.status}", latency, extra)


def tcp_attempt(check, timeout):
    """Connect; with a probe or an expect, send the probe (if any) and read the reply.

    Without either, a connection the service accepts is the answer. Else the reply is read
    until `expect` shows up in it (or, without expect, until something came), the service
    closes the connection, or `timeout` passes after connecting.
    """
    started = time.monotonic()
    try:
        client = socket.create_connection((check.address, check.port), timeout=timeout, source_address=check.source_address())
    except OSError as exc:
        return Attempt(False, _socket_error(exc, timeout))
    with client:
        if check.probe is None and check.expect is None:
            return Attempt(True, "connected", _elapsed_ms(started))
        wanted = None if check.expect is None else check.expect.encode()
        data, failure = b"", None
        try:
            if check.probe is not None:
                client.sendall(check.probe.encode())
            deadline = time.monotonic() + timeout
            while len(data) < READ_LIMIT:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                client.settimeout(remaining)
                chunk = client.recv(65536)
                if not chunk:  # the service closed the connection
                    break
                data += chunk
                if wanted is None or wanted in data:
                    break
        except socket.timeout:
            failure = f"no reply within {_seconds(timeout)}"
        except OSError as exc:
            failure = _socket_error(exc, timeout)
    if not data:
        return Attempt(False, failure or "connection closed without a reply")
    latency = _elapsed_ms(started)
    reply = data.decode("utf-8", errors="replace")
    extra = {"reply": reply[:TEXT_LIMIT]}
    if wanted is not None and wanted not in data:
        return Attempt(False, f"{check.expect!r} not in reply {_quote(reply)}", latency, extra)
    return Attempt(True, f"reply {_quote(reply)}", latency, extra)


def udp_attempt(check, timeout):
    """Send the probe from one connected socket and wait for the reply.

    Connected, so only the service's address and port can answer, and an ICMP
    port unreachable shows as a refused connection instead of a silent timeout.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(timeout)
        started = time.monotonic()
        try:
            if check.source_port is not None:
                client.bind(check.source_address())
            client.connect((check.address, check.port))
            client.send(check.probe.encode())
            data = client.recv(65535)
        except socket.timeout:
            return Attempt(False, f"no reply within {_seconds(timeout)}")
        except OSError as exc:
            return Attempt(False, _socket_error(exc, timeout))
    latency = _elapsed_ms(started)
    reply = data.decode("utf-8", errors="replace")
    extra = {"reply": reply[:TEXT_LIMIT]}
    if check.expect is not None and check.expect not in reply:
        return Attempt(False, f"{check.expect!r} not in reply {_quote(reply)}", latency, extra)
    return Attempt(True, f"reply {_quote(reply)}", latency, extra)


class IcmpUnavailable(Exception):
    """Neither kind of ICMP socket can be opened."""


def _refused(exc):
    return isinstance(exc, PermissionError) or exc.errno in ICMP_REFUSED


def open_icmp_socket(new_socket=socket.socket):
    """An ICMP socket and whether it is raw: (socket, raw).

    First a ping socket (SOCK_DGRAM), which needs no privilege when net.ipv4.ping_group_range
    admits the process's group; the kernel sets the identifier of its echo requests and hands
    it only the replies to them, without IP header. Else a raw socket (root or CAP_NET_RAW),
    which gets every ICMP packet the host receives, each with its IP header.
    """
    try:
        return new_socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP), False
    except OSError as exc:
        if not _refused(exc):
            raise IcmpUnavailable(f"cannot open an ICMP socket: {_reason(exc)}") from exc
    try:
        return new_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), True
    except OSError as exc:
        hint = " (needs root or net.ipv4.ping_group_range)" if _refused(exc) else ""
        raise IcmpUnavailable(f"cannot open an ICMP socket: {_reason(exc)}{hint}") from exc


def icmp_checksum(data):
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(identifier, sequence, payload):
    """An ICMP echo request (no IP header), with its checksum."""
    header = ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, 0, identifier, sequence)
    checksum = icmp_checksum(header + payload)
    return ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, checksum, identifier, sequence) + payload


def parse_echo_reply(data, raw):
    """(identifier, sequence, payload) of an ICMP echo reply, or None for anything else.

    raw: data is what a raw socket received, so it starts with the IPv4 header.
    """
    if raw:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < ICMP_HEADER.size:
        return None
    kind, code, _checksum, identifier, sequence = ICMP_HEADER.unpack_from(data)
    if (kind, code) != (ICMP_ECHO_REPLY, 0):
        return None
    return identifier, sequence, data[ICMP_HEADER.size:]


def icmp_attempt(check, timeout, new_socket=socket.socket):
    """One echo request with a random payload; waits up to timeout for its reply.

    Other packets (replies to other checks or programs, our own request looped back on a raw
    socket, errors such as host unreachable) are passed over: as with ping, only the reply counts.
    """
    try:
        sock, raw = open_icmp_socket(new_socket)
    except IcmpUnavailable as exc:
        return Attempt(False, str(exc))
    identifier, sequence = check.source_port or random.getrandbits(16), random.getrandbits(16)
    payload = os.urandom(ECHO_PAYLOAD_SIZE)
    with sock:
        started = time.monotonic()
        deadline = started + timeout
        try:
            sock.settimeout(timeout)
            if check.source_port is not None and not raw:  # a ping socket's port is its echoes' identifier
                sock.bind(check.source_address())
            sock.sendto(echo_request(identifier, sequence, payload), (check.address, 0))
            if not raw:  # the kernel put the socket's port in as the identifier
                identifier = sock.getsockname()[1]
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                sock.settimeout(remaining)
                data, peer = sock.recvfrom(65535)
                if peer[0] == check.address and parse_echo_reply(data, raw) == (identifier, sequence, payload):
                    return Attempt(True, "echo reply", _elapsed_ms(started))
        except socket.timeout:
            return Attempt(False, f"no reply within {_seconds(timeout)}")
        except OSError as exc:
            return Attempt(False, _socket_error(exc, timeout))


class Prober:
    """Runs checks with retries; new_socket makes the sockets of icmp checks (socket.socket)."""

    def __init__(self, timeout, retries, sleep=time.sleep, new_socket=socket.socket, source_of=source_towards):
        self.timeout = timeout
        self.retries = retries
        self.sleep = sleep
        self.new_socket = new_socket
        self.source_of = source_of

    def attempt(self, check):
        if check.check == "http":
            return http_attempt(check, self.timeout)
        if check.check == "tcp":
            return tcp_attempt(check, self.timeout)
        if check.check == "udp":
            return udp_attempt(check, self.timeout)
        return icmp_attempt(check, self.timeout, self.new_socket)

    def denied_source(self, check):
        """This host's source address toward the check's address when its allowed_sources leave it out, else None."""
        if check.allowed_sources is None:
            return None
        source = self.source_of(check.address)
        return None if address_in(source, check.allowed_sources) else source

    def run(self, check):
        """The result of one check: its last attempt, after up to `retries` more while it fails; from a source
        outside the check's allowed_sources, one attempt that must get nothing."""
        if check.skipped:
            return result_of(check, Attempt(False, "skipped: without probe and expect nothing tells what the service answers"),
                             attempts=0, skipped=True)
        source = self.denied_source(check)
        if source is not None:
            return denied_result(check, source, self.attempt(check))
        attempts = 0
        while True:
            attempt = self.attempt(check)
            attempts += 1
            if attempt.ok or attempts > self.retries:
                return result_of(check, attempt, attempts)
            self.sleep(RETRY_PAUSE)

    def run_all(self, checks):
        """Every check side by side (a slow or dead service delays only its own); results in input order."""
        if not checks:
            return []
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(checks))) as pool:
            return list(pool.map(self.run, checks))


def result_of(check, attempt, attempts, skipped=False):
    result = dict(
        target=check.target,
        address=check.address,
        protocol=check.protocol,
        check=check.check,
        port=check.port,
        ok=attempt.ok,
        skipped=skipped,
        latency_ms=attempt.latency_ms,
        attempts=attempts,
        detail=attempt.detail,
    )
    result.update(attempt.extra or {})
    return result


def denied_result(check, source, attempt):
    """The result of a check from a source its allowed_sources leaves out: ok when nothing answered."""
    why = f"source {source} is not in the allowed_sources of {check.target}"
    if attempt.ok:
        answered = Attempt(False, f"answered ({attempt.detail}), though {why}", attempt.latency_ms, attempt.extra)
        return {**result_of(check, answered, 1), "denied": True}
    return {**result_of(check, Attempt(True, f"denied as declared: {why} ({attempt.detail})"), 1), "denied": True}


def failed(results):
    return [result for result in results if not result["ok"] and not result["skipped"]]


def failure_message(results):
    """One line naming each failed check: target, protocol/port, address and why."""
    failures = failed(results)
    reasons = "; ".join(
        f"{r['target']} {endpoint(r['protocol'], r['port'])} ({r['address']}): {r['detail']}" for r in failures
    )
    return f"{len(failures)} of {len(results)} checks failed: {reasons}"
