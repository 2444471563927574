# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks of the probe module: validation, one attempt per protocol, retries, results.

Every check is validated (messages name it as checks[<index>].<field>) before any
packet is sent. The checks then run side by side, each with its own retries, and
their results come back in input order.
"""
from __future__ import annotations

import http.client
import math
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput, parse_ipv4_address

PROTOCOLS = ("tcp", "udp", "icmp")
CHECK_FIELDS = ("target", "address", "protocol", "port", "path", "expect", "probe", "status")
# Which protocols take a field at all; the others refuse it rather than ignore it.
FIELD_PROTOCOLS = {"port": ("tcp", "udp"), "path": ("tcp",), "status": ("tcp",), "expect": ("tcp", "udp"), "probe": ("udp",)}
TEXT_LIMIT = 4096  # characters of a body or reply kept in the result
READ_LIMIT = 1 << 20  # bytes of a body searched for `expect`
DETAIL_LIMIT = 60  # characters of a reply quoted in `detail`
RETRY_PAUSE = 1.0  # seconds between the attempts of a check
MAX_PARALLEL = 16
USER_AGENT = "netns.expose.probe"
PING_TIME = re.compile(r"time[=<]\s*([0-9.]+)\s*ms")


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

    @property
    def skipped(self):
        """A UDP service answers what it likes: without a probe and an expectation there is nothing to check."""
        return self.protocol == "udp" and self.probe is None and self.expect is None


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


def _integer(field, value, low, high):
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidInput(field, f"{value} is outside {low}..{high}")
    return value


def _path(field, value):
    path = _text(field, value)
    if not path.startswith("/"):
        raise InvalidInput(field, f"{path!r} must start with '/'")
    if any(char.isspace() or not char.isprintable() for char in path):
        raise InvalidInput(field, f"{path!r} must not contain whitespace or control characters (percent-encode them)")
    return path


def parse_check(index, item):
    """Validate checks[index] into a Check."""
    prefix = f"checks[{index}]"
    if not isinstance(item, dict):
        raise InvalidInput(prefix, f"must be a dict, got {type(item).__name__}")
    unknown = sorted(set(item) - set(CHECK_FIELDS))
    if unknown:
        raise InvalidInput(f"{prefix}.{unknown[0]}", f"is not an option of a check (those are {', '.join(CHECK_FIELDS)})")
    given = {key: value for key, value in item.items() if value is not None}
    for field in ("target", "address", "protocol"):
        if field not in given or given[field] == "":
            raise InvalidInput(f"{prefix}.{field}", "is required")
    protocol = _text(f"{prefix}.protocol", given["protocol"])
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"{prefix}.protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
    for field, protocols in FIELD_PROTOCOLS.items():
        if field in given and protocol not in protocols:
            raise InvalidInput(f"{prefix}.{field}", f"{protocol} checks take no {field} (only {' and '.join(protocols)} do)")
    if protocol != "icmp" and "port" not in given:
        raise InvalidInput(f"{prefix}.port", f"is required for {protocol}")
    if protocol == "udp" and "expect" in given and "probe" not in given:
        raise InvalidInput(f"{prefix}.probe", "is required with expect: it is the datagram that asks for the reply")
    check = Check(
        target=_text(f"{prefix}.target", given["target"]),
        address=str(parse_ipv4_address(f"{prefix}.address", _text(f"{prefix}.address", given["address"]))),
        protocol=protocol,
        port=_integer(f"{prefix}.port", given["port"], 1, 65535) if "port" in given else None,
        path=_path(f"{prefix}.path", given["path"]) if "path" in given else "/",
        expect=_text(f"{prefix}.expect", given["expect"]) if "expect" in given else None,
        probe=_text(f"{prefix}.probe", given["probe"]) if "probe" in given else None,
        status=_integer(f"{prefix}.status", given["status"], 100, 599) if "status" in given else 200,
    )
    if check.expect == "":
        raise InvalidInput(f"{prefix}.expect", "must not be empty (it would match anything)")
    return check


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


def _socket_error(exc, timeout):
    """A short reason for a failed connection or exchange."""
    if isinstance(exc, socket.timeout):
        return f"timed out after {_seconds(timeout)}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


def http_attempt(check, timeout):
    """GET http://address:port/path, without proxies or redirects: the service itself must answer."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(check.address, check.port, timeout=timeout)
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


def udp_attempt(check, timeout):
    """Send the probe from one connected socket and wait for the reply.

    Connected, so only the service's address and port can answer, and an ICMP
    port unreachable shows as a refused connection instead of a silent timeout.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(timeout)
        started = time.monotonic()
        try:
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


def ping_wait(timeout):
    """Seconds ping waits for the reply: -W takes whole seconds on every ping, so round up."""
    return max(1, math.ceil(timeout))


def ping_argv(ping, address, timeout):
    """One echo request; -n: no reverse lookup of the replying address."""
    return [ping, "-n", "-c", "1", "-W", str(ping_wait(timeout)), address]


def ping_latency(output):
    """The round trip ping printed (time=0.045 ms), or None."""
    match = PING_TIME.search(output)
    return round(float(match.group(1)), 1) if match else None


def icmp_attempt(check, timeout, ping, run_command):
    """ping is the binary's path; run_command(argv) -> (rc, stdout, stderr), as AnsibleModule.run_command."""
    started = time.monotonic()
    rc, out, err = run_command(ping_argv(ping, check.address, timeout))
    measured = _elapsed_ms(started)
    if rc == 0:
        latency = ping_latency(out)
        return Attempt(True, "echo reply", measured if latency is None else latency)
    if rc == 1:  # ping's "sent, but no reply"
        return Attempt(False, f"no reply within {_seconds(ping_wait(timeout))}")
    lines = (err or out).strip().splitlines()
    return Attempt(False, f"ping failed (rc {rc}): {lines[-1] if lines else 'no output'}")


class Prober:
    """Runs checks with retries; ping (path) and run_command are needed only for icmp checks."""

    def __init__(self, timeout, retries, ping=None, run_command=None, sleep=time.sleep):
        self.timeout = timeout
        self.retries = retries
        self.ping = ping
        self.run_command = run_command
        self.sleep = sleep

    def attempt(self, check):
        if check.protocol == "tcp":
            return http_attempt(check, self.timeout)
        if check.protocol == "udp":
            return udp_attempt(check, self.timeout)
        return icmp_attempt(check, self.timeout, self.ping, self.run_command)

    def run(self, check):
        """The result of one check: its last attempt, after up to `retries` more while it fails."""
        if check.skipped:
            return result_of(check, Attempt(False, "skipped: without probe and expect nothing tells what the service answers"),
                             attempts=0, skipped=True)
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
        port=check.port,
        ok=attempt.ok,
        skipped=skipped,
        latency_ms=attempt.latency_ms,
        attempts=attempts,
        detail=attempt.detail,
    )
    result.update(attempt.extra or {})
    return result


def failed(results):
    return [result for result in results if not result["ok"] and not result["skipped"]]


def failure_message(results):
    """One line naming each failed check: target, protocol/port, address and why."""
    failures = failed(results)
    reasons = "; ".join(
        f"{r['target']} {endpoint(r['protocol'], r['port'])} ({r['address']}): {r['detail']}" for r in failures
    )
    return f"{len(failures)} of {len(results)} checks failed: {reasons}"
