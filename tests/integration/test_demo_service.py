"""The role's demo service (roles/expose/tasks/demo_service.yml) in a lab host's ns1.

This machine's PID 1 is not systemd, so the lab hosts run the supervised-process variant:
start-stop-daemon, a supervisor in ns1 that restarts the service, pidfile and state file
under /run/netns-expose-demo/net-<inode of the host's network namespace>/. The systemd
variant cannot run here: its unit template is rendered with jinja2 and checked by
systemd-analyze verify instead (the test_unit_* tests).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jinja2
import pytest
from master_host import DEMO_REPLY as REPLY, MASTER, RECIPE_PAIR as VETH, sh

HERE = Path(__file__).resolve().parent
ROLE = HERE.parents[1] / "roles" / "expose"
UDP_ECHO = HERE / "udp_echo.py"
SLAVE = "slave"
NETNS = "ns1"
NS_IP = "10.244.1.2"
STATE_ROOT = "/run/netns-expose-demo"
WEB = {"name": "web", "netns": NETNS, "tcp_ports": [9090, 9091], "udp_ports": [5353]}
DNS = {"name": "dns", "netns": NETNS, "tcp_ports": [], "udp_ports": [53]}

# demo_state present makes ns1 first; absent with demo_remove_netns removes it last.
PLAYBOOK = f"""
- name: The demo service in {NETNS}
  hosts: "{{{{ demo_hosts }}}}"
  become: true
  gather_facts: false
  tasks:
    - name: Make {NETNS} behind veth1b
      netns.expose.netns_veth: {json.dumps(VETH)}
      when: demo_state == "present"

    - name: Converge the demo services
      ansible.builtin.include_role:
        name: netns.expose.expose
        tasks_from: demo_service
      vars:
        __expose_demo_instances: "{{{{ demo_instances }}}}"
        __expose_demo_state: "{{{{ demo_state }}}}"

    - name: Remove {NETNS}
      netns.expose.netns_veth: {json.dumps({**VETH, "state": "absent"})}
      when: demo_state == "absent" and demo_remove_netns
"""


class Demo:
    """Runs the demo playbook on lab hosts and looks at what it left there."""

    def __init__(self, lab, run_playbook):
        self.lab = lab
        self.run_playbook = run_playbook

    def converge(self, instances, state="present", check=False, hosts=(MASTER,), remove_netns=False):
        """Run the playbook; fail on any failure; return whether the demo tasks changed anything."""
        run = self.run_playbook(PLAYBOOK, extra_vars={"demo_hosts": ",".join(hosts), "demo_instances": instances,
                                                      "demo_state": state, "demo_remove_netns": remove_netns},
                                check=check)
        for host in hosts:
            stats = run["stats"].get(host, {})
            assert stats and not stats["failures"] and not stats["unreachable"], json.dumps(run, indent=2)
        results = [result for play in run["plays"] for task in play["tasks"] for host, result in task["hosts"].items()
                   if result.get("action") != "netns.expose.netns_veth"]
        return any(result.get("changed") for result in results)

    def state_dir(self, host=MASTER):
        """Where the host keeps its demo services' pidfiles: keyed by its network namespace."""
        inode = sh(self.lab, "stat", "-L", "-c", "%i", "/proc/self/ns/net", host=host).strip()
        return Path(STATE_ROOT) / f"net-{inode}"

    def supervisor(self, name, host=MASTER):
        return int((self.state_dir(host) / f"{name}.pid").read_text(encoding="utf-8"))

    def pids(self, host=MASTER):
        """The processes in the host's ns1."""
        return [int(pid) for pid in sh(self.lab, "ip", "netns", "pids", NETNS, host=host).split()]

    def service(self, name, host=MASTER):
        """The pid of the service the supervisor of an instance runs (its child in ns1), or None."""
        supervisor = self.supervisor(name, host)
        children = [pid for pid in self.pids(host) if parent(pid) == supervisor]
        assert len(children) <= 1, children
        return children[0] if children else None

    def http(self, port, host=MASTER):
        """GET / on ns1's address from the host itself: the body, or None."""
        done = self.lab.exec(host, ["curl", "-s", "-m", "3", f"http://{NS_IP}:{port}/some/path"])
        return done.stdout if done.returncode == 0 else None

    def udp(self, port, host=MASTER):
        """The reply to one datagram to ns1's address, or None."""
        done = self.lab.exec(host, ["python3", str(UDP_ECHO), "ask", NS_IP, str(port), "hello"])
        return done.stdout.strip() if done.returncode == 0 else None


def parent(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def eventually(probe, timeout=10.0):
    """probe() once it is truthy, polling for up to timeout seconds; the last falsy value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture
def demo(lab, run_playbook):
    """A Demo; every instance the tests use, and ns1, are removed afterwards on both lab hosts."""
    helper = Demo(lab, run_playbook)
    try:
        yield helper
    finally:
        try:
            helper.converge([WEB, DNS], state="absent", hosts=(MASTER, SLAVE), remove_netns=True)
        finally:
            for host in (MASTER, SLAVE):
                # Whatever a failed cleanup left: only this lab's own processes and files.
                lab.exec(host, ["sh", "-c", f"ip netns pids {NETNS} | xargs -r kill -9"])
                shutil.rmtree(helper.state_dir(host), ignore_errors=True)
                lab.exec(host, ["ip", "netns", "del", NETNS])


def test_serves_http_and_udp_on_every_port_and_converges_once(demo):
    assert demo.converge([WEB]) is True
    assert demo.http(9090) == REPLY
    assert demo.http(9091) == REPLY
    assert demo.udp(5353) == REPLY
    assert demo.http(9092) is None, "a port that was not asked for answers"
    supervisor, service = demo.supervisor("web"), demo.service("web")
    assert sorted(demo.pids()) == sorted([supervisor, service]), "not one supervisor and one service in ns1"

    assert demo.converge([WEB]) is False
    assert (demo.supervisor("web"), demo.service("web")) == (supervisor, service), "restarted by a run that changed nothing"


def test_a_killed_service_is_started_again(demo):
    assert demo.converge([WEB]) is True
    supervisor, service = demo.supervisor("web"), demo.service("web")
    os.kill(service, signal.SIGKILL)
    assert eventually(lambda: demo.http(9090) == REPLY and demo.udp(5353) == REPLY, timeout=8)
    assert demo.supervisor("web") == supervisor
    assert demo.service("web") not in (None, service)
    assert demo.converge([WEB]) is False


def test_a_killed_supervisor_takes_its_service_along_and_the_next_run_starts_both(demo):
    assert demo.converge([WEB]) is True
    os.kill(demo.supervisor("web"), signal.SIGKILL)
    assert eventually(lambda: not demo.pids(), timeout=5) is True, "the service outlived its supervisor"
    assert demo.http(9090) is None

    assert demo.converge([WEB]) is True
    assert demo.http(9090) == REPLY


def test_other_ports_restart_the_service_with_them(demo):
    assert demo.converge([WEB]) is True
    before = demo.supervisor("web")
    moved = {**WEB, "tcp_ports": [9092], "udp_ports": [5354]}

    assert demo.converge([moved]) is True
    assert demo.supervisor("web") != before
    assert (demo.http(9092), demo.udp(5354)) == (REPLY, REPLY)
    assert (demo.http(9090), demo.http(9091), demo.udp(5353)) == (None, None, None)
    assert len(demo.pids()) == 2, "the old service is still in ns1"
    assert demo.converge([moved]) is False


def test_check_mode_reports_changes_and_makes_none(demo):
    assert demo.converge([]) is False  # ns1 only
    assert demo.converge([WEB], check=True) is True
    assert demo.pids() == [], "check mode started something"
    assert not demo.state_dir().exists(), "check mode wrote files"

    assert demo.converge([WEB]) is True
    supervisor = demo.supervisor("web")
    assert demo.converge([{**WEB, "tcp_ports": [9092]}], check=True) is True
    assert demo.converge([WEB], state="absent", check=True) is True
    assert demo.supervisor("web") == supervisor
    assert demo.http(9090) == REPLY
    assert demo.converge([WEB], check=True) is False


def test_absent_stops_every_process_and_removes_the_files(demo):
    assert demo.converge([WEB, DNS]) is True
    assert (demo.http(9090), demo.udp(53)) == (REPLY, REPLY)  # 53: below 1024, as root here
    assert len(demo.pids()) == 4

    assert demo.converge([WEB, DNS], state="absent") is True
    assert demo.pids() == [], "processes left in ns1"
    assert not demo.state_dir().exists(), "pidfiles, state files or the script left"
    assert (demo.http(9090), demo.udp(53)) == (None, None)
    assert demo.converge([WEB, DNS], state="absent") is False


def test_present_stops_an_instance_without_ports_and_keeps_the_others(demo):
    assert demo.converge([WEB, DNS]) is True
    assert demo.converge([WEB, {**DNS, "udp_ports": []}]) is True
    assert not (demo.state_dir() / "dns.pid").exists()
    assert demo.udp(53) is None
    assert demo.http(9090) == REPLY
    assert len(demo.pids()) == 2


def test_hosts_that_share_run_keep_their_own_services(demo):
    """The lab's master and slave share /run and the PID namespace: the same instance runs in each one's ns1."""
    assert demo.converge([WEB], hosts=(MASTER, SLAVE)) is True
    assert demo.state_dir(MASTER) != demo.state_dir(SLAVE)
    assert demo.supervisor("web", MASTER) != demo.supervisor("web", SLAVE)
    assert demo.http(9090, host=MASTER) == demo.http(9090, host=SLAVE) == REPLY

    assert demo.converge([WEB], state="absent", hosts=(MASTER,)) is True
    assert demo.pids(MASTER) == []
    assert demo.http(9090, host=SLAVE) == REPLY
    assert len(demo.pids(SLAVE)) == 2
    assert demo.converge([WEB], hosts=(SLAVE,)) is False


def test_a_missing_namespace_fails_naming_the_instance(demo):
    run = demo.run_playbook(PLAYBOOK.replace('when: demo_state == "present"', "when: false"), extra_vars={
        "demo_hosts": MASTER, "demo_instances": [{**WEB, "netns": "nsmissing"}], "demo_state": "present",
        "demo_remove_netns": False})
    failed = [item for play in run["plays"] for task in play["tasks"] for result in task["hosts"].values()
              for item in result.get("results", [result]) if item.get("failed")]
    assert [item["msg"] for item in failed] == ["demo service web: its netns nsmissing does not exist (no /run/netns/nsmissing)"]
    assert not demo.state_dir().exists()


# The systemd variant: rendered as the template module does (trim_blocks), with the values
# tasks/demo_service.yml gives it; the port options are the ones the tests above serve.
def render_unit(instance, port_args):
    environment = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string((ROLE / "templates" / "netns-expose-demo.service.j2").read_text(encoding="utf-8"))
    return template.render(__expose_demo_instance=instance, __expose_demo_python="/usr/bin/python3",
                           __expose_demo_script="/usr/local/libexec/netns-expose-demo/demo_service.py",
                           __expose_demo_port_args=port_args)


def settings(unit):
    """{key: [values]} of a unit file."""
    found = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_joins_the_namespace_and_runs_the_service_on_its_ports():
    unit = settings(render_unit(WEB, ["--tcp", "9090", "--tcp", "9091", "--udp", "5353"]))
    assert unit["NetworkNamespacePath"] == ["/run/netns/ns1"]
    assert unit["ExecStart"] == ["/usr/bin/python3 /usr/local/libexec/netns-expose-demo/demo_service.py "
                                 "--tcp 9090 --tcp 9091 --udp 5353"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["DynamicUser"] == ["yes"]
    # No port below 1024: no capability at all.
    assert unit["CapabilityBoundingSet"] == [""]
    assert "AmbientCapabilities" not in unit


def test_unit_may_bind_ports_below_1024_only_when_it_has_one():
    unit = settings(render_unit(DNS, ["--udp", "53"]))
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]


def test_unit_escapes_percent_signs_in_the_namespace_name():
    unit = settings(render_unit({**WEB, "netns": "ns%1"}, ["--tcp", "9090"]))
    assert unit["NetworkNamespacePath"] == ["/run/netns/ns%%1"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    path = tmp_path / "netns-expose-demo-dns.service"
    path.write_text(render_unit(DNS, ["--udp", "53"]), encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False)
    # verify exits 0 on unknown or malformed settings too; it names them on stderr.
    assert done.returncode == 0 and path.name not in done.stderr, done.stderr
