"""Make the checkout importable as ansible_collections.netns.expose for plain pytest (unit and integration tests).

ansible-test does this itself; hack/env.sh links the checkout into a collections tree.
"""
from __future__ import annotations

import os
import sys

for path in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep):
    if path and os.path.isdir(os.path.join(path, "ansible_collections")) and path not in sys.path:
        sys.path.insert(0, path)
