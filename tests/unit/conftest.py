"""What every unit test shares: none of them may touch this machine's own network settings.

The plans of dnat_rule set net.ipv4.ip_forward when they are applied; a unit test that applies a plan
without patching that step would write the machine's own sysctl (as root). Every unit test gets a file
of its own in its place, which holds 0 until a plan writes it.
"""
from __future__ import annotations

import pytest
from ansible_collections.netns.expose.plugins.module_utils import _dnat, _lock


@pytest.fixture(autouse=True)
def ip_forward_file(tmp_path_factory, monkeypatch):
    """The file that stands for /proc/sys/net/ipv4/ip_forward in this test (not in its tmp_path, which some
    tests expect to find as they left it)."""
    path = tmp_path_factory.mktemp("sysctl") / "ip_forward"
    path.write_text("0\n", encoding="utf-8")
    monkeypatch.setattr(_dnat, "IP_FORWARD_PATH", str(path))
    return path


@pytest.fixture(autouse=True)
def lock_directory(tmp_path_factory, monkeypatch):
    """A directory of its own for the host-wide lock of the modules a test runs (not this machine's /run/lock)."""
    path = tmp_path_factory.mktemp("lock")
    monkeypatch.setattr(_lock, "LOCK_DIR", str(path))
    return path
