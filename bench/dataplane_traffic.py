"""Traffic for bench/dnat_dataplane.py: a TCP server, and a client that measures through several targets.

    dataplane_traffic.py serve PORT [PORT...]
        Echoes what each connection sends; a connection whose first byte is b"s" is a sink instead
        (read until EOF, then closed). One process, one thread (selectors).

    dataplane_traffic.py measure --target NAME=HOST:PORT [--target ...] [--seconds S] [--slice T]
        Prints one JSON document: {metric: {target name: [samples]}} for
        - conn: seconds of each new connection (connect, 1 byte there and back, close with RST);
        - rr:   seconds of each request/response round trip on an open connection (1 byte each way);
        - tput: MB/s of each T-second slice of sending through one connection into a sink.
        The targets take turns operation by operation (conn, rr) or slice by slice (tput), in an
        order that rotates, so that they share the machine's noise; each metric runs for S seconds.
"""
from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import sys
import time

CHUNK = 256 * 1024
RST_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST, no TIME_WAIT


def serve(ports):
    selector = selectors.DefaultSelector()
    for port in ports:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(1024)
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, None)
    buffer = bytearray(1 << 20)
    while True:
        for key, _events in selector.select():
            sock = key.fileobj
            if key.data is None:
                try:
                    conn, _peer = sock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ, {"sink": None})
                continue
            state = key.data
            try:
                size = sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:
                size = 0
            if size == 0:
                selector.unregister(sock)
                sock.close()
                continue
            if state["sink"] is None:
                state["sink"] = buffer[0:1] == b"s"
            if not state["sink"]:
                try:
                    sock.send(buffer[:size])
                except OSError:
                    selector.unregister(sock)
                    sock.close()


def connect(host, port):
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def one_connection(host, port):
    """Seconds for one new connection: connect, 1 byte there and back, close with RST."""
    start = time.perf_counter()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST_ON_CLOSE)
    sock.settimeout(5)
    sock.connect((host, port))
    sock.send(b"x")
    if sock.recv(1) != b"x":
        raise RuntimeError(f"{host}:{port}: no echo")
    sock.close()
    return time.perf_counter() - start


def one_round_trip(sock):
    start = time.perf_counter()
    sock.send(b"x")
    if sock.recv(1) != b"x":
        raise RuntimeError("no echo")
    return time.perf_counter() - start


def interleaved(targets, operation, seconds):
    """Run operation(target) on each target in turn, in a rotating order, for seconds; {name: [seconds each]}."""
    times = {name: [] for name in targets}
    names = list(targets)
    deadline = time.monotonic() + seconds
    turn = 0
    while time.monotonic() < deadline:
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            times[name].append(operation(targets[name]))
        turn += 1
    return times


def conn_latency(targets, seconds):
    return interleaved(targets, lambda address: one_connection(*address), seconds)


def rr_latency(targets, seconds):
    socks = {name: connect(*address) for name, address in targets.items()}
    try:
        return interleaved(socks, one_round_trip, seconds)
    finally:
        for sock in socks.values():
            sock.close()


def throughput(host, port, seconds):
    """MB/s sent through one connection into a sink."""
    payload = b"\0" * CHUNK
    with connect(host, port) as sock:
        sock.sendall(b"s")
        sent = 0
        start = time.monotonic()
        deadline = start + seconds
        while time.monotonic() < deadline:
            sock.sendall(payload)
            sent += CHUNK
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # EOF: the sink has read everything
        return sent / (time.monotonic() - start) / 1e6


def tput_slices(targets, seconds, slice_seconds):
    """Throughput in short slices, target after target in a rotating order: {name: [MB/s of each slice]}."""
    results = {name: [] for name in targets}
    names = list(targets)
    for turn in range(max(1, round(seconds / slice_seconds / len(names)))):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            results[name].append(throughput(*targets[name], slice_seconds))
    return results


def measure(targets, seconds, slice_seconds):
    """{"conn": {name: [s per connection]}, "rr": {name: [s per round trip]}, "tput": {name: [MB/s per slice]}}."""
    for address in targets.values():  # warm up: ARP, route caches, the server's first accept
        one_connection(*address)
    return {
        "conn": conn_latency(targets, seconds),
        "rr": rr_latency(targets, seconds),
        "tput": tput_slices(targets, seconds, slice_seconds),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("serve")
    server.add_argument("ports", nargs="+", type=int)
    client = sub.add_parser("measure")
    client.add_argument("--target", action="append", required=True, help="NAME=HOST:PORT")
    client.add_argument("--seconds", type=float, default=3.0, help="per metric, for all targets together")
    client.add_argument("--slice", type=float, default=0.1, help="seconds of one throughput measurement")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.ports)
        return 0
    targets = {}
    for spec in args.target:
        name, address = spec.split("=", 1)
        host, port = address.rsplit(":", 1)
        targets[name] = (host, int(port))
    json.dump(measure(targets, args.seconds, args.slice), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
