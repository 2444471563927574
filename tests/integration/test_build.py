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
    ["-t", "connection", "netns.expose.nsenter"],
])
def test_docs_render_from_the_installed_tarball(installed, plugin):
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(installed), "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false"}
    done = subprocess.run([BIN / "ansible-doc", *plugin], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert str(installed) in done.stdout, "documented from somewhere else than the install"
    assert "OPTIONS" in done.stdout and "EXAMPLES" in done.stdout


def test_the_tarball_leaves_out_development_files(installed):
    root = installed / "ansible_collections" / "netns" / "expose"
    assert (root / "plugins" / "modules" / "netns_veth.py").exists()
    assert not (root / ".venv").exists() and not (root / "hack").exists()
