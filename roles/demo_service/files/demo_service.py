"""The recipe's demo service: any HTTP GET, and any UDP datagram, is answered with the same small JSON document.

Usage: demo_service.py [--tcp PORT]... [--udp PORT]...
       demo_service.py PORT      (the recipe's form: HTTP on one port)

With no port at all it serves HTTP on 9090. Every socket listens on every address
of the process's network namespace, and every port is served by one process.

It binds every port before it serves any (a port in use fails the whole service at
once), then says so to its service manager when there is one: READY=1 on the socket
named by NOTIFY_SOCKET, the protocol of sd_notify(3). A systemd unit of Type=notify
(the netns.expose.demo_service role's) is started when its ports listen.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = json.dumps({"Age": 12, "Msg": "hello world! this is DNAT+bridge+Veth pair Test!"}, separators=(",", ":")).encode()
DEFAULT_TCP_PORT = 9090


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


def notify_ready(environ=None):
    """Send READY=1 to the service manager's socket (NOTIFY_SOCKET; '@' is the abstract namespace); whether it was sent."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if len(address) < 2 or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(b"READY=1", address)
    except OSError as exc:  # nobody listens any more: the service runs all the same
        log("could not notify %s: %s" % (address.replace("\0", "@"), exc))
        return False
    return True


def serve(tcp_ports, udp_ports):
    """Bind every port first, tell the service manager, then serve them all."""
    servers = [Server(("0.0.0.0", port), Handler) for port in tcp_ports]
    servers += [socketserver.UDPServer(("0.0.0.0", port), DatagramHandler) for port in udp_ports]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    log("serving tcp %s udp %s" % (list(tcp_ports), list(udp_ports)))
    notify_ready()
    for thread in threads:
        thread.join()


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
    args = parser.parse_args(argv)
    if args.port is not None:
        args.tcp.append(args.port)
    if not args.tcp and not args.udp:
        args.tcp.append(DEFAULT_TCP_PORT)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    serve(args.tcp, args.udp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
