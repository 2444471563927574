"""The pyroute2 seam: version differences and namespace detection, with pyroute2 mocked."""
from __future__ import annotations

from unittest import mock

import pytest

from ansible_collections.netns.expose.plugins.module_utils import _netlink


def test_netns_handle_uses_iproute_netns_keyword_on_0_9():
    with mock.patch.object(_netlink, "IPRoute") as iproute:
        assert _netlink._open_netns("ns1") is iproute.return_value
    iproute.assert_called_once_with(netns="ns1")


def test_netns_handle_falls_back_to_netns_class_on_0_7():
    with mock.patch.object(_netlink, "IPRoute", side_effect=TypeError("unexpected keyword argument 'netns'")), \
            mock.patch.object(_netlink.pyroute2, "NetNS", create=True) as netns_class:
        assert _netlink._open_netns("ns1") is netns_class.return_value
    netns_class.assert_called_once_with("ns1")


MOUNTINFO = (
    "22 1 0:21 / /run rw shared:5 - tmpfs tmpfs rw\n"
    "601 22 0:4 net:[4026532900] /run/netns/ns1 rw shared:5 - nsfs nsfs rw\n"
)


@pytest.mark.parametrize("name, exists, expected", [("ns1", True, "present"), ("ns2", True, "foreign"), ("ns3", False, "absent")])
def test_netns_state_tells_namespace_files_from_other_files(name, exists, expected):
    with mock.patch.object(_netlink, "netns_run_dir", return_value="/run/netns"), \
            mock.patch("os.path.lexists", return_value=exists), \
            mock.patch("os.path.realpath", side_effect=lambda path: path), \
            mock.patch("builtins.open", mock.mock_open(read_data=MOUNTINFO)):
        assert _netlink.Netlink().netns_state(name) == expected
