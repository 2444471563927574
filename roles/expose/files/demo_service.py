#!/usr/bin/env python3
"""The recipe's demo service: any GET answers the same small JSON document.

Usage: demo_service.py [PORT] (default 9090, on every address of its namespace).
"""
from __future__ import annotations

import json
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


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9090
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
