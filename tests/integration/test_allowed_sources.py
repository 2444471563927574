"""allowed_sources of netns.expose.dnat_rule, with real packets on the lab, with each backend.

The clients: the slave's own address 10.211.55.123 and two more addresses added to the slave's eth0 for the
test (10.211.55.201 and .202, the source of curl --interface or of a bound socket); the master's own
connections (source 10.211.55.122); a namespace ns2 of the master (10.244.2.2, a hairpin client). The service:
the recipe's ns1 (10.244.1.2 behind veth1b) with the demo service on 9090 (and an echo server on 9091).

PROVEN, with each backend (iptables and nftables):

1. A mapping with `allowed_sources: [10.211.55.123/32]` answers that client, and the two others get nothing:
   their connect() times out (no SYN-ACK, and no RST: a connect to a closed port of the master from the same
   client is refused, so the probe does tell the two apart), and the mapping's drop counter (nftables: chain
   src.<mapping> of table ip netns_expose, and the module's counters[<mapping>].denied; iptables: the DROP of
   NETNS-EXPOSE-S-<10 hex of sha256(name)> in mangle) grows by their packets, and not by the allowed client's.
   published.rules[] carries the list; the same denied clients get the reply once the list is left out
   (positive control), and a run with the published rules (exclusive, as a rollback) denies them again.
2. A change of only the list keeps the established flow of a client that stays allowed (it still gets echoes
   after the change) and cuts the one of a client that is now denied (no echo after the change), and the
   module's result names the one conntrack entry it deleted with kept_sources; the second run is unchanged.
   Control: the same change without flush_conntrack leaves the denied client's established flow alive (only new
   flows are checked), so the cut is the module's deletion of its conntrack entry.
3. With `local: true`, the master's own connection to 10.211.55.122:8090 is denied (and counted) while the list
   leaves out the master's address, and gets the reply once 10.211.55.122/32 is listed. With `in_interface:
   eth0` and `hairpin_sources: [10.244.2.0/24]`, a client in ns2 is denied (and counted) unless 10.244.2.0/24
   is listed, and then gets the reply.
4. An empty list or a bad CIDR (top-level or in rules[]) is refused naming the field, and netfilter on the
   master (both iptables variants and nftables) is exactly as before; the mapping still answers its client.

Everything a test builds is registered in an Undo (test_dnat_correctness.py) as soon as it exists, and removed
in reverse order after the test, whether it passed or not.
"""
from __future__ import annotations

import hashlib
import json
import re
import time

import pytest
from conftest import DNAT_BACKENDS, with_backend
from master_host import DEMO_REPLY, MASTER, NFT_TABLE, netfilter, scrub_netfilter, sh
from test_dnat_correctness import (  # pylint: disable=import-error,unused-import
    Undo,
    change,
    fetch,
    flush_conntrack,
    mapping,
    ns1,  # the fixture: the recipe's ns1 with the demo service on 9090
    run_ok,
    start,
    stop,
    veth_pair,
)

SLAVE = "slave"
MASTER_IP = "10.211.55.122"
MASTER_URL = f"http://{MASTER_IP}:8090/"
NS_IP = "10.244.1.2"
ALLOWED = "10.211.55.123"  # the slave's own address
DENIED = ("10.211.55.201", "10.211.55.202")  # added to the slave's eth0 by the fixture clients
WEB = dict(name="web", protocol="tcp", port=8090, to_address=NS_IP, to_port=9090, in_interface="eth0")
ECHO = dict(name="echo", protocol="tcp", port=8091, to_address=NS_IP, to_port=9091, in_interface="eth0")
NS2 = dict(netns="ns2", ns_ifname="veth2a", host_ifname="veth2b", ns_address="10.244.2.2/24",
           host_address="10.244.2.3/24")
CLOSED_PORT = 8099  # nothing listens on it on the master, nothing maps it
SILENT = 2  # seconds for a client that is expected to get nothing

# Connects from each SOURCE:PORT of argv[3:] to argv[1] (the port of the pair) at once, each with the timeout
# argv[2]; prints {"SOURCE:PORT": connected | refused | timeout | error <errno>}. A timeout means that neither a
# SYN-ACK nor a RST (nor an ICMP error) came back.
CONNECT_PROBE = """
import json, socket, sys, threading
host, timeout, results = sys.argv[1], float(sys.argv[2]), {}
def probe(target):
    source, port = target.split(":")
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.bind((source, 0))
        client.connect((host, int(port)))
        results[target] = "connected"
    except ConnectionRefusedError:
        results[target] = "refused"
    except socket.timeout:
        results[target] = "timeout"
    except OSError as exc:
        results[target] = f"error {exc.errno}"
    finally:
        client.close()
threads = [threading.Thread(target=probe, args=(target,)) for target in sys.argv[3:]]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(results))
"""

# Echoes every line back, one thread per connection: python3 -c ECHO_SERVER PORT.
ECHO_SERVER = """
import socketserver, sys
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
"""

# One long-lived flow: python3 -c FLOW_CLIENT SOURCE HOST PORT LOG. From SOURCE, sends line n every 0.2 s on
# one connection and waits up to 0.5 s for its echo; logs "echo n", "silent n" (no echo in time) or the end.
FLOW_CLIENT = """
import itertools, socket, sys, time
source, host, port, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with open(log, "a", buffering=1) as out:
    conn = socket.create_connection((host, port), timeout=3, source_address=(source, 0))
    out.write("connected\\n")
    conn.settimeout(0.5)
    pending = b""
    for n in itertools.count(1):
        try:
            conn.sendall(b"%d\\n" % n)
            while b"\\n" not in pending:
                chunk = conn.recv(4096)
                if not chunk:
                    out.write("closed\\n")
                    sys.exit()
                pending += chunk
            line, pending = pending.split(b"\\n", 1)
            out.write(f"echo {int(line)}\\n")
        except socket.timeout:
            out.write(f"silent {n}\\n")
        except OSError as exc:
            out.write(f"error {exc}\\n")
            sys.exit()
        time.sleep(0.2)
"""


# Scaffolding: every change registers its own undo.

def scrub_legacy_mangle(lab):
    """Empty iptables-legacy's mangle table of the master, if it has one (scrub_netfilter empties nat and filter;
    `nft flush ruleset` there takes iptables-nft's mangle with it). Not made where there is none."""
    if "mangle" in sh(lab, "cat", "/proc/net/ip_tables_names").split():
        sh(lab, "iptables-legacy", "-t", "mangle", "-F")
        sh(lab, "iptables-legacy", "-t", "mangle", "-X")


@pytest.fixture
def undo(lab):
    """An Undo closed after the test, whatever happened; the master's netfilter and flows are scrubbed last."""
    with Undo() as stack:
        stack.callback(scrub_netfilter, lab)
        stack.callback(scrub_legacy_mangle, lab)
        stack.callback(flush_conntrack, lab)
        yield stack


@pytest.fixture(params=DNAT_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def run_module(modules, backend):
    """Every test runs with each backend of dnat_rule."""
    return with_backend(modules.run_module, backend)


@pytest.fixture
def clients(ns1, undo):
    """The two further LAN clients: their addresses on the slave's eth0 (removed after the test)."""
    lab = ns1
    for address in DENIED:
        change(undo, lab, SLAVE, ["ip", "addr", "add", f"{address}/32", "dev", "eth0"],
               ["ip", "addr", "del", f"{address}/32", "dev", "eth0"])
    return lab


def spawn(undo, lab, host, argv):
    """Start argv detached in a lab host; stopped after the test by its pid (the lab shares this pid namespace)."""
    pid = int(sh(lab, "setsid", "-f", "sh", "-c", 'echo $$; exec "$@" </dev/null >/dev/null 2>&1', "sh", *argv,
                 host=host))
    undo.callback(stop, pid)
    return pid


# What the clients get.

def fetch_from(lab, source, timeout=SILENT):
    """The body curl on the slave gets from the web mapping with `source` as its address, or None."""
    done = lab.exec(SLAVE, ["curl", "-s", "-m", str(timeout), "--interface", source, MASTER_URL])
    return done.stdout if done.returncode == 0 else None


def connect(lab, *targets, timeout=SILENT):
    """{(source, port): connected | refused | timeout | ...}: a connect to the master from each (source, port) of
    the slave, all at once."""
    found = json.loads(sh(lab, "python3", "-c", CONNECT_PROBE, MASTER_IP, str(timeout),
                          *(f"{source}:{port}" for source, port in targets), host=SLAVE))
    return {tuple(target.split(":")): outcome for target, outcome in found.items()}


class DropCounter:
    """The packets the drop of a mapping's allowed_sources has counted, read as each backend shows them."""

    def __init__(self, lab, result, name):
        self.lab, self.name = lab, name
        self.backend, self.variant = result["backend"], result["iptables"]

    def __call__(self):
        if self.backend == "nftables":
            text = sh(self.lab, "nft", "list", "chain", "ip", NFT_TABLE, f"src.{self.name}")
            found = re.search(rf"ip saddr != @src\.{re.escape(self.name)} counter packets (\d+) bytes \d+ drop", text)
            assert found, f"no counted drop in chain src.{self.name}:\n{text}"
            return int(found.group(1))
        chain = "NETNS-EXPOSE-S-" + hashlib.sha256(self.name.encode()).hexdigest()[:10]
        listing = sh(self.lab, f"iptables-{self.variant}", "-t", "mangle", "-L", chain, "-v", "-x", "-n")
        drops = [int(line.split()[0]) for line in listing.splitlines()[2:] if line.split()[2:3] == ["DROP"]]
        assert len(drops) == 1, f"not one DROP in {chain}:\n{listing}"
        return drops[0]

    def chain_exists(self):
        if self.backend == "nftables":
            return self.lab.exec(MASTER, ["nft", "list", "chain", "ip", NFT_TABLE, f"src.{self.name}"]).returncode == 0
        chain = "NETNS-EXPOSE-S-" + hashlib.sha256(self.name.encode()).hexdigest()[:10]
        return f":{chain} " in sh(self.lab, f"iptables-{self.variant}-save", "-t", "mangle")


def sources(*addresses):
    return [f"{address}/32" if "/" not in address else address for address in addresses]


# 1. One client allowed, two denied.

def test_only_the_allowed_client_gets_an_answer_the_others_nothing_and_are_counted(clients, undo, run_module):
    """PROVES: with allowed_sources [10.211.55.123/32] that client gets the demo reply, and .201 and .202 get no
    SYN-ACK (their connect times out, while a connect of theirs to a closed port of the master is refused); the
    drop counter grows by their packets and not by the allowed client's. Controls: the list left out, the same
    clients get the reply; put back by the published rules (a rollback), they are denied again."""
    lab = clients
    added = mapping(undo, run_module, {**WEB, "allowed_sources": sources(ALLOWED)})
    assert added["changed"], added
    assert added["published"]["rules"][0]["allowed_sources"] == sources(ALLOWED), added["published"]
    drops = DropCounter(lab, added, "web")
    flush_conntrack(lab)

    before = drops()
    assert fetch_from(lab, ALLOWED) == DEMO_REPLY
    assert drops() == before, "the allowed client's packets were counted as denied"
    outcome = connect(lab, *((source, 8090) for source in DENIED), (DENIED[0], CLOSED_PORT))
    assert outcome == {**{(source, "8090"): "timeout" for source in DENIED}, (DENIED[0], str(CLOSED_PORT)): "refused"}
    denied = drops()
    assert denied >= before + len(DENIED), f"the drop counted {denied - before} packets of {len(DENIED)} denied clients"
    again = run_ok(run_module, MASTER, "netns.expose.dnat_rule", {**WEB, "allowed_sources": sources(ALLOWED)})
    if added["backend"] == "nftables":
        assert again["counters"]["web"]["denied"] == denied, again["counters"]

    # Control: the list left out, the very same clients get the reply, and the check is gone.
    opened = run_ok(run_module, MASTER, "netns.expose.dnat_rule", WEB)
    assert opened["changed"] and "allowed_sources" not in opened["published"]["rules"][0], opened
    assert not drops.chain_exists()
    flush_conntrack(lab)
    assert [fetch_from(lab, source) for source in (ALLOWED, *DENIED)] == [DEMO_REPLY] * 3

    # A rollback to the published rules of the first run puts the list back.
    rolled_back = run_ok(run_module, MASTER, "netns.expose.dnat_rule",
                         {"rules": added["published"]["rules"], "hairpin_sources": added["published"]["hairpin_sources"],
                          "exclusive": True})
    assert rolled_back["changed"], rolled_back
    flush_conntrack(lab)
    before = drops()
    assert connect(lab, (ALLOWED, 8090), (DENIED[1], 8090)) == {(ALLOWED, "8090"): "connected",
                                                                (DENIED[1], "8090"): "timeout"}
    assert drops() > before
    # Last, so that a failure here leaves the checks above done: the identical second run changed nothing.
    assert not again["changed"], f"an identical second run reported a change: {again['actions']}"


# 2. A change of the list with established flows.

def echo_counts(log):
    """(echoes, silences) the flow client has logged so far."""
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return (sum(line.startswith("echo ") for line in lines), sum(line.startswith("silent ") for line in lines))


def wait_for_echoes(logs, count, timeout=10):
    deadline = time.monotonic() + timeout
    while not all(echo_counts(log)[0] >= count for log in logs):
        assert time.monotonic() < deadline, {str(log): log.read_text(encoding="utf-8") for log in logs if log.exists()}
        time.sleep(0.1)


def watch(logs, seconds):
    """What each flow client logs in the next `seconds`: {log: (echoes, silences)}. Starts 0.5 s after the call,
    so that an echo already on its way when a change was made does not count."""
    time.sleep(0.5)
    before = {log: echo_counts(log) for log in logs}
    time.sleep(seconds)
    return {log: tuple(now - then for now, then in zip(echo_counts(log), before[log])) for log in logs}


def test_a_changed_list_keeps_the_allowed_flow_and_cuts_the_newly_denied_one(clients, undo, run_module, tmp_path):
    """PROVES: changing only allowed_sources from [.123, .201] to [.123] keeps .123's established flow (it still
    gets echoes) and cuts .201's (no echo after the change); the result reports the one conntrack entry deleted,
    with kept_sources [.123/32]; a new connection from .201 is denied; the second run changes nothing.

    Control: the same change with flush_conntrack false leaves .201's established flow alive (only new flows are
    checked), so what cuts it is the deletion of its conntrack entry."""
    lab = clients
    allowed, cut = ALLOWED, DENIED[0]
    start(undo, lab, ["python3", "-c", ECHO_SERVER, "9091"], 9091, netns="ns1")
    both = {**ECHO, "allowed_sources": sources(allowed, cut)}
    one = {**ECHO, "allowed_sources": sources(allowed)}
    mapping(undo, run_module, both)
    flush_conntrack(lab)
    logs = {source: tmp_path / f"flow-{source}.log" for source in (allowed, cut)}
    for source, log in logs.items():
        spawn(undo, lab, SLAVE, ["python3", "-c", FLOW_CLIENT, source, MASTER_IP, "8091", str(log)])
    wait_for_echoes(logs.values(), 3)

    # Control: the rules alone do not touch an established flow.
    unflushed = run_ok(run_module, MASTER, "netns.expose.dnat_rule", {**one, "flush_conntrack": False})
    assert unflushed["changed"] and unflushed["conntrack"] == [], unflushed
    seen = watch(logs.values(), 1.5)
    assert seen[logs[allowed]][0] >= 3 and seen[logs[cut]][0] >= 3, f"a flow died without its entry deleted: {seen}"
    assert run_ok(run_module, MASTER, "netns.expose.dnat_rule", {**both, "flush_conntrack": False})["changed"]

    changed = run_ok(run_module, MASTER, "netns.expose.dnat_rule", one)
    assert changed["changed"], changed
    assert changed["conntrack"] == [{"protocol": "tcp", "port": 8091, "destination": None, "deleted": 1,
                                     "kept_sources": sources(allowed)}], changed["conntrack"]
    assert changed["published"]["rules"][0]["allowed_sources"] == sources(allowed)
    seen = watch(logs.values(), 2.5)
    assert seen[logs[allowed]][0] >= 5, f"the allowed client's flow did not survive the change: {seen}"
    assert seen[logs[cut]][0] == 0 and seen[logs[cut]][1] >= 2, f"the denied client's flow was not cut: {seen}"
    assert connect(lab, (allowed, 8091), (cut, 8091)) == {(allowed, "8091"): "connected", (cut, "8091"): "timeout"}
    assert echo_counts(logs[allowed])[0] > 0 and "silent" not in logs[allowed].read_text(encoding="utf-8")

    again = run_ok(run_module, MASTER, "netns.expose.dnat_rule", one)
    assert again["conntrack"] == [], again["conntrack"]
    assert not again["changed"], f"an identical second run reported a change: {again['actions']}"


# 3. The master's own connections and hairpin clients are checked too.

def test_the_masters_own_connections_are_denied_unless_its_address_is_listed(ns1, undo, run_module):
    """PROVES: with local: true and a list without 10.211.55.122, curl on the master to 10.211.55.122:8090 gets
    nothing and the drop counts it, while the slave (listed) gets the reply; with 10.211.55.122/32 added to the
    list the master gets the reply."""
    lab = ns1
    added = mapping(undo, run_module, {**WEB, "local": True, "allowed_sources": sources(ALLOWED)})
    drops = DropCounter(lab, added, "web")
    flush_conntrack(lab)
    assert fetch_from(lab, ALLOWED) == DEMO_REPLY
    before = drops()
    assert fetch(lab, MASTER, MASTER_URL, timeout=SILENT) is None, "the master's own connection was not denied"
    assert drops() > before

    run_ok(run_module, MASTER, "netns.expose.dnat_rule", {**WEB, "local": True, "allowed_sources": sources(ALLOWED, MASTER_IP)})
    flush_conntrack(lab)
    before = drops()
    assert fetch(lab, MASTER, MASTER_URL, timeout=SILENT) == DEMO_REPLY
    assert fetch_from(lab, ALLOWED) == DEMO_REPLY
    assert drops() == before


def test_a_hairpin_client_is_denied_unless_its_network_is_listed(ns1, undo, run_module):
    """PROVES: with in_interface eth0 and hairpin_sources [10.244.2.0/24], a client in ns2 (10.244.2.2) gets
    nothing from 10.211.55.122:8090 (counted by the drop) while the list holds only the slave, and the reply
    once 10.244.2.0/24 is listed."""
    lab = ns1
    veth_pair(undo, run_module, MASTER, NS2)
    hairpin = {**WEB, "hairpin_sources": ["10.244.2.0/24"]}
    added = mapping(undo, run_module, {**hairpin, "allowed_sources": sources(ALLOWED)})
    drops = DropCounter(lab, added, "web")
    flush_conntrack(lab)
    assert fetch_from(lab, ALLOWED) == DEMO_REPLY
    before = drops()
    assert fetch(lab, MASTER, MASTER_URL, netns="ns2", timeout=SILENT) is None, "the hairpin client was not denied"
    assert drops() > before

    run_ok(run_module, MASTER, "netns.expose.dnat_rule", {**hairpin, "allowed_sources": [*sources(ALLOWED), "10.244.2.0/24"]})
    flush_conntrack(lab)
    before = drops()
    assert fetch(lab, MASTER, MASTER_URL, netns="ns2", timeout=SILENT) == DEMO_REPLY
    assert drops() == before


# 4. Bad input is refused before anything changes.

BAD_INPUT = [
    ({**WEB, "allowed_sources": []}, "allowed_sources: is empty"),
    ({**WEB, "allowed_sources": [f"{ALLOWED}/32", "10.211.55.300"]}, "allowed_sources[1]: '10.211.55.300' is not"),
    ({"rules": [{**WEB, "allowed_sources": [f"{ALLOWED}/32", "10.0.0.0/33"]}]}, "rules[0].allowed_sources[1]: '10.0.0.0/33'"),
    ({"rules": [WEB, {**ECHO, "allowed_sources": []}]}, "rules[1].allowed_sources: is empty"),
    ({"rules": [{**WEB, "allowed_sources": ["not-an-address"]}]}, "rules[0].allowed_sources[0]: 'not-an-address'"),
]


def test_bad_input_is_refused_naming_the_field_before_anything_changes(ns1, undo, run_module):
    """PROVES: an empty allowed_sources or one with a bad CIDR, top-level or in rules[], is refused with a message
    that starts with the field, and the master's netfilter (both iptables variants and nftables) is exactly as
    before; the mapping that was there still answers its client."""
    lab = ns1
    mapping(undo, run_module, {**WEB, "allowed_sources": sources(ALLOWED)})
    before = netfilter(lab)
    for args, message in BAD_INPUT:
        refused = run_module(MASTER, "netns.expose.dnat_rule", args)
        assert refused["failed"] and refused["msg"].startswith(message), (args, refused)
        assert netfilter(lab) == before, f"a refused run changed netfilter: {args}"
    assert fetch_from(lab, ALLOWED) == DEMO_REPLY
