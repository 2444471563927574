# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hack/demo.sh, up and --down, on a lab of its own (NETNS_EXPOSE_DEMO_INVENTORY).

With PYTHONUNBUFFERED=1, as CI sets it: `nslab.py status | grep -q` once ended in a
broken pipe under pipefail, and --down then skipped its teardown playbooks silently.
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest
from conftest import LAB_INVENTORY, REPO, inventory_copy, session_lab_name

import nslab


@pytest.fixture
def demo_lab(tmp_path):
    """(Lab, inventory) of the demo, under a lab name of this session's; taken down after the test."""
    inventory = inventory_copy(LAB_INVENTORY, f"{session_lab_name()}-demo", tmp_path)
    lab = nslab.Lab.from_inventory(inventory)
    lab.down()
    try:
        yield lab, inventory
    finally:
        lab.down()


def demo_sh(inventory, *args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NETNS_EXPOSE_DEMO_INVENTORY": str(inventory)}
    done = subprocess.run(["bash", str(REPO / "hack" / "demo.sh"), *args], env=env, cwd="/", stdin=subprocess.DEVNULL,
                          capture_output=True,
                          text=True, check=False, timeout=900)
    assert done.returncode == 0, f"hack/demo.sh {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_demo_comes_up_and_down_goes_through_its_teardown_playbooks(demo_lab):
    lab, inventory = demo_lab
    up = demo_sh(inventory)
    assert f"lab {lab.name}: made " in up
    assert re.search(r"http-web +tcp +http +8090 +ok .*hello world! this is DNAT\+bridge\+Veth pair Test!", up), up
    assert "TASK [Converge the demo services with the lab's runner]" in up
    assert lab.is_up("master")
    runner_dir = os.path.join(lab.hosts["master"].dir, "demo")
    assert os.listdir(runner_dir), "no demo service runs"

    down = demo_sh(inventory, "--down")
    # The demo services' playbook (absent), then expose.yml (absent), then the lab goes.
    assert down.count("PLAY RECAP") == 2, down
    assert down.index("Converge the demo services with the lab's runner") < down.index("Remove the veth pairs and the namespaces")
    assert re.search(r"master +: ok=\d+ +changed=[1-9]", down), "the teardown changed nothing"
    assert f"lab {lab.name}: removed " in down
    assert not os.path.exists(lab.dir)

    # Down again: the master is not up, so no playbook runs, and nothing is left to remove.
    again = demo_sh(inventory, "--down")
    assert "PLAY RECAP" not in again and f"lab {lab.name}: nothing to remove" in again
