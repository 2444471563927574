"""A tiny UDP service for the tests: `udp_echo.py serve PORT` answers each datagram with
b"echo:" + the datagram; `udp_echo.py ask HOST PORT TEXT` prints the answer, or exits 1
when none comes within two seconds."""
from __future__ import annotations

import socket
import sys


def serve(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("0.0.0.0", port))
        while True:
            data, peer = server.recvfrom(2048)
            server.sendto(b"echo:" + data, peer)


def ask(host, port, text, source_port=0):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client.bind(("0.0.0.0", source_port))
        client.settimeout(2)
        client.sendto(text.encode(), (host, port))
        try:
            print(client.recvfrom(2048)[0].decode())
        except socket.timeout:
            return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        sys.exit(ask(sys.argv[2], int(sys.argv[3]), sys.argv[4], *(int(arg) for arg in sys.argv[5:])))
