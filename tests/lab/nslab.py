# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lab hosts made of namespaces, and booted machines, on one machine, driven by an Ansible inventory.

A lab host has its own network namespace, its own mount namespace (with a private
/run/netns and its own /sys) and its own UTS namespace (hostname). The namespaces
are kept by bind mounts under /run/netns-expose-lab/<lab>/<host>/{net,mnt,uts}, so
no process is needed to hold them. The hosts share a LAN: a bridge in a network
namespace of its own (<lab>/lan/net) that also holds the gateway address and
routes nowhere else. Nothing is created in the machine's own network namespace.

    python3 tests/lab/nslab.py up     -i INVENTORY   build the lab (idempotent; completes a partial lab)
    python3 tests/lab/nslab.py status -i INVENTORY [HOST]   with HOST: exit status 0 when it is up, 3 when not
    python3 tests/lab/nslab.py down   -i INVENTORY   remove every namespace, process and mount of the lab
    python3 tests/lab/nslab.py down   --lab NAME     the same, without an inventory
    python3 tests/lab/nslab.py reboot -i INVENTORY HOST   reboot a machine and wait until it is back
    python3 tests/lab/nslab.py shell  -i INVENTORY HOST [-- COMMAND...]   a shell (or a command) on a machine, over SSH

A host with lab_machine: true is a *machine* instead (tests/lab/machines.py): a
minimal Debian 12 system booted by systemd-nspawn in a network namespace of the
lab, with systemd, sshd, python3 and nftables, reached over SSH. Its network
namespace holds only its network: the machine brings its own mount, UTS and PID
namespaces, and after a reboot it gets a new, empty one (same address and MAC).

Inventory variables: lab_address (CIDR; makes a host a lab host), lab_ifname
(default eth0), lab_machine (default false), and, the same for all lab hosts,
lab_name (default expose-lab) and lab_gateway (default: the first usable address
of the first host's subnet).

The lab's demo services (tests/lab/demo_runner.py) keep their files in the directory
of their host, <lab>/<host>/demo: down removes them with the rest.

From Python: Lab.from_inventory(path) or Lab(name, {host: (address, ifname[, machine])}),
then .up(), .down(), .status(), .is_up(host), .reboot(host), .hosts and .exec(host, argv).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import machines
from machines import LabError, run

LAB_ROOT = "/run/netns-expose-lab"
NETNS_RUN_DIR = "/run/netns"
BRIDGE = "br0"
DEFAULT_LAB_NAME = "expose-lab"
DEFAULT_IFNAME = "eth0"
LAN_DIR = "lan"
# The namespace files of a lab host, with the unshare(1)/nsenter(1) option for each.
HOST_NAMESPACES = {"net": "--net", "mnt": "--mount", "uts": "--uts"}
# The host-wide lock of the collection's modules, one per network namespace (plugins/module_utils/_lock.py's
# lock_file; tests/unit/test_lab_nslab.py checks they agree): the lab hosts share this machine's /run/lock.
COLLECTION_LOCK = "/run/lock/netns-expose.net-{inode}.lock"
# Run in a lab host's network and mount namespaces. A tmpfs on /run/netns lets
# each lab host have its own ns1; a fresh sysfs (mounted from inside the network
# namespace) shows the host's own interfaces under /sys/class/net, which Ansible's
# facts read.
HOST_MOUNTS_SCRIPT = f"""
mount -t tmpfs -o mode=0755 lab-netns {NETNS_RUN_DIR}
mount -t sysfs lab-sysfs /sys
"""
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IFNAMSIZ = 15
STATUS_DOWN = 3  # exit status of `status HOST` when the host is not up (as `systemctl is-active`)


@dataclass(frozen=True)
class Mount:
    point: str
    root: str
    fstype: str
    device: str = ""  # major:minor of the mounted filesystem

    @property
    def namespace_inode(self):
        """The namespace a namespace file mount pins (root 'net:[4026532177]'), or None."""
        match = re.fullmatch(r"\w+:\[(\d+)\]", self.root) if self.fstype == "nsfs" else None
        return int(match.group(1)) if match else None

    @property
    def namespace_key(self):
        """(device, inode) of the namespace a namespace file mount pins, or None: what identifies a namespace."""
        inode = self.namespace_inode
        return None if inode is None else (self.device, inode)


@dataclass(frozen=True)
class Held:
    """The namespaces Lab.holding keeps alive: their (device, inode) keys, and the namespace files it holds open."""
    keys: frozenset
    paths: frozenset


def namespace_key(stat):
    """(device, inode) of an open namespace file (its os.stat), as Mount.namespace_key gives it."""
    return (f"{os.major(stat.st_dev)}:{os.minor(stat.st_dev)}", stat.st_ino)


def _unescape(field):
    return re.sub(r"\\([0-7]{3})", lambda octal: chr(int(octal.group(1), 8)), field)


def mount_table(mount_namespace=None):
    """The mounts of this process, or of the mount namespace file given."""
    if mount_namespace is None:
        with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
            text = mountinfo.read()
    else:
        text = run(["nsenter", f"--mount={mount_namespace}", "--", "cat", "/proc/self/mountinfo"]).stdout
    return parse_mountinfo(text)


def parse_mountinfo(text):
    """The Mounts of a /proc/PID/mountinfo."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        # Optional fields end with '-', then come the filesystem type and source.
        separator = fields.index("-", 6)
        mounts.append(Mount(point=_unescape(fields[4]), root=_unescape(fields[3]), fstype=fields[separator + 1],
                            device=fields[2]))
    return mounts


def is_under(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def bound_namespaces(mounts, directory):
    """{mount point: namespace inode} of the namespace files bound under directory."""
    return {m.point: m.namespace_inode for m in mounts if m.namespace_inode and is_under(m.point, directory)}


def process_namespaces(pid, kinds=tuple(HOST_NAMESPACES)):
    """Inodes of the namespaces of a process (net, mnt and uts by default); empty once it is gone."""
    inodes = set()
    for kind in kinds:
        try:
            link = os.readlink(f"/proc/{pid}/ns/{kind}")
        except OSError:
            continue
        inodes.add(int(link.split("[")[1].rstrip("]")))
    return inodes


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str
    ifname: str
    dir: str
    machine: bool = False

    @property
    def ip(self):
        return str(ipaddress.IPv4Interface(self.address).ip)

    def ns(self, kind):
        """Path of the host's namespace file of a kind (net, mnt, uts)."""
        return os.path.join(self.dir, kind)

    @property
    def lan_port(self):
        """Name of the host's veth end on the bridge: stable, and short enough for any hostname."""
        return "l-" + hashlib.sha1(self.name.encode()).hexdigest()[:10]

    @property
    def mac(self):
        """The MAC address of the host's interface: stable, so that a rebooted machine keeps it."""
        digest = hashlib.sha1(self.dir.encode()).digest()
        return ":".join(f"{byte:02x}" for byte in (0x02, *digest[:5]))  # locally administered, unicast

    def nsenter(self, kinds=tuple(HOST_NAMESPACES)):
        """The argv prefix that runs a command in the host's namespaces."""
        return ["nsenter", *(f"{HOST_NAMESPACES[kind]}={self.ns(kind)}" for kind in kinds), "--"]


class Lab:
    def __init__(self, name, hosts, gateway=None):
        """hosts: {hostname: (address as CIDR, interface name[, machine])}; gateway: CIDR of the bridge."""
        if not PLAIN_NAME.match(name):
            raise LabError(f"lab_name {name!r} must be a plain name (letters, digits, '_', '.', '-')")
        self.name = name
        self.dir = os.path.join(LAB_ROOT, name)
        self.hosts = {}
        for host, (address, ifname, *machine) in hosts.items():
            _check_host(host, address, ifname)
            self.hosts[host] = LabHost(host, address, ifname, os.path.join(self.dir, host), machine=bool(machine and machine[0]))
        self.ssh = machines.LabSsh(name, self.lan_namespace)
        if gateway is None and self.hosts:
            network = ipaddress.IPv4Interface(next(iter(self.hosts.values())).address).network
            gateway = f"{next(network.hosts())}/{network.prefixlen}"
        self.gateway = gateway
        if gateway is not None:
            _check_gateway(gateway, self.hosts.values())

    @classmethod
    def from_inventory(cls, path):
        """The lab of the hosts with lab_address in an inventory (any format ansible-inventory reads)."""
        ansible_inventory = shutil.which("ansible-inventory") or os.path.join(os.path.dirname(sys.executable), "ansible-inventory")
        done = run([ansible_inventory, "-i", str(path), "--list"])
        hostvars = json.loads(done.stdout).get("_meta", {}).get("hostvars", {})
        lab_hosts = {host: hv for host, hv in sorted(hostvars.items()) if hv.get("lab_address")}
        if not lab_hosts:
            raise LabError(f"{path}: no host has lab_address")
        names = {hv.get("lab_name", DEFAULT_LAB_NAME) for hv in lab_hosts.values()}
        gateways = {hv.get("lab_gateway") for hv in lab_hosts.values()}
        if len(names) > 1 or len(gateways) > 1:
            raise LabError(f"{path}: lab_name and lab_gateway must be the same for every lab host")
        hosts = {}
        for host, hv in lab_hosts.items():
            machine = hv.get("lab_machine", False)
            if not isinstance(machine, bool):
                raise LabError(f"{path}: lab host {host}: lab_machine must be true or false, not {machine!r}")
            hosts[host] = (hv["lab_address"], hv.get("lab_ifname", DEFAULT_IFNAME), machine)
        return cls(names.pop(), hosts, gateway=gateways.pop())

    @property
    def state_file(self):
        """The lab as built, for the machines' supervisors (which have no inventory)."""
        return os.path.join(machines.STATE_ROOT, self.name, "lab.json")

    @classmethod
    def from_state(cls, name):
        with open(os.path.join(machines.STATE_ROOT, name, "lab.json"), encoding="utf-8") as state:
            saved = json.load(state)
        return cls(name, {host: tuple(spec) for host, spec in saved["hosts"].items()}, gateway=saved["gateway"])

    def _save_state(self):
        os.makedirs(os.path.dirname(self.state_file), exist_ok=True)
        hosts = {h.name: [h.address, h.ifname, h.machine] for h in self.hosts.values()}
        with open(self.state_file, "w", encoding="utf-8") as state:
            json.dump(dict(gateway=self.gateway, hosts=hosts), state)

    @property
    def machines(self):
        return [host for host in self.hosts.values() if host.machine]

    def machine(self, host):
        """The machines.Machine of a machine host."""
        lab_host = self.hosts[host]
        if not lab_host.machine:
            raise LabError(f"lab host {host} is not a machine (lab_machine: true)")
        return machines.Machine(self.name, host, lab_host.ip, machines.Image())

    @property
    def lan_namespace(self):
        return os.path.join(self.dir, LAN_DIR, "net")

    def _in_lan(self, *argv, check=True):
        return run(["nsenter", f"--net={self.lan_namespace}", "--", *argv], check=check)

    # Building

    def up(self):
        """Build whatever is missing; return a list of what was made (empty: it was already up)."""
        if not self.hosts:
            raise LabError(f"lab {self.name} has no hosts to build")
        made = []
        os.makedirs(NETNS_RUN_DIR, exist_ok=True)  # the mount point of the hosts' private /run/netns
        os.makedirs(self.dir, exist_ok=True)
        if self.dir not in {m.point for m in mount_table()}:
            # Mount namespace files may only be bound on a mount that does not propagate.
            run(["mount", "--bind", self.dir, self.dir])
            made.append(f"lab directory {self.dir}")
        run(["mount", "--make-private", self.dir])
        if not self._lan_is_up():
            self._build_lan()
            made.append(f"LAN {self.gateway} on {BRIDGE}")
        if self.machines:
            made += self._prepare_machines()
        booting = []
        for host in self.hosts.values():
            if self._host_is_up(host):
                continue
            if host.machine:
                self._start_machine(host)
                booting.append(host)
                made.append(f"machine {host.name} ({host.address} on {host.ifname})")
            else:
                self._build_host(host)
                made.append(f"host {host.name} ({host.address} on {host.ifname})")
        for host in booting:
            machines.wait_until_booted(self.ssh, host.ip)
        return made

    def _bound(self, paths):
        """Which of paths have a namespace bound on them."""
        bound = bound_namespaces(mount_table(), self.dir)
        return [path in bound for path in paths]

    def _lan_is_up(self):
        if not all(self._bound([self.lan_namespace])):
            return False
        bridge = self._in_lan("ip", "-j", "addr", "show", "dev", BRIDGE, check=False)
        return bridge.returncode == 0 and _has_address(json.loads(bridge.stdout)[0], self.gateway)

    def _build_lan(self):
        if not all(self._bound([self.lan_namespace])):
            self._make_namespaces({"net": self.lan_namespace}, "ip link set lo up")
        if self._in_lan("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            self._in_lan("ip", "link", "add", BRIDGE, "type", "bridge")
        self._in_lan("ip", "addr", "replace", self.gateway, "dev", BRIDGE)
        self._in_lan("ip", "link", "set", BRIDGE, "up")

    def _host_namespaces_are_up(self, host):
        if not all(self._bound([host.ns(kind) for kind in HOST_NAMESPACES])):
            return False
        mounts = {(m.point, m.fstype) for m in mount_table(host.ns("mnt"))}
        return {(NETNS_RUN_DIR, "tmpfs"), ("/sys", "sysfs")} <= mounts

    def _host_is_up(self, host):
        if host.machine:
            return self.machine(host.name).supervisor_pid() is not None and self._is_wired(host)
        if not self._host_namespaces_are_up(host):
            return False
        return self._is_wired(host)

    def _is_wired(self, host):
        """Whether the host's network namespace is on the LAN with its address and default route."""
        port = self._in_lan("ip", "-j", "link", "show", "dev", host.lan_port, check=False)
        if port.returncode != 0 or json.loads(port.stdout)[0].get("master") != BRIDGE:
            return False
        inside = run([*host.nsenter(["net"]), "ip", "-j", "addr", "show", "dev", host.ifname], check=False)
        if inside.returncode != 0 or not _has_address(json.loads(inside.stdout)[0], host.address):
            return False
        routes = json.loads(run([*host.nsenter(["net"]), "ip", "-j", "route", "show", "default"]).stdout)
        return [route.get("gateway") for route in routes] == [self._gateway_ip]

    @property
    def _gateway_ip(self):
        return str(ipaddress.IPv4Interface(self.gateway).ip)

    def _build_host(self, host):
        if not self._host_namespaces_are_up(host):
            # Missing or half made (an interrupted up): make the host's namespaces anew.
            files = [host.ns(kind) for kind in HOST_NAMESPACES]
            self._unmount([path for path, bound in zip(files, self._bound(files)) if bound])
            self._make_namespaces({kind: host.ns(kind) for kind in HOST_NAMESPACES}, 'hostname "$1"', host.name)
            run([*host.nsenter(["net", "mnt"]), "sh", "-ec", HOST_MOUNTS_SCRIPT])
        self._wire(host)

    def _wire(self, host):
        """Join the host's network namespace to the LAN: its interface, address, MAC and default route."""
        net = host.nsenter(["net"])
        if run([*net, "ip", "link", "show", host.ifname], check=False).returncode != 0:
            self._in_lan("ip", "link", "del", host.lan_port, check=False)  # a stale end, if any
            # Made inside the lan namespace: the machine's own namespace never sees the pair.
            self._in_lan("ip", "link", "add", host.lan_port, "type", "veth",
                         "peer", "name", host.ifname, "address", host.mac, "netns", host.ns("net"))
        self._in_lan("ip", "link", "set", host.lan_port, "master", BRIDGE, "up")
        run([*net, "ip", "link", "set", "lo", "up"])
        run([*net, "ip", "addr", "replace", host.address, "dev", host.ifname])
        run([*net, "ip", "link", "set", host.ifname, "up"])
        run([*net, "ip", "route", "replace", "default", "via", self._gateway_ip])

    # Machines

    def _prepare_machines(self):
        """The image (built once, cached), the lab's SSH key and each machine's layer; return what was made."""
        made = []
        if machines.Image().ensure():
            made.append(f"image {machines.Image().dir}")
        self.ssh.ensure()
        self._save_state()
        for host in self.machines:
            machine = self.machine(host.name)
            if not machine.is_prepared():
                self.ssh.trust(host.ip, machine.prepare_layer(self.ssh.public_key()))
                made.append(f"disk of machine {host.name}")
        return made

    def _start_machine(self, host):
        machine = self.machine(host.name)
        if machine.supervisor_pid() is not None or machine.cgroup.pids():
            machine.stop()  # half up (its network is gone): boot it again from scratch
        machine.start([sys.executable, os.path.abspath(__file__), "--supervise", host.name, "--lab", self.name])

    def renew_machine_network(self, host):
        """A new, empty network namespace for a machine's next boot, wired to the LAN; return its path.

        A real reboot keeps nothing of the network: the namespace of the last boot (its
        interfaces, netfilter rules, sysctls) is dropped, not reused.
        """
        path = self.hosts[host].ns("net")
        self._unmount([path] if all(self._bound([path])) else [])
        self._in_lan("ip", "link", "del", self.hosts[host].lan_port, check=False)
        # A new network namespace copies some sysctls of this machine's: a booted server starts with
        # forwarding off.
        self._make_namespaces({"net": path}, "ip link set lo up; echo 0 > /proc/sys/net/ipv4/ip_forward")
        self._wire(self.hosts[host])
        return path

    def reboot(self, host):
        """Reboot a machine from inside (systemctl reboot) and wait until it is back; return the new boot id."""
        lab_host = self.hosts[host]
        machine = self.machine(host)
        before = machines.wait_until_booted(self.ssh, lab_host.ip, timeout=10)
        boots = machine.boots()
        # sshd goes down with the machine: the connection may end before the command returns.
        self.ssh.run(lab_host.ip, "systemctl reboot", timeout=30)
        after = machines.wait_until_booted(self.ssh, lab_host.ip, not_boot_id=before)
        if machine.boots() != boots + 1:
            raise LabError(f"machine {host}: expected boot {boots + 1}, the supervisor counts {machine.boots()}")
        return after

    @staticmethod
    def _make_namespaces(files, script, *script_args):
        """Make new namespaces pinned by bind mounts on files ({kind: path}); run a shell script in them."""
        for path in files.values():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8"):
                pass  # a bind mount needs an existing file to land on
        flags = [f"{HOST_NAMESPACES[kind]}={path}" for kind, path in files.items()]
        run(["unshare", *flags, "--propagation", "private", "--", "sh", "-ec", script, "sh", *script_args])

    # Tearing down

    def down(self):
        """Remove everything of the lab, whatever state it is in; return a list of what was removed."""
        removed = self._remove_machines()
        # Held open until the end: a namespace that is freed meanwhile could give its inode
        # number to another lab's, and the checks below would see that one as the lab's.
        with self.holding() as held:
            killed = self._kill_processes({inode for _device, inode in held.keys})
            if killed:
                removed.append(f"{killed} processes")
            for _device, inode in sorted(held.keys):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(COLLECTION_LOCK.format(inode=inode))
                    removed.append(f"the collection's lock of namespace {inode}")
            mounts = mount_table()
            removed += sorted({os.path.relpath(os.path.dirname(p), self.dir) for p in bound_namespaces(mounts, self.dir)})
            # The files held open are busy: detached, their mounts go when they are closed.
            self._unmount([m.point for m in mounts if is_under(m.point, self.dir)], detach=held.paths)
            if os.path.isdir(self.dir):
                # Removing the files also detaches the copies of their mounts that other mount
                # namespaces made while the lab was up (other labs' hosts, `unshare -m`...),
                # which would keep the lab's namespaces alive. The demo services' files go too.
                shutil.rmtree(self.dir)
                removed.append(f"directory {self.dir}")
            try:
                os.rmdir(LAB_ROOT)  # only when no other lab is left
            except OSError:
                pass
            pinning = processes_pinning(held.keys)
        if pinning:
            # Left alone: a namespace file bound elsewhere (not under the lab's directory)
            # keeps its namespace alive until it is unmounted there.
            removed.append(f"warning: the mount namespaces of processes {pinning} still pin lab namespaces")
        return removed

    @contextlib.contextmanager
    def holding(self):
        """Keep the lab's namespaces alive while the block runs; yield a Held (their keys, the files held open).

        The namespace files bound under the lab's directory are opened (an open namespace is
        not freed, and its inode number not reused); the namespaces bound in the hosts'
        private /run/netns live as long as their host's mount namespace, one of those.
        """
        fds = {}
        try:
            for path in bound_namespaces(mount_table(), self.dir):
                with contextlib.suppress(OSError):
                    fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            keys = {namespace_key(os.fstat(fd)) for fd in fds.values()} | self.namespace_keys(hosts_only=True)
            yield Held(keys=frozenset(keys), paths=frozenset(fds))
        finally:
            for fd in fds.values():
                os.close(fd)

    def _remove_machines(self):
        """Stop every machine of the lab (also those no inventory names any more) and remove their disks."""
        removed = []
        state = os.path.join(machines.STATE_ROOT, self.name)
        hosts = set(os.listdir(os.path.join(state, "machines"))) if os.path.isdir(os.path.join(state, "machines")) else set()
        hosts |= {host.name for host in self.machines} | machines.MachineCgroup.hosts_of_lab(self.name)
        for host in sorted(hosts):
            killed = machines.Machine(self.name, host, None, None).stop()
            removed.append(f"machine {host}" + (f" ({killed} processes)" if killed else ""))
        if os.path.isdir(state):
            shutil.rmtree(state)
            removed.append(f"directory {state}")
        with contextlib.suppress(OSError):
            os.rmdir(machines.STATE_ROOT)  # only when no other lab is left
        return removed

    @staticmethod
    def _unmount(points, detach=()):
        """Unmount mount points, deepest first, including mounts stacked on the same point; detach those in detach."""
        for point in sorted(points, key=len, reverse=True):
            while point in {m.point for m in mount_table()}:
                run(["umount", *(["--lazy"] if point in detach else []), point])

    def namespace_keys(self, hosts_only=False):
        """(device, inode) of the lab's namespaces, and of those under /run/netns in its hosts' mount namespaces (ns1...).

        hosts_only: only the latter.
        """
        keys = set()
        for mount in mount_table():
            if mount.namespace_key and is_under(mount.point, self.dir):
                if not hosts_only:
                    keys.add(mount.namespace_key)
                if os.path.basename(mount.point) == "mnt":
                    keys |= {m.namespace_key for m in mount_table(mount.point)
                             if m.namespace_key and is_under(m.point, NETNS_RUN_DIR)}
        return keys

    def namespace_inodes(self):
        """The inodes of namespace_keys()."""
        return {inode for _device, inode in self.namespace_keys()}

    def _kill_processes(self, inodes):
        """SIGKILL every process in one of the namespaces (inodes) until none is left; return how many."""
        killed = set()
        deadline = time.monotonic() + 10
        while inodes:
            victims = [pid for pid in _pids() if pid != os.getpid() and process_namespaces(pid) & inodes]
            if not victims:
                break
            if time.monotonic() > deadline:
                raise LabError(f"processes keep running in lab {self.name}: {victims}")
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        return len(killed)

    # Using

    def status(self, hosts=None):
        """A few lines that say what of the lab is up (of the hosts given, or of all)."""
        lines = [f"lab {self.name} ({self.dir}): LAN {self.gateway} {'up' if self._lan_is_up() else 'down'}"]
        for host in self.hosts.values():
            if hosts is not None and host.name not in hosts:
                continue
            state = "up" if self._host_is_up(host) else "down"
            if host.machine:
                state = f"machine, boot {self.machine(host.name).boots()}, {state}"
            lines.append(f"  {host.name:<16} {host.address:<20} {host.ifname:<8} {state}")
        return "\n".join(lines)

    def is_up(self, host):
        """Whether the LAN and the host are up."""
        return self._lan_is_up() and self._host_is_up(self.hosts[host])

    def command(self, host, argv):
        """argv prefixed so that it runs in a lab host (in its namespaces, or over SSH on a machine)."""
        lab_host = self.hosts[host]
        if lab_host.machine:
            return self.ssh.argv(lab_host.ip, shlex.join(argv))
        return lab_host.nsenter() + list(argv)

    def exec(self, host, argv, **kwargs):
        """Run argv in a lab host's namespaces; return the CompletedProcess (text output, never raises on failure)."""
        kwargs.setdefault("text", True)
        kwargs.setdefault("check", False)
        if "input" not in kwargs:
            # Not the caller's stdin: ssh makes its stdin non-blocking, and a shared one would stay so if ssh
            # is killed, which Ansible then refuses ("Non-blocking file handles detected: <stdin>").
            kwargs.setdefault("stdin", subprocess.DEVNULL)
        if "capture_output" not in kwargs:
            kwargs.setdefault("stdout", subprocess.PIPE)
            kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.run(self.command(host, argv), **kwargs)  # pylint: disable=subprocess-run-check


def _check_host(name, address, ifname):
    if not PLAIN_NAME.match(name) or name == LAN_DIR:
        raise LabError(f"lab host {name!r}: the name must be a plain hostname other than {LAN_DIR!r}")
    try:
        ipaddress.IPv4Interface(address)
    except ValueError as exc:
        raise LabError(f"lab host {name}: lab_address {address!r} is not an IPv4 address/prefix") from exc
    if "/" not in address:
        raise LabError(f"lab host {name}: lab_address {address!r} needs a prefix length")
    if not 0 < len(ifname) <= IFNAMSIZ or "/" in ifname or " " in ifname:
        raise LabError(f"lab host {name}: lab_ifname {ifname!r} is not an interface name")


def _check_gateway(gateway, hosts):
    try:
        gateway_ip = ipaddress.IPv4Interface(gateway).ip
    except ValueError as exc:
        raise LabError(f"lab_gateway {gateway!r} is not an IPv4 address/prefix") from exc
    for host in hosts:
        address = ipaddress.IPv4Interface(host.address)
        if gateway_ip not in address.network or gateway_ip == address.ip:
            raise LabError(f"lab host {host.name}: {host.address} cannot reach the gateway {gateway}")


def _has_address(link, cidr):
    """Whether an `ip -j addr` link is up and has the address cidr."""
    wanted = ipaddress.IPv4Interface(cidr)
    addresses = {ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}") for a in link.get("addr_info", []) if a.get("family") == "inet"}
    return "UP" in link.get("flags", []) and wanted in addresses


def processes_pinning(keys):
    """Processes (one per mount namespace) whose mount namespace has a file of one of the namespaces mounted.

    keys: (device, inode) of the namespaces (Lab.namespace_keys). Exact while the namespaces
    are held (Lab.holding): the inode number of a freed namespace may go to a new one.
    """
    keys, seen, pinning = set(keys), set(), []
    for pid in _pids():
        mount_namespace = process_namespaces(pid, ["mnt"])
        if not keys or not mount_namespace or mount_namespace & seen:
            continue
        seen |= mount_namespace
        try:
            mounts = parse_mountinfo(_read_mountinfo(pid))
        except OSError:
            continue  # gone meanwhile
        if any(mount.namespace_key in keys for mount in mounts):
            pinning.append(pid)
    return pinning


def _read_mountinfo(pid):
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as mountinfo:
        return mountinfo.read()


def _pids():
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _supervise(host, lab_name):
    """The supervisor of one machine (started by Lab.up, in the machine's cgroup)."""
    lab = Lab.from_state(lab_name)
    return machines.supervise(lab.machine(host), lambda: lab.renew_machine_network(host))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--supervise"]:
        return _supervise(argv[1], argv[3])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "reboot", "shell"])
    parser.add_argument("host", nargs="?", help="the machine to reboot or to open a shell on; for status, a host to ask about")
    parser.add_argument("command", nargs="*", help="for shell, after --: a command to run instead of a shell")
    parser.add_argument("-i", "--inventory", help="an Ansible inventory with lab hosts")
    parser.add_argument("--lab", help="a lab name (for down, without an inventory)")
    args = parser.parse_intermixed_args(argv)
    if os.geteuid() != 0:
        parser.error("must run as root (it makes namespaces and mounts)")
    if args.action in ("reboot", "shell") and args.host is None:
        parser.error(f"{args.action} takes a host")
    if args.action in ("up", "down") and args.host is not None:
        parser.error(f"{args.action} takes no host")
    try:
        if args.inventory:
            lab = Lab.from_inventory(args.inventory)
        elif args.lab and args.action == "down":
            lab = Lab(args.lab, {})
        else:
            parser.error("give -i INVENTORY (or --lab NAME with down)")
        if args.host is not None and args.host not in lab.hosts:
            raise LabError(f"no lab host {args.host} in {args.inventory} (hosts: {', '.join(lab.hosts)})")
        if args.action == "up":
            made = lab.up()
            print(f"lab {lab.name}: " + ("made " + "; ".join(made) if made else "already up, nothing changed"))
        elif args.action == "down":
            removed = lab.down()
            print(f"lab {lab.name}: " + ("removed " + "; ".join(removed) if removed else "nothing to remove"))
        elif args.action == "reboot":
            boot_id = lab.reboot(args.host)
            print(f"machine {args.host}: rebooted (boot {lab.machine(args.host).boots()}, boot id {boot_id})")
        elif args.action == "shell":
            lab.machine(args.host)  # only machines have sshd
            ssh = lab.ssh.argv(lab.hosts[args.host].ip, *args.command)
            if not args.command:
                ssh.insert(1, "-t")  # a terminal for the login shell
            os.execvp(ssh[0], ssh)
        elif args.host is not None:
            # The answer is the exit status (scripts need not parse the output): 0 up, 3 down.
            print(lab.status([args.host]))
            return 0 if lab.is_up(args.host) else STATUS_DOWN
        else:
            print(lab.status())
    except LabError as exc:
        print(f"nslab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
