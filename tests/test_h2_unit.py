"""agent/h2_decode.py on frames made here (hpack's encoder): streams, HPACK state across streams,
gRPC trailers, resets, what the capture bound cuts, and any bytes (no kernel)."""

from __future__ import annotations

import random
import struct

import hpack

from agent.h2_decode import PREFACE, H2Conn


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def test_grpc_unary_streams_and_hpack_state() -> None:
    req, resp = hpack.Encoder(), hpack.Encoder()
    c = H2Conn(server=True)
    c.feed(False, PREFACE + frame(4, 0, 0, b""), 24 + 9, 1)
    for i, sid in enumerate((1, 3)):  # the second request reuses the dynamic table of the first
        h = req.encode([(":method", "POST"), (":scheme", "http"), (":path", "/grpc.health.v1.Health/Check"),
                        (":authority", "127.0.0.1:5"), ("content-type", "application/grpc"),
                        ("x-gray-version", f"v{i}")])
        body = b"\0\0\0\0\x05" + b"x" * 5
        c.feed(False, frame(1, 4, sid, h) + frame(0, 1, sid, body), 18 + len(h) + len(body), 10 + i)
        out = resp.encode([(":status", "200"), ("content-type", "application/grpc")])
        tr = resp.encode([("grpc-status", "5" if i else "0"), ("grpc-message", "unknown service")])
        data = b"\0\0\0\0\x02ok"
        wire = frame(1, 4, sid, out) + frame(0, 0, sid, data) + frame(1, 5, sid, tr)
        c.feed(True, wire, len(wire), 20 + i)
    done = c.take()
    assert [s.id for s in done] == [1, 3]
    for i, s in enumerate(done):
        assert s.request[":path"] == "/grpc.health.v1.Health/Check"
        assert s.request["x-gray-version"] == f"v{i}"
        assert s.response[":status"] == "200" and s.response["grpc-status"] == ("5" if i else "0")
        assert (s.req_bytes, s.resp_bytes, s.end_reason) == (10, 7, "end")
        assert (s.start_ns, s.resp_start_ns, s.end_ns) == (10 + i, 20 + i, 20 + i)


def test_reset_and_cut_capture() -> None:
    enc = hpack.Encoder()
    c = H2Conn(server=False)
    h = enc.encode([(":method", "GET"), (":path", "/a"), (":scheme", "http"), (":authority", "x")])
    c.feed(True, PREFACE + frame(1, 5, 1, h), 24 + 9 + len(h), 1)
    c.feed(False, frame(3, 0, 1, b"\0\0\0\x08"), 13, 2)
    s = c.take()[0]
    assert (s.request[":path"], s.end_reason) == ("/a", "reset")
    # a DATA frame cut by the capture bound is counted whole; a frame header in the gap loses the rest
    h = enc.encode([(":method", "POST"), (":path", "/b"), (":scheme", "http"), (":authority", "x")])
    c.feed(True, frame(1, 4, 3, h), 9 + len(h), 3)
    big = frame(0, 1, 3, b"z" * 10000)
    c.feed(True, big[:4096], len(big), 4)
    c.feed(False, frame(1, 4, 3, hpack.Encoder().encode([(":status", "200")])) + b"\0" * 5, 9 + 1 + 5 + 4000, 5)
    s = c.take()[0]
    assert (s.request[":path"], s.req_bytes, s.end_reason) == ("/b", 10000, "h2_lost")
    assert c.lost == "h2_lost"


def test_any_bytes() -> None:
    rnd = random.Random(3)
    for _ in range(300):
        c = H2Conn(server=rnd.random() < 0.5)
        c.feed(not c.server, PREFACE, 24, 0)
        for t in range(20):
            data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(40)))
            if rnd.random() < 0.5:
                data = frame(rnd.randrange(10), rnd.randrange(256), rnd.randrange(5), data)
            c.feed(rnd.random() < 0.5, data, len(data) + rnd.choice((0, 0, 3)), t)
        c.close()
        c.take()


def test_data_frames_longer_than_captures() -> None:
    """DATA payloads are counted, never kept: a 40 KB frame over calls cut by the capture bound (the
    rest of a call in the gap, and a call entirely inside the payload) keeps the framing."""
    enc = hpack.Encoder()
    c = H2Conn(server=True)
    h = enc.encode([(":method", "POST"), (":path", "/big"), (":scheme", "http"), (":authority", "x")])
    c.feed(False, PREFACE + frame(1, 4, 1, h), 24 + 9 + len(h), 1)
    big = frame(0, 1, 1, b"q" * 40_000)
    cap = 16384
    c.feed(False, big[:cap], 20_000, 2)  # header + 16375 payload captured, 3616 in the gap
    c.feed(False, big[20_000 : 20_000 + cap], 20_009, 3)  # the rest, captured in part
    resp = frame(1, 5, 1, hpack.Encoder().encode([(":status", "204")]))
    c.feed(True, resp, len(resp), 4)
    s = c.take()[0]
    assert (s.req_bytes, s.end_reason, s.response[":status"], c.lost) == (40_000, "end", "204", "")
