"""playbooks/rollout.yml on a fleet of 20 namespace masters and 2 slaves.

The fleet is converged first (expose.yml and the demo services). Then the group's services
change (another published port), and the rollout takes the change to the fleet in the canary
batches of its default (1, 10%, 25%, 100%: 1, 2, 5 and 12 masters). A master of the second batch
is broken on purpose by a port of its own whose service does not listen: the rollout stops after
that batch, the batch is rolled back to exactly what it published before, and later batches are
not touched. The slaves show both. The rollout after the fix completes.
"""
from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import REPO, AnsibleRunner, failures, session_lab_name
from master_host import collection_text

import fleet
import nslab
from ansible_collections.netns.expose.plugins.plugin_utils._rollout import report

ROLLOUT = REPO / "playbooks" / "rollout.yml"
EXPOSE = REPO / "playbooks" / "expose.yml"
DEMO = REPO / "tests" / "lab" / "demo_services.yml"
MASTERS = 20
# The batches of the default serial on 20 masters.
BATCHES = [["m01"], ["m02", "m03"], ["m04", "m05", "m06", "m07", "m08"], [f"m{n:02d}" for n in range(9, 21)]]
BROKEN = "m03"  # in the second batch
# Reaches every (master, port) given on argv from a slave, side by side; prints {"master port": ok}.
REACH = """
import concurrent.futures, json, sys, urllib.request
def get(target):
    address, port = target.split()
    try:
        return target, "hello world" in urllib.request.urlopen(f"http://{address}:{port}/", timeout=2).read().decode()
    except Exception:
        return target, False
with concurrent.futures.ThreadPoolExecutor(32) as pool:
    print(json.dumps(dict(pool.map(get, sys.argv[1:]))))
"""


class Fleet:
    def __init__(self, lab, inventory, workdir, env, masters, slaves):
        self.lab, self.inventory, self.masters, self.slaves = lab, inventory, masters, slaves
        self.ansible = AnsibleRunner(inventory, workdir, env)

    def set_services(self, extra_port=None, broken=None):
        """The group's services (the recipe's, with one more TCP port), and a master with a port whose service
        does not listen (broken)."""
        inventory = yaml.safe_load(self.inventory.read_text(encoding="utf-8"))
        group = inventory["all"]["children"]["lab"]["children"]["masters"]
        services = fleet.recipe_services()
        if extra_port:
            services[0]["ports"].append({"protocol": "tcp", "host_port": extra_port, "ns_port": 9090, "expect": "hello world"})
        group["vars"]["expose_services"] = services
        for name, host in group["hosts"].items():
            host.pop("expose_services", None)
            if name == broken:
                mine = json.loads(json.dumps(services))
                mine[0]["ports"].append({"protocol": "tcp", "host_port": 8099, "ns_port": 9999, "expect": "hello world"})
                host["expose_services"] = mine
        self.inventory.write_text(yaml.safe_dump(inventory), encoding="utf-8")

    def set_host_var(self, host, name, value):
        """Set (value None: remove) a variable of one lab host in the fleet's inventory."""
        inventory = yaml.safe_load(self.inventory.read_text(encoding="utf-8"))
        groups = inventory["all"]["children"]["lab"]["children"]
        hostvars = next(group["hosts"][host] for group in groups.values() if host in group["hosts"])
        if value is None:
            hostvars.pop(name, None)
        else:
            hostvars[name] = value
        self.inventory.write_text(yaml.safe_dump(inventory), encoding="utf-8")

    def reach(self, slave, port, masters=None):
        """{master: whether the demo service answers on port of its address} from a slave."""
        masters = masters or list(self.masters)
        done = self.lab.exec(slave, ["python3", "-c", REACH, *(f"{self.masters[m]} {port}" for m in masters)])
        answers = json.loads(done.stdout)
        return {master: answers[f"{self.masters[master]} {port}"] for master in masters}

    def published(self, master):
        """What the collection has on a master: its netfilter (counters aside), its namespaces and their pairs."""
        netfilter = re.sub(r"counter packets \d+ bytes \d+", "counter", collection_text(self.lab, master))
        addresses = self.lab.exec(master, ["ip", "-4", "-o", "addr", "show", "dev", "veth1b"]).stdout
        namespaces = self.lab.exec(master, ["ip", "netns", "list"]).stdout
        return netfilter, addresses.split()[3:4], namespaces

    def rollout(self, *args, check=False):
        return self.ansible.run_playbook(ROLLOUT, check=check, extra_args=("-f", "20", *args))


@pytest.fixture(scope="module")
def fleet_lab(tmp_path_factory, ansible_env):
    workdir = tmp_path_factory.mktemp("rollout")
    inventory = workdir / "inventory.yml"
    masters, slaves = fleet.fleet_inventory(inventory, f"{session_lab_name()}-ro", MASTERS, slaves=2)
    lab = nslab.Lab.from_inventory(inventory)
    try:
        lab.up()
        made = Fleet(lab, inventory, workdir, ansible_env, masters, slaves)
        made.set_services(extra_port=8091)
        for playbook in (EXPOSE, DEMO):
            run = made.ansible.run_playbook(playbook, extra_args=("-f", "20"))
            assert not failures(run), failures(run)
        yield made
    finally:
        lab.down()


def report_of(run):
    """The rollout's report, made by the filter that the task "Report the rollout so far" prints it with, from
    the record of the batches."""
    batches = None
    for play in run["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] == "Record the batch":
                for result in task["hosts"].values():
                    batches = result.get("ansible_facts", {}).get("__rollout_batches", batches)
    return None if batches is None else report(batches)


def messages(run, name):
    return [result.get("msg") for play in run["plays"] for task in play["tasks"] if task["task"]["name"] == name
            for result in task["hosts"].values() if not result.get("skipped")]


def test_check_mode_prints_the_batches_and_what_each_master_would_change(fleet_lab):
    fleet_lab.set_services(extra_port=8092)
    before = {master: fleet_lab.published(master) for master in fleet_lab.masters}
    run = fleet_lab.rollout(check=True)
    assert not failures(run), failures(run)
    assert messages(run, "Say which masters the batch has") == [
        f"batch {number}: {', '.join(batch)}" for number, batch in enumerate(BATCHES, start=1)]
    would = messages(run, "Say what the master would change (check mode)")
    assert len(would) == MASTERS and all("add mapping http-web-tcp-8092" in line for line in would), would
    assert {master: fleet_lab.published(master) for master in fleet_lab.masters} == before, "check mode changed a master"


def test_a_clean_rollout_goes_batch_by_batch_and_every_slave_reaches_every_master(fleet_lab):
    fleet_lab.set_services(extra_port=8092)
    run = fleet_lab.rollout()
    assert not failures(run), failures(run)
    report = report_of(run)
    for number, batch in enumerate(BATCHES, start=1):
        assert re.search(rf"^batch {number}: passed, [0-9.]+ s, masters {', '.join(batch)}$", report, re.MULTILINE), report
    for slave in fleet_lab.slaves:
        assert all(fleet_lab.reach(slave, 8092).values()), fleet_lab.reach(slave, 8092)
        assert not any(fleet_lab.reach(slave, 8091).values()), "the port the change removed still answers"


def test_a_broken_master_stops_the_rollout_and_its_batch_is_rolled_back_exactly(fleet_lab):
    fleet_lab.set_services(extra_port=8093, broken=BROKEN)
    before = {master: fleet_lab.published(master) for master in fleet_lab.masters}
    run = fleet_lab.rollout()
    report = report_of(run)
    [(task, message)] = set(failures(run))
    assert task == "Stop the rollout at a failed batch" and "batch 2 failed: 1 of 2 masters" in message, failures(run)
    assert "batch 1: passed" in report and "batch 2: FAILED (1 of 2 masters)" in report and "batch 3" not in report
    for slave in fleet_lab.slaves:
        assert f"master {BROKEN}: tcp port 8099 (http-web) from slave {slave}: connection refused" in report, report
    for master in BATCHES[1]:
        assert re.search(rf"master {master}: rolled back, \d+ checks of the mappings put back answered", report), report

    after = {master: fleet_lab.published(master) for master in fleet_lab.masters}
    assert after["m01"] != before["m01"], "the first batch passed: it keeps the change"
    for master in BATCHES[1]:
        assert after[master] == before[master], f"{master} was not rolled back to exactly what it published"
    for batch in BATCHES[2:]:
        for master in batch:
            assert after[master] == before[master], f"{master} of a later batch was touched"
    for slave in fleet_lab.slaves:
        # The slaves see it: the old port answers again on the rolled-back batch (and on later batches), the
        # new one only on the first batch.
        assert fleet_lab.reach(slave, 8092) == {master: master != "m01" for master in fleet_lab.masters}
        assert fleet_lab.reach(slave, 8093) == {master: master == "m01" for master in fleet_lab.masters}


def test_the_rollout_after_the_fix_completes(fleet_lab):
    fleet_lab.set_services(extra_port=8093)
    run = fleet_lab.rollout()
    assert not failures(run), failures(run)
    assert "batch 4: passed" in report_of(run)
    for slave in fleet_lab.slaves:
        assert all(fleet_lab.reach(slave, 8093).values())


def test_a_slave_that_is_down_is_left_out_and_rolls_nothing_back(fleet_lab):
    # Ansible cannot reach s2 (its namespace file is not there): the change is gated by s1 alone.
    fleet_lab.set_services(extra_port=8094)
    fleet_lab.set_host_var("s2", "ansible_host", "/run/netns-expose-lab/no-such-lab/s2/net")
    try:
        run = fleet_lab.rollout("-e", '{"expose_rollout_serial": ["50%"]}')
    finally:
        fleet_lab.set_host_var("s2", "ansible_host", None)
    assert not failures(run), failures(run)
    report = report_of(run)
    assert "batch 2: passed" in report and "slave s2 left out of the gate" in report and "rolled back" not in report
    assert all(fleet_lab.reach("s1", 8094).values())


def test_with_no_slave_left_the_rollout_stops_and_rolls_nothing_back(fleet_lab):
    fleet_lab.set_services(extra_port=8095)
    before = {master: fleet_lab.published(master) for master in fleet_lab.masters}
    for slave in fleet_lab.slaves:
        fleet_lab.set_host_var(slave, "ansible_host", f"/run/netns-expose-lab/no-such-lab/{slave}/net")
    try:
        run = fleet_lab.rollout()
    finally:
        for slave in fleet_lab.slaves:
            fleet_lab.set_host_var(slave, "ansible_host", None)
    [(task, message)] = set(failures(run))
    assert task == "Stop the rollout at a batch that no slave could verify" and "batch 1 is unverified" in message
    after = {master: fleet_lab.published(master) for master in fleet_lab.masters}
    assert after["m01"] != before["m01"], "the canary keeps what it published: nothing showed it broken"
    assert all(after[master] == before[master] for master in fleet_lab.masters if master != "m01")
    fleet_lab.set_services(extra_port=8094)
    run = fleet_lab.rollout()
    assert not failures(run), failures(run)


@pytest.mark.parametrize("extra, message", [
    ("expose_state=absent", "rollout.yml rolls out what the masters publish"),
    ("expose_rollout_max_fail_percentage=ten", "expose_rollout_max_fail_percentage: ten is not a percentage"),
    ("expose_rollout_max_fail_percentage=101", "expose_rollout_max_fail_percentage: 101 is not a percentage"),
])
def test_settings_a_rollout_cannot_honour_are_refused_before_anything_changes(fleet_lab, extra, message):
    before = fleet_lab.published("m01")
    run = fleet_lab.rollout("-e", extra)
    [(_task, text)] = set(failures(run))
    assert message in text
    assert fleet_lab.published("m01") == before
