# -*- coding: utf-8 -*-
# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: nsenter
short_description: Run tasks inside Linux namespaces of the controller
version_added: 0.1.0
description:
  - Runs commands, and copies files in and out, inside a network namespace of the Ansible controller,
    optionally together with a mount namespace and a UTS namespace, through C(nsenter) from util-linux.
  - Point it at a namespace made by C(ip netns add) by name, or at any namespace file by path
    (a bind mount of C(/proc/<pid>/ns/net), for example), so that a namespace can be managed like a host.
  - The collection's test lab (C(tests/lab/nslab.py)) uses it to make hosts out of namespaces on one machine.
author:
  - netns.expose maintainers (@netns-expose)
options:
  remote_addr:
    description:
      - The network namespace to enter. A plain name is a namespace made by C(ip netns add), looked up in
        C(/run/netns) of the controller; a value with a V(/) in it is the path of a namespace file.
      - Paths are resolved on the controller before any namespace is entered.
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_nsenter_host
  mount_namespace:
    description:
      - Absolute path of a mount namespace file to enter as well, so that tasks see that namespace's mounts
        (its own C(/run/netns) or C(/sys), for example). Files are copied in and out through it too.
      - Without it, tasks see the controller's mounts.
    type: path
    vars:
      - name: ansible_nsenter_mount_namespace
  uts_namespace:
    description:
      - Absolute path of a UTS namespace file to enter as well, so that tasks see that namespace's hostname.
    type: path
    vars:
      - name: ansible_nsenter_uts_namespace
  nsenter_exe:
    description: The C(nsenter) program to run, by name (looked up in E(PATH)) or by path.
    type: str
    default: nsenter
    vars:
      - name: ansible_nsenter_exe
extends_documentation_fragment:
  - connection_pipelining
notes:
  - Entering namespaces needs C(CAP_SYS_ADMIN), so run Ansible as root.
  - There is no remote user. Tasks run as the user that runs Ansible, as with the C(ansible.builtin.local)
    connection, and C(remote_user) or C(ansible_user) are ignored. So C(become) to that same user
    (C(root) by default) is satisfied without running a become method, and plays that say C(become=true)
    work on machines without C(sudo). Becoming another user still runs the become method, inside the
    namespaces.
  - Tasks share the controller's filesystem, seen through the mount namespace if one is given.
  - Files are copied with C(dd) run inside the namespaces, so C(dd) must be there.
"""

EXAMPLES = r"""
# Inventory (INI): a namespace made with `ip netns add ns1`, addressed by name.
#   [services]
#   ns1 ansible_connection=netns.expose.nsenter

# Inventory (YAML): a lab host made of persistent namespace files (see tests/lab/nslab.py).
#   all:
#     hosts:
#       master:
#         ansible_connection: netns.expose.nsenter
#         ansible_host: /run/netns-expose-lab/expose-lab/master/net
#         ansible_nsenter_mount_namespace: /run/netns-expose-lab/expose-lab/master/mnt
#         ansible_nsenter_uts_namespace: /run/netns-expose-lab/expose-lab/master/uts

- name: Show the addresses inside ns1
  hosts: ns1
  gather_facts: false
  tasks:
    - name: List addresses
      ansible.builtin.command: ip -br addr
      changed_when: false

- name: Enter the network namespace of a running process, pinned by a bind mount
  hosts: all
  gather_facts: false
  vars:
    ansible_connection: netns.expose.nsenter
    ansible_host: /run/my-service.net
  tasks:
    - name: List listening sockets of the service
      ansible.builtin.command: ss -ltn
      changed_when: false
"""

import getpass
import os
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

NETNS_RUN_DIR = "/run/netns"
# Namespace options of this plugin, with the nsenter flag that enters each.
EXTRA_NAMESPACES = (("mount_namespace", "--mount"), ("uts_namespace", "--uts"))


class Connection(ConnectionBase):
    """Runs commands on the controller inside namespaces, through nsenter."""

    transport = "netns.expose.nsenter"
    has_pipelining = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # As with ansible.builtin.local: commands run as the user running Ansible. With no
        # remote_user option, ActionBase takes default_user as the connecting user and
        # skips become when become_user is that same user (root -> root, no sudo needed).
        try:
            self.default_user = getpass.getuser()
        except KeyError:
            self.default_user = ""
        self._nsenter_argv = None

    def _net_namespace_path(self):
        target = self.get_option("remote_addr")
        return target if "/" in target else os.path.join(NETNS_RUN_DIR, target)

    def _connect(self):
        if self._connected:
            return self
        self._play_context.remote_user = self.default_user
        flags = [("--net", self._net_namespace_path())]
        flags += [(flag, self.get_option(option)) for option, flag in EXTRA_NAMESPACES if self.get_option(option)]
        for flag, path in flags:
            if not os.path.exists(to_bytes(path, errors="surrogate_or_strict")):
                raise AnsibleConnectionFailure(
                    f"the {flag[2:]} namespace file {path} does not exist (is the namespace, or the lab, up?)"
                )
        self._nsenter_argv = [self.get_option("nsenter_exe"), *(f"{flag}={path}" for flag, path in flags), "--"]
        display.vvv(f"ESTABLISH NSENTER CONNECTION: {' '.join(self._nsenter_argv)}", host=self._play_context.remote_addr)
        self._connected = True
        return self

    def _run(self, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, in_data=None):
        """Run argv (a list, no shell on this side) inside the namespaces; return (rc, stdout, stderr)."""
        command = self._nsenter_argv + argv
        display.vvvv(f"EXEC {command}", host=self._play_context.remote_addr)
        try:
            process = subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        except OSError as exc:
            raise AnsibleConnectionFailure(f"cannot run {command[0]}: {to_native(exc)}") from exc
        out, err = process.communicate(in_data)
        return process.returncode, out, err

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        shell = self._play_context.executable or "/bin/sh"
        # With pipelining, the module arrives as in_data and goes to the command's stdin.
        return self._run([shell, "-c", cmd], in_data=to_bytes(in_data) if in_data is not None else None)

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._play_context.remote_addr)
        try:
            source = open(to_bytes(in_path, errors="surrogate_or_strict"), "rb")  # pylint: disable=consider-using-with
        except OSError as exc:
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}") from exc
        with source:
            rc, dummy, err = self._run(["dd", f"of={out_path}", "bs=65536", "status=none"], stdin=source)
        if rc != 0:
            raise AnsibleError(f"failed to transfer {in_path} to {out_path} in the namespace: {to_native(err).strip()}")

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._play_context.remote_addr)
        try:
            target = open(to_bytes(out_path, errors="surrogate_or_strict"), "wb")  # pylint: disable=consider-using-with
        except OSError as exc:
            raise AnsibleError(f"cannot write {out_path}: {to_native(exc)}") from exc
        with target:
            rc, dummy, err = self._run(["dd", f"if={in_path}", "bs=65536", "status=none"], stdin=subprocess.DEVNULL, stdout=target)
        if rc != 0:
            os.unlink(to_bytes(out_path, errors="surrogate_or_strict"))  # no empty or partial copy left behind
            raise AnsibleError(f"failed to fetch {in_path} from the namespace: {to_native(err).strip()}")

    def close(self):
        super().close()
        self._connected = False
