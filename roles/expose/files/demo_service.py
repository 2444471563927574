"""The recipe's demo service: any HTTP GET, and any UDP datagram, is answered with the same small JSON document.

Usage: demo_service.py [--tcp PORT]... [--udp PORT]... [--supervise]
       demo_service.py PORT      (the recipe's form: HTTP on one port)

With no port at all it serves HTTP on 9090. Every socket listens on every address
of the process's network namespace, and every port is served by one process.

--supervise runs the service as a child process and starts it again whenever it
exits (after 1 s, longer while it keeps failing at once); SIGTERM or SIGINT stop
the child and then the supervisor. The child also gets SIGTERM when the supervisor
dies, so no service is left behind holding the ports.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = json.dumps({"Age": 12, "Msg": "hello world! this is DNAT+bridge+Veth pair Test!"}, separators=(",", ":")).encode()
DEFAULT_TCP_PORT = 9090
RESTART_DELAY = 1.0  # seconds before a child that exited is started again
RESTART_DELAY_MAX = 30.0  # the delay doubles up to this while the child keeps failing
STABLE_AFTER = 10.0  # a child that ran this long resets the delay
STOP_TIMEOUT = 5.0  # seconds the child gets to exit on SIGTERM before SIGKILL
# The supervisor's process name (at most 15 bytes): start-stop-daemon matches it with
# --name, so that a stale pidfile never names another python3 process.
SUPERVISOR_NAME = b"expose-demo-sup"
PR_SET_NAME, PR_SET_PDEATHSIG = 15, 1  # from <linux/prctl.h>


def prctl(option, value):
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def log(message):
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the name http.server dispatches to
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(REPLY)))
        self.end_headers()
        self.wfile.write(REPLY)

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        log("%s - %s" % (self.client_address[0], format % args))


class Server(ThreadingHTTPServer):
    def server_bind(self):
        # HTTPServer.server_bind looks up the FQDN of the bind address, which waits for
        # DNS timeouts in a namespace with no resolver; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "demo", self.server_address[1]


class DatagramHandler(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(REPLY, self.client_address)
        log("%s - udp %d bytes to port %d" % (self.client_address[0], len(data), self.server.server_address[1]))


def serve(tcp_ports, udp_ports):
    """Bind every port first (a port in use fails the whole service at once), then serve them all."""
    servers = [Server(("0.0.0.0", port), Handler) for port in tcp_ports]
    servers += [socketserver.UDPServer(("0.0.0.0", port), DatagramHandler) for port in udp_ports]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    log("serving tcp %s udp %s" % (list(tcp_ports), list(udp_ports)))
    for thread in threads:
        thread.join()


def supervise(child_argv):
    """Run child_argv, and run it again whenever it exits, until SIGTERM or SIGINT."""
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Signals are handled one at a time by waiting for them, not by handlers that could
    # interrupt starting the child halfway.
    waited = stop_signals | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    supervisor = os.getpid()
    prctl(PR_SET_NAME, ctypes.c_char_p(SUPERVISOR_NAME))

    def child_setup():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, waited)
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # the supervisor died before the line above
            os._exit(1)

    delay = RESTART_DELAY
    while True:
        started = time.monotonic()
        child = subprocess.Popen(child_argv, preexec_fn=child_setup)  # pylint: disable=subprocess-popen-preexec-fn
        while child.poll() is None:
            if signal.sigwaitinfo(waited).si_signo in stop_signals:
                stop(child)
                return 0
        if time.monotonic() - started >= STABLE_AFTER:
            delay = RESTART_DELAY
        log("supervisor: the service exited with %s; starting it again in %.0f s" % (child.returncode, delay))
        if signal.sigtimedwait(stop_signals, delay) is not None:
            return 0
        delay = min(delay * 2, RESTART_DELAY_MAX)


def stop(child):
    child.terminate()
    try:
        child.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def port(text):
    number = int(text)
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError("%s is not a port (1-65535)" % text)
    return number


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", type=port, help="HTTP on this port (as --tcp)")
    parser.add_argument("--tcp", type=port, action="append", default=[], metavar="PORT", help="serve HTTP on PORT")
    parser.add_argument("--udp", type=port, action="append", default=[], metavar="PORT",
                        help="answer datagrams on PORT")
    parser.add_argument("--supervise", action="store_true", help="run the service as a child; restart it when it exits")
    args = parser.parse_args(argv)
    if args.port is not None:
        args.tcp.append(args.port)
    if not args.tcp and not args.udp:
        args.tcp.append(DEFAULT_TCP_PORT)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.supervise:
        ports = [option for number in args.tcp for option in ("--tcp", str(number))]
        ports += [option for number in args.udp for option in ("--udp", str(number))]
        return supervise([sys.executable, os.path.abspath(__file__), *ports])
    serve(args.tcp, args.udp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
