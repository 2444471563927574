"""What the benchmarks share: a lab of their own, and running dnat_rule in its master.

The lab is tests/lab/inventory.yml under a lab name of the benchmark's (namespaces on
this machine; nothing is changed in the machine's own network namespace), taken down
at the end whatever happens.

--collection DIR runs the modules of another checkout of the collection (an export of
an older commit, say) instead of this one, for before/after numbers in the same lab.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import nslab  # noqa: E402  pylint: disable=wrong-import-position
from conftest import AnsibleRunner, ansible_environment  # noqa: E402  pylint: disable=wrong-import-position
from master_host import scrub_netfilter  # noqa: E402  pylint: disable=wrong-import-position

MODULE = "ansible_collections.netns.expose.plugins.modules.dnat_rule"

__all__ = ["REPO", "BenchLab", "scrub_netfilter", "timed"]


def timed(step):
    start = time.monotonic()
    result = step()
    return time.monotonic() - start, result


def collections_root(collection, workdir):
    """A directory with ansible_collections/netns/expose -> collection (None: this checkout, through hack/env.sh)."""
    root = Path(workdir) / "collections"
    link = root / "ansible_collections" / "netns" / "expose"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path(collection).resolve())
    return root


class BenchLab(contextlib.AbstractContextManager):
    """A lab (master and slave) for one benchmark run, with Ansible and the module-alone runner set up."""

    def __init__(self, prefix, collection=None):
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-bench-"))
        self.inventory = self.workdir / "inventory.yml"
        self.inventory.write_text((REPO / "tests" / "lab" / "inventory.yml").read_text()
                                  .replace("lab_name: expose-lab", f"lab_name: {prefix}{os.getpid()}"))
        self.lab = nslab.Lab.from_inventory(self.inventory)
        self.env = ansible_environment()
        if collection is not None:
            self.env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_root(collection, self.workdir))
        self.ansible = AnsibleRunner(self.inventory, self.workdir, self.env)
        self.module_env = dict(self.env, PYTHONPATH=self.env["ANSIBLE_COLLECTIONS_PATH"].split(":")[0])
        self.collection = collection or REPO

    def __enter__(self):
        try:
            self.lab.up()
        except BaseException:
            self.lab.down()
            raise
        return self

    def __exit__(self, *exc_info):
        self.lab.down()
        return False

    def sh(self, host, *argv, stdin=None):
        done = self.lab.exec(host, list(argv), input=stdin)
        if done.returncode != 0:
            raise RuntimeError(f"{host}: {argv} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def module_alone(self, args):
        """dnat_rule run directly in the master, as `python -m <module> args.json` runs it: (seconds, result)."""
        args_file = self.workdir / "args.json"
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        argv = [sys.executable, "-m", MODULE, str(args_file)]
        seconds, done = timed(lambda: self.lab.exec("master", argv, env=self.module_env))
        try:
            result = json.loads(done.stdout)
        except ValueError:
            raise RuntimeError(f"the module printed no JSON: {done.stdout}\n{done.stderr}") from None
        if result.get("failed"):
            raise RuntimeError(f"dnat_rule failed: {result.get('msg')}")
        return seconds, result

    def task(self, args):
        """dnat_rule as one Ansible task against the master: (seconds, result)."""
        seconds, result = timed(lambda: self.ansible.run_module("master", "netns.expose.dnat_rule", args))
        if result.get("failed"):
            raise RuntimeError(f"dnat_rule failed: {result.get('msg')}")
        return seconds, result
