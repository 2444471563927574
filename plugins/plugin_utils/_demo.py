# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the demo_service role converges to: its instances checked, the units that run and the units that go.

The checks are the collection's own (plugins/module_utils/_validation.py), as the modules apply them.
"""
from __future__ import annotations

from ansible_collections.netns.expose.plugins.module_utils._netns_veth import netns_unit
from ansible_collections.netns.expose.plugins.module_utils._validation import (
    InvalidInput,
    check_name,
    check_netns_name,
    check_port,
)

UNIT = "netns-expose-demo-{}.service"


def demo_plan(instances, state="present", found_units=(), exclusive=True):
    """{instances, serving, serving_units, going_units, script_stays} from the role's instances and the units on the host."""
    if state not in ("present", "absent"):
        raise InvalidInput("demo_service_state", f"{state!r} is not one of present, absent")
    checked, names = [], set()
    for index, instance in enumerate(instances or []):
        where = f"demo_service_instances[{index}]"
        name = check_name(f"{where}.name", instance.get("name"), "instance name (it names the unit)")
        if name in names:
            raise InvalidInput(f"{where}.name", f"{name!r} is also the name of an earlier instance")
        names.add(name)
        ports = {kind: sorted({check_port(f"{where}.{kind}[{i}]", port) for i, port in enumerate(instance.get(kind) or [])})
                 for kind in ("tcp_ports", "udp_ports")}
        netns = check_netns_name(f"{where}.netns", instance.get("netns"))
        checked.append({"name": name, "netns": netns, "netns_unit": netns_unit(netns), **ports})
    # An instance without a port serves nothing: it does not run, as if it were absent.
    serving = [] if state == "absent" else [item for item in checked if item["tcp_ports"] or item["udp_ports"]]
    serving_units = [UNIT.format(item["name"]) for item in serving]
    listed_units = [UNIT.format(item["name"]) for item in checked]
    found_units = list(found_units)
    # The units that go: the listed instances that do not serve and, exclusive (state present),
    # every other unit of the role on the host.
    candidates = found_units if exclusive and state == "present" else listed_units
    going = [unit for unit in candidates if unit not in serving_units and unit in found_units]
    return {
        "instances": checked,
        "serving": serving,
        "serving_units": serving_units,
        "going_units": going,
        # The script stays while an instance serves or a unit of the role stays on the host.
        "script_stays": bool(serving) or bool(set(found_units) - set(going)),
    }
