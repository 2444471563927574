"""What playbooks/verify.yml says, from the lab slave, about a lab master where one port is dead.

The master publishes a service of its own (not the inventory's): an HTTP server that
answers JSON on a tcp port, a TCP service that greets with a banner (a tcp port with
check: tcp), a udp port where nothing listens, and icmp, in a namespace behind a veth
pair, through mappings named as the role names them. verify must print
the JSON reply as the service sent it, and end with one line per failure and the
commands to run on the master. The services run with a known pid and are killed by it;
the pair and the mappings are removed after the tests, also when one fails.
"""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time

import pytest
from conftest import REPO, failures
from master_host import DEMO_REPLY, HTTP_SERVER, MASTER, scrub_netfilter, sh

VERIFY = REPO / "playbooks" / "verify.yml"
SLAVE = "slave"
MASTER_IP = "10.211.55.122"
NETNS = "vfy"
PAIR = dict(netns=NETNS, ns_ifname="vfy0", host_ifname="veth-vfy", ns_address="10.244.8.2/24",
            host_address="10.244.8.1/24")
NS_IP = "10.244.8.2"
WEB_PORT, WEB_NS_PORT, DEAD_PORT, DEAD_NS_PORT = 18290, 8080, 18253, 5353
BANNER_PORT, BANNER_NS_PORT, BANNER = 18222, 2222, "SSH-2.0-lab"
SERVICE = dict(PAIR, name="vfy-web", ports=[
    {"protocol": "tcp", "host_port": WEB_PORT, "ns_port": WEB_NS_PORT, "expect": "hello world"},
    {"protocol": "tcp", "host_port": BANNER_PORT, "ns_port": BANNER_NS_PORT, "check": "tcp", "expect": "SSH-2.0"},
    {"protocol": "udp", "host_port": DEAD_PORT, "ns_port": DEAD_NS_PORT, "probe": "ping", "expect": "echo:ping"},
    {"protocol": "icmp"},
])
MAPPINGS = [
    dict(name=f"vfy-web-tcp-{WEB_PORT}", protocol="tcp", port=WEB_PORT, to_address=NS_IP, to_port=WEB_NS_PORT),
    dict(name=f"vfy-web-tcp-{BANNER_PORT}", protocol="tcp", port=BANNER_PORT, to_address=NS_IP, to_port=BANNER_NS_PORT),
    dict(name=f"vfy-web-udp-{DEAD_PORT}", protocol="udp", port=DEAD_PORT, to_address=NS_IP, to_port=DEAD_NS_PORT),
    dict(name="vfy-web-icmp", protocol="icmp", to_address=NS_IP),
]
# Greets each connection with the banner given on its command line and a CR LF, as an SSH server does.
BANNER_SERVER = """import socket, sys, threading
def serve(connection):
    with connection:
        connection.sendall(sys.argv[2].encode() + b"\\r\\n")
        connection.recv(1024)
server = socket.create_server(("", int(sys.argv[1])))
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""
SETTINGS = {"expose_services": [SERVICE], "expose_verify_retries": 0, "expose_verify_timeout": 1}
# What a failed verify ends with: one line per failure, then where to look on the master.
REPORT = [
    "1 of 4 checks failed:",
    f"master master: udp port {DEAD_PORT} (vfy-web) failed: connection refused",
    "Where to look next, as root on master master:",
    f"  nft list ruleset | grep vfy-web-udp-{DEAD_PORT}  # is the mapping there?",
    "  ip netns exec vfy ss -ltnu                 # does anything listen in vfy?",
    "  ip netns exec vfy ip route                 # has vfy its default route?",
    'Or see where each failed flow stops, and why, hop by hop (see "Explaining a mapping" in the README):',
    # The inventory verify ran with: the command runs as it is.
    "  ansible-playbook -i {inventory} netns.expose.explain -e expose_explain_masters=master "
    f"-e expose_explain_mappings={DEAD_PORT}",
]


def report(inventory):
    return "\n".join(REPORT).replace("{inventory}", str(inventory))


@pytest.fixture(scope="module")
def one_dead_port(lab, modules):
    """The service's pair and mappings on the master, its HTTP server up, nothing on its udp port."""
    with contextlib.ExitStack() as stack:
        stack.callback(scrub_netfilter, lab)
        stack.callback(modules.run_module, MASTER, "netns.expose.netns_veth", {**PAIR, "state": "absent"})
        stack.callback(modules.run_module, MASTER, "netns.expose.dnat_rule",
                       {"rules": [{"name": m["name"]} for m in MAPPINGS], "state": "absent"})
        scrub_netfilter(lab)
        made = modules.run_module(MASTER, "netns.expose.netns_veth", PAIR)
        assert not made["failed"], made
        for script, port, text in ((HTTP_SERVER, WEB_NS_PORT, DEMO_REPLY), (BANNER_SERVER, BANNER_NS_PORT, BANNER)):
            # ip netns exec execs the server (no fork): the pid is the server's.
            server = subprocess.Popen(
                lab.command(MASTER, ["ip", "netns", "exec", NETNS, "python3", "-c", script, str(port), text]),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            stack.callback(server.wait)
            stack.callback(server.kill)
        deadline = time.monotonic() + 10
        while not all(sh(lab, "ip", "netns", "exec", NETNS, "ss", "-Hltn", f"sport = :{port}").strip()
                      for port in (WEB_NS_PORT, BANNER_NS_PORT)):
            assert time.monotonic() < deadline, "the servers in vfy do not listen"
            time.sleep(0.1)
        rules = [dict(m, destination=MASTER_IP, in_interface="eth0") for m in MAPPINGS]
        added = modules.run_module(MASTER, "netns.expose.dnat_rule", {"rules": rules})
        assert not added["failed"], added
        yield


def verify_with_the_default_callback(ansible, extra_vars_file):
    """verify.yml as a user runs it (the default stdout callback); its stdout."""
    env = {key: value for key, value in ansible.env.items() if key not in ("ANSIBLE_STDOUT_CALLBACK",)}
    env.update(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_NOCOLOR="1")
    done = subprocess.run(["ansible-playbook", "-i", str(ansible.inventory), str(VERIFY), "-e", f"@{extra_vars_file}"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode != 0, done.stdout
    return done.stdout


def test_a_failed_verify_ends_with_one_line_per_failure_and_where_to_look(one_dead_port, ansible):
    run = ansible.run_playbook(VERIFY, extra_vars=SETTINGS)
    assert failures(run) == [("Every check passed", report(ansible.inventory))], failures(run)


def test_the_summary_shows_the_reply_as_the_service_sent_it(one_dead_port, ansible, tmp_path):
    extra_vars = tmp_path / "settings.json"
    extra_vars.write_text(json.dumps(SETTINGS), encoding="utf-8")
    stdout = verify_with_the_default_callback(ansible, extra_vars)
    lines = stdout.splitlines()
    row = re.compile(r"^master +vfy-web +tcp +http +18290 +ok +\d+\.\d ms  (.*)$")
    replies = [match.group(1) for match in map(row.match, lines) if match]
    assert replies == [DEMO_REPLY], stdout  # {"Age":12,...}, not {\"Age\":12,...}
    assert any(re.fullmatch(rf"master +vfy-web +udp +udp +{DEAD_PORT} +FAILED +- +connection refused", line)
               for line in lines), stdout
    # The port's check reached the module: a tcp check, its reply on one line (the banner ends with CR LF).
    assert any(re.fullmatch(rf"master +vfy-web +tcp +tcp +{BANNER_PORT} +ok +\d+\.\d ms  {BANNER}", line)
               for line in lines), stdout
    # The failure, as the default callback shows it: the report as it is, one line per failure.
    start = lines.index("[ERROR]: Task failed: Action failed: " + REPORT[0])
    assert lines[start + 1:start + len(REPORT)] == report(ansible.inventory).splitlines()[1:], stdout


# The web port open to the master itself only: the slave is a client its allowed_sources leaves out.
LISTED = [f"{MASTER_IP}/32"]
LISTED_SETTINGS = {**SETTINGS, "expose_services": [dict(SERVICE, ports=[
    dict(SERVICE["ports"][0], allowed_sources=LISTED), *SERVICE["ports"][1:]])]}


def test_a_slave_outside_allowed_sources_must_be_denied_and_is_shown_denied_as_declared(one_dead_port, lab, modules, ansible):
    # The master does not enforce the list yet: the slave gets through, and verify fails naming why.
    run = ansible.run_playbook(VERIFY, extra_vars=LISTED_SETTINGS)
    [(task, message)] = failures(run)
    assert task == "Every check passed" and message.startswith("2 of 4 checks failed:"), message
    assert (f"master master: tcp port {WEB_PORT} (vfy-web) failed: answered (HTTP 200), though source "
            f"10.211.55.123 is not in the allowed_sources of vfy-web") in message.splitlines(), message
    # The master enforces it: the slave is denied, as declared; only the dead udp port fails.
    rules = [dict(m, destination=MASTER_IP, in_interface="eth0") for m in MAPPINGS]
    rules[0].update(allowed_sources=LISTED, local=True)
    try:
        changed = modules.run_module(MASTER, "netns.expose.dnat_rule", {"rules": rules})
        assert not changed["failed"] and changed["changed"], changed
        run = ansible.run_playbook(VERIFY, extra_vars=LISTED_SETTINGS)
        assert failures(run) == [("Every check passed", report(ansible.inventory))], failures(run)
        probe = [result for play in run["plays"] for task in play["tasks"] if task["task"]["name"].startswith("Probe every")
                 for result in task["hosts"].values()]
        [web] = [check for check in probe[0]["results"] if check["port"] == WEB_PORT]
        assert web["ok"] and web["denied"] and web["detail"].startswith(
            "denied as declared: source 10.211.55.123 is not in the allowed_sources of vfy-web"), web
        # The master itself, which the list lets in, still gets the service (the control of the denial).
        assert DEMO_REPLY in sh(lab, "curl", "-s", "-m", "3", f"http://{MASTER_IP}:{WEB_PORT}/")
    finally:
        for key in ("allowed_sources", "local"):
            rules[0].pop(key)
        assert not modules.run_module(MASTER, "netns.expose.dnat_rule", {"rules": rules})["failed"]


def test_the_summary_shows_a_denied_slave_as_denied(one_dead_port, modules, ansible, tmp_path):
    rules = [dict(m, destination=MASTER_IP, in_interface="eth0") for m in MAPPINGS]
    rules[0]["allowed_sources"] = LISTED
    extra_vars = tmp_path / "settings.json"
    extra_vars.write_text(json.dumps(LISTED_SETTINGS), encoding="utf-8")
    try:
        assert not modules.run_module(MASTER, "netns.expose.dnat_rule", {"rules": rules})["failed"]
        stdout = verify_with_the_default_callback(ansible, extra_vars)  # fails: the dead udp port
    finally:
        rules[0].pop("allowed_sources")
        assert not modules.run_module(MASTER, "netns.expose.dnat_rule", {"rules": rules})["failed"]
    # The reply column is cut at 100 characters.
    assert any(re.match(rf"master +vfy-web +tcp +http +{WEB_PORT} +denied +- +denied as declared: source "
                        r"10\.211\.55\.123 is not in the allowed_sources of vfy-web \(timed out", line)
               for line in stdout.splitlines()), stdout
