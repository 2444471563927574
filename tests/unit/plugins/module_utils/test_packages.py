"""Needs, OS families and the install plan of the prerequisites module, on a fake host."""
from __future__ import annotations

import json

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.netns.expose.plugins.module_utils import _packages
from ansible_collections.netns.expose.plugins.module_utils._packages import (
    PACKAGES,
    Host,
    PrerequisitesError,
    PrerequisitesRun,
    install_hint,
    os_family,
    parse_os_release,
)
from ansible_collections.netns.expose.plugins.module_utils._plan import PlanApplyError
from ansible_collections.netns.expose.plugins.modules import prerequisites

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
UBUNTU = 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n'
RHEL = 'NAME="Red Hat Enterprise Linux"\nVERSION_ID="9.4"\nID="rhel"\nID_LIKE="fedora"\n'
ROCKY = 'NAME="Rocky Linux"\nVERSION_ID="9.4"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
ALMA = 'NAME="AlmaLinux"\nID="almalinux"\nID_LIKE="rhel centos fedora"\n'
FEDORA = 'NAME="Fedora Linux"\nVERSION_ID=40\nID=fedora\n'
MINT = 'NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n'
ALPINE = 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\n'

APT = "/usr/bin/apt-get"
DNF = "/usr/bin/dnf"
ALL_TOOLS = {"iptables-nft-restore", "iptables-nft-save", "conntrack", "nft"}


class FakeModule:
    """get_bin_path over a set of installed binaries; run_command records argv and may 'install' packages."""

    def __init__(self, binaries=(), results=None, installs=None):
        self.binaries = set(binaries)
        self.results = results or {}  # argv[1] -> (rc, out, err)
        self.installs = installs or {}  # package -> binaries it brings
        self.calls = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        assert not required
        return f"/usr/bin/{name}" if name in self.binaries else None

    def run_command(self, argv, **kwargs):
        self.calls.append((list(argv), kwargs))
        rc, out, err = self.results.get(argv[1], (0, "", ""))
        if rc == 0 and argv[1] == "install":
            for package in argv[2:]:
                self.binaries |= set(self.installs.get(package, ()))
        return rc, out, err


class FakeHost(Host):
    def __init__(self, module, pyroute2=False, python="/usr/bin/python3"):
        super().__init__(module, importable=lambda name: self.pyroute2, python=python)
        self.pyroute2 = pyroute2


def debian_module(binaries=(), **kwargs):
    return FakeModule({"apt-get", *binaries}, **kwargs)


def rhel_module(binaries=(), **kwargs):
    return FakeModule({"dnf", *binaries}, **kwargs)


def run(module, needs, os_release=DEBIAN, pyroute2=False, python="/usr/bin/python3", **kwargs):
    host = FakeHost(module, pyroute2=pyroute2, python=python)
    return PrerequisitesRun(module, needs, os_release=os_release, host=host, **kwargs)


@pytest.mark.parametrize("text, family", [
    (DEBIAN, "debian"), (UBUNTU, "debian"), (MINT, "debian"),
    (RHEL, "rhel"), (ROCKY, "rhel"), (ALMA, "rhel"), (FEDORA, "rhel"),
    ('ID="amzn"\nID_LIKE="centos rhel fedora"\n', "rhel"),
    (ALPINE, "alpine"), ("", "unknown"),
])
def test_the_family_comes_from_id_and_id_like(text, family):
    assert os_family(parse_os_release(text))[0] == family


def test_os_release_values_are_unquoted_and_comments_skipped():
    fields = parse_os_release('# comment\nID="rocky"\nID_LIKE=\'rhel centos fedora\'\nNAME="Rocky Linux"\nBROKEN="x\n')
    assert fields["ID"] == "rocky" and fields["ID_LIKE"] == "rhel centos fedora" and fields["NAME"] == "Rocky Linux"
    assert fields["BROKEN"] == "x"


def test_the_rhel_family_package_names_are_pinned():
    assert PACKAGES["rhel"] == {"pyroute2": "python3-pyroute2", "iptables": "iptables-nft",
                                "conntrack": "conntrack-tools", "nftables": "nftables"}
    assert PACKAGES["debian"] == {"pyroute2": "python3-pyroute2", "iptables": "iptables", "conntrack": "conntrack",
                                  "nftables": "nftables"}


def test_apt_refreshes_the_index_then_installs_in_one_transaction():
    module = debian_module(installs={"conntrack": ["conntrack"], "iptables": ["iptables-nft-restore", "iptables-nft-save"]})
    prereq = run(module, ["pyroute2", "iptables", "conntrack"])
    assert prereq.plan.actions == ["refresh the package index (apt-get update)",
                                   "install python3-pyroute2 iptables conntrack with apt-get"]
    prereq.host.pyroute2 = True  # what the package would do
    prereq.plan.apply()
    assert module.calls == [
        ([APT, "update"], {}),
        ([APT, "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120",
          "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
          "python3-pyroute2", "iptables", "conntrack"],
         {"environ_update": {"DEBIAN_FRONTEND": "noninteractive"}}),
    ]
    prereq.recheck()
    assert prereq.outputs() == {"missing": ["pyroute2", "iptables", "conntrack"],
                                "installed": ["python3-pyroute2", "iptables", "conntrack"],
                                "family": "debian", "package_manager": "apt-get"}


def test_without_update_cache_apt_only_installs():
    module = debian_module(installs={"conntrack": ["conntrack"]})
    prereq = run(module, ["conntrack"], os_release=UBUNTU, update_cache=False)
    assert prereq.plan.actions == ["install conntrack with apt-get"]
    prereq.plan.apply()
    assert [argv[1] for argv, _kwargs in module.calls] == ["install"]


def test_dnf_installs_the_rhel_family_packages_and_ignores_update_cache():
    module = rhel_module(installs={"iptables-nft": ["iptables-nft-restore", "iptables-nft-save"],
                                   "conntrack-tools": ["conntrack"]})
    prereq = run(module, ["pyroute2", "iptables", "conntrack"], os_release=ROCKY, pyroute2=True, update_cache=True)
    assert prereq.plan.actions == ["install iptables-nft conntrack-tools with dnf"]
    prereq.plan.apply()
    assert module.calls == [([DNF, "install", "-y", "iptables-nft", "conntrack-tools"], {})]
    prereq.recheck()
    assert prereq.outputs()["package_manager"] == "dnf" and prereq.outputs()["family"] == "rhel"


def test_yum_where_there_is_no_dnf():
    module = FakeModule({"yum"})
    prereq = run(module, ["pyroute2"], os_release=RHEL)
    assert prereq.plan.actions == ["install python3-pyroute2 with yum"]
    prereq.host.pyroute2 = True
    prereq.plan.apply()
    assert module.calls == [(["/usr/bin/yum", "install", "-y", "python3-pyroute2"], {})]


@pytest.mark.parametrize("os_release", [DEBIAN, ROCKY, ALPINE])
def test_nothing_missing_runs_nothing_on_any_family(os_release):
    module = FakeModule(ALL_TOOLS | {"apt-get", "dnf"})
    prereq = run(module, ["pyroute2", "iptables", "conntrack", "nftables"], os_release=os_release, pyroute2=True)
    assert not prereq.plan.changed and prereq.plan.actions == []
    prereq.plan.apply()
    prereq.recheck()
    assert module.calls == []
    assert prereq.outputs()["missing"] == [] and prereq.outputs()["installed"] == []


def test_the_legacy_iptables_pair_is_enough():
    module = debian_module({"iptables-legacy-restore", "iptables-legacy-save"})
    assert not run(module, ["iptables"]).plan.changed
    half = debian_module({"iptables-nft-restore", "iptables-legacy-save"})
    assert run(half, ["iptables"]).missing == ["iptables"]


def test_check_mode_lists_the_actions_and_the_diff_without_running_anything():
    module = debian_module()
    prereq = run(module, ["conntrack", "pyroute2", "conntrack"])
    assert prereq.plan.changed
    assert prereq.plan.actions == ["refresh the package index (apt-get update)",
                                   "install conntrack python3-pyroute2 with apt-get"]
    assert prereq.plan.diff == {"before": {"missing": ["conntrack", "pyroute2"], "installed": []},
                                "after": {"missing": [], "installed": ["conntrack", "python3-pyroute2"]}}
    assert module.calls == []


def test_an_unknown_family_with_something_missing_names_the_packages_and_the_role_switch():
    module = FakeModule({"apk"})
    with pytest.raises(PrerequisitesError) as error:
        run(module, ["pyroute2", "conntrack"], os_release=ALPINE)
    assert str(error.value) == (
        "cannot install what is missing (pyroute2, conntrack) on alpine: this module knows the packages of "
        "Debian/Ubuntu and of the RHEL family only. Install them by hand (pyroute2: python3-pyroute2 on "
        "Debian/Ubuntu and on the RHEL family, from EPEL on RHEL, Rocky and AlmaLinux; conntrack: conntrack on "
        "Debian/Ubuntu, conntrack-tools on the RHEL family), and set expose_manage_packages: false to have the "
        "expose role skip this step")
    assert module.calls == []


def test_a_failed_install_names_the_command_rc_and_stderr():
    module = debian_module(results={"install": (100, "Reading package lists...", "E: Unable to locate package conntrack\n")})
    prereq = run(module, ["conntrack"], update_cache=False)
    with pytest.raises(PlanApplyError) as error:
        prereq.plan.apply()
    assert str(error.value) == (
        "failed to install conntrack with apt-get: /usr/bin/apt-get install -y --no-install-recommends "
        "-o DPkg::Lock::Timeout=120 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold conntrack failed (rc 100): "
        "E: Unable to locate package conntrack")


def test_a_failed_refresh_stops_before_the_install():
    module = debian_module(results={"update": (100, "", "E: Could not get lock /var/lib/apt/lists/lock")})
    prereq = run(module, ["nftables"])
    with pytest.raises(PlanApplyError) as error:
        prereq.plan.apply()
    assert error.value.done == [] and error.value.failed_step == "refresh the package index (apt-get update)"
    assert "apt-get update failed (rc 100): E: Could not get lock" in str(error.value)
    assert len(module.calls) == 1


def test_dnf_without_epel_says_where_pyroute2_comes_from():
    module = rhel_module(results={"install": (1, "", "Error: Unable to find a match: python3-pyroute2")})
    with pytest.raises(PlanApplyError) as error:
        run(module, ["pyroute2"], os_release=ROCKY).plan.apply()
    assert str(error.value).endswith(
        "Error: Unable to find a match: python3-pyroute2 (python3-pyroute2 comes from EPEL on RHEL, Rocky and "
        "AlmaLinux: enable that repository first)")
    fedora = rhel_module(results={"install": (1, "", "Error: boom")})
    with pytest.raises(PlanApplyError) as error:
        run(fedora, ["pyroute2"], os_release=FEDORA).plan.apply()
    assert str(error.value).endswith("failed (rc 1): Error: boom")


def test_after_installing_a_need_that_is_still_unusable_fails_saying_why():
    module = debian_module()  # the packages bring nothing this interpreter or PATH sees
    prereq = run(module, ["pyroute2", "conntrack", "iptables"], python="/usr/local/bin/python3.12")
    prereq.plan.apply()
    with pytest.raises(PrerequisitesError) as error:
        prereq.recheck()
    assert str(error.value) == (
        "installed python3-pyroute2, but /usr/local/bin/python3.12 still cannot import pyroute2: "
        "set ansible_python_interpreter to the system Python (/usr/bin/python3); "
        "installed conntrack, but conntrack is still not found on the host; "
        "installed iptables, but iptables-nft-restore and iptables-nft-save or iptables-legacy-restore and "
        "iptables-legacy-save are still not found on the host")


def test_the_system_python_gets_no_interpreter_advice():
    prereq = run(debian_module(), ["pyroute2"])
    prereq.plan.apply()
    with pytest.raises(PrerequisitesError) as error:
        prereq.recheck()
    assert str(error.value) == "installed python3-pyroute2, but /usr/bin/python3 still cannot import pyroute2"


def test_a_missing_package_manager_is_an_error_before_anything_runs():
    module = FakeModule()
    with pytest.raises(PrerequisitesError) as error:
        run(module, ["nftables"], os_release=DEBIAN)
    assert str(error.value) == "apt-get was not found on this debian host, so nftables cannot be installed"


def test_install_hints_come_from_the_table():
    assert install_hint("pyroute2") == (
        "install pyroute2 (the package python3-pyroute2 on Debian/Ubuntu and on the RHEL family, from EPEL on RHEL, "
        "Rocky and AlmaLinux), or let the expose role do it (expose_manage_packages: true)")
    assert install_hint("iptables") == (
        "install iptables (the package iptables on Debian/Ubuntu, iptables-nft on the RHEL family), "
        "or let the expose role do it (expose_manage_packages: true)")
    assert install_hint("conntrack") == (
        "install conntrack (the package conntrack on Debian/Ubuntu, conntrack-tools on the RHEL family), "
        "or let the expose role do it (expose_manage_packages: true)")


def test_the_real_interpreter_check_does_not_crash_on_a_missing_library():
    assert _packages.python_can_import("json")
    assert not _packages.python_can_import("netns_expose_no_such_library")


# The module itself, in check mode and for real, on a fake Debian host.

@pytest.fixture
def fake_debian(monkeypatch):
    module = debian_module(installs={"conntrack": ["conntrack"]})
    monkeypatch.setattr(_packages, "read_os_release", lambda: DEBIAN)
    monkeypatch.setattr(prerequisites.AnsibleModule, "get_bin_path",
                        lambda self, name, required=False, opt_dirs=None: module.get_bin_path(name))
    monkeypatch.setattr(prerequisites.AnsibleModule, "run_command",
                        lambda self, argv, **kwargs: module.run_command(argv, **kwargs))
    return module


def run_module(capsys, args):
    with patch_module_args(args), pytest.raises(SystemExit):
        prerequisites.main()
    return json.loads(capsys.readouterr().out)


def test_module_check_mode_changes_nothing_and_says_what_it_would_do(fake_debian, capsys):
    result = run_module(capsys, {"needs": ["conntrack"], "_ansible_check_mode": True, "_ansible_diff": True})
    assert result["changed"] is True and not result.get("failed")
    assert result["actions"] == ["refresh the package index (apt-get update)", "install conntrack with apt-get"]
    assert result["installed"] == ["conntrack"] and result["missing"] == ["conntrack"]
    assert result["diff"]["after"] == {"missing": [], "installed": ["conntrack"]}
    assert fake_debian.calls == []


def test_module_installs_and_then_is_idempotent(fake_debian, capsys):
    result = run_module(capsys, {"needs": ["conntrack"], "update_cache": False})
    assert result["changed"] is True and result["installed"] == ["conntrack"]
    assert len(fake_debian.calls) == 1
    again = run_module(capsys, {"needs": ["conntrack"]})
    assert again["changed"] is False and again["actions"] == [] and again["package_manager"] == "apt-get"
    assert len(fake_debian.calls) == 1


def test_module_refuses_an_unknown_need(fake_debian, capsys):
    result = run_module(capsys, {"needs": ["iproute2"]})
    assert result["failed"] and "needs" in result["msg"]
