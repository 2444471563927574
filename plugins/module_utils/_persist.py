# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files that bring back at boot what a module set up: units, their data, a sysctl.d file.

A module that persists declares the files it wants on the host ({path: content}, where
the content of a symlink is a Link). They are read, compared and written as part of the
module's one plan: check mode and diff show them, a file changed or deleted by hand is
drift that the next run puts back, and files the run no longer wants are removed.
Nothing here runs at boot: systemd does, from the files.

systemd reads unit files when it starts and on `systemctl daemon-reload`: the plan
reloads it after a unit changed, where systemd runs (is_systemd_host).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

from ansible_collections.netns.expose.plugins.module_utils._plan import REMOVE

SYSTEMD_RUN_DIR = "/run/systemd/system"
UNIT_DIR = "/etc/systemd/system"
STATE_DIR = "/etc/netns-expose"
HEADER = "# Written by netns.expose ({module}); the next run puts back what is changed here.\n"
# The key of the plan's view that holds the files (a netns name cannot contain a space).
VIEW_KEY = "persisted files"
UNIT_SUFFIXES = (".service", ".target", ".socket")
_UNIT_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


@dataclass(frozen=True)
class Link:
    """A symlink, as `systemctl enable` makes them under *.wants/."""

    target: str

    def __str__(self):
        return f"symlink to {self.target}"


def is_systemd_host(run_dir=SYSTEMD_RUN_DIR):
    """Whether systemd is the service manager here (sd_booted(): /run/systemd/system exists)."""
    return os.path.isdir(run_dir)


def systemd_escape(name):
    """A string as `systemd-escape` writes it into a unit name (the instance of a template unit)."""
    escaped = []
    for index, char in enumerate(name):
        if char == "/":
            escaped.append("-")
        elif char in _UNIT_NAME_CHARS and not (index == 0 and char == "."):
            escaped.append(char)
        else:
            escaped.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(escaped)


def read_file(path):
    """What is at path, as a desired entry would say it: text, a Link, or None."""
    if os.path.islink(path):
        return Link(os.readlink(path))
    try:
        with open(path, encoding="utf-8") as existing:
            return existing.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return f"(unreadable: {exc})"


def read_files(paths):
    """{path: content} of those of paths that exist."""
    found = {}
    for path in paths:
        content = read_file(path)
        if content is not None:
            found[path] = content
    return found


def _shown(content):
    return str(content) if isinstance(content, Link) else content


def write_file(path, content):
    """Write a file (0644, parents 0755) or make a symlink, replacing what is there at once: the new one is made
    under a temporary name, on disk (fsync) before it takes the name, so that a crash, a full or a read-only
    filesystem leaves the old one whole, and no temporary file behind."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    temporary = os.path.join(directory, f".netns-expose-{os.getpid()}-{os.path.basename(path)}")
    try:
        if isinstance(content, Link):
            if os.path.lexists(temporary):
                os.unlink(temporary)
            os.symlink(content.target, temporary)
        else:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            with os.fdopen(handle, "w", encoding="utf-8") as new:
                new.write(content)
                new.flush()
                os.fsync(new.fileno())
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


def remove_file(path):
    """Remove a file or symlink, then its directories up to STATE_DIR while they are empty, or its
    *.wants directory (which enabling made) when it is empty."""
    if os.path.lexists(path):
        os.unlink(path)
    if os.path.dirname(path).endswith(".wants"):
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass  # other units are enabled there
        return
    stop_at = STATE_DIR
    directory = os.path.dirname(path)
    while directory.startswith(stop_at + "/") or directory == stop_at:
        try:
            os.rmdir(directory)
        except OSError:
            break
        directory = os.path.dirname(directory)


def plan_files(plan, current, desired, reload_systemd):
    """Add to plan the steps that turn the files `current` into `desired` ({path: content}).

    The view key VIEW_KEY holds them ({path: text}). reload_systemd(): a callable that
    reloads systemd, or None where systemd does not run; it is called once, after the files,
    when a unit changed. Returns the paths that change.
    """
    changing = []
    for path in sorted(set(current) | set(desired)):
        want = desired.get(path)
        if want == current.get(path):
            continue
        changing.append(path)
        if want is None:
            plan.add(f"remove {path}", partial(remove_file, path), {(VIEW_KEY, path): REMOVE})
        else:
            verb = "link" if isinstance(want, Link) else "write"
            plan.add(f"{verb} {path}" + ("" if path not in current else " (it differs)"),
                     partial(write_file, path, want), {(VIEW_KEY, path): _shown(want)})
    units_change = any(path.endswith(UNIT_SUFFIXES) for path in changing)
    if units_change and reload_systemd is not None:
        plan.add("reload systemd (daemon-reload), which reads unit files only then", reload_systemd)
    return changing


def view(files):
    """The files as the plan's view shows them."""
    return {path: _shown(content) for path, content in sorted(files.items())}


class Systemd:
    """systemctl, through the module's run_command."""

    def __init__(self, module):
        self.module = module
        self.systemctl = module.get_bin_path("systemctl", required=True)

    def run(self, *args):
        rc, out, err = self.module.run_command([self.systemctl, *args])
        if rc != 0:
            raise RuntimeError(f"systemctl {' '.join(args)} failed ({rc}): {(err or out).strip()}")
        return out

    def reload(self):
        self.run("daemon-reload")

    def is_active(self, unit):
        rc, out, _err = self.module.run_command([self.systemctl, "is-active", unit])
        return rc == 0 and out.strip() == "active"


def systemd_of(module):
    """A Systemd where systemd is the service manager, else None."""
    return Systemd(module) if is_systemd_host() else None
