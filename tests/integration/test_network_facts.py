# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""network_facts on the lab hosts: the same facts as ansible.builtin.setup's network subset for every key the
expose role reads, in a fraction of its time.

On the master the test adds, and removes afterwards, a veth pair with dashes in its names (one end with two
primary addresses and an alias label, the other without IPv4) and a secondary address on its LAN interface.
"""
from __future__ import annotations

import copy

import pytest
import yaml
from conftest import failures

MASTER, SLAVE = "master", "slave"
DASH, DASH_PEER = "nf-dash-a", "nf-dash-b"
DASH_ADDRESSES = ("172.31.250.1/24", "172.31.251.1/24")
LABEL, LABEL_ADDRESS = f"{DASH}:x", "172.31.252.1/24"
SECONDARY = "10.211.55.222/24"  # in the subnet of the master's LAN address: the kernel makes it secondary
INTERFACE_KEYS = ("device", "active", "ipv4", "ipv4_secondaries")
DEFAULT_KEYS = ("interface", "address", "gateway")


def ip_of(cidr):
    return cidr.partition("/")[0]


def _run(lab, host, *argv, check=True):
    done = lab.exec(host, list(argv))
    assert not check or done.returncode == 0, f"{host}: {argv} failed ({done.returncode}): {done.stderr}"
    return done


def _remove_extras(lab, lan_ifname):
    """Delete the pair (its addresses go with it) and the secondary address; True when nothing of them is left."""
    _run(lab, MASTER, "ip", "link", "del", DASH, check=False)
    _run(lab, MASTER, "ip", "addr", "del", SECONDARY, "dev", lan_ifname, check=False)
    links = _run(lab, MASTER, "ip", "-o", "link", "show").stdout
    addresses = _run(lab, MASTER, "ip", "-o", "-4", "addr", "show", "dev", lan_ifname).stdout
    return DASH not in links and DASH_PEER not in links and ip_of(SECONDARY) not in addresses


@pytest.fixture(scope="module")
def master_extras(lab):
    """The master with the dashed pair and the secondary address; removed afterwards, also when the test fails."""
    lan_ifname = lab.hosts[MASTER].ifname
    _remove_extras(lab, lan_ifname)  # what a killed earlier run may have left
    try:
        _run(lab, MASTER, "ip", "link", "add", DASH, "type", "veth", "peer", "name", DASH_PEER)
        for ifname in (DASH, DASH_PEER):
            _run(lab, MASTER, "ip", "link", "set", ifname, "up")
        for address in DASH_ADDRESSES:
            _run(lab, MASTER, "ip", "addr", "add", address, "dev", DASH)
        _run(lab, MASTER, "ip", "addr", "add", LABEL_ADDRESS, "dev", DASH, "label", LABEL)
        _run(lab, MASTER, "ip", "addr", "add", SECONDARY, "dev", lan_ifname)
        yield lan_ifname
    finally:
        assert _remove_extras(lab, lan_ifname), "the test's pair or secondary address is still on the master"


def as_the_role_reads(facts):
    """What module_utils/_services.py reads of the network facts (facts without the ansible_ prefix)."""
    interfaces = sorted(facts["interfaces"])
    return {
        "interfaces": interfaces,
        "default_ipv4": {key: facts["default_ipv4"][key] for key in DEFAULT_KEYS if key in facts["default_ipv4"]},
        "per_interface": {name: {key: facts[name.replace("-", "_")].get(key) for key in INTERFACE_KEYS}
                          for name in interfaces},
    }


def unprefixed(setup_facts):
    """setup's ansible_facts as Ansible stores them: without the ansible_ prefix."""
    return {key.removeprefix("ansible_"): value for key, value in setup_facts.items()}


# Each task between two timestamps: ping, setup, network_facts twice, setup again, ping again. A task's time less
# the shorter ping's (what any task costs: the connection, the module's transfer, Python's start) is its own work;
# the shorter of the module's two is compared with the shorter of setup's two (a busy machine delays a few tasks).
SETUP = {"ansible.builtin.setup": {"gather_subset": ["!all", "!min", "network"]}}
TIMED_TASKS = (("ping", {"ansible.builtin.ping": {}}),
               ("setup", {**SETUP, "register": "by_setup"}),
               ("module", {"netns.expose.network_facts": {}, "register": "by_module"}),
               ("module", {"netns.expose.network_facts": {}}),
               ("setup", SETUP),
               ("ping", {"ansible.builtin.ping": {}}))


def timed_play():
    def stamp(index):
        return {"name": f"t{index}", "ansible.builtin.set_fact": {f"t{index}": "{{ now().timestamp() }}"}}

    tasks = [stamp(0)]
    for index, (name, task) in enumerate(TIMED_TASKS, start=1):
        tasks += [{"name": name, **copy.deepcopy(task)}, stamp(index)]
    stamps = ", ".join(f"t{index}" for index in range(len(TIMED_TASKS) + 1))
    tasks.append({"name": "results", "ansible.builtin.debug": {"msg": {
        "setup": "{{ by_setup.ansible_facts }}", "module": "{{ by_module }}",
        "stamps": f"{{{{ [{stamps}] | map('float') }}}}"}}})
    return yaml.safe_dump([{"hosts": f"{MASTER}:{SLAVE}", "gather_facts": False, "tasks": tasks}], sort_keys=False)


@pytest.fixture(scope="module")
def side_by_side(master_extras, ansible):
    """{host: {"setup": facts, "module": result, "seconds": {task name: [seconds]}}} of one run of timed_play()."""
    run = ansible.run_playbook(timed_play())
    assert not failures(run), failures(run)
    results = next(task for task in run["plays"][0]["tasks"] if task["task"]["name"] == "results")["hosts"]
    by_host = {}
    for host, result in results.items():
        stamps, seconds = result["msg"]["stamps"], {}
        for index, (name, _task) in enumerate(TIMED_TASKS):
            seconds.setdefault(name, []).append(stamps[index + 1] - stamps[index])
        by_host[host] = {"setup": result["msg"]["setup"], "module": result["msg"]["module"], "seconds": seconds}
    return by_host


@pytest.mark.parametrize("host", [MASTER, SLAVE])
def test_the_module_sets_setups_facts_for_what_the_role_reads(lab, side_by_side, host):
    setup_facts, result = unprefixed(side_by_side[host]["setup"]), side_by_side[host]["module"]
    assert result["changed"] is False
    assert as_the_role_reads(result["ansible_facts"]) == as_the_role_reads(setup_facts)
    assert result["ansible_facts"]["default_ipv4"]["interface"] == lab.hosts[host].ifname


def test_the_masters_dashes_labels_and_secondary_addresses_are_there(side_by_side):
    facts = side_by_side[MASTER]["module"]["ansible_facts"]
    assert {DASH, DASH_PEER, LABEL.replace(":", "_")} <= set(facts["interfaces"])
    dash = facts[DASH.replace("-", "_")]
    assert dash["device"] == DASH
    assert [dash["ipv4"]["address"]] + [entry["address"] for entry in dash["ipv4_secondaries"]] == [
        ip_of(address) for address in DASH_ADDRESSES]
    assert facts[LABEL.replace(":", "_").replace("-", "_")]["ipv4"]["address"] == ip_of(LABEL_ADDRESS)
    assert "ipv4" not in facts[DASH_PEER.replace("-", "_")]
    lan = facts[facts["default_ipv4"]["interface"]]
    assert (lan["ipv4"]["address"], [entry["address"] for entry in lan["ipv4_secondaries"]]) == (
        "10.211.55.122", [ip_of(SECONDARY)])


@pytest.mark.parametrize("host", [MASTER, SLAVE])
def test_the_module_takes_a_fraction_of_setups_time(side_by_side, host):
    seconds = side_by_side[host]["seconds"]
    overhead = min(seconds["ping"])
    module, setup = min(seconds["module"]) - overhead, min(seconds["setup"]) - overhead
    measured = f"{host}: module {module:.2f} s, setup {setup:.2f} s beyond a ping's {overhead:.2f} s ({seconds})"
    print(measured)  # shown by pytest -rP
    assert module < setup / 3, measured


def test_check_mode_reads_the_same_facts(run_module):
    checked = run_module(SLAVE, "netns.expose.network_facts", {}, check=True)
    assert not checked["failed"] and checked["changed"] is False
    assert checked["ansible_facts"] == run_module(SLAVE, "netns.expose.network_facts", {})["ansible_facts"]
