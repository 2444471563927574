# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab (tests/lab/nslab.py) and the netns.expose.nsenter connection plugin.

Only addresses of the lab's own LAN are used. Tests that take a lab down or break
it use labs of their own (make_lab), never the session lab.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import nslab

MASTER, SLAVE = "master", "slave"
MASTER_IP = "10.211.55.122"


def machine_netns_list():
    """`ip netns list` of the machine (read only)."""
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def lab_mounts(lab):
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return [line for line in mountinfo if lab.dir in line]


def ok(done):
    """stdout of a CompletedProcess that must have succeeded."""
    assert done.returncode == 0, f"{done.args} failed ({done.returncode}): {done.stderr}"
    return done.stdout


def task_result(run, host, play=0, task=-1):
    return run["plays"][play]["tasks"][task]["hosts"][host]


def nslab_cli(env, *args):
    return subprocess.run(["python3", nslab.__file__, *args], env=env, capture_output=True, text=True, check=False)


def warnings(removed):
    return [item for item in removed if item.startswith("warning")]


# The lab


def test_up_again_changes_nothing(lab):
    assert lab.up() == []
    assert lab.status().count(" up") == 1 + len(lab.hosts)


def test_cli_up_again_says_nothing_changed(lab, lab_inventory, ansible_env):
    done = nslab_cli(ansible_env, "up", "-i", str(lab_inventory))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"lab {lab.name}: already up, nothing changed"


def test_cli_status_of_a_host_answers_with_its_exit_status(lab, lab_inventory, ansible_env, make_lab, tmp_path):
    done = nslab_cli(ansible_env, "status", "-i", str(lab_inventory), MASTER)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[::3] == [MASTER, "up"]
    # A lab that is not up: 3, as `systemctl is-active` says of a unit that does not run.
    down_lab = make_lab("st")
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"vars": {"lab_name": down_lab.name}, "hosts": {
        name: {"lab_address": host.address} for name, host in down_lab.hosts.items()}}}), encoding="utf-8")
    done = nslab_cli(ansible_env, "status", "-i", str(inventory), MASTER)
    assert done.returncode == nslab.STATUS_DOWN == 3, done.stderr
    assert done.stdout.splitlines()[1].split()[-1] == "down"
    assert nslab_cli(ansible_env, "status", "-i", str(inventory), "nohost").returncode == 1


def test_each_host_sees_only_its_own_interface_address_and_hostname(lab, host_exec):
    for name, host in lab.hosts.items():
        assert ok(host_exec(name, ["hostname"])).strip() == name
        links = {link["ifname"]: link for link in json.loads(ok(host_exec(name, ["ip", "-4", "-j", "addr", "show"])))}
        assert sorted(links) == ["eth0", "lo"]
        assert [f"{a['local']}/{a['prefixlen']}" for a in links["eth0"]["addr_info"]] == [host.address]
        # A sysfs of its own: Ansible's facts read the interfaces there.
        assert sorted(ok(host_exec(name, ["ls", "/sys/class/net"])).split()) == ["eth0", "lo"]
        routes = json.loads(ok(host_exec(name, ["ip", "-j", "route", "show", "default"])))
        assert [route["gateway"] for route in routes] == [lab.gateway.split("/")[0]]


def test_each_host_has_a_private_run_netns(host_exec):
    machine_before = machine_netns_list()
    try:
        ok(host_exec(MASTER, ["ip", "netns", "add", "ns1"]))
        assert ok(host_exec(MASTER, ["ip", "netns", "list"])).split()[0] == "ns1"
        assert ok(host_exec(SLAVE, ["ip", "netns", "list"])) == ""
        assert machine_netns_list() == machine_before
        # The slave can have an ns1 of its own.
        ok(host_exec(SLAVE, ["ip", "netns", "add", "ns1"]))
        ns1_inodes = {ok(host_exec(h, ["stat", "-L", "-c", "%i", "/run/netns/ns1"])) for h in (MASTER, SLAVE)}
        assert len(ns1_inodes) == 2
    finally:
        for host in (MASTER, SLAVE):
            host_exec(host, ["ip", "netns", "del", "ns1"])


def test_slave_reaches_master_over_the_lan(host_exec):
    ok(host_exec(SLAVE, ["ping", "-c", "1", "-W", "2", MASTER_IP]))


def test_the_lan_routes_nowhere_and_the_machine_gets_no_lab_link(lab):
    lan = ["nsenter", f"--net={lab.lan_namespace}", "--"]
    routes = json.loads(ok(subprocess.run([*lan, "ip", "-j", "route", "show", "table", "all"],
                                          capture_output=True, text=True, check=False)))
    assert not [route for route in routes if route["dst"] == "default"]
    machine_links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    for host in lab.hosts.values():
        assert host.lan_port not in machine_links


# The connection plugin


def test_connection_runs_commands_in_the_lab_host(lab, ansible):
    for name in lab.hosts:
        result = ansible.run_module(name, "ansible.builtin.command", {"argv": ["hostname"]})
        assert not result["failed"], result
        assert result["stdout"] == name


def test_module_args_reach_the_module_untemplated(ansible):
    result = ansible.run_module(MASTER, "ansible.builtin.command", {"argv": ["echo", "{{ 1 + 1 }} 'quoted' \"double\""]})
    assert result["stdout"] == "{{ 1 + 1 }} 'quoted' \"double\""


def test_become_true_works_without_sudo(run_playbook):
    run = run_playbook("""
- hosts: master
  gather_facts: false
  become: true
  tasks:
    - ansible.builtin.command: id -u
""")
    result = task_result(run, MASTER)
    assert not result.get("failed"), result
    assert result["stdout"] == "0"


def test_become_another_user_runs_the_become_method_inside_the_host(run_playbook):
    run = run_playbook("""
- hosts: master
  gather_facts: false
  become: true
  become_method: ansible.builtin.su
  become_user: nobody
  become_flags: -s /bin/sh
  tasks:
    - ansible.builtin.raw: id -un; hostname
""")
    result = task_result(run, MASTER)
    assert not result.get("failed"), result
    assert result["stdout_lines"] == ["nobody", MASTER]


def test_pipelining_and_facts_see_the_lab_host(run_playbook):
    run = run_playbook("""
- hosts: slave
  gather_facts: true
  gather_subset: [network]
  vars:
    ansible_pipelining: true
  tasks:
    - ansible.builtin.debug:
        msg: "{{ ansible_facts.hostname }} {{ ansible_facts.interfaces | sort }} {{ ansible_facts.default_ipv4.address }}"
""")
    result = task_result(run, SLAVE)
    assert result["msg"] == "slave ['eth0', 'lo'] 10.211.55.123", result


def test_copy_and_fetch_round_trip_through_the_host_mount_namespace(host_exec, run_playbook, tmp_path):
    payload = os.urandom(300_000)  # several dd blocks, and bytes that are not text
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    remote = "/run/netns/lab-copy-test.bin"  # in the master's private /run/netns
    try:
        run = run_playbook(f"""
- hosts: master
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        src: {source}
        dest: {remote}
        mode: "0600"
    - ansible.builtin.fetch:
        src: {remote}
        dest: {tmp_path}/fetched/
        flat: true
""")
        assert task_result(run, MASTER, task=0)["changed"] is True
        assert not task_result(run, MASTER, task=1).get("failed"), task_result(run, MASTER, task=1)
        assert (tmp_path / "fetched" / "lab-copy-test.bin").read_bytes() == payload
        assert ok(host_exec(MASTER, ["sha256sum", remote])).split()[0] == hashlib.sha256(payload).hexdigest()
        assert not os.path.exists(remote), "the file landed in the machine's /run/netns"
        assert host_exec(SLAVE, ["test", "-e", remote]).returncode == 1
    finally:
        host_exec(MASTER, ["rm", "-f", remote])


def test_copy_into_a_missing_directory_fails_clearly(ansible, tmp_path):
    source = tmp_path / "small.txt"
    source.write_text("x\n", encoding="utf-8")
    result = ansible.run_module(MASTER, "ansible.builtin.copy", {"src": str(source), "dest": "/nonexistent-dir/small.txt"})
    assert result["failed"] is True
    assert "/nonexistent-dir" in result["msg"]


# Loads the plugin as ansible-playbook would, in a process of its own, and reports
# what each call returns or raises.
CONNECTION_PROBE = """
import json, sys
from ansible.errors import AnsibleError
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader, init_plugin_loader

init_plugin_loader()
host_vars, workdir = json.loads(sys.argv[1])
connection = connection_loader.get("netns.expose.nsenter", PlayContext())
connection.set_options(var_options=host_vars)
calls = {
    "exec with stdin": lambda: connection.exec_command("cat; hostname", in_data=b"piped\\n"),
    "put a missing local file": lambda: connection.put_file(workdir + "/missing", "/tmp/x"),
    "put into a missing directory": lambda: connection.put_file(sys.argv[0], "/nonexistent-dir/x"),
    "fetch a missing file": lambda: connection.fetch_file("/nonexistent-dir/x", workdir + "/fetched"),
}
outcomes = {}
for name, call in calls.items():
    try:
        rc, stdout, stderr = call() or (None, b"", b"")
        outcomes[name] = {"rc": rc, "stdout": stdout.decode()}
    except AnsibleError as exc:
        outcomes[name] = {"error": type(exc).__name__, "msg": exc.message}
connection.close()
print(json.dumps(outcomes))
"""


def test_connection_plugin_calls_and_their_errors(lab, ansible_env, tmp_path):
    host = lab.hosts[MASTER]
    host_vars = {"ansible_host": host.ns("net"), "ansible_nsenter_mount_namespace": host.ns("mnt"),
                 "ansible_nsenter_uts_namespace": host.ns("uts")}
    probe = tmp_path / "probe.py"
    probe.write_text(CONNECTION_PROBE, encoding="utf-8")
    done = subprocess.run(["python3", str(probe), json.dumps([host_vars, str(tmp_path)])],
                          env=ansible_env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)
    assert outcomes["exec with stdin"] == {"rc": 0, "stdout": f"piped\n{MASTER}\n"}
    assert outcomes["put a missing local file"]["error"] == "AnsibleFileNotFound"
    assert outcomes["put a missing local file"]["msg"].startswith(f"file or module does not exist: {tmp_path}/missing")
    assert outcomes["put into a missing directory"] == {
        "error": "AnsibleError",
        "msg": f"failed to transfer {probe} to /nonexistent-dir/x in the namespace: "
               "dd: failed to open '/nonexistent-dir/x': No such file or directory"}
    assert outcomes["fetch a missing file"]["msg"] == (
        "failed to fetch /nonexistent-dir/x from the namespace: dd: failed to open '/nonexistent-dir/x': No such file or directory")
    assert not (tmp_path / "fetched").exists()


def test_a_missing_namespace_is_reported_as_unreachable(run_playbook):
    run = run_playbook("""
- hosts: master
  gather_facts: false
  vars:
    ansible_host: /run/netns-expose-lab/no-such-lab/master/net
  tasks:
    - ansible.builtin.command: hostname
""")
    result = task_result(run, MASTER)
    assert result.get("unreachable") is True
    assert "net namespace file /run/netns-expose-lab/no-such-lab/master/net does not exist" in result["msg"]


# Taking labs down


def assert_lab_gone(lab, held, machine_netns_before):
    """Nothing of the lab is left; held: its namespaces (Lab.holding), so that no other takes their inode numbers."""
    assert held.keys, "the lab has no namespaces to check"
    assert not os.path.exists(lab.dir)
    assert lab_mounts(lab) == []
    inodes = {inode for _device, inode in held.keys}
    in_lab = [pid for pid in os.listdir("/proc") if pid.isdigit() and nslab.process_namespaces(pid) & inodes]
    assert in_lab == [], f"processes left in the lab: {in_lab}"
    assert nslab.processes_pinning(held.keys) == [], "mount namespaces still hold lab namespaces"
    assert machine_netns_list() == machine_netns_before
    assert lab.down() == [], "a second down found something left"


def test_down_removes_every_namespace_process_and_mount(make_lab):
    machine_before = machine_netns_list()
    doomed = make_lab("d")
    doomed.up()
    ok(doomed.exec(MASTER, ["ip", "netns", "add", "ns1"]))
    # A server the way a playbook starts one: in ns1, inside the lab master.
    sleeper = subprocess.Popen(doomed.command(MASTER, ["ip", "netns", "exec", "ns1", "sleep", "1000"]))
    try:
        ns1 = int(ok(doomed.exec(MASTER, ["stat", "-L", "-c", "%i", "/run/netns/ns1"])))
        # What the lab's demo services keep for the host (tests/lab/demo_runner.py): in its directory.
        host_files = Path(doomed.hosts[MASTER].dir) / "demo"
        host_files.mkdir()
        (host_files / "web.json").write_text("{}\n")
        with doomed.holding() as held:
            assert ns1 in {inode for _device, inode in held.keys}
            assert sleeper.poll() is None
            removed = doomed.down()
            assert sleeper.wait(timeout=10) == -signal.SIGKILL
            assert any(item.endswith(" processes") for item in removed) and {"lan", MASTER, SLAVE} <= set(removed)
            assert warnings(removed) == []
            assert_lab_gone(doomed, held, machine_before)
        assert not host_files.exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def half_build(lab, monkeypatch):
    """An up that fails after the LAN and the master, with the slave's namespaces half made."""
    build_host = nslab.Lab._build_host

    def fail_on_the_slave(self, host):
        if host.name == SLAVE:
            self._make_namespaces({"net": host.ns("net")}, "true")
            raise nslab.LabError("simulated failure")
        build_host(self, host)

    with monkeypatch.context() as patch:
        patch.setattr(nslab.Lab, "_build_host", fail_on_the_slave)
        with pytest.raises(nslab.LabError, match="simulated failure"):
            lab.up()
    assert os.path.exists(lab.hosts[SLAVE].ns("net")) and not os.path.exists(lab.hosts[SLAVE].ns("mnt"))


def test_down_after_a_half_built_lab_cleans_up_fully(make_lab, monkeypatch):
    machine_before = machine_netns_list()
    broken = make_lab("h")
    half_build(broken, monkeypatch)
    with broken.holding() as held:
        broken.down()
        assert_lab_gone(broken, held, machine_before)


def test_up_completes_a_half_built_lab(make_lab, monkeypatch):
    partial = make_lab("p")
    half_build(partial, monkeypatch)
    assert partial.up() == [f"host slave ({partial.hosts[SLAVE].address} on eth0)"]
    assert partial.up() == []
    ok(partial.exec(SLAVE, ["ping", "-c", "1", "-W", "2", MASTER_IP]))
    assert ok(partial.exec(SLAVE, ["hostname"])).strip() == SLAVE


def test_cli_down_by_lab_name_needs_no_inventory(make_lab, ansible_env):
    lab = make_lab("c")
    lab.up()
    machine_before = machine_netns_list()
    with lab.holding() as held:
        done = nslab_cli(ansible_env, "down", "--lab", lab.name)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"lab {lab.name}: removed ") and "warning" not in done.stdout
        assert_lab_gone(lab, held, machine_before)


def test_a_lab_does_not_keep_another_labs_namespaces_alive(make_lab):
    first, second = make_lab("a"), make_lab("b")
    first.up()
    second.up()  # its hosts' mount namespaces start as copies of the machine's, first's files included
    sleeper = subprocess.Popen(second.command(MASTER, ["sleep", "1000"]))
    try:
        with first.holding() as held:
            assert warnings(first.down()) == []
            assert nslab.processes_pinning(held.keys) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_down_names_exactly_the_processes_that_pin_its_namespaces(make_lab, monkeypatch, tmp_path):
    """Positive control: a namespace file of the lab bound outside the lab's directory keeps it alive.

    The check runs while down still holds the lab's namespaces, so that none of their inode
    numbers can have gone to a namespace of another lab (another lab is up meanwhile), and
    it compares each mount's device and inode, not a text in the line.
    """
    pinned, other = make_lab("pin"), make_lab("oth")
    pinned.up()
    other.up()
    pin = tmp_path / "pin"
    pin.touch()
    # In a mount namespace of its own, so that this machine's mounts stay as they are.
    pinner = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",  # pylint: disable=consider-using-with
                               'mount --bind "$1" "$2" && exec sleep 1000', "sh", pinned.hosts[MASTER].ns("net"), str(pin)])
    held_during_check = []
    check = nslab.processes_pinning

    def recording(keys):
        open_files = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the directory's own fd is gone
                open_files.add(nslab.namespace_key(os.stat(f"/proc/self/fd/{fd}")))
        held_during_check.append({inode for device, inode in keys if (device, inode) in open_files})
        return check(keys)

    try:
        lab_files = set(nslab.bound_namespaces(nslab.mount_table(), pinned.dir).values())
        assert eventually(lambda: str(pin) in Path(f"/proc/{pinner.pid}/mountinfo").read_text(encoding="utf-8"))
        monkeypatch.setattr(nslab, "processes_pinning", recording)
        removed = pinned.down()
        assert warnings(removed) == [f"warning: the mount namespaces of processes [{pinner.pid}] still pin lab namespaces"]
        assert held_during_check == [lab_files], "the lab's namespaces were not held while they were checked"
    finally:
        pinner.kill()
        pinner.wait()
        monkeypatch.undo()
    assert warnings(pinned.down()) == []


def eventually(probe, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
