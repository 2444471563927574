#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: probe
short_description: Check from a host that published services answer, with their latency
version_added: 0.1.0
description:
  - Reaches a list of services from the managed host, in one module call, and reports for each whether it answered
    as expected and how long it took. Typically run on a slave against every service the masters publish with
    M(netns.expose.dnat_rule).
  - Each check has a check type, O(checks[].check), that says what is done over its O(checks[].protocol). Without
    O(checks[].check), protocol V(tcp) is an V(http) check, V(udp) a V(udp) check and V(icmp) an V(icmp) check,
    so a tcp entry without O(checks[].check) expects an HTTP service. Set O(checks[].check=tcp) for any other
    service over TCP (SSH, a database, a line protocol).
  - V(http) checks (over tcp) send C(GET http://<address>:<port><path>) and compare the HTTP status (and optionally
    look for a text in the body). No proxy is used and redirects are not followed, so the answer comes from the
    service itself.
  - V(tcp) checks connect; a connection the service accepts passes. With O(checks[].probe) they send it, and with
    O(checks[].expect) they read the reply until the text shows up (without a probe, what the service says first,
    such as an SSH banner). With either, a service that says nothing within O(timeout) fails (C(no reply within 3 s));
    with a probe but no expect, any reply passes.
  - V(udp) checks send one datagram (O(checks[].probe)) from a connected socket and wait for the reply.
    A UDP check with neither O(checks[].probe) nor O(checks[].expect) is reported as skipped, because nothing tells
    what the service answers.
  - V(icmp) checks send one ICMP echo request (with a random payload) and wait for its echo reply. The module does
    this itself, without a C(ping) program, through a ping socket when C(net.ipv4.ping_group_range) admits the
    user's group, or else through a raw socket, which needs root (or C(CAP_NET_RAW)).
  - The checks run side by side (up to 16 at a time), so a dead service delays only its own result; the results
    come back in the order of O(checks).
  - All checks are validated before any packet is sent.
  - The module only reads; it never reports a change.
author:
  - netns.expose maintainers (@netns-expose)
extends_documentation_fragment:
  - netns.expose.attributes
  - netns.expose.attributes.platform
attributes:
  check_mode:
    support: full
    details:
      - The module only reads, so it sends the probes in check mode as well and reports what it got.
  diff_mode:
    support: none
  platform:
    platforms: linux
options:
  checks:
    description:
      - The services to reach. Invalid entries are refused with a message naming them, like C(checks[2].port).
      - May be empty; then nothing is sent.
    type: list
    elements: dict
    required: true
    suboptions:
      target:
        description: A free label that names the check in the results and messages, such as the master's inventory name.
        type: str
        required: true
      address:
        description: IPv4 address to reach.
        type: str
        required: true
      protocol:
        description:
          - The protocol the service is reached over.
          - Required unless O(checks[].check) is given, which implies it (V(http) and V(tcp) are over V(tcp)).
        type: str
        choices: [tcp, udp, icmp]
      check:
        description:
          - What the check does. V(http) is an HTTP GET (O(checks[].path), O(checks[].status), O(checks[].expect) in
            the body); V(tcp) a connection, optionally with O(checks[].probe) and O(checks[].expect) in the reply;
            V(udp) a datagram and its reply; V(icmp) an echo request.
          - Defaults to V(http) for protocol V(tcp), V(udp) for V(udp) and V(icmp) for V(icmp), which is what
            entries without it always did.
          - A check type that does not go with O(checks[].protocol) (such as V(http) with V(udp)) is refused.
        type: str
        choices: [http, tcp, udp, icmp]
      port:
        description:
          - Port of the service, 1 to 65535. Required for protocols V(tcp) and V(udp); V(icmp) checks refuse it.
        type: int
      path:
        description:
          - Path of the HTTP request, starting with V(/) (a query string may follow). V(http) only.
        type: str
        default: /
      status:
        description:
          - The HTTP status the service must answer with. V(http) only.
        type: int
        default: 200
      expect:
        description:
          - A text that must appear in the HTTP body (V(http)) or in the reply (V(tcp), V(udp)).
          - V(udp) checks that set it must set O(checks[].probe) too; V(tcp) checks without a probe look for it in
            what the service says first.
        type: str
      probe:
        description:
          - What to send, as text (sent UTF-8 encoded). The datagram of a V(udp) check, or what a V(tcp) check sends
            once connected (with the line end the service may need, such as CR LF).
          - V(tcp) and V(udp) only.
        type: str
      source_port:
        description:
          - The port the check's packets come from, for a firewall that admits only some, or to find the check's
            flow in captures and in the conntrack table (M(netns.expose.flow_watch) does). For V(icmp), the echo
            request's identifier. Unset, the kernel picks one (for V(icmp), a random identifier).
          - Two checks from one source port to one service at the same time collide; give each its own.
        type: int
        version_added: 0.5.0
      allowed_sources:
        description:
          - The IPv4 addresses or networks the service lets in (M(netns.expose.dnat_rule)'s
            O(netns.expose.dnat_rule#module:rules[].allowed_sources)). When this host's source address towards
            O(checks[].address) is not in them, the check expects nothing back - one attempt, and RV(results[].ok)
            is V(true) when nothing answered (RV(results[].detail) starts with V(denied as declared)) and V(false)
            when the service answered.
        type: list
        elements: str
        version_added: 0.6.0
  timeout:
    description:
      - Seconds to wait for each attempt of a check (connecting, then each read of an V(http) check; the reply of a
        V(tcp) check once connected; the reply of a UDP probe or of an ICMP echo request).
    type: float
    default: 3
  retries:
    description:
      - Further attempts of a check that failed, one second apart, for services that are still starting.
      - A check stops at its first success.
    type: int
    default: 0
  fail_on_error:
    description:
      - Fail when any check failed, with a message naming each failed check's target, protocol, port and address
        and why it failed. The results are returned either way.
      - With V(false) the module only reports; see RV(failed_checks).
    type: bool
    default: true
notes:
  - Skipped checks have RV(results[].ok=false) and RV(results[].skipped=true); they never count as failed.
  - Every other key in an entry of O(checks) is refused, so a playbook that keeps further data in its checks (such as
    the mapping a check goes through) removes it before calling the module.
seealso:
  - module: netns.expose.dnat_rule
"""

EXAMPLES = r"""
- name: Check every service of the master from the slave
  netns.expose.probe:
    checks:
      - {target: master, address: 10.211.55.122, protocol: tcp, port: 8090, expect: hello}
      - {target: master, address: 10.211.55.122, protocol: udp, port: 8053, probe: ping, expect: pong}
      - {target: master, address: 10.211.55.122, protocol: icmp}
  register: probed

- name: Services that do not speak HTTP
  netns.expose.probe:
    checks:
      - {target: db, address: 10.211.55.122, protocol: tcp, check: tcp, port: 5432}  # accepts connections
      - {target: ssh, address: 10.211.55.122, check: tcp, port: 22, expect: SSH-2.0}  # its banner
      - {target: redis, address: 10.211.55.122, check: tcp, port: 6379, probe: "PING\r\n", expect: "+PONG"}

- name: Only report, with retries for services that are still starting
  netns.expose.probe:
    checks:
      - {target: master, address: 10.211.55.122, protocol: tcp, port: 8080, path: /health, status: 204}
      - {target: master, address: 10.211.55.122, protocol: udp, port: 8054}  # skipped: nothing to ask
    timeout: 1.5
    retries: 5
    fail_on_error: false
  register: probed

- name: Name the failed checks
  ansible.builtin.debug:
    msg: "{{ probed.results | rejectattr('ok') | rejectattr('skipped') | map(attribute='detail') }}"
"""

RETURN = r"""
results:
  description: One entry per check, in the order of O(checks).
  returned: always
  type: list
  elements: dict
  contains:
    target:
      description: The check's O(checks[].target).
      type: str
      sample: master
    address:
      description: The address reached.
      type: str
      sample: 10.211.55.122
    protocol:
      description: V(tcp), V(udp) or V(icmp).
      type: str
      sample: tcp
    check:
      description: The check type that ran, V(http), V(tcp), V(udp) or V(icmp) (the default of the protocol when
        O(checks[].check) was left out).
      type: str
      sample: http
    port:
      description: The port reached; V(null) for V(icmp).
      type: int
      sample: 8090
    ok:
      description: Whether the service answered as expected (in the last attempt). V(false) for skipped checks.
      type: bool
      sample: true
    skipped:
      description: Whether the check was not run (a V(udp) check without O(checks[].probe) and O(checks[].expect)).
      type: bool
      sample: false
    denied:
      description: The check came from a source outside O(checks[].allowed_sources), so it expected nothing back.
      returned: for checks from a source outside their O(checks[].allowed_sources)
      type: bool
      sample: true
      version_added: 0.6.0
    latency_ms:
      description:
        - Milliseconds from sending to the complete answer of the last attempt, 1 decimal (for V(icmp), the round trip
          of the echo request).
        - V(null) when nothing answered (refused, timed out, skipped). A wrong answer still has a latency.
      type: float
      sample: 1.3
    attempts:
      description: How many attempts were made (1 + the retries used); 0 for skipped checks.
      type: int
      sample: 1
    detail:
      description:
        - A short human reason, such as V(HTTP 200), V(connected) (a V(tcp) check without probe and expect),
          V(reply 'echo:ping'), V(connection refused), V(no reply within 3 s) or V('pong' not in reply 'echo:ping').
      type: str
      sample: HTTP 200
    status:
      description: The HTTP status received.
      returned: for V(http) checks that got an HTTP response
      type: int
      sample: 200
    body:
      description: The HTTP body received (decoded as UTF-8), truncated to 4096 characters.
      returned: for V(http) checks that got an HTTP response
      type: str
      sample: hello from master
    reply:
      description:
        - The reply received (decoded as UTF-8), truncated to 4096 characters. For V(tcp) checks, what was read
          until O(checks[].expect) showed up (or the first data, without expect).
      returned: for V(tcp) and V(udp) checks that got a reply
      type: str
      sample: echo:ping
  sample:
    - {target: master, address: 10.211.55.122, protocol: tcp, check: http, port: 8090, ok: true, skipped: false,
       latency_ms: 1.3, attempts: 1, detail: HTTP 200, status: 200, body: hello from master}
    - {target: master, address: 10.211.55.122, protocol: udp, check: udp, port: 8053, ok: false, skipped: false,
       latency_ms: null, attempts: 1, detail: no reply within 3 s}
failed_checks:
  description: How many checks failed (skipped checks do not count).
  returned: always
  type: int
  sample: 1
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netns.expose.plugins.module_utils._probe import (
    Prober,
    failed,
    failure_message,
    parse_checks,
)
from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput


def main():
    module = AnsibleModule(
        argument_spec=dict(
            # The entries are validated in _probe, so that messages can name them as checks[<index>].<field>.
            checks=dict(type="list", elements="dict", required=True),
            timeout=dict(type="float", default=3.0),
            retries=dict(type="int", default=0),
            fail_on_error=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        checks = parse_checks(params["checks"], params["timeout"], params["retries"])
    except InvalidInput as exc:
        module.fail_json(msg=str(exc))

    results = Prober(params["timeout"], params["retries"]).run_all(checks)
    failed_checks = len(failed(results))
    if failed_checks and params["fail_on_error"]:
        module.fail_json(msg=failure_message(results), results=results, failed_checks=failed_checks)
    module.exit_json(changed=False, results=results, failed_checks=failed_checks)


if __name__ == "__main__":
    main()
