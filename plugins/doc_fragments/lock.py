# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    """The host-wide lock of the modules that change a host (module_utils/_lock.py)."""

    DOCUMENTATION = r"""
options:
  lock_timeout:
    description:
      - Seconds to wait for the host-wide lock that the collection's modules which change a host (M(netns.expose.netns_veth),
        M(netns.expose.dnat_rule), M(netns.expose.prerequisites)) hold for their read, plan and apply, so that two runs
        at once (two operators, a rollout and a manual fix) do not plan from what the other is replacing. After that
        the module fails, naming the run that holds it (pid, command line, since when).
      - The lock is an C(flock) on C(/run/lock/netns-expose.net-<inode of the network namespace>.lock), which the kernel
        releases when its holder ends or is killed. Check mode does not take it.
    type: float
    default: 60
"""
