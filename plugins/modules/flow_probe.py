#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: flow_probe
short_description: Send one request per flow from its own source port, and capture it on the way out
version_added: 0.5.0
description:
  - The slave's half of explaining a mapping (with M(netns.expose.flow_watch) on the master, as C(explain.yml) runs
    them). Each check is a check of M(netns.expose.probe), with a O(netns.expose.probe#module:checks[].source_port) of its own that names its
    flow in the captures, in the master's trace and in its conntrack table.
  - V(udp) and V(icmp) checks are sent twice from the same port, so that their flow has a later packet after the
    first one (which makes the conntrack entry, and is the only one the nat chains see); a V(tcp) connection has
    several packets anyway.
  - While the checks run, it captures their packets (AF_PACKET, no tcpdump) on the slave's interface toward each
    check's address (from C(ip route get)); then it reads the slave's neighbour (ARP) entries.
  - Nothing changes on the host.
author:
  - netns.expose maintainers (@netns-expose)
extends_documentation_fragment:
  - netns.expose.attributes
  - netns.expose.attributes.platform
attributes:
  check_mode:
    support: full
    details:
      - It only sends requests and reads, so it does that in check mode too.
  diff_mode:
    support: none
  platform:
    platforms: linux
requirements:
  - C(ip) (iproute2); root or C(CAP_NET_RAW) for the capture.
options:
  checks:
    description:
      - The requests, as the O(netns.expose.probe#module:checks) of M(netns.expose.probe), each with its own
        O(netns.expose.probe#module:checks[].source_port) (required here).
    type: list
    elements: dict
    required: true
  timeout:
    description: Seconds to wait for each answer.
    type: float
    default: 3
seealso:
  - module: netns.expose.flow_watch
  - module: netns.expose.probe
"""

EXAMPLES = r"""
- name: One request through the recipe's mapping, from port 41001, captured on the way
  netns.expose.flow_probe:
    checks:
      - {target: http-web, address: 10.211.55.122, protocol: tcp, port: 8090, source_port: 41001}
      - {target: http-web, address: 10.211.55.122, protocol: icmp, source_port: 41002}
  register: sent
"""

RETURN = r"""
results:
  description:
    - Per check, in the order of O(checks), what M(netns.expose.probe) returns for it (the last of the two
      attempts of a V(udp) or V(icmp) check, with C(answered), how many of them were answered), and
      C(source_port), C(client) (the slave's address toward the check's address), C(interface) (the slave's
      interface toward it) and C(hops), the check's packets there (C(hop), C(direction) V(out) or V(in),
      C(seconds), C(packet) in tcpdump's notation).
  returned: success
  type: list
  elements: dict
  sample:
    - {target: http-web, address: 10.211.55.122, protocol: tcp, check: http, port: 8090, ok: true, detail: HTTP 200,
       source_port: 41001, client: 10.211.55.123, interface: eth0,
       hops: [{hop: slave eth0, direction: out, seconds: 0.0001, packet: "tcp 10.211.55.123:41001 > 10.211.55.122:8090 [S]"}]}
neighbours:
  description: The slave's IPv4 neighbour entries after the requests, each with C(address), C(dev), C(mac), C(state).
  returned: success
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netns.expose.plugins.module_utils._flow_probe import probe_flows
from ansible_collections.netns.expose.plugins.module_utils._path import PathError
from ansible_collections.netns.expose.plugins.module_utils._probe import parse_checks
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput


def main():
    module = AnsibleModule(
        argument_spec=dict(
            # The entries are validated in _probe, so that messages can name them as checks[<index>].<field>.
            checks=dict(type="list", elements="dict", required=True),
            timeout=dict(type="float", default=3.0),
        ),
        supports_check_mode=True,
    )
    ip = module.get_bin_path("ip")
    if not ip:
        module.fail_json(msg="flow_probe needs ip (iproute2) on the host")
    try:
        checks = parse_checks(module.params["checks"], module.params["timeout"], 0)
        report = probe_flows(module.run_command, ip, checks, module.params["timeout"])
    except (InvalidInput, PathError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **report)


if __name__ == "__main__":
    main()
