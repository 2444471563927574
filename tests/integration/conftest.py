# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the integration tests: a lab of namespaces and Ansible runs against it.

- lab (session): a Lab (tests/lab/nslab.py) built from tests/lab/inventory.yml under a
  lab name of its own for this pytest process; always taken down at the end.
- ansible_env (session): the environment of hack/env.sh, for Ansible and nslab.py runs.
- ansible (session): an AnsibleRunner with run_module(...) and run_playbook(...).
- modules (session): a ModuleRunner: run_module(...) runs a module of the collection in a lab host as
  Ansible runs it there, without ansible-playbook (a fraction of the time), for the tests of what a module
  does; test_module_runner.py proves that both give the same result.
- run_module(host, module, args, check=False, diff=False, python=None) -> the module's result dict
  (modules.run_module).
- run_playbook(path_or_text, extra_vars=None, check=False, diff=False, extra_args=()) -> the whole run as a dict,
  with what Ansible wrote on stderr (warnings) under "stderr".
- host_exec(host, argv, **kwargs) -> subprocess.CompletedProcess, argv run in a lab host.
- make_lab(suffix) -> a further Lab (not built) with the same hosts, taken down after the test.
- machine_lab (session): a Lab of booted machines (master and slave, tests/lab/machines.yml),
  built only when a test asks for it; machine_ansible runs Ansible against it over SSH.
- make_machine_lab(suffix) -> (Lab, inventory path) of further machines, not built, taken down after the test.
- failures(run) -> (task name, message) of each failed task of a run_playbook result.
- python -> each of the interpreters with pyroute2 0.7.x and 0.9.x, for tests that run on both.

Ansible runs with the environment of hack/env.sh and the stdout callback in
callback_plugins/lab_json.py, which prints the run as one JSON document.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import ansible as ansible_core  # not `ansible`: that is the fixture below
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LAB_INVENTORY = REPO / "tests" / "lab" / "inventory.yml"
MACHINES_INVENTORY = REPO / "tests" / "lab" / "machines.yml"
CALLBACK_PLUGINS = Path(__file__).resolve().parent / "callback_plugins"
ANSIBLE_TIMEOUT = 600  # seconds for one ansible-playbook run

sys.path.insert(0, str(REPO / "tests" / "lab"))
import nslab  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="session", autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("integration tests need root: they make namespaces, mounts and veth pairs")


def session_lab_name():
    """Unique per pytest process, so that parallel runs do not share (or tear down) a lab; short."""
    return f"pt{os.getpid()}"


def inventory_copy(source, lab_name, directory, without=()):
    """A copy of a lab inventory (its hosts under the group lab) in directory, with another lab_name,
    and without the child groups of lab named in `without` (e.g. slaves)."""
    inventory = yaml.safe_load(source.read_text(encoding="utf-8"))
    inventory["all"]["children"]["lab"]["vars"]["lab_name"] = lab_name
    for group in without:
        del inventory["all"]["children"]["lab"]["children"][group]
    path = Path(directory) / source.name
    path.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def lab_inventory(tmp_path_factory):
    """tests/lab/inventory.yml with this session's lab_name."""
    return inventory_copy(LAB_INVENTORY, session_lab_name(), tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="session")
def lab_template(lab_inventory):
    """The session's lab as the inventory describes it, not built."""
    return nslab.Lab.from_inventory(lab_inventory)


@pytest.fixture(scope="session")
def lab(request, lab_template):
    """The session's lab, up; taken down at the end of the session whatever happens."""
    session_lab = lab_template
    session_lab.down()  # a stale lab of an earlier process that had the same pid
    request.addfinalizer(session_lab.down)  # before up: a failed up is cleaned up too
    session_lab.up()
    return session_lab


@pytest.fixture
def make_lab(lab_template):
    """make_lab(suffix) -> a Lab like the session's, named <session lab>-<suffix>, not built.

    For tests that take labs down or break them; every lab made is taken down after the test.
    """
    made = []

    def make(suffix):
        extra = nslab.Lab(
            f"{lab_template.name}-{suffix}",
            {host.name: (host.address, host.ifname) for host in lab_template.hosts.values()},
            gateway=lab_template.gateway,
        )
        made.append(extra)
        return extra

    yield make
    for extra in made:
        extra.down()


def ansible_environment():
    """The environment hack/env.sh sets up (venv on PATH, the checkout as netns.expose)."""
    dump = subprocess.run(
        ["bash", "-c", 'source "$1" >/dev/null && env -0', "bash", str(REPO / "hack" / "env.sh")],
        capture_output=True, check=True,
    ).stdout
    env = dict(entry.split("=", 1) for entry in dump.decode().split("\0") if "=" in entry)
    env.update(
        ANSIBLE_STDOUT_CALLBACK="lab_json",
        ANSIBLE_CALLBACK_PLUGINS=str(CALLBACK_PLUGINS),
        ANSIBLE_RETRY_FILES_ENABLED="false",
        ANSIBLE_FORCE_COLOR="false",
    )
    return env


class _Unsafe(str):
    """A string that the playbook YAML marks !unsafe, so Ansible never templates it."""


class _PlaybookDumper(yaml.SafeDumper):
    pass


_PlaybookDumper.add_representer(_Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value)))


def _unsafe(value):
    """value with every string in it (not the keys) marked !unsafe."""
    if isinstance(value, str):
        return _Unsafe(value)
    if isinstance(value, dict):
        return {key: _unsafe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unsafe(item) for item in value]
    return value


class AnsibleRunner:
    """Runs ansible-playbook against a lab inventory and returns the parsed JSON output."""

    def __init__(self, inventory, workdir, env):
        self.inventory = Path(inventory)
        self.workdir = Path(workdir)
        self.env = env
        self._file_numbers = itertools.count()

    def _new_file(self, stem, text):
        path = self.workdir / f"{stem}-{next(self._file_numbers)}"
        path.write_text(text, encoding="utf-8")
        return path

    def run_playbook(self, path_or_text, extra_vars=None, check=False, diff=False, extra_args=()):
        """Run a playbook (a Path, a path string, or YAML text with a newline); return the run as a dict.

        extra_args go to ansible-playbook as they are, e.g. ("-e", "expose_exclusive=false") for
        extra variables given as text, as users type them.
        """
        if isinstance(path_or_text, str) and "\n" in path_or_text:
            playbook = self._new_file("playbook.yml", path_or_text)
        else:
            playbook = Path(path_or_text)
        argv = ["ansible-playbook", "-i", str(self.inventory), str(playbook)]
        if extra_vars:
            argv += ["-e", f"@{self._new_file('extra-vars.json', json.dumps(extra_vars))}"]
        argv += ["--check"] * check + ["--diff"] * diff + list(extra_args)
        # stdin of its own: Ansible refuses a non-blocking one, which a shared stdin may have become.
        done = subprocess.run(argv, env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=ANSIBLE_TIMEOUT, check=False)
        try:
            return {**json.loads(done.stdout), "stderr": done.stderr}
        except ValueError:
            raise AssertionError(
                f"ansible-playbook printed no JSON (rc {done.returncode})\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            ) from None

    def run_module(self, host, module, args, check=False, diff=False, python=None):
        """Run one module on one host; return its result (with 'failed', 'changed', 'msg', 'diff' as given).

        args go into the playbook as YAML with every string marked !unsafe, so any value
        (quotes, braces, '{{ }}') reaches the module as it is.
        """
        play = {"name": f"{module} on {host}", "hosts": host, "gather_facts": False,
                "tasks": [{"name": module, module: _unsafe(args)}]}
        if python:
            play["vars"] = {"ansible_python_interpreter": python}
        text = yaml.dump([play], Dumper=_PlaybookDumper, sort_keys=False)
        run = self.run_playbook(text, check=check, diff=diff)
        try:
            result = run["plays"][0]["tasks"][0]["hosts"][host]
        except (KeyError, IndexError):
            raise AssertionError(f"no result for {host} in {json.dumps(run, indent=2)}") from None
        result.setdefault("failed", False)
        return result


class ModuleRunner:
    """Runs a module of the collection in a lab host the way Ansible runs it there, without ansible-playbook.

    What a module does is the same through Ansible and here: the same interpreter in the same namespaces,
    the same arguments (as JSON, with check mode and diff set as Ansible sets them), and the result with
    `changed` and `failed` defaulted and warnings as their messages, as the controller hands them over.
    What is not exercised is Ansible itself (templating, the nsenter connection, AnsiballZ): the playbook
    and role tests, and test_module_runner.py, cover those. An ansible-playbook run starts Ansible's
    controller before the module runs; this costs the module's own start-up.
    """

    def __init__(self, lab, inventory, workdir, env):
        self.lab = lab
        inventory_vars = yaml.safe_load(Path(inventory).read_text(encoding="utf-8"))["all"]["children"]["lab"]["vars"]
        self.default_python = inventory_vars["ansible_python_interpreter"]
        # The interpreter of a lab host need not have ansible-core (Debian's python3 has not): a directory with
        # only ansible-core's package in it, as AnsiballZ ships module_utils with the module.
        shim = Path(workdir) / "python-path"
        shim.mkdir(exist_ok=True)
        (shim / "ansible").symlink_to(Path(ansible_core.__file__).parent)
        self.env = {**env, "PYTHONPATH": os.pathsep.join([str(shim), env["ANSIBLE_COLLECTIONS_PATH"]])}

    def run_module(self, host, module, args, check=False, diff=False, python=None):
        """Run a module of netns.expose (`netns.expose.<name>`) on a lab host; return its result, as
        AnsibleRunner.run_module does."""
        collection, name = module.rsplit(".", 1)
        if collection != "netns.expose":
            raise ValueError(f"ModuleRunner runs the collection's own modules, not {module}")
        payload = {"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check, "_ansible_diff": diff,
                                           "_ansible_module_name": module}}
        argv = [python or self.default_python, "-m", f"ansible_collections.netns.expose.plugins.modules.{name}"]
        done = self.lab.exec(host, argv, input=json.dumps(payload), env=self.env, timeout=ANSIBLE_TIMEOUT)
        try:
            result = json.loads(done.stdout)
        except ValueError:
            result = {"failed": True, "msg": "MODULE FAILURE", "rc": done.returncode,
                      "module_stdout": done.stdout, "module_stderr": done.stderr}
        result.setdefault("changed", False)
        result.setdefault("failed", False)
        # A module's warnings come as WarningSummary objects in Ansible's serialization profile; the
        # controller hands a task's warnings over as their messages.
        if "warnings" in result:
            result["warnings"] = [warning["event"]["msg"] if isinstance(warning, dict) else warning
                                  for warning in result["warnings"]]
        return result


# The lab hosts share this machine's filesystem: the system Python has Debian's
# python3-pyroute2 (0.7.x), the project venv has the current 0.9.x.
INTERPRETERS = {"pyroute2-0.7": "/usr/bin/python3", "pyroute2-0.9": sys.executable}


@pytest.fixture(params=sorted(INTERPRETERS), ids=sorted(INTERPRETERS))
def python(request):
    """The interpreter of a test run on a lab host, once with each pyroute2 version."""
    interpreter = INTERPRETERS[request.param]
    version = subprocess.run([interpreter, "-c", "import importlib.metadata as m; print(m.version('pyroute2'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith(request.param.split("-")[1]), f"{interpreter} has pyroute2 {version}"
    return interpreter


def failures(run):
    """(task name, message) of every failure (but those of tasks with ignore_errors), with the message of each
    failed loop item."""
    found = []
    for play in run["plays"]:
        for task in play["tasks"]:
            for result in task["hosts"].values():
                if result.get("failed") and not result.get("ignored"):
                    items = [item.get("msg") for item in result.get("results", []) if item.get("failed")]
                    found.append((task["task"]["name"], " ".join(map(str, items)) or result.get("msg")))
    return found


@pytest.fixture(scope="session")
def machine_inventory(tmp_path_factory):
    """tests/lab/machines.yml with a lab_name of this session's."""
    return inventory_copy(MACHINES_INVENTORY, f"{session_lab_name()}m", tmp_path_factory.mktemp("machines"))


@pytest.fixture(scope="session")
def machine_lab(request, machine_inventory):
    """The session's lab of machines (master and slave), booted; taken down at the end of the session."""
    session_lab = nslab.Lab.from_inventory(machine_inventory)
    session_lab.down()
    request.addfinalizer(session_lab.down)
    session_lab.up()
    return session_lab


@pytest.fixture(scope="session")
def machine_ansible(machine_lab, machine_inventory, ansible_env, tmp_path_factory):
    return AnsibleRunner(machine_inventory, tmp_path_factory.mktemp("machine-ansible"), ansible_env)


@contextlib.contextmanager
def machine_lab_of_its_own(suffix, directory, ansible_env, without=()):
    """(Lab, AnsibleRunner) of machines like tests/lab/machines.yml, under a lab name of their own, up;
    taken down at the end whatever happens. For a test module that needs machines that are not fresh."""
    inventory = inventory_copy(MACHINES_INVENTORY, f"{session_lab_name()}m-{suffix}", directory, without)
    own = nslab.Lab.from_inventory(inventory)
    own.down()
    try:
        own.up()
        yield own, AnsibleRunner(inventory, directory, ansible_env)
    finally:
        own.down()


def on(lab, host, script):
    """Run a shell script on a lab host; return its stdout (fails the test if it fails)."""
    done = lab.exec(host, ["sh", "-ec", script])
    assert done.returncode == 0, f"{host}: {script!r} failed ({done.returncode}): {done.stderr}"
    return done.stdout


@pytest.fixture
def make_machine_lab(machine_inventory, tmp_path):
    """make_machine_lab(suffix) -> (Lab, inventory) of machines like the session's, not built; taken down after the test."""
    made = []

    def make(suffix):
        directory = tmp_path / suffix
        directory.mkdir()
        inventory = inventory_copy(MACHINES_INVENTORY, f"{session_lab_name()}m-{suffix}", directory)
        extra = nslab.Lab.from_inventory(inventory)
        made.append(extra)
        return extra, inventory

    yield make
    for extra in made:
        extra.down()


@pytest.fixture(scope="session")
def ansible_env():
    """The environment to run Ansible (and nslab.py) with."""
    return ansible_environment()


@pytest.fixture(scope="session")
def ansible(lab, lab_inventory, ansible_env, tmp_path_factory):
    return AnsibleRunner(lab_inventory, tmp_path_factory.mktemp("ansible"), ansible_env)


@pytest.fixture(scope="session")
def modules(lab, lab_inventory, ansible_env, tmp_path_factory):
    return ModuleRunner(lab, lab_inventory, tmp_path_factory.mktemp("modules"), ansible_env)


@pytest.fixture
def run_module(modules):
    return modules.run_module


# dnat_rule's backends, for the suites that prove what every backend does with real traffic.
DNAT_BACKENDS = ("iptables", "nftables")


def with_backend(run_module, backend):
    """run_module, with dnat_rule's option backend set to `backend` (unless a call sets it)."""
    def run(host, module, args, **kwargs):
        if module == "netns.expose.dnat_rule":
            args = {"backend": backend, **args}
        return run_module(host, module, args, **kwargs)
    return run


@pytest.fixture
def run_playbook(ansible):
    return ansible.run_playbook


@pytest.fixture
def host_exec(lab):
    return lab.exec
