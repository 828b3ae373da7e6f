"""gRPC linking without a kernel: which grpc-go a binary was built with (agent/grpc_link_binary.py, total
on any file) and how GoTlsSource joins link records to rows (agent/go_tls_source.py), on HTTP/2 bytes
made here: the outbound row gets its inbound row's request_id, and what cannot be joined is counted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hpack

from agent import grpc_link_binary
from agent.config import HttpConfig
from agent.go_tls_source import MAX_LINKS, Call, GoTlsSource
from agent.h2_decode import PREFACE
from tests.test_h2_unit import frame

METHOD = "/grpc.health.v1.Health/Check"


def test_grpc_version_and_tested_range() -> None:
    info = ("path\tx\nmod\tx\t(devel)\t\ndep\tgolang.org/x/net\tv0.28.0\th1:x\n"
            "dep\tgoogle.golang.org/grpc\tv1.67.1\th1:y\n")
    assert grpc_link_binary.grpc_version(info) == "v1.67.1"
    assert grpc_link_binary.grpc_version(info + "=>\t../grpc\tv1.60.0\t\n") == "v1.60.0"
    assert grpc_link_binary.grpc_version("dep\tgoogle.golang.org/grpcx\tv1.0.0\n") == ""
    assert [grpc_link_binary._tested(v) for v in ("v1.56.3", "v1.67.1", "v1.55.0", "v1.68.0", "v2.0.0", "x")] == [
        True, True, False, False, False, False]


def test_find_total_on_any_file(tmp_path: Path) -> None:
    for i, data in enumerate((b"", b"\x7fELF" + os.urandom(4000), os.urandom(9000))):
        p = tmp_path / f"f{i}"
        p.write_bytes(data)
        assert grpc_link_binary.find(str(p)) is None
    assert grpc_link_binary.find(str(tmp_path / "absent")) is None


class _Rows:
    def __init__(self) -> None:
        self.src = GoTlsSource(HttpConfig(go_h2c=True), self._emit, host="h")
        self.rows: list[dict[str, Any]] = []

    def _emit(self, _kind: str, table: Any) -> None:
        self.rows += table.to_pylist()

    def call(self, conn: int, wrote: bool, data: bytes, ts: int, fd: int) -> None:
        self.src._feed_h2(Call(7, 7, fd, ts, conn, 0, len(data), wrote, data, plain=True, sport=fd, dport=fd))


def _grpc_call(r: _Rows, conn: int, server: bool, sid: int, ts: int, first: bool) -> None:
    """One unary gRPC call on connection ``conn`` as seen from one end (server: it read the request)."""
    enc, dec = hpack.Encoder(), hpack.Encoder()
    h = enc.encode([(":method", "POST"), (":scheme", "http"), (":path", METHOD), (":authority", "a"),
                    ("content-type", "application/grpc"), ("x-request-id", f"{conn}-{sid}")])
    req = (PREFACE + frame(4, 0, 0, b"") if first else b"") + frame(1, 4, sid, h) + frame(0, 1, sid, b"\0" * 5)
    r.call(conn, not server, req, ts, fd=conn)
    resp = frame(1, 4, sid, dec.encode([(":status", "200")])) + frame(1, 5, sid, dec.encode([("grpc-status", "0")]))
    r.call(conn, server, resp, ts + 10, fd=conn)


def test_link_records_join_rows_and_what_cannot_is_counted() -> None:
    r = _Rows()
    s = r.src
    # inbound stream 1 on server connection 100 is open; its handler opened stream 1 on client conn 200
    enc = hpack.Encoder()
    h = enc.encode([(":method", "POST"), (":scheme", "http"), (":path", METHOD), (":authority", "a"),
                    ("content-type", "application/grpc"), ("x-request-id", "in")])
    r.call(100, False, PREFACE + frame(4, 0, 0, b"") + frame(1, 4, 1, h) + frame(0, 1, 1, b"\0" * 5), 1000, fd=100)
    s._on_link((3, 7, 1001, 55, 100, 200, 1, 1))  # kind, pid, ts, goid, in_conn, out_conn, in_sid, out_sid
    s._on_link((3, 7, 1002, 56, 999, 200, 1, 3))  # its inbound connection is not decoded here
    s._on_link((3, 7, 1003, 57, 100, 300, 1, 1))  # an outbound stream whose row never comes
    _grpc_call(r, 200, False, 1, 1100, True)
    resp = frame(1, 4, 1, hpack.Encoder().encode([(":status", "200")]))
    r.call(100, True, resp, 1200, fd=100)  # the inbound call's response headers; its trailers come later
    s._decode()
    [out] = [x for x in r.rows if x["side"] == "client"]
    assert out["x_request_id"] == "200-1"
    # the inbound row is still open: its id is the one its row will carry
    r.call(100, True, frame(1, 5, 1, hpack.Encoder().encode([("grpc-status", "0")])), 1300, fd=100)
    s._decode()
    [inb] = [x for x in r.rows if x["side"] == "server"]
    assert out["parent_request_id"] == inb["request_id"] != 0 and inb["parent_request_id"] == 0
    # a link made after the inbound row ended still finds its id (recent server rows)
    s._on_link((3, 7, 1400, 55, 100, 200, 1, 5))
    _grpc_call(r, 200, False, 5, 1500, False)
    _grpc_call(r, 200, False, 3, 1600, False)
    s._decode()
    late = {x["x_request_id"]: x["parent_request_id"] for x in r.rows if x["side"] == "client"}
    assert late == {"200-1": inb["request_id"], "200-5": inb["request_id"], "200-3": 0}
    c = s.counters()
    assert (c["grpc_link_records"], c["grpc_linked"], c["grpc_link_no_inbound"], c["grpc_link_unused"]) == (4, 2, 1, 0)
    s._links_expire(0, everything=True)
    assert s.counters()["grpc_link_unused"] == 1
    for i in range(MAX_LINKS + 2):
        s._on_link((3, 7, 1, 1, 100, 400, 1, 2 * i + 1))
    assert len(s._links) == MAX_LINKS and s.counters()["grpc_link_dropped"] == 2
