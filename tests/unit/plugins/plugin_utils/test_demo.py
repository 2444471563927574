"""What the demo_service role converges to (plugin_utils/_demo.py): its checks and the units that run and go."""
from __future__ import annotations

import pytest

from ansible_collections.netns.expose.plugins.module_utils._validation import InvalidInput
from ansible_collections.netns.expose.plugins.plugin_utils._demo import demo_plan

WEB = {"name": "web", "netns": "ns1", "tcp_ports": [9090, "9090"], "udp_ports": [53]}
IDLE = {"name": "idle", "netns": "ns2"}
UNIT = "netns-expose-demo-{}.service".format


def test_instances_with_ports_serve_and_the_others_go():
    plan = demo_plan([WEB, IDLE], found_units=[UNIT("idle"), UNIT("old")], exclusive=False)
    assert plan["instances"] == [{"name": "web", "netns": "ns1", "netns_unit": "netns-expose-netns@ns1.service",
                                  "tcp_ports": [9090], "udp_ports": [53]},
                                 {"name": "idle", "netns": "ns2", "netns_unit": "netns-expose-netns@ns2.service",
                                  "tcp_ports": [], "udp_ports": []}]
    assert plan["serving_units"] == [UNIT("web")]
    # Not exclusive: a unit no instance lists stays.
    assert plan["going_units"] == [UNIT("idle")] and plan["script_stays"]


def test_exclusive_removes_every_other_unit_of_the_role_and_absent_the_listed_ones():
    plan = demo_plan([WEB], found_units=[UNIT("web"), UNIT("old")])
    assert plan["going_units"] == [UNIT("old")]
    plan = demo_plan([WEB], state="absent", found_units=[UNIT("web"), UNIT("old")])
    assert plan["serving"] == [] and plan["going_units"] == [UNIT("web")]
    assert plan["script_stays"], "old is not listed, so absent leaves it and the script it runs"
    assert not demo_plan([WEB], state="absent", found_units=[UNIT("web")])["script_stays"]


@pytest.mark.parametrize("instances, message", [
    ([{**WEB, "name": "a b"}], "demo_service_instances[0].name: 'a b' is not a valid instance name"),
    ([WEB, WEB], "demo_service_instances[1].name: 'web' is also the name of an earlier instance"),
    ([{**WEB, "netns": "../x"}], "demo_service_instances[0].netns: netns name '../x' must be a plain file name"),
    ([{**WEB, "udp_ports": [70000]}], "demo_service_instances[0].udp_ports[0]: 70000 is outside 1..65535"),
])
def test_bad_instances_are_refused_naming_the_field(instances, message):
    with pytest.raises(InvalidInput) as refused:
        demo_plan(instances)
    assert str(refused.value).startswith(message)
