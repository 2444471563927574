"""Correctness properties of netns.expose.dnat_rule, on real lab hosts with real traffic.

1. A mapping without `destination` maps only traffic addressed to the master: a master
   that also routes for a third host does not hijack that host's traffic.
2. `local: true` does not open the master's 127.0.0.1 to LAN neighbours (CVE-2020-8558):
   route_localnet stays 0, and a neighbour that sends packets for 127.0.0.1 to the
   master's MAC gets nothing from a service bound to 127.0.0.1.
3. On a master whose FORWARD policy is DROP, ICMP errors about a mapped flow pass:
   the ns1 kernel's port unreachable reaches the client (ECONNREFUSED), and a
   "fragmentation needed" from a router beyond the master reaches ns1 (path MTU
   discovery works).

A further test documents a known gap (xfail while it holds): a mapping without
`destination`, or with `destination: 127.0.0.1`, DNATs LAN packets addressed to 127.0.0.1.

Each test also runs a positive control: the same traffic against a hand-made rule (or
a sysctl) with the bad behaviour, showing that its check does detect it. Everything a
test builds is registered in an ExitStack (`undo`) as soon as it exists, and removed
in reverse order after the test, whether it passed or not.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import time

import pytest
from conftest import DNAT_BACKENDS, with_backend
from master_host import DEMO_REPLY as MAPPED, DEMO_SERVICE, MASTER, RECIPE_PAIR as VETH, scrub_netfilter, sh

SLAVE = "slave"
MASTER_IP = "10.211.55.122"
NS_IP = "10.244.1.2"
WEB = dict(name="web", protocol="tcp", port=8090, to_address=NS_IP, to_port=9090, in_interface="eth0")
DNS = dict(name="dns", protocol="udp", port=8053, to_address=NS_IP, to_port=5353, in_interface="eth0")
TIMEOUT = 5  # seconds for a client that is expected to get nothing (the machine may be slow)

# Answers every GET with the bytes of a file: python3 -c HTTP_SERVER ADDRESS PORT FILE.
# Not `python3 -m http.server`: its server_bind looks up the FQDN of the bind address,
# which waits for DNS timeouts in a namespace with no resolver.
HTTP_SERVER = """
import socketserver, sys
from http.server import BaseHTTPRequestHandler
address, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = open(path, "rb").read()
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((address, port), Handler).serve_forever()
"""

# One datagram from a connected socket (only a connected socket is told of ICMP errors):
# prints reply, refused (an ICMP port unreachable came back) or timeout.
UDP_CLIENT = """
import socket, sys
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(float(sys.argv[3]))
client.connect((sys.argv[1], int(sys.argv[2])))
client.send(b"hello")
try:
    client.recv(2048)
    print("reply")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"""


# Scaffolding: every change registers its own undo.

class Undo(contextlib.ExitStack):
    """The undo of each change, run last change first when it closes; `once` registers an undo only once."""

    def __init__(self):
        super().__init__()
        self._keys = set()

    def once(self, key, callback, *args):
        if key not in self._keys:
            self._keys.add(key)
            self.callback(callback, *args)


@pytest.fixture
def undo(lab):
    """An Undo closed after the test, whatever happened; the master's netfilter is scrubbed last of all."""
    with Undo() as stack:
        stack.callback(scrub_netfilter, lab)
        yield stack


def run_ok(run_module, host, module, args):
    result = run_module(host, module, args)
    assert not result["failed"], result
    return result


def with_module(undo, run_module, host, module, args, absent):
    """Run a module that creates something; its run with the arguments `absent` follows after the test (once)."""
    undo.once((host, module, repr(absent)), run_ok, run_module, host, module, absent)
    return run_ok(run_module, host, module, args)


def veth_pair(undo, run_module, host, pair):
    return with_module(undo, run_module, host, "netns.expose.netns_veth", pair, {**pair, "state": "absent"})


def mapping(undo, run_module, args):
    """One mapping on the master (the module's top-level options)."""
    return with_module(undo, run_module, MASTER, "netns.expose.dnat_rule", args, {"name": args["name"], "state": "absent"})


def change(undo, lab, host, do, revert):
    """Run argv `do` in a lab host; `revert` after the test."""
    sh(lab, *do, host=host)
    undo.callback(sh, lab, *revert, host=host)


def set_sysctl(undo, lab, host, name, value):
    old = sh(lab, "sysctl", "-n", name, host=host).strip()
    change(undo, lab, host, ["sysctl", "-qw", f"{name}={value}"], ["sysctl", "-qw", f"{name}={old}"])


def in_netns(netns):
    return ["ip", "netns", "exec", netns] if netns else []


def start(undo, lab, argv, port, host=MASTER, netns=None):
    """Start argv detached in a lab host (in its namespace `netns`, if given); return once it listens on tcp port.

    Stopped after the test by its pid: the lab hosts share this machine's pid namespace.
    """
    # The shell prints its pid and execs the service, which keeps that pid.
    script = 'echo $$; exec "$@" </dev/null >/dev/null 2>&1'
    pid = int(sh(lab, "setsid", "-f", "sh", "-c", script, "sh", *in_netns(netns), *argv, host=host))
    undo.callback(stop, pid)
    listening = [*in_netns(netns), "ss", "-Hltn", f"sport = :{port}"]
    deadline = time.monotonic() + 30
    while not sh(lab, *listening, host=host).strip():
        assert time.monotonic() < deadline, f"{argv} does not listen on {port} in {host} {netns or ''}"
        time.sleep(0.1)
    return pid


def stop(pid):
    """SIGTERM, and SIGKILL if it is still there after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)


def serve_file(undo, lab, tmp_path, content, address, port, host=MASTER, netns=None):
    """An HTTP server on address:port answering every GET with content (bytes)."""
    body = tmp_path / f"body-{port}"
    body.write_bytes(content)
    return start(undo, lab, ["python3", "-c", HTTP_SERVER, address, str(port), str(body)], port, host, netns)


@contextlib.contextmanager
def hand_rule(lab, table, chain, *rule):
    """A rule inserted by hand at the top of a chain of the master, for a positive control."""
    sh(lab, "iptables", "-t", table, "-I", chain, *rule)
    try:
        yield
    finally:
        sh(lab, "iptables", "-t", table, "-D", chain, *rule)


def flush_conntrack(lab):
    """Forget the master's flows, so that one phase's flows do not carry their NAT (or none) into the next."""
    sh(lab, "conntrack", "-F")


def fetch(lab, host, url, netns=None, timeout=TIMEOUT):
    """The body curl gets from url in a lab host (or in one of its namespaces), or None."""
    done = lab.exec(host, [*in_netns(netns), "curl", "-s", "-m", str(timeout), url])
    return done.stdout if done.returncode == 0 else None


@pytest.fixture(params=DNAT_BACKENDS)
def run_module(request, modules):
    """Every test runs with each backend of dnat_rule."""
    return with_backend(modules.run_module, request.param)


@pytest.fixture
def ns1(lab, modules, undo):
    """The recipe's ns1 on the master, with the demo service on 9090 (tcp only); removed after the test."""
    scrub_netfilter(lab)
    veth_pair(undo, modules.run_module, MASTER, VETH)
    start(undo, lab, ["python3", str(DEMO_SERVICE), "9090"], 9090, netns="ns1")
    return lab


# 1. Only traffic addressed to this host is mapped.

THIRD = dict(netns="third", ns_ifname="t0", host_ifname="vthird", ns_address="10.99.0.2/24", host_address="10.99.0.1/24")
THIRD_URL = "http://10.99.0.2:8090/"
MASTER_URL = f"http://{MASTER_IP}:8090/"
FROM_THIRD = "third\n"


def test_a_mapping_without_destination_does_not_hijack_traffic_the_master_routes(ns1, undo, run_module, tmp_path):
    """PROVES: a mapping without `destination` (matched by `-m addrtype --dst-type LOCAL`) maps traffic to the
    master's own address, and leaves alone traffic on the same port that the master routes for a third host.

    The master routes for `third` (a namespace behind it, 10.99.0.2); the slave reaches it via the master.
    Control: a hand-made rule without addrtype (the recipe's rule without -d) makes the same request from
    the slave to 10.99.0.2:8090 land in ns1.
    """
    lab = ns1
    veth_pair(undo, run_module, MASTER, THIRD)
    serve_file(undo, lab, tmp_path, FROM_THIRD.encode(), "10.99.0.2", 8090, netns="third")
    set_sysctl(undo, lab, MASTER, "net.ipv4.ip_forward", 1)
    sh(lab, "iptables", "-P", "FORWARD", "ACCEPT")
    change(undo, lab, SLAVE, ["ip", "route", "add", "10.99.0.0/24", "via", MASTER_IP],
           ["ip", "route", "del", "10.99.0.0/24", "via", MASTER_IP])
    # The scaffolding: the slave reaches third through the master, and nothing answers on the master yet.
    assert (fetch(lab, SLAVE, THIRD_URL), fetch(lab, SLAVE, MASTER_URL)) == (FROM_THIRD, None)

    mapping(undo, run_module, WEB)
    flush_conntrack(lab)
    assert fetch(lab, SLAVE, THIRD_URL) == FROM_THIRD, "the mapping took traffic addressed to the third host"
    assert fetch(lab, SLAVE, MASTER_URL) == MAPPED

    # Control: without addrtype the very same request is hijacked into ns1.
    flush_conntrack(lab)
    with hand_rule(lab, "nat", "PREROUTING", "-i", "eth0", "-p", "tcp", "--dport", "8090",
                   "-j", "DNAT", "--to-destination", f"{NS_IP}:9090"):
        assert fetch(lab, SLAVE, THIRD_URL) == MAPPED, "no hijack without addrtype: the check proves nothing"
    flush_conntrack(lab)
    assert fetch(lab, SLAVE, THIRD_URL) == FROM_THIRD


# 2. local: true does not open 127.0.0.1 to the LAN (CVE-2020-8558).

LOOPBACK_ONLY = "loopback only\n"
LOOPBACK_SERVICE_URL = "http://127.0.0.1:9999/"
OWN_8090 = "the master's own 127.0.0.1:8090\n"
OWN_8090_URL = "http://127.0.0.1:8090/"
ROUTE_LOCALNET = re.compile(r"^/proc/sys/net/ipv4/conf/([^/]+)/route_localnet:(\d+)$", re.M)


def route_localnet(lab):
    """{interface (and all, default): route_localnet} of the master."""
    values = sh(lab, "sh", "-c", "grep -H . /proc/sys/net/ipv4/conf/*/route_localnet")
    return {name: int(value) for name, value in ROUTE_LOCALNET.findall(values)}


def slave_sends_loopback_to_master(undo, lab):
    """The slave sends packets for 127.0.0.1 to the master's MAC, as a LAN neighbour attacking CVE-2020-8558 does.

    The slave's own local table (which would deliver 127.0.0.1 to itself) moves behind a rule that routes
    127.0.0.1 via the master; route_localnet lets the slave send such packets on eth0 and accept the answers
    (with source 127.0.0.1) there. Its reverse path to 127.0.0.1 is eth0 too, so rp_filter passes them.
    """
    for name in ("net.ipv4.conf.all.route_localnet", "net.ipv4.conf.eth0.route_localnet"):
        set_sysctl(undo, lab, SLAVE, name, 1)
    change(undo, lab, SLAVE, ["ip", "rule", "add", "pref", "10", "lookup", "local"], ["ip", "rule", "del", "pref", "10"])
    change(undo, lab, SLAVE, ["ip", "rule", "del", "pref", "0"], ["ip", "rule", "add", "pref", "0", "lookup", "local"])
    change(undo, lab, SLAVE, ["ip", "rule", "add", "pref", "5", "to", "127.0.0.1/32", "lookup", "100"],
           ["ip", "rule", "del", "pref", "5"])
    change(undo, lab, SLAVE, ["ip", "route", "add", "127.0.0.1/32", "via", MASTER_IP, "dev", "eth0", "table", "100"],
           ["ip", "route", "flush", "table", "100"])


PROBE_COMMENT = "dnat-correctness-probe"


def count_arrivals(undo, lab, port):
    """Count, in the master's raw PREROUTING (before any routing decision), packets for 127.0.0.1:port on eth0."""
    probe = ["PREROUTING", "-i", "eth0", "-d", "127.0.0.1/32", "-p", "tcp", "--dport", str(port),
             "-m", "comment", "--comment", PROBE_COMMENT]
    change(undo, lab, MASTER, ["iptables", "-t", "raw", "-I", *probe], ["iptables", "-t", "raw", "-D", *probe])

    def arrived():
        for line in sh(lab, "iptables", "-t", "raw", "-L", "PREROUTING", "-n", "-v", "-x").splitlines():
            if PROBE_COMMENT in line:
                return int(line.split()[0])
        raise AssertionError("the probe rule is gone")
    return arrived


@contextlib.contextmanager
def kube_proxy_style_loopback_mapping(lab):
    """What kube-proxy did for localhost NodePorts: DNAT in OUTPUT without excluding 127.0.0.0/8, and a
    MASQUERADE so that ns1 does not get (and drop) a packet from 127.0.0.1. It also needs route_localnet=1."""
    with hand_rule(lab, "nat", "OUTPUT", "-p", "tcp", "-m", "addrtype", "--dst-type", "LOCAL", "--dport", "8090",
                   "-j", "DNAT", "--to-destination", f"{NS_IP}:9090"), \
            hand_rule(lab, "nat", "POSTROUTING", "-s", "127.0.0.0/8", "-o", "veth1b", "-j", "MASQUERADE"):
        yield


def test_local_true_keeps_the_masters_loopback_closed_to_the_lan(ns1, undo, run_module, tmp_path):
    """PROVES (CVE-2020-8558): with `local: true` the master maps its own addresses for its own clients, never
    127.0.0.1, and never turns on route_localnet, so a LAN neighbour sending packets for 127.0.0.1 to the
    master's MAC reaches no service bound to the master's 127.0.0.1.

    Controls, with route_localnet=1 on the master for a while (what kube-proxy did): (a) the neighbour's
    packets, which do arrive at the master's eth0 (a counter in raw PREROUTING), now reach the loopback-only
    service; (b) kube-proxy's OUTPUT rule (no `! -d 127.0.0.0/8`) maps the master's own 127.0.0.1:8090 into
    ns1, while the module's rule still leaves it to the master's own service there.
    """
    lab = ns1
    serve_file(undo, lab, tmp_path, LOOPBACK_ONLY.encode(), "127.0.0.1", 9999)
    serve_file(undo, lab, tmp_path, OWN_8090.encode(), "127.0.0.1", 8090)
    assert fetch(lab, MASTER, LOOPBACK_SERVICE_URL) == LOOPBACK_ONLY

    mapping(undo, run_module, {**WEB, "local": True})
    localnet = route_localnet(lab)
    assert {"all", "default", "eth0", "lo", "veth1b"} <= set(localnet)
    assert set(localnet.values()) == {0}, f"route_localnet turned on: {localnet}"
    # The feature works: the master's own client reaches ns1 through its LAN address, while its 127.0.0.1:8090
    # stays its own.
    assert fetch(lab, MASTER, MASTER_URL) == MAPPED
    assert fetch(lab, MASTER, OWN_8090_URL) == OWN_8090, "the master's own 127.0.0.1:8090 was mapped"

    slave_sends_loopback_to_master(undo, lab)
    arrived = count_arrivals(undo, lab, 9999)
    assert fetch(lab, SLAVE, LOOPBACK_SERVICE_URL) is None, "a LAN neighbour reached the master's 127.0.0.1"
    assert arrived() > 0, "the slave's packets for 127.0.0.1 never reached the master: the check proves nothing"

    with contextlib.ExitStack() as control:
        for name in ("all", "eth0"):
            set_sysctl(control, lab, MASTER, f"net.ipv4.conf.{name}.route_localnet", 1)
        assert route_localnet(lab)["eth0"] == 1
        # (a) route_localnet alone lets the neighbour in: input routing accepts a loopback destination from eth0
        # instead of dropping it as martian, and output routing lets the answer leave eth0 with source 127.0.0.1.
        # (rp_filter passes either way: the slave's address is on eth0's subnet.)
        assert fetch(lab, SLAVE, LOOPBACK_SERVICE_URL) == LOOPBACK_ONLY, "route_localnet=1 did not open it"
        # (b) Even so, the module's OUTPUT rule leaves 127.0.0.1 alone; kube-proxy's maps it.
        assert fetch(lab, MASTER, OWN_8090_URL) == OWN_8090
        with kube_proxy_style_loopback_mapping(lab):
            assert fetch(lab, MASTER, OWN_8090_URL) == MAPPED, "the check does not see a mapped 127.0.0.1:8090"
    assert set(route_localnet(lab).values()) == {0}
    assert fetch(lab, SLAVE, LOOPBACK_SERVICE_URL) is None


def test_lan_packets_for_127_0_0_1_are_not_mapped(ns1, undo, run_module):
    """PROVES: PREROUTING DNAT happens before the routing decision that would drop a packet for 127.0.0.1 from
    eth0 as martian, so a mapping must not match such packets. Without `destination` the mapping's rule has
    `! -d 127.0.0.0/8` next to `-m addrtype --dst-type LOCAL` (which matches loopback addresses too): a LAN
    neighbour that sends packets for 127.0.0.1:8090 to the master's MAC gets nothing from ns1. A loopback
    `destination` (what `docker run -p 127.0.0.1:8090:9090` would suggest) is refused, naming the field.

    Control: the packets do reach the master (a counter in its raw PREROUTING counts them), so "nothing" is
    the mapping's doing, not a lost route.
    """
    lab = ns1
    undo.once("web", run_ok, run_module, MASTER, "netns.expose.dnat_rule", {"name": "web", "state": "absent"})
    refused = run_module(MASTER, "netns.expose.dnat_rule", {**WEB, "destination": "127.0.0.1"})
    assert refused["failed"] and refused["msg"].startswith("destination: 127.0.0.1 is a loopback address"), refused
    run_ok(run_module, MASTER, "netns.expose.dnat_rule", WEB)
    slave_sends_loopback_to_master(undo, lab)
    arrived = count_arrivals(undo, lab, 8090)
    assert fetch(lab, SLAVE, "http://127.0.0.1:8090/") is None, "a LAN packet for 127.0.0.1:8090 was DNAT-ed into ns1"
    assert arrived() > 0, "the slave's packets for 127.0.0.1 never reached the master: the check proves nothing"
    assert fetch(lab, SLAVE, f"http://{MASTER_IP}:8090/") == MAPPED


# 3. ICMP errors about a mapped flow pass a FORWARD DROP master.

def udp_ask(lab):
    """What the slave's connected udp socket gets from the dns mapping: reply, refused or timeout."""
    return sh(lab, "python3", "-c", UDP_CLIENT, MASTER_IP, "8053", str(TIMEOUT), host=SLAVE).strip()


def ns1_udp_no_ports(lab):
    """Datagrams ns1 received for a port nobody listens on, each answered with ICMP port unreachable."""
    header, values = [line.split() for line in sh(lab, "ip", "netns", "exec", "ns1", "cat", "/proc/net/snmp").splitlines()
                      if line.startswith("Udp:")]
    return int(dict(zip(header, values))["NoPorts"])


def test_port_unreachable_about_a_mapped_flow_reaches_the_client_through_forward_drop(ns1, undo, run_module):
    """PROVES: on a master with FORWARD policy DROP, the ICMP port unreachable that ns1 sends about a mapped udp
    flow (nothing listens on 5353) crosses FORWARD as RELATED to the DNAT-ed flow, accepted by the mapping's
    conntrack rule: the slave's connected socket gets ECONNREFUSED instead of waiting for its timeout.

    Control: the mapping without its forward rule (accept_forward: false) and a hand-made rule that accepts only
    the flow's datagrams towards ns1: ns1 does get the datagram and answers it (its udp NoPorts counter grows),
    but the ICMP error is dropped and the client times out.
    """
    lab = ns1
    sh(lab, "iptables", "-P", "FORWARD", "DROP")
    # ns1 is ours: no rate limit on its port unreachables, however quickly the runs follow each other.
    sh(lab, "ip", "netns", "exec", "ns1", "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")

    mapping(undo, run_module, {**DNS, "accept_forward": False})
    flush_conntrack(lab)
    answered = ns1_udp_no_ports(lab)
    with hand_rule(lab, "filter", "FORWARD", "-i", "eth0", "-o", "veth1b", "-p", "udp", "-d", NS_IP,
                   "--dport", "5353", "-j", "ACCEPT"):
        assert udp_ask(lab) == "timeout", "the port unreachable passed without the forward rule: control failed"
    assert ns1_udp_no_ports(lab) > answered, "ns1 never answered the datagram: the control proves nothing"

    mapping(undo, run_module, DNS)
    flush_conntrack(lab)
    answered = ns1_udp_no_ports(lab)
    assert udp_ask(lab) == "refused"
    assert ns1_udp_no_ports(lab) > answered


CLIENT = dict(netns="client", ns_ifname="c0", host_ifname="vclient", ns_address="10.77.0.2/24",
              host_address="10.77.0.1/24")
BIG = 200_000  # bytes: far more than one segment
NARROW_MTU = 1280


def download(lab, timeout):
    """curl of the big file from the slave's client namespace through the mapping: (exit code, bytes received)."""
    done = lab.exec(SLAVE, [*in_netns("client"), "curl", "-s", "-o", "/dev/null", "-w", "%{size_download}",
                            "-m", str(timeout), MASTER_URL])
    return done.returncode, int(done.stdout or 0)


def slave_frag_needed_sent(lab):
    """ICMP destination unreachables (here: fragmentation needed) the slave has sent."""
    header, values = [line.split() for line in sh(lab, "cat", "/proc/net/snmp", host=SLAVE).splitlines()
                      if line.startswith("Icmp:")]
    return int(dict(zip(header, values))["OutDestUnreachs"])


def ns1_path_mtu(lab):
    """ns1's route to the client, with the path MTU it learned, if any."""
    return sh(lab, "ip", "netns", "exec", "ns1", "ip", "-o", "route", "get", "10.77.0.2")


def test_fragmentation_needed_from_beyond_the_master_reaches_ns1_through_forward_drop(ns1, undo, run_module, tmp_path):
    """PROVES: path MTU discovery works for a mapped tcp flow on a FORWARD DROP master. The client sits in a
    namespace behind the slave, whose link to it has MTU 1280 (the client's own end keeps 1500, so it
    advertises MSS 1460); ns1's full-size segments make the slave send "fragmentation needed" to the master's
    address, which the master translates and forwards to ns1 as RELATED to the mapped flow. ns1 learns MTU 1280
    and the 200 kB download completes.

    Control: the mapping without its forward rule (accept_forward: false) and hand-made rules that accept the
    flow's tcp segments both ways but no ICMP: the slave sends the errors, the master drops them, ns1 learns
    nothing and the download stalls (a PMTU black hole).
    """
    lab = ns1
    serve_file(undo, lab, tmp_path, b"x" * BIG, "0.0.0.0", 9091, netns="ns1")
    # Deterministic black hole in the control: no falling back to smaller segments on its own.
    sh(lab, "ip", "netns", "exec", "ns1", "sysctl", "-qw", "net.ipv4.tcp_mtu_probing=0")
    sh(lab, "iptables", "-P", "FORWARD", "DROP")
    veth_pair(undo, run_module, SLAVE, CLIENT)
    sh(lab, "ip", "link", "set", "vclient", "mtu", str(NARROW_MTU), host=SLAVE)
    set_sysctl(undo, lab, SLAVE, "net.ipv4.ip_forward", 1)
    change(undo, lab, MASTER, ["ip", "route", "add", "10.77.0.0/24", "via", "10.211.55.123"],
           ["ip", "route", "del", "10.77.0.0/24", "via", "10.211.55.123"])
    big = {**WEB, "to_port": 9091}

    mapping(undo, run_module, {**big, "accept_forward": False})
    flush_conntrack(lab)
    sent = slave_frag_needed_sent(lab)
    flow = ["-p", "tcp", "-d", NS_IP, "--dport", "9091", "-j", "ACCEPT"]
    answers = ["-p", "tcp", "-s", NS_IP, "--sport", "9091", "-j", "ACCEPT"]
    with hand_rule(lab, "filter", "FORWARD", *flow), hand_rule(lab, "filter", "FORWARD", *answers):
        code, received = download(lab, TIMEOUT)
    assert slave_frag_needed_sent(lab) > sent, "the slave sent no fragmentation needed: the control proves nothing"
    assert f"mtu {NARROW_MTU}" not in ns1_path_mtu(lab)
    assert code != 0 and received < BIG, "the download completed without ICMP: the control proves nothing"

    mapping(undo, run_module, big)
    flush_conntrack(lab)
    assert download(lab, 30) == (0, BIG)
    assert f"mtu {NARROW_MTU}" in ns1_path_mtu(lab)
