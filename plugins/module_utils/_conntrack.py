# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deleting the conntrack entries of a mapping's port, with the conntrack tool.

NAT is decided when a conntrack entry is made: a flow that started before a mapping
was added, changed or removed keeps its old translation (or none) until its entry
expires. Deleting the entries of the mapping's protocol and host port makes the
next packet of such a flow start a new entry that meets the current rules.
"""
from __future__ import annotations

import re

_DELETED = re.compile(r"(\d+) flow entries have been deleted")


def delete_argv(conntrack, protocol, port, destination):
    """conntrack -D for the flows of one mapping key: protocol, original destination port and address."""
    argv = [conntrack, "-D", "-p", protocol]
    if port is not None:
        argv += ["--orig-port-dst", str(port)]
    if destination is not None:
        argv += ["--orig-dst", destination]
    return argv


def deleted_count(rc, out, err):
    """How many entries `conntrack -D` deleted; it exits 1 when there were none."""
    match = _DELETED.search(f"{out}\n{err}")
    if match is None or rc not in (0, 1):
        raise ConntrackError(f"conntrack failed ({rc}): {(err or out).strip()}")
    return int(match.group(1))


class ConntrackError(Exception):
    pass


class ConntrackTable:
    """The host's conntrack table, through module.run_command; `binary` is None when the tool is missing."""

    def __init__(self, module):
        self.module = module
        self.binary = module.get_bin_path("conntrack")

    def delete(self, protocol, port, destination):
        rc, out, err = self.module.run_command(delete_argv(self.binary, protocol, port, destination))
        return deleted_count(rc, out, err)
