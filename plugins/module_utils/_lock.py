# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host-wide lock of the modules that change a host: one read -> plan -> apply at a time.

Each module reads what the collection owns, plans, and applies; two runs at once would
each plan from what the other is about to replace (the last nft -f writer wins), and one
would report mappings it does not leave in place. The lock is an flock on a file under
/run/lock: the kernel releases it when the holder exits or is killed, so a crash never
leaves it taken. There is one per network namespace (its inode names the file), since
that is what the modules change: the namespace hosts of the lab share one filesystem.

The holder writes who it is into the file (pid, command line, since when), so that a run
that waits too long can name it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time

LOCK_DIR = "/run/lock"
DEFAULT_TIMEOUT = 60.0
POLL = 0.05  # seconds between two tries while another run holds the lock


class LockTimeout(Exception):
    """Another run held the lock for longer than the timeout."""


def lock_file(inode, directory=None):
    """The lock file of the network namespace with this inode (in LOCK_DIR unless `directory`)."""
    return os.path.join(directory or LOCK_DIR, f"netns-expose.net-{inode}.lock")


def lock_path(directory=None):
    """The lock file of this process's network namespace."""
    return lock_file(os.stat("/proc/self/ns/net").st_ino, directory)


def _holder_text(path):
    """Who holds the lock, as the holder wrote it, in words."""
    try:
        with open(path, encoding="utf-8") as handle:
            holder = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder.get("pid"):
        return "a process that has not said who it is yet"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder['pid']} ({holder.get('command') or '?'}), since {since}"


def _command_line():
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()[:200]
    except OSError:
        return ""


@contextlib.contextmanager
def host_lock(timeout=DEFAULT_TIMEOUT, path=None, clock=time.monotonic, sleep=time.sleep):
    """Hold the host-wide lock for the block; wait up to `timeout` seconds for it, then raise LockTimeout naming
    the holder."""
    path = path or lock_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = clock() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if clock() >= deadline:
                raise LockTimeout(f"another run of the collection changes this host: {_holder_text(path)} holds "
                                  f"{path}; waited {timeout:g} s (lock_timeout)")
            sleep(POLL)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps({"pid": os.getpid(), "command": _command_line(), "since": time.time()}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)  # releases the lock, as the kernel does when the process dies


def held_by(module):
    """The host lock for a module's run (lock_timeout), or nothing in check mode, which changes nothing."""
    if module.check_mode:
        return contextlib.nullcontext()
    return host_lock(module.params["lock_timeout"])


def run_locked(module, work):
    """work() under the host lock (held_by); its result. A run that cannot get the lock fails, naming the holder."""
    try:
        with held_by(module):
            return work()
    except LockTimeout as exc:
        module.fail_json(msg=str(exc))
        raise  # fail_json exits; not reached


# The option of every module that takes the lock (doc fragment netns.expose.lock).
LOCK_OPTION = {"lock_timeout": {"type": "float", "default": DEFAULT_TIMEOUT}}
