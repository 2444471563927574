# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What playbooks/rollout.yml works out between the tasks of a batch.

- restore(): from what a master had before the batch, the module arguments that put it back;
- judge(): from what each master of the batch did and what the slaves saw, which masters failed,
  whether the batch failed, and which masters are rolled back;
- restored_checks(): the checks that show, from the slaves, that the mappings a rollback put back answer;
- report(): the record of every batch so far, as text.
"""
from __future__ import annotations

from ansible_collections.netns.expose.plugins.plugin_utils._verify import by_master

PAIR_KEYS = ("netns", "ns_ifname", "host_ifname")


def _pair_name(pair):
    return f"{pair['host_ifname']} <-> {pair['ns_ifname']} (netns {pair['netns']})"


def restore(pairs_before, planned_pairs):
    """How to put each pair the batch declares back as it was before the batch.

    pairs_before: the diff's `before` of a netns_veth check run with planned_pairs ({netns: view}).
    Returns {present: [pair arguments as they were], absent: [pairs the batch makes], unrestorable: [why]}.
    """
    present, absent, unrestorable = [], [], []
    for pair in planned_pairs:
        view = pairs_before.get(pair["netns"]) or {}
        host_end, ns_end = view.get("host_end") or {}, view.get("ns_end") or {}
        names = {key: pair[key] for key in PAIR_KEYS}
        if not host_end.get("present") and not ns_end.get("present"):
            absent.append(names)
            continue
        gateway = view.get("default_route")
        host_addresses, ns_addresses = host_end.get("addresses") or [], ns_end.get("addresses") or []
        if (ns_end.get("netns") != pair["netns"] or len(host_addresses) != 1 or len(ns_addresses) != 1
                or gateway not in (None, host_addresses[0].split("/")[0])):
            unrestorable.append(f"pair {_pair_name(pair)}: before the batch it was not a pair with one address at "
                                f"each end and no default route but through the host end; it is left as the batch made it")
            continue
        present.append({**names, "host_address": host_addresses[0], "ns_address": ns_addresses[0],
                        "default_route": gateway is not None, "mtu": host_end.get("mtu")})
    return {"present": present, "absent": absent, "unrestorable": unrestorable}


def _check_problem(slave, check):
    return {"slave": slave, "service": check.get("target"), "protocol": check.get("protocol"),
            "port": check.get("port"), "what": check.get("detail")}


def judge(batch, outcomes, probes, plans, max_fail_percentage):
    """The verdict on one batch.

    batch: the masters of the batch, as it started.
    outcomes: {master: {applied: bool, error: str}} of the masters still in the play (a master missing from it
      became unreachable).
    probes: the registered loop of the probe task over the slaves ({item: slave, results, failed, unreachable, msg}).
    plans: {master: expose_plan} of the masters the slaves probed, in the order of the probe's checks.
    max_fail_percentage: the batch fails when more than this share of its masters failed.

    A slave that could not run its probe is left out of the gate, so that a slave that is down cannot roll a
    batch back; with no slave left, the batch is `unverified`.
    """
    masters = {master: [] for master in batch}
    for master in batch:
        outcome = outcomes.get(master)
        if outcome is None:
            masters[master].append({"what": "unreachable during the batch"})
        elif not outcome.get("applied"):
            masters[master].append({"what": f"the role failed: {outcome.get('error') or 'no message'}"})
    slaves_down, slaves_used = [], []
    for probe in probes:
        slave = probe.get("item")
        if probe.get("unreachable") or probe.get("skipped") or "results" not in probe:
            slaves_down.append({"slave": slave, "why": probe.get("msg") or "unreachable"})
            continue
        slaves_used.append(slave)
        for probed in by_master(probe["results"], plans):
            masters[probed["item"]] += [_check_problem(slave, check) for check in probed["results"]
                                        if not check.get("ok") and not check.get("skipped")]
    failed = sorted(master for master, problems in masters.items() if problems)
    unverified = bool(plans) and not slaves_used
    percentage = 100.0 * len(failed) / len(batch) if batch else 0.0
    batch_failed = percentage > float(max_fail_percentage)
    reachable = [master for master in batch if master in outcomes]
    return {
        "masters": batch,
        "problems": {master: problems for master, problems in masters.items() if problems},
        "failed": failed,
        "failed_percentage": round(percentage, 1),
        "failed_batch": batch_failed,
        "unverified": unverified,
        # A failed batch goes back whole; within the threshold, only its failed masters.
        "roll_back": reachable if batch_failed else [master for master in failed if master in outcomes],
        "slaves_used": slaves_used,
        "slaves_down": slaves_down,
    }


def restored_checks(snapshots):
    """Probe checks of the mappings that rollbacks put back ({master: its snapshot}): a TCP connection, or an echo
    request. UDP mappings are left out: what datagram their service answers is not part of a mapping."""
    checks = []
    for master, snapshot in snapshots.items():
        for rule in (snapshot or {}).get("mappings", {}).get("rules", []):
            if rule["protocol"] == "udp" or not rule.get("destination"):
                continue
            check = {"target": f"{master}: {rule['name']}", "protocol": rule["protocol"], "address": rule["destination"]}
            if rule["protocol"] == "tcp":
                check.update(check="tcp", port=rule["port"])
            checks.append(check)
    return checks


def _rechecked(probes):
    """{master: (checks that answered, [what failed])} from the probe results of restored_checks()."""
    by_master = {}
    for probe in probes:
        for check in probe.get("results", []):
            master, _sep, mapping = check["target"].partition(": ")
            answered, failures = by_master.setdefault(master, [0, []])
            if check["ok"]:
                by_master[master][0] = answered + 1
            else:
                failures.append(f"{mapping} from slave {probe.get('item')}: {check['detail']}")
    return by_master


def _problem_line(master, problem):
    if "slave" not in problem:
        return f"master {master}: {problem['what']}"
    port = f" port {problem['port']}" if problem.get("port") else ""
    return (f"master {master}: {problem['protocol']}{port} ({problem['service']}) from slave {problem['slave']}: "
            f"{problem['what']}")


def report(batches):
    """Every batch so far: its masters, its time, each failed check, the slaves left out, and each rollback."""
    lines = []
    for number, batch in enumerate(batches, start=1):
        verdict = batch["verdict"]
        if verdict["failed_batch"]:
            state = f"FAILED ({len(verdict['failed'])} of {len(verdict['masters'])} masters)"
        elif verdict["unverified"]:
            state = "UNVERIFIED (no slave could probe)"
        elif verdict["failed"]:
            state = f"passed, {len(verdict['failed'])} failed masters within the threshold"
        else:
            state = "passed"
        lines.append(f"batch {number}: {state}, {batch['seconds']:.1f} s, masters {', '.join(verdict['masters'])}")
        lines += [f"  {_problem_line(master, problem)}" for master in verdict["failed"]
                  for problem in verdict["problems"][master]]
        lines += [f"  slave {down['slave']} left out of the gate: {down['why']}" for down in verdict["slaves_down"]]
        rechecked = _rechecked(batch.get("rechecks", []))
        for master, rollback in sorted(batch.get("rollbacks", {}).items()):
            outcome = "rolled back" if rollback["ok"] else f"ROLLBACK FAILED: {rollback['error']}"
            answered, failures = rechecked.get(master, (0, []))
            if answered or failures:
                outcome += f", {answered} checks of the mappings put back answered from the slaves"
            outcome += "".join(f"; {why}" for why in rollback.get("unrestorable", []) + failures)
            lines.append(f"  master {master}: {outcome}")
    return "\n".join(lines)
