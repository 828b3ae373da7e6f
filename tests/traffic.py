"""Traffic whose truth the tests know, made by separate processes with their own names.

    python -m tests.traffic server --family 6 --count 3 [--reset]   prints {"pid", "port"}, then serves
    python -m tests.traffic client --port P --sizes 100,200 [--hold S] [--family 6]

Protocol per connection: the client sends exactly S bytes and shuts down its write side; the server
reads to EOF and answers exactly reply_size(S) bytes, then closes (or, with --reset, closes with
SO_LINGER 0 so the kernel sends a reset). The client reports each connection's local port.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import struct
import sys
import time

PR_SET_NAME = 15
SERVER_COMM = "bs-test-srv"
CLIENT_COMM = "bs-test-cli"


def reply_size(sent: int) -> int:
    return sent // 3 + 11


def set_comm(name: str) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def _loopback(family: int) -> str:
    return "::1" if family == 6 else "127.0.0.1"


def _af(family: int) -> socket.AddressFamily:
    return socket.AF_INET6 if family == 6 else socket.AF_INET


def _read_to_eof(conn: socket.socket) -> int:
    n = 0
    while chunk := conn.recv(65536):
        n += len(chunk)
    return n


def server(family: int, count: int, reset: bool) -> None:
    set_comm(SERVER_COMM)
    srv = socket.socket(_af(family), socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((_loopback(family), 0))
    srv.listen(128)
    print(json.dumps({"pid": os.getpid(), "port": srv.getsockname()[1]}), flush=True)
    for _ in range(count):
        conn, _ = srv.accept()
        if reset:
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            continue
        got = _read_to_eof(conn)
        conn.sendall(b"r" * reply_size(got))
        conn.close()
    srv.close()


def client(port: int, family: int, sizes: list[int], hold: float, expect_reset: bool, wait_file: str = "") -> None:
    set_comm(CLIENT_COMM)
    out = []
    for size in sizes:
        c = socket.socket(_af(family), socket.SOCK_STREAM)
        try:
            c.connect((_loopback(family), port))
        except ConnectionRefusedError:
            out.append({"refused": True, "local_port": c.getsockname()[1] if family == 4 else 0})
            c.close()
            continue
        local_port = c.getsockname()[1]
        print(json.dumps({"connected": local_port}), flush=True)
        c.sendall(b"s" * size)
        if hold:
            time.sleep(hold)
        while wait_file and not os.path.exists(wait_file):  # held open until the test says so
            time.sleep(0.05)
        if expect_reset:
            time.sleep(0.2)  # let the server's reset arrive
            try:
                c.recv(10)
            except ConnectionResetError:
                pass
            out.append({"local_port": local_port, "sent": size})
            c.close()
            continue
        c.shutdown(socket.SHUT_WR)
        got = _read_to_eof(c)
        c.close()
        out.append({"local_port": local_port, "sent": size, "received": got})
    print(json.dumps({"pid": os.getpid(), "conns": out}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--family", type=int, default=4)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--reset", action="store_true")
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--family", type=int, default=4)
    c.add_argument("--sizes", default="100")
    c.add_argument("--hold", type=float, default=0.0)
    c.add_argument("--expect-reset", action="store_true")
    c.add_argument("--wait-file", default="", help="after sending, hold the connection until this file exists")
    a = p.parse_args()
    if a.cmd == "server":
        server(a.family, a.count, a.reset)
    else:
        client(a.port, a.family, [int(x) for x in a.sizes.split(",")], a.hold, a.expect_reset, a.wait_file)


if __name__ == "__main__":
    sys.exit(main())
