"""The recipe's demo service: any GET answers the same small JSON document.

Usage: demo_service.py [PORT] (default 9090, on every address of its namespace).
"""
from __future__ import annotations

import json
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = json.dumps({"Age": 12, "Msg": "hello world! this is DNAT+bridge+Veth pair Test!"}, separators=(",", ":")).encode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the name http.server dispatches to
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(REPLY)))
        self.end_headers()
        self.wfile.write(REPLY)

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        sys.stdout.write("%s - %s\n" % (self.client_address[0], format % args))
        sys.stdout.flush()


class Server(ThreadingHTTPServer):
    def server_bind(self):
        # HTTPServer.server_bind looks up the FQDN of the bind address, which waits for
        # DNS timeouts in a namespace with no resolver; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "demo", self.server_address[1]


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9090
    Server(("0.0.0.0", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
