# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What playbooks/verify.yml prints: the summary table, and the report of the failed checks.

A slave probes every master in one call of the probe module: checks() makes its checks from the
masters' plans, by_master() gives its results back per master.
probes: one item per master ({item: master, results: [...]}), as by_master() returns them.
plans: {master: its expose_plan}; each plan's targets are in the order of the probe's results, and
name the mapping and the namespace each check goes through.
"""
from __future__ import annotations

# Keys of a plan's targets that are for the messages only (the mapping a check goes through, the
# namespace of its service): the probe module refuses keys it does not know.
INFORMATIONAL = ("mapping", "netns")
ROW = "%-16s %-16s %-5s %-5s %6s  %-7s %9s  %s"
REPLY_WIDTH = 100


def checks(plans):
    """The probe module's checks for every master of plans ({master: expose_plan}), master after master."""
    return [{key: value for key, value in target.items() if key not in INFORMATIONAL}
            for plan in plans.values() for target in plan["targets"]]


def by_master(results, plans):
    """The results of one probe call over checks(plans), cut back into one item per master."""
    probes, start = [], 0
    for master, plan in plans.items():
        count = len(plan["targets"])
        probes.append({"item": master, "results": results[start:start + count]})
        start += count
    if start != len(results):
        raise ValueError(f"{len(results)} probe results for {start} checks of {len(plans)} masters")
    return probes


def _one_line(text):
    return " ".join(str(text).split())


def _result(check):
    if check["skipped"]:
        return "skipped"
    if not check["ok"]:
        return "FAILED"
    return "denied" if check.get("denied") else "ok"


def summary(probes):
    """The table of every check: master, service, protocol, check type, port, result, latency and the reply as text."""
    rows = [ROW % ("master", "service", "proto", "check", "port", "result", "latency", "reply")]
    for probe in probes:
        for check in probe["results"]:
            text = _one_line(check.get("body") or check.get("reply") or "")
            if not (check["ok"] or check["skipped"]):
                text = check["detail"] + (f": {text}" if text else "")
            latency = "-" if check.get("latency_ms") is None else f"{check['latency_ms']:.1f} ms"
            rows.append(ROW % (probe["item"], check["target"], check["protocol"], check.get("check") or "",
                               check.get("port") or "-", _result(check), latency, (text or check["detail"])[:REPLY_WIDTH]))
    return "\n".join(rows)


def _failed(probe):
    return [(index, check) for index, check in enumerate(probe["results"]) if not check["ok"] and not check["skipped"]]


def explain_command(master, failed, inventory=None):
    """The explain.yml run that shows where the failed checks of a master stop and why."""
    chosen = ",".join(dict.fromkeys(str(check["port"]) if check.get("port") else check["protocol"] for check in failed))
    return (f"ansible-playbook -i {inventory or '<inventory>'} netns.expose.explain -e expose_explain_masters={master} "
            f"-e expose_explain_mappings={chosen}")


def report(probes, plans, inventory=None):
    """One line per failed check, then for each master the commands that tell why, and the explain.yml run that shows
    where each failed flow stops (inventory: the inventory it names); '' when every check passed."""
    total = sum(len(probe["results"]) for probe in probes)
    failures = [(probe, index, check) for probe in probes for index, check in _failed(probe)]
    if not failures:
        return ""
    lines = [f"{len(failures)} of {total} checks failed:"]
    for probe, _index, check in failures:
        port = f" port {check['port']}" if check.get("port") else ""
        lines.append(f"master {probe['item']}: {check['protocol']}{port} ({check['target']}) failed: {check['detail']}")
    for probe in probes:
        failed = _failed(probe)
        if not failed:
            continue
        targets = plans[probe["item"]]["targets"]
        mappings, listening, routes = [], [], []
        for index, check in failed:
            target = targets[index]
            for seen, value in ((mappings, target["mapping"]), (routes, target["netns"])):
                if value not in seen:
                    seen.append(value)
            if check.get("port") and target["netns"] not in listening:
                listening.append(target["netns"])
        # nft lists both the nftables backend's table and the rules of iptables-nft (iptables-legacy-save has
        # those of iptables-legacy).
        commands = [(f"nft list ruleset | grep {mapping}", "is the mapping there?") for mapping in mappings]
        commands += [(f"ip netns exec {netns} ss -ltnu", f"does anything listen in {netns}?") for netns in listening]
        commands += [(f"ip netns exec {netns} ip route", f"has {netns} its default route?") for netns in routes]
        width = max(len(command) for command, _why in commands)
        lines.append(f"Where to look next, as root on master {probe['item']}:")
        lines += [f"  {command:<{width}}  # {why}" for command, why in commands]
        lines.append("Or see where each failed flow stops, and why, hop by hop (see \"Explaining a mapping\" in the README):")
        lines.append(f"  {explain_command(probe['item'], [check for _index, check in failed], inventory)}")
    return "\n".join(lines)
