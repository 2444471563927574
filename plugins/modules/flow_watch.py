#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: flow_watch
short_description: Watch probed flows through a master's port mappings, hop by hop and chain by chain
version_added: 0.5.0
description:
  - The master's half of explaining a mapping (the walkthrough's tcpdump, ARP tables and LOG rules, without them).
    Run it with C(async) and C(poll=0); it says it is ready with the file C(ready) in
    C(/run/netns-expose/explain/<run_id>/); send the probes (from a slave, each from its O(flows[].client_port));
    then create the file C(done) there, and collect the result with M(ansible.builtin.async_status).
  - While it watches, it captures the flows' packets on the master's interface toward the client (where the
    probes come in, whatever O(flows[].in_interface) says) and on both ends of each veth pair, with AF_PACKET
    sockets (no tcpdump), and traces them with nftables' C(nftrace),
    set by a table of the run's own (C(ip netns_expose_trace_<run_id>)) on exactly the flows' packets and their
    replies, read with C(nft monitor trace). That works in any network namespace; no LOG target, no sysctl.
  - Then it reads each flow's conntrack entry (the reply tuple from the service shows the DNAT), the other
    clients' entries to the mapping that do not reach its target (stale, from before the mapping or a change of it),
    the route the DNAT-ed request takes (C(ip route get <to_address> from <client> iif <interface>), refused as
    forwarding would refuse it), the route back from the namespace to the client, the state of both ends of the
    pair, the neighbour entries of the master and of each namespace, and C(ip_forward).
  - The trace table and the run's directory (and C(/run/netns-expose/explain) and C(/run/netns-expose) when no
    other run is there) go when the module ends, also when it fails or times out; only a kill (as C(async)'s
    time limit does) keeps them, so keep O(timeout) below the task's C(async).
    The iptables-legacy chains are not nftables and do not show in the trace.
author:
  - netns.expose maintainers (@netns-expose)
extends_documentation_fragment:
  - netns.expose.attributes
  - netns.expose.attributes.platform
attributes:
  check_mode:
    support: full
    details:
      - It changes nothing that lasts (the trace table goes with the run), so it watches in check mode too.
  diff_mode:
    support: none
  platform:
    platforms: linux
requirements:
  - C(nft) (nftables) and C(ip) (iproute2) on the master.
options:
  run_id:
    description: Names the run's directory and trace table; 1 to 16 lowercase letters and digits.
    type: str
    required: true
  timeout:
    description: Seconds to wait for the C(done) file before reporting what was seen.
    type: float
    default: 30
  flows:
    description: The probes' flows, each through one mapping.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The mapping's name.
        type: str
        required: true
      protocol:
        description: The mapping's protocol; an V(icmp) flow is an echo's.
        type: str
        choices: [tcp, udp, icmp]
        required: true
      client:
        description: The address the probe comes from.
        type: str
        required: true
      client_port:
        description: The port the probe comes from (V(icmp) the echo's identifier); each flow its own.
        type: int
        required: true
      address:
        description: The address the probe goes to (the mapping's destination).
        type: str
        required: true
      port:
        description: The mapping's host port; required for V(tcp) and V(udp), refused for V(icmp).
        type: int
      to_address:
        description: The mapping's target (the namespace end of the pair).
        type: str
        required: true
      to_port:
        description: The mapping's target port; required for V(tcp) and V(udp), refused for V(icmp).
        type: int
      in_interface:
        description: The mapping's O(netns.expose.dnat_rule#module:in_interface), if it has one (the report
          compares it with the interface the probe comes in on).
        type: str
      host_ifname:
        description: The host end of the mapping's veth pair.
        type: str
        required: true
      netns:
        description: The namespace of the target.
        type: str
        required: true
      ns_ifname:
        description: The namespace end of the pair.
        type: str
        required: true
seealso:
  - module: netns.expose.probe
  - module: netns.expose.dnat_rule
"""

EXAMPLES = r"""
- name: Watch the recipe's mapping while the slave sends one request
  netns.expose.flow_watch:
    run_id: r1
    flows:
      - {name: http-web-tcp-8090, protocol: tcp, client: 10.211.55.123, client_port: 41001, address: 10.211.55.122,
         port: 8090, to_address: 10.244.1.2, to_port: 9090, in_interface: eth0, host_ifname: veth1b, netns: ns1,
         ns_ifname: veth1a}
  async: 60
  poll: 0
  register: watch

- name: Wait until the master watches
  ansible.builtin.wait_for:
    path: /run/netns-expose/explain/r1/ready

- name: One request from the slave, from the flow's port
  ansible.builtin.command:
    argv: [curl, -s, -m, "5", --local-port, "41001", "http://10.211.55.122:8090/"]
  delegate_to: slave
  changed_when: false

- name: Say the probes are over
  ansible.builtin.file:
    path: /run/netns-expose/explain/r1/done
    state: touch
    mode: "0600"

- name: Collect what the master saw
  ansible.builtin.async_status:
    jid: "{{ watch.ansible_job_id }}"
  register: seen
  until: seen.finished
  retries: 60
  delay: 1
"""

RETURN = r"""
finished:
  description: Whether the C(done) file came before O(timeout).
  returned: success
  type: bool
flows:
  description: Per flow, in the order of O(flows).
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: The mapping's name.
      type: str
    flow:
      description: The flow's ends and interfaces, as given.
      type: dict
    arrival:
      description: The master's interface toward the client, where the probe comes in (from C(ip route get <client>)).
      type: str
    hops:
      description:
        - The flow's packets at each capture point (C(master <in_interface>), C(master <host_ifname>),
          C(<netns> <ns_ifname>)), in the kernel's order, with C(direction) V(in) or V(out) (received or sent
          on that interface), C(seconds) since the capture started, and C(packet) in tcpdump's notation.
      type: list
      elements: dict
      sample:
        - {hop: master eth0, direction: in, seconds: 0.001, packet: "tcp 10.211.55.123:41001 > 10.211.55.122:8090 [S]"}
        - {hop: master veth1b, direction: out, seconds: 0.0011, packet: "tcp 10.211.55.123:41001 > 10.244.1.2:9090 [S]"}
    chains:
      description:
        - For the C(request) and the C(reply) direction, the C(first) traced packet and a C(later) one, each with the
          chains it crossed in order (C(chain) as C(<family> <table> <chain>), the C(rules) that matched with their
          verdicts, the C(verdict) that ended the chain, and the packet's C(fields) as it entered a base chain),
          the C(count) of traced packets, and C(hits), per chain, how many of them crossed it. Only the first packet
          of a flow crosses the nat chains.
      type: dict
    conntrack:
      description: The flow's conntrack entries, each with its C(original) and C(reply) tuples, C(status), C(tcp_state),
        C(mark) and C(timeout).
      type: list
      elements: dict
    conntrack_before:
      description: The flow's conntrack entries as they were before the watch started (as RV(flows[].conntrack)).
        With one there, the probes did not start the flow, they joined it.
      type: list
      elements: dict
    elements:
      description:
        - The elements of the nftables backend's table (C(ip netns_expose)) that the mapping owns (its map elements
          are what its packets matched, as the rules dispatch through the maps), each with its C(set) (or map), the
          C(element) as nft prints it, and its packet counter, C(packets), and how much it grew during the watch,
          C(run_packets) (V(null) where the set counts nothing). V([]) with the iptables backend.
      type: list
      elements: dict
      sample:
        - {set: dnat_tcp_dst, element: "10.211.55.122 . 8090 : 10.244.1.2 . 9090", packets: 4, run_packets: 1}
    stale:
      description: Other clients' conntrack entries to the mapping's protocol, address and port whose reply does not
        come from the mapping's target (they started before the mapping, or before it changed), as RV(flows[].conntrack).
      type: list
      elements: dict
    route:
      description: The route of the DNAT-ed request (C(dev), C(gateway), C(prefsrc), C(type)), or C(error) with the
        kernel's refusal.
      type: dict
    return_route:
      description: The route of the service's reply, in the namespace, from O(flows[].to_address) to the client, or
        C(error) (C(Network is unreachable) without a default route).
      type: dict
    links:
      description: The host and the namespace end of the pair, by name, each with C(operstate) and C(up) (its
        administrative state), or C(error).
      type: dict
base_chains:
  description: The master's base chains, as C(<family> <table> <chain>) like RV(flows[].chains) names them, each
    with its C(type) (V(nat), V(filter), ...) and C(hook).
  returned: success
  type: dict
  sample: {"ip netns_expose prerouting": {"type": "nat", "hook": "prerouting"}}
neighbours:
  description: The neighbour entries of the master (C(master)) and of each flow's namespace, by name.
  returned: success
  type: dict
ip_forward:
  description: The master's C(net.ipv4.ip_forward).
  returned: success
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netns.expose.plugins.module_utils._conntrack import ConntrackError
from ansible_collections.netns.expose.plugins.module_utils._nftables import NftError
from ansible_collections.netns.expose.plugins.module_utils._path import PathError
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput
from ansible_collections.netns.expose.plugins.module_utils._watch import Watch, flows_from_params

FLOW_OPTIONS = dict(
    name=dict(type="str", required=True),
    protocol=dict(type="str", choices=["tcp", "udp", "icmp"], required=True),
    client=dict(type="str", required=True),
    client_port=dict(type="int", required=True),
    address=dict(type="str", required=True),
    port=dict(type="int"),
    to_address=dict(type="str", required=True),
    to_port=dict(type="int"),
    in_interface=dict(type="str"),
    host_ifname=dict(type="str", required=True),
    netns=dict(type="str", required=True),
    ns_ifname=dict(type="str", required=True),
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            run_id=dict(type="str", required=True),
            timeout=dict(type="float", default=30.0),
            flows=dict(type="list", elements="dict", required=True, options=FLOW_OPTIONS),
        ),
        supports_check_mode=True,
    )
    nft, ip = module.get_bin_path("nft"), module.get_bin_path("ip")
    if not nft or not ip:
        module.fail_json(msg="flow_watch needs nft (nftables) and ip (iproute2) on the master")
    try:
        watch = Watch(module, flows_from_params(module.params["flows"]), module.params["run_id"],
                      module.params["timeout"], nft, ip)
        report = watch.observe()
    except (InvalidInput, OSError, ConntrackError, PathError, NftError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **report)


if __name__ == "__main__":
    main()
