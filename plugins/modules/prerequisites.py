#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: prerequisites
short_description: Install what the collection's modules need on a host
version_added: 0.2.0
description:
  - Makes usable on the managed host the tools the collection's modules need, named by what they are used for,
    and installs the packages that provide the missing ones with the OS package manager, in one transaction.
  - V(pyroute2) is the Python library of M(netns.expose.netns_veth); it is usable when the Python interpreter that
    runs the module can import it.
    V(iptables) is the pair M(netns.expose.dnat_rule) runs, C(iptables-nft-save) and C(iptables-nft-restore), or
    C(iptables-legacy-save) and C(iptables-legacy-restore).
    V(conntrack) is the C(conntrack) tool, which M(netns.expose.dnat_rule) uses to delete stale flows.
    V(nftables) is the C(nft) tool.
  - The OS family comes from C(/etc/os-release) (C(ID) and C(ID_LIKE)). Debian, Ubuntu and their derivatives use
    C(apt-get); RHEL, CentOS, Fedora, Rocky Linux, AlmaLinux and their derivatives use C(dnf), or C(yum) where there
    is no C(dnf).
  - "The packages are, on Debian/Ubuntu: C(python3-pyroute2), C(iptables), C(conntrack), C(nftables);
    on the RHEL family: C(python3-pyroute2) (from EPEL on RHEL, Rocky Linux and AlmaLinux, in the main repositories
    on Fedora), C(iptables-nft), C(conntrack-tools), C(nftables)."
  - When nothing is missing the module changes nothing and runs no package manager, on any OS.
    When something is missing on another OS family, it fails naming the packages to install by hand.
  - After installing, the module checks again that every need is usable, and fails saying why if one is not,
    for example when the package was installed for the system Python but Ansible runs another interpreter.
  - The module never removes a package, as other software may use it; it has no O(ignore:state) option.
author:
  - netns.expose maintainers (@netns-expose)
extends_documentation_fragment:
  - netns.expose.attributes
  - netns.expose.attributes.platform
  - netns.expose.lock
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: linux
options:
  needs:
    description:
      - The tools wanted, by what the collection uses them for (not by package name).
    type: list
    elements: str
    choices: [pyroute2, iptables, conntrack, nftables]
    required: true
  update_cache:
    description:
      - Refresh the package index (C(apt-get update)) before installing, only when something is missing.
      - Ignored with C(dnf) and C(yum), which refresh their metadata by themselves.
    type: bool
    default: true
notes:
  - The role C(netns.expose.expose) runs this module unless C(expose_manage_packages) is V(false).
  - C(apt-get) runs non-interactively, without recommended packages, and keeps configuration files already on the host.
seealso:
  - module: netns.expose.netns_veth
  - module: netns.expose.dnat_rule
"""

EXAMPLES = r"""
- name: Install what netns_veth and dnat_rule need
  netns.expose.prerequisites:
    needs: [pyroute2, iptables, conntrack]

- name: Only the iptables tools, with the package index as it is
  netns.expose.prerequisites:
    needs: [iptables]
    update_cache: false
"""

RETURN = r"""
actions:
  description: The changes made, or that would be made in check mode, in order. Empty when nothing is missing.
  returned: always
  type: list
  elements: str
  sample:
    - refresh the package index (apt-get update)
    - install python3-pyroute2 conntrack with apt-get
missing:
  description: The needs that were not usable before the run.
  returned: always
  type: list
  elements: str
  sample: [pyroute2, conntrack]
installed:
  description: The packages installed, or that would be installed in check mode. Empty when nothing is missing.
  returned: always
  type: list
  elements: str
  sample: [python3-pyroute2, conntrack]
family:
  description: The OS family, V(debian) or V(rhel), or for any other system its C(ID) in C(/etc/os-release).
  returned: always
  type: str
  sample: debian
package_manager:
  description: The package manager used or that would be used (V(apt-get), V(dnf) or V(yum)), null on other families.
  returned: always
  type: str
  sample: apt-get
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netns.expose.plugins.module_utils._lock import LOCK_OPTION, run_locked
from ansible_collections.netns.expose.plugins.module_utils._packages import (
    NEEDS,
    PrerequisitesError,
    PrerequisitesRun,
)
from ansible_collections.netns.expose.plugins.module_utils._plan import PlanApplyError


def install(module):
    """Read, plan and (unless in check mode) install: the run; fails the module on an error."""
    try:
        run = PrerequisitesRun(module, module.params["needs"], update_cache=module.params["update_cache"])
    except PrerequisitesError as exc:
        module.fail_json(msg=str(exc))
    if not module.check_mode:
        try:
            run.plan.apply()
        except PlanApplyError as exc:
            module.fail_json(msg=str(exc), actions=exc.done, failed_action=exc.failed_step, **run.outputs())
        try:
            run.recheck()
        except PrerequisitesError as exc:
            module.fail_json(msg=str(exc), changed=run.plan.changed, actions=run.plan.actions, **run.outputs())
    return run


def main():
    module = AnsibleModule(
        argument_spec=dict(
            needs=dict(type="list", elements="str", choices=list(NEEDS), required=True),
            update_cache=dict(type="bool", default=True),
            **LOCK_OPTION,
        ),
        supports_check_mode=True,
    )
    run = run_locked(module, lambda: install(module))

    result = dict(changed=run.plan.changed, actions=run.plan.actions, **run.outputs())
    if module._diff:
        result["diff"] = run.plan.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
