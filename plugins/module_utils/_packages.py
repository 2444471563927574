# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the collection needs on a managed host, and installing what is missing.

A need is named by what the collection uses (pyroute2, iptables, conntrack,
nftables), not by package: PACKAGES maps it to the package of each OS family,
and is the one place that also words the "install X" hints of the other modules.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shlex
import sys

from ansible_collections.netns.expose.plugins.module_utils._plan import Plan

NEEDS = ("pyroute2", "iptables", "conntrack", "nftables")

# family -> need -> package
PACKAGES = {
    "debian": {"pyroute2": "python3-pyroute2", "iptables": "iptables", "conntrack": "conntrack", "nftables": "nftables"},
    "rhel": {"pyroute2": "python3-pyroute2", "iptables": "iptables-nft", "conntrack": "conntrack-tools",
             "nftables": "nftables"},
}
FAMILY_NAMES = {"debian": "Debian/Ubuntu", "rhel": "the RHEL family"}
# Where a package is not in the distribution's main repositories.
REPOSITORY_NOTES = {("rhel", "pyroute2"): "from EPEL on RHEL, Rocky and AlmaLinux"}

# os-release IDs (ID or ID_LIKE) of each family.
FAMILY_IDS = {
    "debian": ("debian", "ubuntu"),
    "rhel": ("rhel", "centos", "fedora", "rocky", "almalinux"),
}
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")

# The executables a need stands for: any one alternative, each a set of binaries that must all be there.
BINARIES = {
    "iptables": (("iptables-nft-restore", "iptables-nft-save"), ("iptables-legacy-restore", "iptables-legacy-save")),
    "conntrack": (("conntrack",),),
    "nftables": (("nft",),),
}
SYSTEM_PYTHON = "/usr/bin/python3"
ROLE_SWITCH = "expose_manage_packages"

# DPkg::Lock::Timeout: wait for the dpkg lock (unattended-upgrades holds it on a freshly booted host).
APT_INSTALL_OPTIONS = ["-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120",
                       "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
APT_ENVIRONMENT = {"DEBIAN_FRONTEND": "noninteractive"}


def packages_by_family(need):
    """'python3-pyroute2 on Debian/Ubuntu and on the RHEL family (from EPEL ...)', from the one table."""
    debian, rhel = PACKAGES["debian"][need], PACKAGES["rhel"][need]
    note = REPOSITORY_NOTES.get(("rhel", need))
    if debian == rhel:
        text = f"{debian} on {FAMILY_NAMES['debian']} and on {FAMILY_NAMES['rhel']}"
        return f"{text}, {note}" if note else text
    rhel_text = f"{rhel} ({note})" if note else rhel
    return f"{debian} on {FAMILY_NAMES['debian']}, {rhel_text} on {FAMILY_NAMES['rhel']}"


def install_hint(need):
    """How to get a missing need, for the messages of the modules that use it."""
    return (f"install {need} (the package {packages_by_family(need)}), "
            f"or let the expose role do it ({ROLE_SWITCH}: true)")


def parse_os_release(text):
    """The KEY=value pairs of an os-release file, values unquoted."""
    fields = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _sep, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            words = [value.strip("\"'")]
        fields[key.strip()] = words[0] if words else ""
    return fields


def os_family(fields):
    """(family, os_id): family is 'debian' or 'rhel', or the os-release ID (or 'unknown') for any other system."""
    os_id = fields.get("ID", "").lower() or "unknown"
    ids = [os_id, *fields.get("ID_LIKE", "").lower().split()]
    for candidate in ids:
        for family, members in FAMILY_IDS.items():
            if candidate in members:
                return family, os_id
    return os_id, os_id


def read_os_release(paths=OS_RELEASE_PATHS):
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except OSError:
            continue
    return ""


def python_can_import(name):
    """Whether the running interpreter finds the module `name` (without importing it)."""
    importlib.invalidate_caches()
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class PrerequisitesError(Exception):
    pass


class Host:
    """What is usable on the host right now, through module.get_bin_path and the running Python."""

    def __init__(self, module, importable=python_can_import, python=None):
        self.module = module
        self.importable = importable
        self.python = python or sys.executable

    def usable(self, need):
        if need == "pyroute2":
            return self.importable("pyroute2")
        return any(all(self.module.get_bin_path(binary) for binary in binaries) for binaries in BINARIES[need])

    def missing(self, needs):
        """The needs that are not usable, each once, in the order given."""
        return [need for need in dict.fromkeys(needs) if not self.usable(need)]


def _what_is_missing(need):
    alternatives = [" and ".join(binaries) for binaries in BINARIES[need]]
    return " or ".join(alternatives) + (" is" if len(alternatives) == 1 and len(BINARIES[need][0]) == 1 else " are")


class PrerequisitesRun:
    """One module call: the needs, the host as read, and the one plan that installs what is missing.

    Reading and planning raise PrerequisitesError (unknown family, no package manager)
    before anything changes; `plan.apply()` installs; `recheck()` reads the host again.
    """

    def __init__(self, module, needs, update_cache=True, os_release=None, host=None):
        self.module = module
        self.needs = list(dict.fromkeys(needs))
        self.host = host or Host(module)
        self.family, self.os_id = os_family(parse_os_release(read_os_release() if os_release is None else os_release))
        self.package_manager = self._package_manager_name()
        self.missing = self.host.missing(self.needs)
        self.packages = []
        self.plan = Plan({"missing": list(self.missing), "installed": []})
        if self.missing:
            self._build_plan(update_cache)

    def _package_manager_name(self):
        if self.family == "debian":
            return "apt-get"
        if self.family == "rhel":
            return "dnf" if self.module.get_bin_path("dnf") else "yum"
        return None

    def _build_plan(self, update_cache):
        if self.family not in PACKAGES:
            by_hand = "; ".join(f"{need}: {packages_by_family(need)}" for need in self.missing)
            raise PrerequisitesError(
                f"cannot install what is missing ({', '.join(self.missing)}) on {self.os_id}: this module knows "
                f"the packages of Debian/Ubuntu and of the RHEL family only. Install them by hand ({by_hand}), "
                f"and set {ROLE_SWITCH}: false to have the expose role skip this step")
        self.packages = list(dict.fromkeys(PACKAGES[self.family][need] for need in self.missing))
        binary = self.module.get_bin_path(self.package_manager)
        if not binary:
            raise PrerequisitesError(
                f"{self.package_manager} was not found on this {self.os_id} host, so {' '.join(self.packages)} "
                f"cannot be installed")
        if self.package_manager == "apt-get":
            if update_cache:
                self.plan.add("refresh the package index (apt-get update)", lambda: self._run([binary, "update"]))
            install = [binary, "install", *APT_INSTALL_OPTIONS, *self.packages]
            environ = APT_ENVIRONMENT
        else:
            install = [binary, "install", "-y", *self.packages]
            environ = None
        self.plan.add(f"install {' '.join(self.packages)} with {self.package_manager}",
                      lambda: self._run(install, environ, self._repository_notes()),
                      {("missing",): [], ("installed",): list(self.packages)})

    def _repository_notes(self):
        """Why an install may fail for want of a repository, such as EPEL (Fedora has it all)."""
        if self.os_id == "fedora":
            return None
        notes = [f"{PACKAGES[self.family][need]} comes {REPOSITORY_NOTES[(self.family, need)]}"
                 for need in self.missing if (self.family, need) in REPOSITORY_NOTES]
        return f"{'; '.join(notes)}: enable that repository first" if notes else None

    def _run(self, argv, environ=None, note=None):
        kwargs = {"environ_update": environ} if environ else {}
        rc, out, err = self.module.run_command(argv, **kwargs)
        if rc != 0:
            said = err.strip() or "\n".join(out.strip().splitlines()[-5:])
            message = f"{' '.join(argv)} failed (rc {rc}): {said}"
            raise PrerequisitesError(f"{message} ({note})" if note else message)

    def recheck(self):
        """After installing: fail naming each need that is still not usable, and why that can be."""
        problems = []
        for need in self.missing:
            if self.host.usable(need):
                continue
            package = PACKAGES[self.family][need]
            if need == "pyroute2":
                problem = f"installed {package}, but {self.host.python} still cannot import pyroute2"
                if os.path.realpath(self.host.python) != os.path.realpath(SYSTEM_PYTHON):
                    problem += f": set ansible_python_interpreter to the system Python ({SYSTEM_PYTHON})"
            else:
                problem = f"installed {package}, but {_what_is_missing(need)} still not found on the host"
            problems.append(problem)
        if problems:
            raise PrerequisitesError("; ".join(problems))

    def outputs(self):
        return {"missing": list(self.missing), "installed": list(self.packages), "family": self.family,
                "package_manager": self.package_manager}
