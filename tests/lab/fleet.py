"""A fleet of namespace hosts for the rollout tests and bench/fleet_bench.py: N masters and S slaves.

fleet_inventory() writes an inventory like tests/lab/inventory.yml (the same connection and
the recipe's service, demo included) with masters m01..mNN and slaves s1..sS on 10.211.55.0/24.
Each master is a namespace host with its own mount namespace, so every master has its own ns1.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

LAB_INVENTORY = Path(__file__).resolve().parent / "inventory.yml"
# The recipe's master keeps its address (.122); the others are counted from .10, skipping the slave's .123.
FIRST_ADDRESS = 10
MAX_HOSTS = 240


def _addresses(count):
    numbers = [number for number in range(FIRST_ADDRESS, 255) if number not in (122, 123)]
    return [f"10.211.55.{number}" for number in numbers[:count]]


def master_names(count):
    width = max(2, len(str(count)))
    return [f"m{index:0{width}d}" for index in range(1, count + 1)]


def fleet_inventory(path, lab_name, masters, slaves=2):
    """Write the inventory of a fleet to path; return {host: address} of its masters and of its slaves."""
    if masters + slaves > MAX_HOSTS:
        raise ValueError(f"a fleet has at most {MAX_HOSTS} hosts")
    inventory = yaml.safe_load(LAB_INVENTORY.read_text(encoding="utf-8"))
    lab = inventory["all"]["children"]["lab"]
    lab["vars"]["lab_name"] = lab_name
    groups = lab["children"]
    addresses = iter(_addresses(masters + slaves))
    master_hosts = {name: next(addresses) for name in master_names(masters)}
    slave_hosts = {f"s{index}": next(addresses) for index in range(1, slaves + 1)}
    groups["masters"]["hosts"] = {name: {"lab_address": f"{address}/24"} for name, address in master_hosts.items()}
    groups["slaves"]["hosts"] = {name: {"lab_address": f"{address}/24"} for name, address in slave_hosts.items()}
    Path(path).write_text(yaml.safe_dump(inventory), encoding="utf-8")
    return master_hosts, slave_hosts


def recipe_services():
    """The services every master of a fleet publishes (those of tests/lab/inventory.yml), a copy to change."""
    inventory = yaml.safe_load(LAB_INVENTORY.read_text(encoding="utf-8"))
    return copy.deepcopy(inventory["all"]["children"]["lab"]["children"]["masters"]["vars"]["expose_services"])
