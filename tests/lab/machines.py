# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Machines: booted Debian 12 systems in the lab, next to its namespace hosts.

A machine is what a user's master is: systemd as PID 1, sshd, python3 and nftables,
and none of pyroute2, iptables or conntrack. systemd-nspawn boots it here, on this
machine, whose own PID 1 need not be systemd:

- The image (Image) is a root filesystem made once with mmdebstrap and cached under
  /var/cache/netns-expose-lab/images/<key>, where the key is a hash of what goes into
  it. Next to it, a flat apt repository holds the .debs the collection may install
  (pyroute2, iptables, conntrack and what they depend on), downloaded when the image
  is built. Every machine sees that repository read-only at /srv/lab-packages, and
  its sources.list names only it: the machines have no route to any registry, yet
  `apt-get install python3-pyroute2` really installs the package.
- Each machine boots on an overlay of its own over the shared image (--overlay=
  IMAGE:UPPER:/), kept under /var/lib/netns-expose-lab/<lab>/machines/<host>: a disk
  that keeps its files across reboots. Its hostname, machine-id and SSH host keys are
  written into that layer before its first boot.
- A supervisor process per machine (supervise()) runs systemd-nspawn in a cgroup of
  the machine's own. When the machine reboots (nspawn exits with 133), the supervisor
  boots it again on the same layer, into a new, empty network namespace: /run starts
  empty, processes are gone, nothing of the network of the last boot survives.
- The lab reaches machines over SSH with a key of its own; the connection is carried
  into the lab's LAN namespace by a ProxyCommand, so this machine's own network
  namespace never gets a route or an address (ssh_config in LabSsh).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

IMAGE_CACHE = "/var/cache/netns-expose-lab/images"
STATE_ROOT = "/var/lib/netns-expose-lab"
CGROUP_DIR = "netns-expose-lab"  # under each cgroup hierarchy: <lab>/<host>
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a minimal Debian server has (nftables and iproute2 are priority important).
IMAGE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "nftables", "iproute2")
# What the collection may install on a master: in the machines' local repository, not installed.
REPO_PACKAGES = ("python3-pyroute2", "iptables", "conntrack")
# Where a machine sees the local repository, and the sources.list line that names it.
REPO_MOUNT = "/srv/lab-packages"
# Trusted: the repository is built here from .debs that apt verified when it downloaded them.
REPO_SOURCES = f"deb [trusted=yes] file:{REPO_MOUNT} ./\n"
# Bump when the build below changes in a way the package lists do not show.
IMAGE_RECIPE_VERSION = 2
# systemd-nspawn's exit status when the machine asked for a reboot.
NSPAWN_REBOOT = 133
BOOT_TIMEOUT = 120  # seconds until a booted machine must answer over SSH
# CAP_NET_ADMIN and CAP_NET_RAW: nspawn drops them when it does not make the network
# itself; the machine's iptables, nft, conntrack and `ip netns` need them.
NSPAWN_CAPABILITIES = "CAP_NET_ADMIN,CAP_NET_RAW"
NSPAWN_ENV = {
    # The machine writes its own net.* sysctls (ip_forward); the rest of /proc/sys stays read-only.
    "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network",
    # Machines share one image read-only (each writes to its own overlay): no image lock.
    "SYSTEMD_NSPAWN_LOCK": "0",
}


class LabError(Exception):
    """A lab, or one of its machines, cannot be built, booted, read, reached or removed."""


def run(argv, check=True, **kwargs):
    """Run argv and capture its output as text; raise LabError if it fails and check is true."""
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)  # never the caller's: see Lab.exec
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


# The image


class Image:
    """The machines' root filesystem and local package repository, built once per recipe."""

    def __init__(self, cache=IMAGE_CACHE):
        self.cache = cache
        self.dir = os.path.join(cache, self.key())

    @staticmethod
    def key():
        recipe = dict(suite=SUITE, mirror=MIRROR, include=sorted(IMAGE_PACKAGES), repo=sorted(REPO_PACKAGES),
                      version=IMAGE_RECIPE_VERSION)
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def root(self):
        return os.path.join(self.dir, "root")

    @property
    def repo(self):
        return os.path.join(self.dir, "repo")

    def is_built(self):
        return os.path.isfile(os.path.join(self.dir, "built"))

    def ensure(self):
        """Build the image unless it is in the cache; return True if it was built now."""
        if self.is_built():
            return False
        os.makedirs(self.cache, exist_ok=True)
        with open(os.path.join(self.cache, ".lock"), "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another lab may be building the same image
            if self.is_built():
                return False
            self._build()
        return True

    def _build(self):
        staging = tempfile.mkdtemp(prefix=".build-", dir=self.cache)
        try:
            root, repo = os.path.join(staging, "root"), os.path.join(staging, "repo")
            os.makedirs(repo)
            archives = "$1/var/cache/apt/archives"
            run([
                "mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
                f"--include={','.join(IMAGE_PACKAGES)}",
                # A small image: no documentation, manual pages or translations.
                "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                # The local repository: what a master may install, downloaded now, not installed.
                f'--customize-hook=rm -f {archives}/*.deb',
                f'--customize-hook=chroot "$1" apt-get install --download-only --yes --no-install-recommends '
                f'{" ".join(REPO_PACKAGES)}',
                f'--customize-hook=cp {archives}/*.deb "{repo}/"',
                # Each machine gets its own hostname, machine-id and host keys (prepare_layer).
                '--customize-hook=rm -f "$1"/etc/ssh/ssh_host_* "$1"/etc/hostname',
                '--customize-hook=truncate -s 0 "$1"/etc/machine-id',
                f"--customize-hook=echo '{REPO_SOURCES.strip()}' > \"$1\"/etc/apt/sources.list",
                f'--customize-hook=mkdir -p "$1{REPO_MOUNT}"',
                SUITE, root, MIRROR,
            ], timeout=1800)
            index = run(["apt-ftparchive", "packages", "."], cwd=repo).stdout
            with open(os.path.join(repo, "Packages"), "w", encoding="utf-8") as packages:
                packages.write(index)
            release = run(["apt-ftparchive", "release", "."], cwd=repo).stdout
            with open(os.path.join(repo, "Release"), "w", encoding="utf-8") as release_file:
                release_file.write(release)
            with open(os.path.join(staging, "built"), "w", encoding="utf-8") as stamp:
                json.dump(dict(key=self.key(), include=IMAGE_PACKAGES, repo=REPO_PACKAGES), stamp)
            if os.path.isdir(self.dir):
                shutil.rmtree(self.dir)  # a half-built image of an interrupted run
            os.rename(staging, self.dir)
        finally:
            if os.path.isdir(staging):
                shutil.rmtree(staging)
        self._prune()

    def _prune(self):
        """Remove the images of other recipes that no machine runs on: the cache holds one image, not one per change."""
        in_use = _argv_mentioning(self.cache)
        for entry in os.scandir(self.cache):
            if entry.is_dir() and entry.path != self.dir and not any(entry.path in argv for argv in in_use):
                shutil.rmtree(entry.path)


def _argv_mentioning(text):
    """The command lines of the processes that mention text."""
    found = []
    for pid in (entry for entry in os.listdir("/proc") if entry.isdigit()):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().decode(errors="replace")
            if text in argv:
                found.append(argv)
    return found


# Cgroups


def cgroup_hierarchies():
    """The cgroup hierarchies a machine needs a cgroup in: the unified one, and name=systemd on a hybrid host."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return ["/sys/fs/cgroup"]
    found = [path for path in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd")
             if os.path.exists(os.path.join(path, "cgroup.procs"))]
    if not found:
        raise LabError("no cgroup hierarchy found under /sys/fs/cgroup")
    return found


class MachineCgroup:
    """A cgroup of one machine's own, in every hierarchy: its supervisor, nspawn and everything it boots.

    Without it, nspawn (--keep-unit) splits the cgroup it runs in, and the units of every
    machine would share one cgroup of this machine.
    """

    def __init__(self, lab_name, host):
        self.relative = os.path.join(CGROUP_DIR, lab_name, host)
        self.paths = [os.path.join(root, self.relative) for root in cgroup_hierarchies()]

    @staticmethod
    def hosts_of_lab(lab_name):
        """The machines of a lab that have a cgroup, in any hierarchy."""
        hosts = set()
        for root in cgroup_hierarchies():
            lab_dir = os.path.join(root, CGROUP_DIR, lab_name)
            if os.path.isdir(lab_dir):
                hosts |= {entry.name for entry in os.scandir(lab_dir) if entry.is_dir()}
        return hosts

    def join(self, pid):
        for path in self.paths:
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, "cgroup.procs"), "w", encoding="utf-8") as procs:
                procs.write(str(pid))

    def pids(self):
        """Every process in the cgroup or below it."""
        found = set()
        for path in self.paths:
            for directory, _subdirs, files in os.walk(path):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError), open(os.path.join(directory, "cgroup.procs"), encoding="utf-8") as procs:
                        found.update(int(line) for line in procs if line.strip())
        return found

    def kill(self, timeout=15):
        """SIGKILL everything in the cgroup, wait until it is empty, remove the cgroup; return how many were killed."""
        killed = set()
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                break
            if time.monotonic() > deadline:
                raise LabError(f"processes keep running in cgroup {self.relative}: {sorted(pids)}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.1)
        self.remove()
        return len(killed)

    def remove(self):
        """Remove the (empty) cgroup and its parents that no other machine uses."""
        for path, root in zip(self.paths, cgroup_hierarchies()):
            if os.path.isdir(path):
                for directory, _subdirs, _files in os.walk(path, topdown=False):
                    os.rmdir(directory)
            parent = os.path.dirname(path)
            while parent != root:
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = os.path.dirname(parent)


# SSH


class LabSsh:
    """The lab's SSH client side: a key, the machines' host keys, and an ssh_config that uses them.

    `ssh -F <dir>/config root@10.211.55.122` opens a shell on a machine; Ansible gets the
    same file through ansible_ssh_common_args.
    """

    def __init__(self, lab_name, lan_namespace):
        self.dir = os.path.join(STATE_ROOT, lab_name, "ssh")
        self.lan_namespace = lan_namespace

    @property
    def key(self):
        return os.path.join(self.dir, "id_ed25519")

    @property
    def config(self):
        return os.path.join(self.dir, "config")

    @property
    def known_hosts(self):
        return os.path.join(self.dir, "known_hosts")

    def ensure(self):
        os.makedirs(os.path.join(self.dir, "cp"), mode=0o700, exist_ok=True)
        if not os.path.exists(self.key):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "netns-expose-lab", "-f", self.key])
        # The TCP connection starts in the lab's LAN namespace, which holds the gateway address.
        proxy = f"nsenter --net={self.lan_namespace} -- socat STDIO TCP:%h:%p"
        config = "\n".join([
            "# Written by tests/lab (nslab.py): the lab's machines over SSH.",
            "Host *",
            "  User root",
            f"  IdentityFile {self.key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {self.known_hosts}",
            "  StrictHostKeyChecking yes",
            f"  ProxyCommand {proxy}",
            "  ConnectTimeout 5",
            "  BatchMode yes",
            "  LogLevel ERROR",
            "",
        ])
        with open(self.config, "w", encoding="utf-8") as config_file:
            config_file.write(config)

    def public_key(self):
        with open(self.key + ".pub", encoding="utf-8") as public:
            return public.read()

    def trust(self, address, host_public_keys):
        """Record a machine's host keys for its address (replacing what was known of that address)."""
        lines = []
        if os.path.exists(self.known_hosts):
            with open(self.known_hosts, encoding="utf-8") as known:
                lines = [line for line in known if line.split(" ", 1)[0] != address]
        lines += [f"{address} {' '.join(key.split()[:2])}\n" for key in host_public_keys]
        with open(self.known_hosts, "w", encoding="utf-8") as known:
            known.writelines(lines)

    def argv(self, address, *command):
        return ["ssh", "-F", self.config, address, *command]

    def run(self, address, *command, timeout=60):
        return subprocess.run(self.argv(address, *command), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False, timeout=timeout)


# One machine


class Machine:
    """A machine's files on this machine: its writable layer, console log and supervisor pid."""

    def __init__(self, lab_name, host, address, image):
        self.lab_name = lab_name
        self.host = host
        self.address = address  # without prefix length
        self.image = image
        self.dir = os.path.join(STATE_ROOT, lab_name, "machines", host)
        self.cgroup = MachineCgroup(lab_name, host)

    @property
    def name(self):
        """nspawn's machine name: unique on this machine, unlike the hostname."""
        return f"{self.lab_name}-{self.host}"

    @property
    def upper(self):
        return os.path.join(self.dir, "upper")

    @property
    def console_log(self):
        return os.path.join(self.dir, "console.log")

    @property
    def boots_file(self):
        return os.path.join(self.dir, "boots")

    def is_prepared(self):
        return os.path.isfile(os.path.join(self.upper, "etc", "machine-id"))

    def prepare_layer(self, authorized_key):
        """The machine's own files, written into its empty layer before its first boot; return its host keys."""
        etc_ssh = os.path.join(self.upper, "etc", "ssh")
        os.makedirs(etc_ssh, mode=0o755, exist_ok=True)
        # The layer's directories stand for the image's in the machine: same modes.
        for path, mode in ((self.upper, 0o755), (os.path.join(self.upper, "etc"), 0o755), (etc_ssh, 0o755)):
            os.chmod(path, mode)
        ssh_dir = os.path.join(self.upper, "root", ".ssh")
        os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
        os.chmod(os.path.dirname(ssh_dir), 0o700)
        with open(os.path.join(ssh_dir, "authorized_keys"), "w", encoding="utf-8") as keys:
            keys.write(authorized_key)
        os.chmod(os.path.join(ssh_dir, "authorized_keys"), 0o600)
        with open(os.path.join(self.upper, "etc", "hostname"), "w", encoding="utf-8") as hostname:
            hostname.write(self.host + "\n")
        # ssh-keygen -A writes every missing host key type under <prefix>/etc/ssh.
        run(["ssh-keygen", "-q", "-A", "-f", self.upper])
        # Last: its presence says the layer is complete (is_prepared).
        with open(os.path.join(self.upper, "etc", "machine-id"), "w", encoding="utf-8") as machine_id:
            machine_id.write(uuid.uuid4().hex + "\n")
        return self.host_public_keys()

    def host_public_keys(self):
        etc_ssh = os.path.join(self.upper, "etc", "ssh")
        keys = []
        for entry in sorted(os.listdir(etc_ssh)):
            if entry.startswith("ssh_host_") and entry.endswith(".pub"):
                with open(os.path.join(etc_ssh, entry), encoding="utf-8") as public:
                    keys.append(public.read().strip())
        return keys

    def nspawn_argv(self, netns_path):
        return [
            "systemd-nspawn",
            f"--directory={self.image.root}",
            f"--overlay={self.image.root}:{self.upper}:/",
            "--boot",
            "--register=no",  # this machine's PID 1 may not be systemd: no machined to register with
            "--keep-unit",  # nor a system bus to ask for a scope: stay in the machine's cgroup
            f"--machine={self.name}",
            f"--hostname={self.host}",
            f"--network-namespace-path={netns_path}",
            f"--capability={NSPAWN_CAPABILITIES}",
            f"--bind-ro={self.image.repo}:{REPO_MOUNT}",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=read-only",
        ]

    def supervisor_pid(self):
        """The pid of the machine's supervisor if it runs, else None."""
        for pid in sorted(self.cgroup.pids()) if all(os.path.isdir(p) for p in self.cgroup.paths) else []:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"--supervise" in cmdline.read():
                    return pid
        return None

    def boots(self):
        with contextlib.suppress(OSError, ValueError), open(self.boots_file, encoding="utf-8") as boots:
            return int(boots.read())
        return 0

    def start(self, supervisor_argv):
        """Start the supervisor (supervisor_argv) in the machine's cgroup, detached from the caller."""
        os.makedirs(self.dir, exist_ok=True)
        with open(self.console_log, "ab") as log:
            process = subprocess.Popen(  # pylint: disable=consider-using-with
                supervisor_argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        self.cgroup.join(process.pid)
        return process.pid

    def stop(self):
        """Pull the plug: kill the supervisor, nspawn and everything the machine runs; return how many processes."""
        killed = self.cgroup.kill()
        # nspawn keeps a directory per machine name for mounts it propagates into the machine.
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)
        return killed


def supervise(machine, renew_network):
    """Boot the machine until it powers off; on each reboot, into a new network namespace.

    renew_network() makes the machine's network namespace anew (empty, wired to the LAN
    with the machine's address and MAC) and returns its path. Runs in the foreground:
    Machine.start runs it as a detached process.
    """
    # Wait until the caller has moved this process into the machine's cgroup (Machine.start):
    # nspawn must be born there.
    deadline = time.monotonic() + 10
    while os.getpid() not in machine.cgroup.pids():
        if time.monotonic() > deadline:
            raise LabError(f"{machine.name}: the supervisor was not moved into its cgroup")
        time.sleep(0.05)
    env = dict(os.environ, **NSPAWN_ENV)
    while True:
        netns_path = renew_network()
        boot = machine.boots() + 1
        with open(machine.boots_file, "w", encoding="utf-8") as boots:
            boots.write(str(boot))
        print(f"=== {time.strftime('%F %T')} boot {boot} of {machine.name}", flush=True)
        status = subprocess.call(machine.nspawn_argv(netns_path), env=env, stdin=subprocess.DEVNULL)
        print(f"=== {time.strftime('%F %T')} nspawn exited with {status}", flush=True)
        if status != NSPAWN_REBOOT:
            return status


# Run on a slave: GET the master's 10.211.55.122:8090 every 20 ms; once it has stopped answering (the
# master went down), print the time (seconds since the epoch: the machines share this machine's clock)
# of the first answer again, and the answer. argv[1]: how many seconds to try.
# A reply cut short (the service stopped between its headers and its body while the machine
# shut down) counts as down, as a refused connection does.
POLL_UNTIL_BACK = """
import http.client, sys, time, urllib.request
deadline, down = time.time() + float(sys.argv[1]), False
while time.time() < deadline:
    try:
        body = urllib.request.urlopen("http://10.211.55.122:8090/", timeout=0.5).read().decode()
        if down:
            print(repr(time.time()), body, flush=True)
            break
    except (OSError, http.client.HTTPException):
        down = True
    time.sleep(0.02)
"""


def wait_until_booted(ssh, address, not_boot_id=None, timeout=BOOT_TIMEOUT):
    """Wait until sshd answers on a machine and systemd has finished booting; return the boot id.

    not_boot_id: the boot id of the boot before a reboot, which must have changed.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            done = ssh.run(address, "cat /proc/sys/kernel/random/boot_id && systemctl is-system-running --wait",
                           timeout=max(5, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
        lines = done.stdout.split()
        if lines and lines[0] != not_boot_id and lines[-1] in ("running", "degraded"):
            return lines[0]
        last = (done.stderr or done.stdout).strip()
        time.sleep(0.5)
    raise LabError(f"machine {address} did not finish booting within {timeout} s: {last}")


def main(argv):
    """`machines.py build`: build the image into the cache (what `nslab.py up` does when it needs it)."""
    if argv[1:] == ["build"]:
        image = Image()
        built = image.ensure()
        print(f"image {image.dir}: {'built' if built else 'already built'}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
