"""Make the checkout importable as ansible_collections.netns.expose for plain pytest (unit and integration tests).

ansible-test does this itself; hack/env.sh links the checkout into a collections tree (ANSIBLE_COLLECTIONS_PATH).
Without it (`make units` as any user, with no venv of the project's), a collections tree of this process's own
in a temporary directory links to the checkout.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _collections_paths():
    """The entries of ANSIBLE_COLLECTIONS_PATH that hold this checkout as netns.expose."""
    paths = [path for path in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if path]
    return [path for path in paths if Path(path, "ansible_collections", "netns", "expose").resolve() == REPO]


def _own_collections_path():
    """A temporary collections tree with netns/expose linked to the checkout, removed at exit."""
    tree = tempfile.mkdtemp(prefix="netns-expose-collections-")
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    namespace = Path(tree, "ansible_collections", "netns")
    namespace.mkdir(parents=True)
    (namespace / "expose").symlink_to(REPO)
    return tree


for collections_path in _collections_paths() or [_own_collections_path()]:
    if collections_path not in sys.path:
        sys.path.insert(0, collections_path)
