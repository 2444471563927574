"""The collection builds into a tarball that installs, and its documentation renders from the install."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    subprocess.run([BIN / "ansible-galaxy", "collection", "build", str(REPO), "--output-path", str(out)], check=True,
                   capture_output=True)
    [tarball] = out.glob("netns-expose-*.tar.gz")
    target = tmp_path_factory.mktemp("collections")
    # --force: the checkout itself may already be on the collections path (hack/env.sh links it).
    subprocess.run([BIN / "ansible-galaxy", "collection", "install", "--force", str(tarball), "-p", str(target)],
                   check=True, capture_output=True)
    return target


@pytest.mark.parametrize("plugin", [
    ["netns.expose.netns_veth"],
    ["netns.expose.dnat_rule"],
    ["netns.expose.probe"],
    ["netns.expose.prerequisites"],
    ["-t", "connection", "netns.expose.nsenter"],
    ["-t", "filter", "netns.expose.services_plan"],
    ["-t", "filter", "netns.expose.verify_summary"],
    ["-t", "filter", "netns.expose.verify_report"],
    ["-t", "filter", "netns.expose.demo_plan"],
])
def test_docs_render_from_the_installed_tarball(installed, plugin):
    done = run_installed(installed, "ansible-doc", *plugin)
    assert done.returncode == 0, done.stderr
    assert str(installed) in done.stdout, "documented from somewhere else than the install"
    assert "OPTIONS" in done.stdout and "EXAMPLES" in done.stdout


def run_installed(installed, program, *argv):
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(installed), "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false"}
    return subprocess.run([BIN / program, *argv], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False, cwd="/")


@pytest.mark.parametrize("role, texts", [
    ("netns.expose.expose", ("ENTRY POINT: *main*", "ENTRY POINT: *plan*", "expose_services")),
    ("netns.expose.demo_service", ("ENTRY POINT: *main*", "demo_service_instances", "demo_service_state", "NetworkNamespacePath")),
])
def test_role_docs_render_from_the_installed_tarball(installed, role, texts):
    done = run_installed(installed, "ansible-doc", "-t", "role", role)
    assert done.returncode == 0, done.stderr
    for text in texts:
        assert text in done.stdout, text


@pytest.mark.parametrize("playbook", ["netns.expose.expose", "netns.expose.verify", "netns.expose.demo"])
def test_the_playbooks_run_as_collection_playbooks(installed, playbook, tmp_path):
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[masters]\nm1\n[slaves]\ns1\n", encoding="utf-8")
    done = run_installed(installed, "ansible-playbook", "-i", str(inventory), playbook, "--list-tasks")
    assert done.returncode == 0, done.stderr
    assert "play #1 (masters)" in done.stdout


def test_the_tarball_leaves_out_development_files(installed):
    root = installed / "ansible_collections" / "netns" / "expose"
    assert (root / "plugins" / "modules" / "netns_veth.py").exists()
    assert not (root / ".venv").exists() and not (root / "hack").exists()
    assert (root / "roles" / "demo_service" / "files" / "demo_service.py").exists()
    assert not (root / "roles" / "expose" / "files").exists(), "the expose role carries no demo any more"
