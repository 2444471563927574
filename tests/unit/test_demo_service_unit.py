# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The unit the role netns.expose.demo_service writes, rendered as the template module does (trim_blocks).

tests/integration/test_demo_service_role.py runs it under systemd, on a machine.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from ansible_collections.netns.expose.plugins.plugin_utils._demo import demo_plan

ROLE = Path(__file__).resolve().parents[2] / "roles" / "demo_service"
WEB = {"name": "web", "netns": "ns1", "tcp_ports": [9090, 9091], "udp_ports": [5353]}
DNS = {"name": "dns", "netns": "ns1", "tcp_ports": [], "udp_ports": [53]}


def render_unit(instance):
    """The unit of an instance, as the role's plan (the demo_plan filter) hands it to the template."""
    [instance] = demo_plan([instance])["instances"]
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text(encoding="utf-8"))
    environment = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string((ROLE / "templates" / "netns-expose-demo.service.j2").read_text(encoding="utf-8"))
    return template.render(__demo_service_instance=instance, __demo_service_python=role_vars["__demo_service_python"],
                           __demo_service_script=role_vars["__demo_service_script"])


def settings(unit):
    """{key: [values]} of a unit file."""
    found = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_joins_the_namespace_and_runs_the_service_on_its_ports():
    unit = settings(render_unit(WEB))
    assert unit["NetworkNamespacePath"] == ["/run/netns/ns1"]
    assert unit["ExecStart"] == ["/usr/bin/python3 /usr/local/libexec/netns-expose-demo/demo_service.py "
                                 "--tcp 9090 --tcp 9091 --udp 5353"]
    # Started once the service says it listens (demo_service.py sends READY=1).
    assert unit["Type"] == ["notify"] and unit["TimeoutStartSec"] == ["15"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["DynamicUser"] == ["yes"] and unit["ProtectSystem"] == ["strict"] and unit["NoNewPrivileges"] == ["yes"]
    # No port below 1024: no capability at all.
    assert unit["CapabilityBoundingSet"] == [""]
    assert "AmbientCapabilities" not in unit
    assert unit["WantedBy"] == ["multi-user.target"]
    # At boot, after the unit that makes ns1 (where netns_veth persisted it).
    assert unit["Wants"] == unit["After"] == ["netns-expose-netns@ns1.service"]
    assert unit["ConditionPathExists"] == ["/run/netns/ns1"]


def test_unit_may_bind_ports_below_1024_only_when_it_has_one():
    unit = settings(render_unit(DNS))
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["ExecStart"][0].endswith("demo_service.py --udp 53")


def test_unit_escapes_percent_signs_in_the_namespace_name():
    unit = settings(render_unit({**WEB, "netns": "ns%1"}))
    assert unit["NetworkNamespacePath"] == ["/run/netns/ns%%1"]
    assert unit["After"] == ["netns-expose-netns@ns\\x251.service"]


def test_ports_given_as_text_are_ports():
    unit = settings(render_unit({**DNS, "udp_ports": ["53"]}))
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    path = tmp_path / "netns-expose-demo-dns.service"
    path.write_text(render_unit(DNS), encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False)
    # verify exits 0 on unknown or malformed settings too; it names them on stderr.
    assert done.returncode == 0 and path.name not in done.stderr, done.stderr
