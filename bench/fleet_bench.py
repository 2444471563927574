"""Benchmark: the collection's playbooks on a fleet of masters, for 1 to 50 masters and 5 to 50 forks.

    source hack/env.sh && python bench/fleet_bench.py [--masters 1,10,20,50] [--forks 5,20,50]
                                                      [--keep-going] [--json FILE]

For each --masters value, a lab of that many namespace masters (m01..) and 2 slaves
(tests/lab/fleet.py, the recipe's service on every master; namespaces on this machine, nothing
changed in its own network namespace), under a lab name of the benchmark's, built once and taken
down after its --forks values, whatever happens. For each --forks value, ansible-playbook -f FORKS
runs, as users run them, and each run is timed (wall-clock seconds, Ansible's start-up included):

1. converge: playbooks/expose.yml on the fresh fleet (every master must change);
   then, not timed, tests/lab/demo_services.yml, so that the services answer;
2. no-op:    playbooks/expose.yml again (must change nothing on any host);
3. verify:   playbooks/verify.yml (must pass: every slave reaches every master's ports);
4. rollout:  playbooks/rollout.yml, batches of expose_rollout_serial (its default), each batch
             verified by the slaves, with a real change on every master: the recipe's services
             plus tcp 8091 -> 9090 on the first (must pass). "n/a" while the playbook does not exist;
then, not timed, demo services absent and expose.yml with expose_state=absent, so that the
next --forks value starts on a fresh fleet (checked: no namespace, no rule of the collection left).
Before them, bench/one_call.yml (one ansible.builtin.ping per master) is timed too: the floor.

How to read it:
- the first table: seconds of each phase, the same per master, each phase's share of the row's
  total, and no-op/converge (goal <= 0.5: a run that changes nothing costs at most half a converge);
- the ratio converge+verify at the biggest --masters over 10 masters, at the biggest --forks (goal < 3
  for 50 vs 10 masters at forks 50: five times the masters for less than three times the time);
  then its floor: what one module call costs per master (one_call.yml's time per added master), the
  fixed part of converge+verify (its time at 10 masters less 10 times its time per added master), and
  the ratio that 2 calls per master (one per playbook, the fewest any design makes) or the role's 4
  and that fixed part would give, had the playbooks no other cost per master: no playbook that makes
  those calls can do better on this machine;
- "where the time goes", for the converge and the no-op at the biggest size (masters and forks):
  per task (by name; hosts: its results, one per host, or one per batch for run_once), the host-seconds
  summed over the hosts (from a host's start of the task to its result, lab_json's duration), their
  share of the run's wall time (over 100 %: hosts ran it in parallel),
  the task's wall span (its start to its last result) and its share; "outside the tasks" is Ansible's
  start-up, inventory, play set-up and stats. CPU s is the run's CPU time (user + system) of
  ansible-playbook and everything it waited for (getrusage(RUSAGE_CHILDREN) before and after): on
  this machine that is the controller, its workers, the connection's nsenter and the modules alike.

The machine is shared and noisy (2 cores): compare ratios within one run, not runs on different days.
A failed check stops the benchmark (its row says which), unless --keep-going: then the lab is built
again and the next row runs. The runs' outputs are kept in a directory named on failure.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import fleet  # noqa: E402  pylint: disable=wrong-import-position
import nslab  # noqa: E402  pylint: disable=wrong-import-position
from conftest import ansible_environment, failures  # noqa: E402  pylint: disable=wrong-import-position
from master_host import collection_text  # noqa: E402  pylint: disable=wrong-import-position

SLAVES = 2
EXPOSE = REPO / "playbooks" / "expose.yml"
VERIFY = REPO / "playbooks" / "verify.yml"
ROLLOUT = REPO / "playbooks" / "rollout.yml"
ONE_CALL = REPO / "bench" / "one_call.yml"
DEMO = REPO / "tests" / "lab" / "demo_services.yml"
PHASES = ("converge", "no-op", "verify", "rollout")
# The rollout's real change on every master: one more port on the first service.
ROLLOUT_PORT = {"protocol": "tcp", "host_port": 8091, "ns_port": 9090, "expect": "hello world"}
RUN_TIMEOUT = 3600  # seconds for one ansible-playbook run
NOOP_GOAL = 0.5  # no-op / converge
SCALE_GOAL = 3.0  # converge+verify at 50 masters / at 10 masters, forks 50
SCALE_BASE = 10  # masters of the ratio's denominator
# Module calls per master of converge+verify, for the floor: one per playbook, the fewest any design can make;
# the collection's first converge (the read, the pairs, the mappings) and verify (the read).
FLOOR_CALLS = {"one per playbook": 2, "the role's": 4}


class BenchFailure(Exception):
    """A phase failed its check: the row is marked with the message."""


class Run:
    """One ansible-playbook run: wall seconds, CPU seconds, return code and the run as lab_json printed it."""

    def __init__(self, seconds, cpu, returncode, result, stderr):
        self.seconds, self.cpu, self.returncode, self.result, self.stderr = seconds, cpu, returncode, result, stderr

    def problems(self):
        """What went wrong: failed tasks, unreachable hosts, a non-zero exit status."""
        found = [f"{task}: {message}" for task, message in failures(self.result)]
        found += [f"{host} unreachable" for host, stats in self.result["stats"].items() if stats.get("unreachable")]
        if self.returncode != 0 and not found:
            found.append(f"ansible-playbook exited {self.returncode}: {self.stderr[-2000:]}")
        return found

    def changed_hosts(self):
        return sorted(host for host, stats in self.result["stats"].items() if stats.get("changed"))

    def changed_tasks(self):
        return sorted({f"{host}: {task['task']['name']}" for play in self.result["plays"] for task in play["tasks"]
                       for host, result in task["hosts"].items() if result.get("changed")})


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stop_group(process):
    """Stop an ansible-playbook we started and its workers (its own process group), then reap it."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


class Fleet:
    """A fleet's inventory, its lab, and ansible-playbook runs against it."""

    def __init__(self, workdir, lab_name, masters):
        self.workdir = Path(workdir) / f"masters-{masters}"
        self.workdir.mkdir()
        self.inventory = self.workdir / "inventory.yml"
        self.masters, _slaves = fleet.fleet_inventory(self.inventory, lab_name, masters, slaves=SLAVES)
        self.lab = nslab.Lab.from_inventory(self.inventory)
        self.env = ansible_environment()
        self.runs = 0

    def up(self):
        self.lab.down()  # a stale lab of an earlier process that had the same pid
        self.lab.up()

    def down(self):
        self.lab.down()

    def play(self, playbook, forks, *extra_args):
        """ansible-playbook -f forks playbook extra_args, timed; its output is kept in the workdir."""
        self.runs += 1
        argv = ["ansible-playbook", "-i", str(self.inventory), "-f", str(forks), str(playbook), *extra_args]
        cpu_before = cpu_seconds()
        start = time.monotonic()
        # A session of its own: on a timeout or Ctrl-C the whole run (workers too) is stopped, by its group.
        with subprocess.Popen(argv, env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) as process:
            try:
                stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
            except BaseException:
                stop_group(process)
                raise
        seconds = time.monotonic() - start
        cpu = cpu_seconds() - cpu_before
        stem = self.workdir / f"{self.runs:03d}-{playbook.stem}-f{forks}"
        stem.with_suffix(".json").write_text(stdout, encoding="utf-8")
        stem.with_suffix(".stderr").write_text(stderr, encoding="utf-8")
        try:
            result = json.loads(stdout)
        except ValueError:
            raise BenchFailure(f"{playbook.name} printed no JSON (rc {process.returncode}): {stderr[-2000:]}") from None
        return Run(seconds, cpu, process.returncode, result, stderr)

    def must_pass(self, what, run):
        problems = run.problems()
        if problems:
            raise BenchFailure(f"{what} failed: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
        return run

    def every_master_changed(self, what, run):
        unchanged = sorted(set(self.masters) - set(run.changed_hosts()))
        if unchanged:
            raise BenchFailure(f"{what} changed nothing on {', '.join(unchanged[:5])} (of {len(unchanged)} masters)")

    def check_fresh(self):
        """No namespace and nothing of the collection in netfilter on any master."""
        for host in self.masters:
            namespaces = self.lab.exec(host, ["ip", "netns", "list"]).stdout.strip()
            owned = [line for line in collection_text(self.lab, host).splitlines()
                     if "netns.expose" in line or "NETNS-EXPOSE" in line or "netns_expose" in line]
            if namespaces or owned:
                raise BenchFailure(f"the teardown left on {host}: namespaces {namespaces!r}, rules {owned[:3]}")


def row_of(fleet_lab, masters, forks, teardown_forks, rollout_vars):
    """The timed phases of one --forks value on a fresh fleet, then the fleet torn down (not timed).

    {"runs": {phase: Run}, "error": the failed check or None, "fresh": whether the teardown left a fresh fleet}.
    """
    runs = {}
    row = {"masters": masters, "forks": forks, "runs": runs, "error": None, "fresh": False}
    try:
        row["one_call"] = fleet_lab.must_pass("one call", fleet_lab.play(ONE_CALL, forks))
        converge = runs["converge"] = fleet_lab.must_pass("converge", fleet_lab.play(EXPOSE, forks))
        fleet_lab.every_master_changed("converge", converge)
        fleet_lab.must_pass("demo services", fleet_lab.play(DEMO, teardown_forks))
        noop = runs["no-op"] = fleet_lab.must_pass("no-op", fleet_lab.play(EXPOSE, forks))
        if noop.changed_hosts():
            raise BenchFailure(f"the no-op changed {len(noop.changed_hosts())} hosts: "
                               + "; ".join(noop.changed_tasks()[:5]))
        runs["verify"] = fleet_lab.must_pass("verify", fleet_lab.play(VERIFY, forks))
        if ROLLOUT.exists():
            rollout = runs["rollout"] = fleet_lab.must_pass(
                "rollout", fleet_lab.play(ROLLOUT, forks, "-e", f"@{rollout_vars}"))
            fleet_lab.every_master_changed("rollout", rollout)
    except BenchFailure as failure:
        row["error"] = str(failure)
    try:
        fleet_lab.must_pass("teardown: demo services", fleet_lab.play(DEMO, teardown_forks, "-e", "expose_state=absent"))
        # The services as last applied: the rollout's (a superset of the inventory's; absent of a missing mapping
        # changes nothing).
        fleet_lab.must_pass("teardown: expose absent",
                            fleet_lab.play(EXPOSE, teardown_forks, "-e", "expose_state=absent", "-e", f"@{rollout_vars}"))
        fleet_lab.check_fresh()
        row["fresh"] = True
    except BenchFailure as failure:
        row["error"] = "; ".join(filter(None, [row["error"], str(failure)]))
    return row


def task_times(run):
    """Per task name, in run order: (host-seconds summed over the hosts, wall span seconds, hosts)."""
    found = {}
    for play in run.result["plays"]:
        for task in play["tasks"]:
            duration = task["task"].get("duration")
            if duration is None:
                continue
            host_seconds, span, hosts = found.get(task["task"]["name"], (0.0, 0.0, 0))
            found[task["task"]["name"]] = (host_seconds + sum(duration["hosts"].values()),
                                           span + duration["end"] - duration["start"],
                                           hosts + len(duration["hosts"]))
    return found


def fmt(value, spec=".2f"):
    return "n/a" if value is None else format(value, spec)


def print_rows(rows):
    head = (f"{'masters':>7}{'forks':>6} |" + "".join(f"{phase + ' s':>11}" for phase in PHASES)
            + " |" + "".join(f"{phase + ' s/m':>13}" for phase in PHASES)
            + " |" + "".join(f"{phase:>9}" for phase in PHASES) + f" |{'no-op/conv':>11}  note")
    print(head)
    print("-" * len(head))
    for row in rows:
        runs, masters = row["runs"], row["masters"]
        seconds = {phase: runs[phase].seconds if phase in runs else None for phase in PHASES}
        total = sum(value for value in seconds.values() if value is not None)
        ratio = seconds["no-op"] / seconds["converge"] if seconds["no-op"] is not None and seconds["converge"] else None
        note = row["error"] or ("rollout n/a: playbooks/rollout.yml does not exist" if seconds["rollout"] is None else "")
        verdict = "" if ratio is None else (" ok" if ratio <= NOOP_GOAL else " over")
        print(f"{masters:>7}{row['forks']:>6} |" + "".join(f"{fmt(seconds[phase]):>11}" for phase in PHASES)
              + " |" + "".join(f"{fmt(None if seconds[p] is None else seconds[p] / masters, '.3f'):>13}" for p in PHASES)
              + " |" + "".join(f"{fmt(None if seconds[p] is None or not total else seconds[p] / total, '.0%'):>9}"
                               for p in PHASES)
              + f" |{fmt(ratio):>11}{verdict}  {note}")
    print(f"\ns: wall-clock seconds of the run; s/m: per master; shares: of the row's total; "
          f"no-op/conv goal <= {NOOP_GOAL}.")
    print("CPU seconds per master (controller, workers and modules: all on this machine):")
    for row in rows:
        print(f"  masters {row['masters']:>3} forks {row['forks']:>3}: " + ", ".join(
            f"{phase} {row['runs'][phase].cpu / row['masters']:.2f}" for phase in PHASES if phase in row["runs"]))


def scale_ratio(rows):
    """converge+verify at the biggest masters / at SCALE_BASE masters, at the biggest forks: (text, numbers).

    The same ratio of CPU seconds is given too: other users of the machine slow the wall clock, not the CPU time.
    """
    def both(row, what):
        runs = row["runs"]
        if "converge" not in runs or "verify" not in runs:
            return None
        return getattr(runs["converge"], what) + getattr(runs["verify"], what)

    forks = max(row["forks"] for row in rows)
    at = {row["masters"]: row for row in rows if row["forks"] == forks}
    biggest = max(at)
    if biggest == SCALE_BASE or SCALE_BASE not in at or None in (both(at[biggest], "seconds"), both(at[SCALE_BASE], "seconds")):
        return (f"converge+verify, masters {biggest} / masters {SCALE_BASE} at forks {forks}: n/a "
                f"(needs both sizes in --masters, and their runs)", None)
    seconds = {masters: both(at[masters], "seconds") for masters in (biggest, SCALE_BASE)}
    cpu = {masters: both(at[masters], "cpu") for masters in (biggest, SCALE_BASE)}
    ratio, cpu_ratio = seconds[biggest] / seconds[SCALE_BASE], cpu[biggest] / cpu[SCALE_BASE]
    numbers = {"masters": biggest, "base": SCALE_BASE, "forks": forks, "ratio": ratio, "cpu_ratio": cpu_ratio}
    text = (f"converge+verify, masters {biggest} / masters {SCALE_BASE} at forks {forks}: "
            f"{seconds[biggest]:.1f} s / {seconds[SCALE_BASE]:.1f} s = {ratio:.2f} for {biggest / SCALE_BASE:.1f}x the masters "
            f"(goal < {SCALE_GOAL} for 50 vs 10 at forks 50); CPU {cpu[biggest]:.1f} s / {cpu[SCALE_BASE]:.1f} s = {cpu_ratio:.2f}")
    one_call = {masters: at[masters].get("one_call") for masters in (biggest, SCALE_BASE)}
    if None not in one_call.values():
        added = biggest - SCALE_BASE
        per_call = (one_call[biggest].seconds - one_call[SCALE_BASE].seconds) / added
        fixed = seconds[SCALE_BASE] - SCALE_BASE * (seconds[biggest] - seconds[SCALE_BASE]) / added
        floors = {label: (fixed + biggest * calls * per_call) / (fixed + SCALE_BASE * calls * per_call)
                  for label, calls in FLOOR_CALLS.items()}
        text += (f"\nits floor: one module call costs {per_call:.3f} s per added master (one_call.yml: "
                 f"{one_call[SCALE_BASE].seconds:.1f} s at {SCALE_BASE}, {one_call[biggest].seconds:.1f} s at {biggest}); "
                 f"the fixed part of converge+verify is {fixed:.1f} s;\n  with nothing else per master, at best "
                 + ", ".join(f"{floors[label]:.2f} with {calls} calls per master ({label})"
                             for label, calls in FLOOR_CALLS.items()))
        numbers.update(per_call=per_call, fixed=fixed, floors=floors)
    return text, numbers


def print_where(rows):
    """Per task of the converge and the no-op at the biggest size; returns the numbers for --json."""
    masters = max(row["masters"] for row in rows)
    forks = max(row["forks"] for row in rows if row["masters"] == masters)
    row = next(row for row in rows if row["masters"] == masters and row["forks"] == forks)
    numbers = {}
    for phase in ("converge", "no-op"):
        run = row["runs"].get(phase)
        if run is None:
            print(f"\n{phase} at masters {masters}, forks {forks}: no run")
            continue
        times = task_times(run)
        print(f"\nWhere the time goes: {phase}, masters {masters}, forks {forks}: {run.seconds:.1f} s wall, "
              f"CPU {run.cpu:.1f} s ({run.cpu / masters:.2f} s per master, {run.cpu / run.seconds:.2f} cores busy)")
        head = f"{'task':<66}{'hosts':>6}{'host-s':>9}{'host-s/m':>10}{'of wall':>9}{'span s':>9}{'of wall':>9}"
        print(head)
        print("-" * len(head))
        for name, (host_seconds, span, hosts) in times.items():
            print(f"{name[:65]:<66}{hosts:>6}{host_seconds:>9.2f}{host_seconds / masters:>10.3f}"
                  f"{host_seconds / run.seconds:>9.0%}{span:>9.2f}{span / run.seconds:>9.0%}")
        outside = run.seconds - sum(span for _host_seconds, span, _hosts in times.values())
        print(f"{'outside the tasks (start-up, inventory, play set-up, stats)':<66}{'':>6}{'':>9}{'':>10}{'':>9}"
              f"{outside:>9.2f}{outside / run.seconds:>9.0%}")
        numbers[phase] = {"masters": masters, "forks": forks, "seconds": run.seconds, "cpu": run.cpu,
                          "outside_tasks": outside,
                          "tasks": [{"name": name, "hosts": hosts, "host_seconds": host_seconds, "span": span}
                                    for name, (host_seconds, span, hosts) in times.items()]}
    return numbers


def as_json(rows, ratio, where):
    def run_numbers(run, masters):
        return {"seconds": run.seconds, "per_master": run.seconds / masters, "cpu": run.cpu,
                "cpu_per_master": run.cpu / masters,
                "tasks": [{"name": name, "hosts": hosts, "host_seconds": host_seconds, "span": span}
                          for name, (host_seconds, span, hosts) in task_times(run).items()]}
    return {"rows": [{"masters": row["masters"], "forks": row["forks"], "error": row["error"],
                      "phases": {phase: run_numbers(run, row["masters"]) for phase, run in row["runs"].items()}}
                     for row in rows],
            "scale_ratio": ratio, "where": where}


def parse_sizes(text):
    values = sorted({int(value) for value in text.split(",") if value.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: positive integers separated by commas")
    return values


def _terminate(_signum, _frame):
    sys.exit(143)  # SystemExit: the labs come down in the finally blocks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masters", type=parse_sizes, default="1,10,20,50", help="fleet sizes (default 1,10,20,50)")
    parser.add_argument("--forks", type=parse_sizes, default="5,20,50", help="ansible-playbook -f values (default 5,20,50)")
    parser.add_argument("--keep-going", action="store_true", help="after a failed check, go on with the next row")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    lab_name = f"fb{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    rollout_vars = workdir / "rollout-vars.json"
    services = fleet.recipe_services()
    services[0]["ports"].append(dict(ROLLOUT_PORT))
    rollout_vars.write_text(json.dumps({"expose_services": services}), encoding="utf-8")
    teardown_forks = max(args.forks)
    rows = []
    failed = False
    try:
        for masters in args.masters:
            fleet_lab = Fleet(workdir, lab_name, masters)
            try:
                started = time.monotonic()
                fleet_lab.up()
                print(f"masters {masters}: lab {lab_name} up in {time.monotonic() - started:.1f} s", file=sys.stderr)
                for forks in args.forks:
                    row = row_of(fleet_lab, masters, forks, teardown_forks, rollout_vars)
                    rows.append(row)
                    print(f"masters {masters} forks {forks}: "
                          + ", ".join(f"{phase} {run.seconds:.1f} s" for phase, run in row["runs"].items())
                          + (f" FAILED: {row['error']}" if row["error"] else ""), file=sys.stderr)
                    if row["error"]:
                        failed = True
                        if not args.keep_going:
                            raise BenchFailure(row["error"])
                    if not row["fresh"]:
                        fleet_lab.up()  # down and up: the next row starts on a fresh fleet whatever was left
            finally:
                fleet_lab.down()
    except BenchFailure as failure:
        print(f"\nstopped: {failure}", file=sys.stderr)
    except BaseException:
        failed = True
        raise
    finally:
        if rows:
            print()
            print_rows(rows)
            text, ratio = scale_ratio(rows)
            print(f"\n{text}")
            where = print_where(rows)
            if args.json:
                args.json.write_text(json.dumps(as_json(rows, ratio, where), indent=2), encoding="utf-8")
        if failed:
            print(f"\nthe runs' outputs are in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
