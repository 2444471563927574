"""The conntrack tool's argv and its output, for deleting a mapping's flows."""
from __future__ import annotations

import pytest

from ansible_collections.netns.expose.plugins.module_utils._conntrack import ConntrackError, delete_argv, deleted_count


def test_argv_names_protocol_port_and_destination_only_when_given():
    assert delete_argv("/usr/sbin/conntrack", "udp", 8053, None) == [
        "/usr/sbin/conntrack", "-D", "-p", "udp", "--orig-port-dst", "8053"]
    assert delete_argv("conntrack", "tcp", 8090, "10.211.55.122") == [
        "conntrack", "-D", "-p", "tcp", "--orig-port-dst", "8090", "--orig-dst", "10.211.55.122"]
    assert delete_argv("conntrack", "icmp", None, None) == ["conntrack", "-D", "-p", "icmp"]


@pytest.mark.parametrize("rc, err, count", [
    (0, "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n", 3),
    # It exits 1 when nothing matched.
    (1, "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n", 0),
])
def test_the_count_of_deleted_entries_is_read_from_its_message(rc, err, count):
    assert deleted_count(rc, "", err) == count


def test_a_real_failure_is_an_error():
    with pytest.raises(ConntrackError, match=r"conntrack failed \(1\): conntrack v1.4.7 \(conntrack-tools\): Operation failed"):
        deleted_count(1, "", "conntrack v1.4.7 (conntrack-tools): Operation failed: Permission denied\n")
