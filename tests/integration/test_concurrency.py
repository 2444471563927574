"""Runs of dnat_rule at the same time on one lab master, with each backend (issue 24, the host-wide lock).

PROVES:
- four runs started at once, each adding its own 25 mappings (not exclusive), end with all 100, every run reports
  success and the mappings it made, over several rounds: none of them plans from what another is replacing;
- two exclusive runs at once end with one of the two declared sets, never a mix;
- a run that cannot get the lock in lock_timeout fails naming the holder (its pid and command line), and changes
  nothing; the lock is free again once its holder is gone.
"""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import DNAT_BACKENDS
from master_host import MASTER, scrub_netfilter

NS_IP = "10.244.1.2"
RUNS, PER_RUN, ROUNDS = 4, 25, 3
# Holds the lock of the lab master's network namespace until its stdin closes: python3 -c HOLDER.
HOLDER = """import sys
from ansible_collections.netns.expose.plugins.module_utils._lock import host_lock
with host_lock():
    print("held", flush=True)
    sys.stdin.read()
"""


def mappings(run, first=10000):
    return [dict(name=f"r{run}-m{index}", port=first + run * PER_RUN + index, to_address=NS_IP, to_port=9090)
            for index in range(PER_RUN)]


def owned(run_module, backend):
    """The names of the mappings the collection has on the master (a read: check mode, nothing listed)."""
    result = run_module(MASTER, "netns.expose.dnat_rule", {"rules": [], "backend": backend}, check=True)
    assert not result["failed"], result
    return {rule["name"] for rule in result["published"]["rules"]}


@pytest.fixture(params=DNAT_BACKENDS)
def backend(request, lab, modules):
    scrub_netfilter(lab)
    try:
        yield request.param
    finally:
        modules.run_module(MASTER, "netns.expose.dnat_rule", {"rules": [], "exclusive": True, "backend": request.param})
        scrub_netfilter(lab)


def at_once(calls):
    """Run the calls (functions of no argument) at the same time; their results in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_runs_at_once_end_with_every_mapping_they_reported(backend, modules):
    run_module = modules.run_module
    for round_ in range(ROUNDS):
        results = at_once([lambda run=run: run_module(MASTER, "netns.expose.dnat_rule", {
            "rules": mappings(run), "backend": backend, "flush_conntrack": False}) for run in range(RUNS)])
        for run, result in enumerate(results):
            assert not result["failed"] and result["changed"], (round_, run, result)
            assert {m["name"] for m in mappings(run)} <= set(result["mappings"]), (round_, run, "a run did not report its own")
        assert owned(run_module, backend) == {m["name"] for run in range(RUNS) for m in mappings(run)}, \
            f"round {round_}: mappings that runs reported are gone"
        cleared = run_module(MASTER, "netns.expose.dnat_rule", {"rules": [], "exclusive": True, "backend": backend})
        assert not cleared["failed"] and owned(run_module, backend) == set()


def test_exclusive_runs_at_once_end_with_one_declared_set(backend, modules):
    run_module = modules.run_module
    sets = [mappings(0), mappings(1)]
    for round_ in range(ROUNDS):
        results = at_once([lambda rules=rules: run_module(MASTER, "netns.expose.dnat_rule", {
            "rules": rules, "exclusive": True, "backend": backend, "flush_conntrack": False}) for rules in sets])
        assert not any(result["failed"] for result in results), results
        assert owned(run_module, backend) in [{m["name"] for m in rules} for rules in sets], f"round {round_}: a mix"


def test_a_run_that_cannot_get_the_lock_names_the_holder_and_changes_nothing(backend, lab, modules):
    holder = subprocess.Popen(lab.command(MASTER, [sys.executable, "-c", HOLDER]), env=modules.env,  # pylint: disable=consider-using-with
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = modules.run_module(MASTER, "netns.expose.dnat_rule",
                                    {**mappings(0)[0], "backend": backend, "lock_timeout": 1})
        assert result["failed"], result
        assert result["msg"].startswith("another run of the collection changes this host: pid ") and \
            "_lock import host_lock" in result["msg"] and result["msg"].endswith("waited 1 s (lock_timeout)"), result["msg"]
        assert owned(modules.run_module, backend) == set(), "the run that did not get the lock changed something"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # Its holder gone, the lock is free: the same run goes through.
    result = modules.run_module(MASTER, "netns.expose.dnat_rule", {**mappings(0)[0], "backend": backend, "lock_timeout": 5})
    assert not result["failed"] and result["changed"], json.dumps(result)
