"""How long a rebooted master takes to serve the slave again, with no Ansible run: the persistence.

On a lab of two booted machines (tests/lab/machines.yml, under a lab name of the benchmark's),
the master gets the recipe's service from the collection's playbooks (expose.yml, demo.yml),
then reboots --reboots times. For each reboot, measured from the start of the boot (when
systemd-nspawn starts the machine again):

- sshd:      the master's SSH answers (what `nslab.py reboot` waits for);
- service:   the slave's HTTP GET of 10.211.55.122:8090 gets the demo JSON (polled every 20 ms);
- running:   systemd says the boot is finished (`systemctl is-system-running --wait`).

    source hack/env.sh; python bench/boot_bench.py [--reboots 5]

It prints a table (median, min, max per milestone). The machine is shared and noisy: compare
milestones of one run, not runs on different days.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import machines  # noqa: E402  pylint: disable=wrong-import-position
import nslab  # noqa: E402  pylint: disable=wrong-import-position
from conftest import AnsibleRunner, ansible_environment, failures  # noqa: E402  pylint: disable=wrong-import-position

MASTER, SLAVE = "master", "slave"


def boot_times(lab):
    """Reboot the master once; seconds from the start of the boot to sshd, the service, and the end of the boot."""
    machine = lab.machine(MASTER)
    poller = subprocess.Popen(lab.command(SLAVE, ["python3", "-c", machines.POLL_UNTIL_BACK, "120"]),  # pylint: disable=consider-using-with
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    lab.ssh.run(lab.hosts[MASTER].ip, "systemctl reboot", timeout=30)
    boots = machine.boots()
    deadline = time.monotonic() + 120
    while machine.boots() == boots or not os.path.exists(machine.boots_file):
        if time.monotonic() > deadline:
            raise RuntimeError("the master did not boot again")
        time.sleep(0.01)
    started = os.stat(machine.boots_file).st_mtime
    sshd = None
    while sshd is None and time.monotonic() < deadline:
        if lab.ssh.run(lab.hosts[MASTER].ip, "true", timeout=10).returncode == 0:
            sshd = time.time() - started
        else:
            time.sleep(0.05)
    lab.ssh.run(lab.hosts[MASTER].ip, "systemctl is-system-running --wait", timeout=120)
    running = time.time() - started
    out, _err = poller.communicate(timeout=150)
    if not out:
        raise RuntimeError("the slave got no answer from the master after its reboot")
    return {"sshd": sshd, "service": float(out.split(" ", 1)[0]) - started, "running": running}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reboots", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="boot-bench-"))
    inventory = workdir / "machines.yml"
    inventory.write_text((REPO / "tests" / "lab" / "machines.yml").read_text(encoding="utf-8")
                         .replace("lab_name: expose-machines", f"lab_name: bb{os.getpid()}"), encoding="utf-8")
    lab = nslab.Lab.from_inventory(inventory)
    try:
        lab.up()
        ansible = AnsibleRunner(inventory, workdir, ansible_environment())
        for playbook in ("expose.yml", "demo.yml"):
            run = ansible.run_playbook(REPO / "playbooks" / playbook)
            if failures(run):
                raise RuntimeError(f"{playbook}: {failures(run)}")
        samples = [boot_times(lab) for _reboot in range(args.reboots)]
    finally:
        lab.down()
    print(f"Reboot of a master (booted Debian 12 machine, systemd 252), {args.reboots} reboots, "
          "seconds from the start of the boot:\n")
    print("| milestone | median | min | max |")
    print("| --- | ---: | ---: | ---: |")
    for milestone, label in (("sshd", "sshd answers"), ("service", "the slave gets the demo JSON through 10.211.55.122:8090"),
                             ("running", "boot finished (is-system-running)")):
        values = [sample[milestone] for sample in samples]
        print(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
