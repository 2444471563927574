"""The host-wide lock: one holder at a time, released when the holder ends (also when it is killed), and a waiter
that gives up names the holder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.netns.expose.plugins.module_utils import _lock
from ansible_collections.netns.expose.plugins.module_utils._lock import LockTimeout, host_lock

# Takes the lock of argv[1], says so, and waits to be killed.
HOLDER = """import sys, time
from ansible_collections.netns.expose.plugins.module_utils._lock import host_lock
with host_lock(path=sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A process that holds the lock of tmp_path/test.lock until it is killed."""
    path = tmp_path / "test.lock"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,  # pylint: disable=consider-using-with
                               env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert process.stdout.readline().strip() == "held"
        yield process, path
    finally:
        process.kill()
        process.wait()


def test_a_waiter_gives_up_after_the_timeout_naming_the_holder(holder):
    process, path = holder
    started = time.monotonic()
    with pytest.raises(LockTimeout) as caught:
        with host_lock(timeout=0.3, path=str(path)):
            pytest.fail("the lock was taken twice")
    assert time.monotonic() - started >= 0.3
    message = str(caught.value)
    assert f"pid {process.pid} (" in message and "-c import sys, time" in message and str(path) in message, message
    assert message.endswith("waited 0.3 s (lock_timeout)"), message


def test_the_lock_is_free_again_when_its_holder_is_killed(holder):
    process, path = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    with host_lock(timeout=5, path=str(path)):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert path.read_text() == "", "the holder's name stays after it let go"


def test_one_lock_per_network_namespace(tmp_path):
    assert _lock.lock_path(str(tmp_path)) == str(tmp_path / f"netns-expose.net-{os.stat('/proc/self/ns/net').st_ino}.lock")


@pytest.mark.parametrize("check_mode", [True, False])
def test_check_mode_takes_no_lock(tmp_path, monkeypatch, check_mode):
    monkeypatch.setattr(_lock, "LOCK_DIR", str(tmp_path))

    class Module:
        params = {"lock_timeout": 1}

    Module.check_mode = check_mode
    with _lock.held_by(Module()):
        taken = [path.name for path in tmp_path.iterdir()]
    assert taken == ([] if check_mode else [os.path.basename(_lock.lock_path())])
