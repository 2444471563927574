# Copyright: netns.expose contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The demo service on the lab's namespace hosts, which have no systemd: a supervised background process.

Where systemd is PID 1 the role netns.expose.demo_service runs the demo service
(roles/demo_service/files/demo_service.py) as a unit. A lab host made of namespaces
has no service manager of its own, so this runner plays that part for it:

- an instance {name, netns, tcp_ports, udp_ports} runs as a supervisor process in the
  host's namespace <netns> (the lab's nsenter prefix, then `ip netns exec <netns>`),
  which runs the service and starts it again whenever it exits (after 1 s, longer while
  it keeps failing at once), as systemd's Restart=on-failure does;
- start returns once the service listens on all its ports: the service sends READY=1
  (sd_notify's protocol) to the supervisor, which tells the runner; a service that exits
  before that fails the start, with the end of its log;
- what runs, and with what, is kept in the host's directory of the lab
  (/run/netns-expose-lab/<lab>/<host>/demo/<name>.json and <name>.log), so hosts that
  share /run keep apart, and `nslab.py down` removes it all (it kills every process in the
  lab's namespaces, the supervisors included, and removes the lab's directory);
- an instance is restarted only when its namespace, ports or script changed.

    python3 tests/lab/demo_runner.py -i INVENTORY [--host HOST] status
    python3 tests/lab/demo_runner.py -i INVENTORY --host HOST converge [--state absent] [--check] INSTANCES_JSON
    python3 tests/lab/demo_runner.py --lab NAME --host HOST ...     (the same, without an inventory)

converge prints {"changed": ..., "started": [...], "restarted": [...], "stopped": [...]};
with state present the host runs exactly the instances given that have a port (others
are stopped), with state absent the instances given are stopped. tests/lab/demo_services.yml
runs it for the masters of an inventory, with the services that have demo: true.

From Python: DemoRunner(lab_name, host) then .converge(instances, state, check),
.start(instance), .stop(name), .status() and .running(name).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import nslab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "roles", "demo_service", "files", "demo_service.py")
SERVICE_PYTHON = "/usr/bin/python3"  # as the role's units run it
DEMO_DIR = "demo"  # in the lab host's directory
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NETNS = re.compile(r"^[^/\s]+$")
READY_TIMEOUT = 15.0  # seconds for a service to listen on all its ports, as the role's units (TimeoutStartSec)
STOP_TIMEOUT = 5.0  # seconds a process gets to exit on SIGTERM before SIGKILL
RESTART_DELAY = 1.0  # seconds before a service that exited is started again
RESTART_DELAY_MAX = 30.0  # the delay doubles up to this while the service keeps failing at once
STABLE_AFTER = 10.0  # a service that ran this long resets the delay
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class DemoError(Exception):
    """A demo service cannot be started, stopped or read."""


def spec(instance):
    """What an instance runs with: a running instance recorded with anything else is restarted."""
    with open(SCRIPT, "rb") as script:
        digest = hashlib.sha256(script.read()).hexdigest()
    return {"netns": instance["netns"], "tcp_ports": [int(p) for p in instance.get("tcp_ports", [])],
            "udp_ports": [int(p) for p in instance.get("udp_ports", [])], "script_sha256": digest}


def service_argv(instance):
    argv = [SERVICE_PYTHON, SCRIPT]
    argv += [option for port in instance.get("tcp_ports", []) for option in ("--tcp", str(int(port)))]
    argv += [option for port in instance.get("udp_ports", []) for option in ("--udp", str(int(port)))]
    return argv


def check_instances(instances):
    """Fail naming the first instance that is not {name, netns, tcp_ports, udp_ports} with plain names and ports."""
    names = set()
    for index, instance in enumerate(instances):
        label = f"instances[{index}] ({instance.get('name') if isinstance(instance, dict) else repr(instance)})"
        if not isinstance(instance, dict) or set(instance) - {"name", "netns", "tcp_ports", "udp_ports"}:
            raise DemoError(f"{label}: must be a dict of name, netns, tcp_ports and udp_ports")
        if not NAME.match(str(instance.get("name", ""))) or instance["name"] in names:
            raise DemoError(f"{label}: the name must be unique and match {NAME.pattern}")
        names.add(instance["name"])
        netns = str(instance.get("netns", ""))
        if not NETNS.match(netns) or netns in (".", ".."):
            raise DemoError(f"{label}: netns must be a name under /run/netns, not {netns!r}")
        for key in ("tcp_ports", "udp_ports"):
            ports = instance.get(key, [])
            if not isinstance(ports, list) or not all(str(p).isdigit() and 0 < int(p) < 65536 for p in ports):
                raise DemoError(f"{label}: {key} must be a list of ports (1-65535), not {ports!r}")


def serves(instance):
    return bool(instance.get("tcp_ports") or instance.get("udp_ports"))


def alive(pid):
    """Whether a process exists and is not a zombie (this machine's PID 1 may never reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as raw:
            return raw.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def children(pid):
    """The live child processes of pid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def terminate(pids, timeout=STOP_TIMEOUT):
    """SIGTERM the processes, SIGKILL those still there after timeout; wait until they are gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [pid for pid in pids if alive(pid)]
        if not pids:
            return
    raise DemoError(f"processes {pids} do not exit")


class DemoRunner:
    """The demo services of one namespace host of a lab."""

    def __init__(self, lab_name, host):
        self.lab_name, self.host = lab_name, host
        self.host_dir = os.path.join(nslab.LAB_ROOT, lab_name, host)
        self.dir = os.path.join(self.host_dir, DEMO_DIR)

    def _check_host(self):
        """A namespace host of a running lab (machines have systemd: the role runs their demo services)."""
        bound = nslab.bound_namespaces(nslab.mount_table(), self.host_dir)
        if not all(os.path.join(self.host_dir, kind) in bound for kind in nslab.HOST_NAMESPACES):
            raise DemoError(f"{self.host} is not an up namespace host of lab {self.lab_name} "
                            f"(no namespaces bound under {self.host_dir}; a machine runs the role netns.expose.demo_service)")

    def nsenter(self):
        """The argv prefix that runs a command in the host's namespaces (as nslab.LabHost.nsenter)."""
        return ["nsenter", *(f"{option}={os.path.join(self.host_dir, kind)}"
                             for kind, option in nslab.HOST_NAMESPACES.items()), "--"]

    def _path(self, name, suffix):
        return os.path.join(self.dir, f"{name}{suffix}")

    def _record(self, name):
        try:
            with open(self._path(name, ".json"), encoding="utf-8") as record:
                return json.load(record)
        except (OSError, ValueError):
            return None

    def _supervisor(self, name, record=None):
        """The pid of the instance's supervisor while it runs, else None (a recorded pid may have been reused)."""
        record = record or self._record(name)
        if not record:
            return None
        pid = record.get("supervisor")
        argv = cmdline(pid)
        if alive(pid) and "supervise" in argv and argv[argv.index("supervise"):][:5] == ["supervise", "--dir", self.dir,
                                                                                         "--name", name]:
            return pid
        return None

    def names(self):
        """The instances that have files on the host, running or not (a failed start leaves its log)."""
        if not os.path.isdir(self.dir):
            return []
        return sorted({entry.rsplit(".", 1)[0] for entry in os.listdir(self.dir) if entry.endswith((".json", ".log"))})

    def status(self):
        """{name: {running, supervisor, service, spec}} of every instance recorded on the host."""
        found = {}
        for name in self.names():
            record = self._record(name) or {}
            supervisor = self._supervisor(name, record)
            service = children(supervisor) if supervisor else []
            found[name] = {"running": supervisor is not None, "supervisor": supervisor,
                           "service": service[0] if service else None, "spec": record.get("spec")}
        return found

    def running(self, name):
        return self._supervisor(name) is not None

    def start(self, instance):
        """Run an instance (restart it when it runs with something else); return whether anything changed."""
        check_instances([instance])
        self._check_host()
        name, wanted = instance["name"], spec(instance)
        record = self._record(name)
        if self._supervisor(name, record) and record.get("spec") == wanted:
            return False
        self.stop(name)
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        ready_read, ready_write = os.pipe()
        argv = ["setsid", "--fork", *self.nsenter(), "ip", "netns", "exec", instance["netns"],
                sys.executable, os.path.abspath(__file__), "supervise", "--dir", self.dir, "--name", name,
                "--ready-fd", str(ready_write), "--", *service_argv(instance)]
        with open(self._path(name, ".log"), "ab") as log:
            # setsid --fork: the supervisor is nobody's child here, and outlives this process.
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(ready_write,),
                           check=True)
        os.close(ready_write)
        with os.fdopen(ready_read, "rb") as ready:
            said = _read_until(ready, (b"ready", b"failed"), READY_TIMEOUT)
        supervisor = int(said["supervisor"]) if "supervisor" in said else None
        if "ready" not in said:
            self._cleanup(name, supervisor)
            if supervisor is None:
                why = "could not be started"
            elif said.get("failed", "").isdigit():
                why = f"exited (status {said['failed']}) before it listened on all its ports"
            else:
                why = f"did not listen on all its ports within {READY_TIMEOUT:.0f} s"
            raise DemoError(f"{self.host}: demo service {name} in netns {instance['netns']} {why}; "
                            f"the end of its log {self._path(name, '.log')}:\n{self._log_tail(name)}")
        with open(self._path(name, ".json.tmp"), "w", encoding="utf-8") as record_file:
            json.dump({"supervisor": supervisor, "spec": wanted}, record_file)
        os.replace(self._path(name, ".json.tmp"), self._path(name, ".json"))
        return True

    def _log_tail(self, name, lines=20):
        try:
            with open(self._path(name, ".log"), encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:]).rstrip()
        except OSError:
            return "(no log)"

    def _cleanup(self, name, supervisor):
        """Stop what a failed start left running (its supervisor, and the service); keep the log."""
        if supervisor is not None and alive(supervisor) and "supervise" in cmdline(supervisor):
            service = children(supervisor)
            terminate([supervisor])
            terminate([pid for pid in service if alive(pid)])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name, ".json"))

    def stop(self, name):
        """Stop an instance (its supervisor stops the service first) and remove its files; return whether it ran."""
        supervisor = self._supervisor(name)
        if supervisor is not None:
            service = children(supervisor)
            terminate([supervisor])
            terminate([pid for pid in service if alive(pid)])  # its parent-death signal is SIGTERM too
        for suffix in (".json", ".log"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name, suffix))
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)  # only when no instance is left
        return supervisor is not None

    def converge(self, instances, state="present", check=False):
        """Converge the host: with present exactly the instances given that have a port run, with absent those given stop.

        Returns {changed, started, restarted, stopped} (what would be done, in check mode).
        """
        if state not in ("present", "absent"):
            raise DemoError(f"state must be present or absent, not {state!r}")
        check_instances(instances)
        serving = [instance for instance in instances if serves(instance)] if state == "present" else []
        keep = {instance["name"] for instance in serving}
        going = set(self.names()) if state == "present" else {instance["name"] for instance in instances}
        report = {"started": [], "restarted": [], "stopped": []}
        for name in sorted(going - keep):
            if self.running(name):
                report["stopped"].append(name)
            if not check:
                self.stop(name)
        for instance in serving:
            record = self._record(instance["name"])
            if self.running(instance["name"]):
                if record.get("spec") == spec(instance):
                    continue
                report["restarted"].append(instance["name"])
            else:
                report["started"].append(instance["name"])
            if not check:
                self.start(instance)
        return {"changed": any(report.values()), **report}


def _read_until(stream, last_words, timeout):
    """{first word: rest} of the lines read from a pipe until a line starts with one of last_words,
    the pipe's end, or timeout seconds."""
    said, buffer, deadline = {}, b"", time.monotonic() + timeout
    while not said.keys() & {word.decode() for word in last_words}:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
            break
        chunk = os.read(stream.fileno(), 256)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            word, _space, rest = line.decode(errors="replace").partition(" ")
            said[word] = rest
    return said


# The supervisor: runs in the instance's namespace, started by DemoRunner.start.


def _prctl(option, value):
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def supervise(argv, ready_fd, log=print):
    """Run argv, and run it again whenever it exits, until SIGTERM or SIGINT.

    The service gets NOTIFY_SOCKET, an abstract socket of this process (the namespace's).
    On ready_fd it writes "supervisor <pid>" at once, then "ready" when the first service
    says READY=1 (and closes it); if that service exits before, "failed <status>", and
    supervise returns 1.
    """
    stopping = []
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)  # wakes the loop when the service exits
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    address = f"netns-expose-demo/{os.getpid()}/{time.monotonic_ns()}"
    notify.bind("\0" + address)
    supervisor = os.getpid()

    def child_setup():
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # the supervisor died before the line above
            os._exit(1)

    def say(text, last=True):
        nonlocal ready_fd
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, text.encode() + b"\n")
            if last:
                os.close(ready_fd)
                ready_fd = None

    say(f"supervisor {supervisor}", last=False)
    delay = RESTART_DELAY
    env = {**os.environ, "NOTIFY_SOCKET": "@" + address}
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(argv, env=env, preexec_fn=child_setup)  # pylint: disable=subprocess-popen-preexec-fn,consider-using-with
        while child.poll() is None and not stopping:
            readable = select.select([notify, wake_read], [], [], 1.0)[0]
            if wake_read in readable:
                os.read(wake_read, 512)
            if notify in readable and b"READY=1" in notify.recv(4096).split(b"\n"):
                say("ready")
        if stopping:
            _stop(child)
            break
        if ready_fd is not None:  # it never got ready: the start fails, as systemd's would
            say(f"failed {child.returncode}")
            return 1
        if time.monotonic() - started >= STABLE_AFTER:
            delay = RESTART_DELAY
        log(f"supervisor: the service exited with {child.returncode}; starting it again in {delay:.0f} s")
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            if select.select([wake_read], [], [], deadline - time.monotonic())[0]:
                os.read(wake_read, 512)
        delay = min(delay * 2, RESTART_DELAY_MAX)
    say("failed stopped")
    return 0


def _stop(child):
    child.terminate()
    try:
        child.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["supervise"]:
        parser = argparse.ArgumentParser(prog="demo_runner.py supervise")
        parser.add_argument("--dir", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--ready-fd", type=int, required=True)
        parser.add_argument("service", nargs="+")
        args = parser.parse_args(argv[1:])
        return supervise(args.service, args.ready_fd, log=lambda line: print(line, flush=True))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", help="an Ansible inventory with lab hosts (for the lab's name)")
    parser.add_argument("--lab", help="the lab's name, instead of an inventory")
    parser.add_argument("--host", help="the lab host (status: every namespace host of the inventory when not given)")
    parser.add_argument("action", choices=["converge", "status"])
    parser.add_argument("instances", nargs="?", default="[]", help="converge: a JSON list of {name, netns, tcp_ports, udp_ports}")
    parser.add_argument("--state", choices=["present", "absent"], default="present")
    parser.add_argument("--check", action="store_true", help="converge: only say what would change")
    args = parser.parse_intermixed_args(argv)
    if os.geteuid() != 0:
        parser.error("must run as root (it enters the lab's namespaces)")
    try:
        if args.inventory:
            lab = nslab.Lab.from_inventory(args.inventory)
            lab_name, hosts = lab.name, [host.name for host in lab.hosts.values() if not host.machine]
        elif args.lab:
            lab_name, hosts = args.lab, []
        else:
            parser.error("give -i INVENTORY or --lab NAME")
        if args.host:
            hosts = [args.host]
        if args.action == "converge":
            if len(hosts) != 1:
                parser.error("converge takes one --host")
            result = DemoRunner(lab_name, hosts[0]).converge(json.loads(args.instances), args.state, args.check)
        else:
            result = {host: DemoRunner(lab_name, host).status() for host in hosts}
    except (DemoError, nslab.LabError, ValueError, subprocess.CalledProcessError) as exc:
        print(json.dumps({"failed": True, "msg": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
