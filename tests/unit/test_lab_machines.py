# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's machines (tests/lab/machines.py) without booting any: image key, nspawn argv, SSH, supervisor loop."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
import machines  # noqa: E402  pylint: disable=wrong-import-position
import nslab  # noqa: E402  pylint: disable=wrong-import-position


def test_the_image_key_follows_its_package_lists(monkeypatch):
    key = machines.Image.key()
    assert key == machines.Image.key() and len(key) == 16
    monkeypatch.setattr(machines, "REPO_PACKAGES", (*machines.REPO_PACKAGES, "nftables"))
    assert machines.Image.key() != key
    monkeypatch.undo()
    monkeypatch.setattr(machines, "IMAGE_PACKAGES", tuple(reversed(machines.IMAGE_PACKAGES)))
    assert machines.Image.key() == key  # the order does not matter


def test_the_image_holds_none_of_what_the_collection_installs():
    assert not set(machines.IMAGE_PACKAGES) & {"python3-pyroute2", "iptables", "conntrack"}
    assert set(machines.REPO_PACKAGES) == {"python3-pyroute2", "iptables", "conntrack"}
    assert {"systemd", "dbus", "openssh-server", "python3", "nftables"} <= set(machines.IMAGE_PACKAGES)


def test_nspawn_boots_with_the_settings_known_to_work(tmp_path):
    image = machines.Image(cache=str(tmp_path))
    machine = machines.Machine("lab1", "master", "10.211.55.122", image)
    argv = machine.nspawn_argv("/run/netns-expose-lab/lab1/master/net")
    for flag in ("--boot", "--register=no", "--keep-unit", "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
                 "--network-namespace-path=/run/netns-expose-lab/lab1/master/net",
                 f"--overlay={image.root}:{machine.upper}:/", "--machine=lab1-master", "--hostname=master",
                 f"--bind-ro={image.repo}:{machines.REPO_MOUNT}"):
        assert flag in argv
    assert machines.NSPAWN_ENV["SYSTEMD_NSPAWN_API_VFS_WRITABLE"] == "network"


def test_ssh_trust_replaces_what_was_known_of_an_address(tmp_path, monkeypatch):
    monkeypatch.setattr(machines, "STATE_ROOT", str(tmp_path))
    ssh = machines.LabSsh("lab1", "/run/netns-expose-lab/lab1/lan/net")
    (tmp_path / "lab1" / "ssh").mkdir(parents=True)
    ssh.trust("10.211.55.122", ["ssh-ed25519 AAAAold root@image"])
    ssh.trust("10.211.55.123", ["ssh-ed25519 AAAAslave root@image"])
    ssh.trust("10.211.55.122", ["ssh-ed25519 AAAAnew root@master", "ecdsa-sha2-nistp256 AAAAecdsa root@master"])
    assert Path(ssh.known_hosts).read_text(encoding="utf-8").splitlines() == [
        "10.211.55.123 ssh-ed25519 AAAAslave",
        "10.211.55.122 ssh-ed25519 AAAAnew",
        "10.211.55.122 ecdsa-sha2-nistp256 AAAAecdsa",
    ]
    assert ssh.argv("10.211.55.122", "true") == ["ssh", "-F", ssh.config, "10.211.55.122", "true"]


def test_a_lab_host_mac_is_stable_local_and_unicast():
    lab = nslab.Lab("lab1", {"master": ("10.211.55.122/24", "eth0", True), "slave": ("10.211.55.123/24", "eth0")})
    again = nslab.Lab("lab1", {"master": ("10.211.55.122/24", "eth0", True)})
    mac = lab.hosts["master"].mac
    assert mac == again.hosts["master"].mac != lab.hosts["slave"].mac
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert lab.hosts["master"].machine and not lab.hosts["slave"].machine
    assert [host.name for host in lab.machines] == ["master"]
    with pytest.raises(nslab.LabError, match="not a machine"):
        lab.machine("slave")


class FakeCgroup:
    def pids(self):
        return {os.getpid()}


def test_the_supervisor_boots_again_into_a_new_namespace_on_reboot_only(tmp_path, monkeypatch):
    machine = machines.Machine("lab1", "master", "10.211.55.122", machines.Image(cache=str(tmp_path)))
    machine.dir = str(tmp_path / "master")
    Path(machine.dir).mkdir()
    machine.cgroup = FakeCgroup()
    statuses = iter([machines.NSPAWN_REBOOT, machines.NSPAWN_REBOOT, 0])
    namespaces, booted = [], []

    def renew():
        namespaces.append(f"/netns/{len(namespaces)}")
        return namespaces[-1]

    def call(argv, **_kwargs):
        booted.append(next(arg for arg in argv if arg.startswith("--network-namespace-path=")))
        return next(statuses)

    monkeypatch.setattr(machines.subprocess, "call", call)
    assert machines.supervise(machine, renew) == 0
    assert booted == [f"--network-namespace-path=/netns/{n}" for n in range(3)]
    assert machine.boots() == 3
