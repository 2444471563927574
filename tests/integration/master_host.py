"""Running commands on the lab master and reading its netfilter state, for the tests."""
from __future__ import annotations

import json
import re
from pathlib import Path

MASTER = "master"
VARIANTS = ("nft", "legacy")
# dnat_rule's backends, as the tests name them: the iptables backend with each variant, and nftables.
BACKENDS = ("iptables-nft", "iptables-legacy", "nftables")
NFT_TABLE = "netns_expose"
DEMO_SERVICE = Path(__file__).resolve().parents[2] / "roles" / "demo_service" / "files" / "demo_service.py"
# What the demo service answers, as the recipe's service does.
DEMO_REPLY = '{"Age":12,"Msg":"hello world! this is DNAT+bridge+Veth pair Test!"}'
# The recipe's pair: ns1 behind veth1b.
RECIPE_PAIR = dict(netns="ns1", ns_ifname="veth1a", host_ifname="veth1b", ns_address="10.244.1.2/24",
                   host_address="10.244.1.3/24")


def sh(lab, *argv, check=True, stdin=None, host=MASTER):
    """Run argv in a lab host (the master by default); return stdout."""
    done = lab.exec(host, list(argv), input=stdin)
    if check and done.returncode != 0:
        raise AssertionError(f"{host}: {argv} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def save(lab, variant, host=MASTER):
    """iptables-save of a lab host (the master) without comments and counters: what compares across runs."""
    text = sh(lab, f"iptables-{variant}-save", host=host)
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines() if not line.startswith("#")]


def backend_args(backend):
    """dnat_rule's options for one of BACKENDS."""
    if backend == "nftables":
        return {"backend": "nftables"}
    return {"backend": "iptables", "iptables": backend.split("-", 1)[1]}


# The tables of iptables-nft: compared through iptables-nft-save (iptables-nft-restore leaves empty built-in
# chains behind in them, which iptables-nft-save does not show either).
IPTABLES_NFT_TABLES = {"filter", "nat", "mangle", "raw", "security"}


def nft_ruleset(lab, host=MASTER):
    """The native nftables tables of a lab host (not those of iptables-nft), as `nft list table` prints them
    without counter values: what compares across runs."""
    tables = json.loads(sh(lab, "nft", "-j", "list", "tables", host=host))["nftables"]
    found = []
    for entry in tables:
        table = entry.get("table")
        if table is None or (table["family"] == "ip" and table["name"] in IPTABLES_NFT_TABLES):
            continue
        text = sh(lab, "nft", "list", "table", table["family"], table["name"], host=host)
        found += [line for line in re.sub(r"counter packets \d+ bytes \d+", "counter", text).splitlines() if line.strip()]
    return found


def nft_table(lab, host=MASTER):
    """The owned table as nft lists it (without counter values), or None when there is none."""
    done = lab.exec(host, ["nft", "list", "table", "ip", NFT_TABLE])
    if done.returncode != 0:
        return None
    return [line for line in re.sub(r"counter packets \d+ bytes \d+", "counter", done.stdout).splitlines() if line.strip()]


def netfilter(lab, host=MASTER):
    """Everything netfilter has in a lab host: both iptables variants and the nftables ruleset."""
    return {"iptables-nft": save(lab, "nft", host), "iptables-legacy": save(lab, "legacy", host),
            "nftables": nft_ruleset(lab, host)}


def nft_elements(lab, host=MASTER):
    """{map or set of the owned table: [the comments of its elements]} ({} without the table)."""
    done = lab.exec(host, ["nft", "-j", "list", "table", "ip", NFT_TABLE])
    if done.returncode != 0:
        return {}
    found = {}
    for entry in json.loads(done.stdout)["nftables"]:
        kind = "map" if "map" in entry else "set" if "set" in entry else None
        if kind:
            elements = [element[0] if kind == "map" else element for element in entry[kind].get("elem", [])]
            found[entry[kind]["name"]] = [element["elem"].get("comment") for element in elements
                                          if isinstance(element, dict) and "elem" in element]
    return found


def collection_text(lab, host=MASTER):
    """Everything of the collection's in netfilter, as text: both iptables variants' saves and the owned table."""
    table = lab.exec(host, ["nft", "list", "table", "ip", NFT_TABLE]).stdout
    return "\n".join([*save(lab, "nft", host), *save(lab, "legacy", host), table])


def owned(lines):
    return [line for line in lines if "NETNS-EXPOSE" in line or "netns.expose" in line]


def foreign(lines):
    return [line for line in lines if line not in owned(lines)]


def ip_forward(lab):
    return int(sh(lab, "cat", "/proc/sys/net/ipv4/ip_forward"))


def scrub_netfilter(lab):
    """Empty nat and filter tables (both variants) and ip_forward 0, in the lab master only.

    The tables exist, empty, as on any host where something has used iptables; a
    fresh namespace has none, and iptables-nft creates them on first use.
    """
    sh(lab, "nft", "flush", "ruleset")
    for variant in VARIANTS:
        for table in ("nat", "filter"):
            sh(lab, f"iptables-{variant}", "-t", table, "-F")
            sh(lab, f"iptables-{variant}", "-t", table, "-X")
            sh(lab, f"iptables-{variant}", "-t", table, "-N", "scrub")
            sh(lab, f"iptables-{variant}", "-t", table, "-X", "scrub")
        sh(lab, f"iptables-{variant}", "-P", "FORWARD", "ACCEPT")
    sh(lab, "sysctl", "-qw", "net.ipv4.ip_forward=0")


def snapshot(lab):
    """Links, addresses, routes and namespaces of the master and of each of its namespaces."""

    def view(prefix):
        links = json.loads(sh(lab, *prefix, "ip", "-d", "-j", "link", "show"))
        for link in links:
            link.pop("operstate", None)  # settles asynchronously after a change
        # IPv4 only: the kernel's IPv6 autoconfiguration (DAD) settles on its own time.
        return {
            "links": links,
            "addresses": json.loads(sh(lab, *prefix, "ip", "-4", "-j", "addr", "show")),
            "routes": json.loads(sh(lab, *prefix, "ip", "-4", "-j", "route", "show", "table", "all")),
        }

    namespaces = sorted(line.split()[0] for line in sh(lab, "ip", "netns", "list").splitlines())
    state = {"host": view([]), "netns": namespaces}
    for name in namespaces:
        state[name] = view(["ip", "netns", "exec", name])
    return state


# HTTP: GET / and /index.html answer the text given after the port, anything else 404; each request
# is logged on stderr. Not http.server's command line: its server looks up the name of its address
# (getfqdn) before it listens, which waits for DNS a lab namespace does not have.
HTTP_SERVER = """import http.server, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        found = self.path in ("/", "/index.html")
        body = (sys.argv[2] if found else "not here").encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "lab", self.server_address[1]
Server(("", int(sys.argv[1])), Handler).serve_forever()
"""
