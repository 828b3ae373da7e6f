"""The fuzz corpus kept in the repo: seed inputs each target replays every run (tests/fuzz/corpus/).

Seeds come from ``python -m tests.fuzz.corpus`` (the hand-picked ones below) and from crashes the
fuzzer found (saved by hand with ``save``: name them after what they broke).
"""

from __future__ import annotations

import ctypes as C
import socket
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent / "corpus"


def seeds(target: str) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every seed of ``target``, in name order."""
    folder = ROOT / target
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()] if folder.is_dir() else []


def save(target: str, name: str, data: bytes) -> Path:
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


JWT = (b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
       b"SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")


def _heads() -> dict[str, bytes]:
    line = b"GET /hello?q=" + b"a" * 1100 + b" HTTP/1.1\r\nHost: svc\r\n\r\n"
    exact = b"GET /" + b"p" * (1024 - len(b"GET / HTTP/1.1\r\n")) + b" HTTP/1.1\r\n"
    assert len(exact) == 1024
    hdr = b"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: "
    at_end = hdr + b"u" * (1024 - len(hdr) - 2) + b"\r\n"
    return {
        "long_query_1100.bin": line[:1024],
        "long_path_3000.bin": (b"GET /" + b"b" * 3000 + b" HTTP/1.1\r\n\r\n")[:1024],
        "line_fills_capture.bin": exact,
        "line_fills_capture_minus_crlf.bin": exact[:-2],
        "header_at_capture_end.bin": at_end,
        "line_cut_in_version.bin": exact[: 1024 - 6],
        "header_cut_by_capture.bin": (hdr + b"u" * 2000)[:1024],
        "absolute_userinfo_odd_case.bin": b"GET HtTp://user:pw@up.example:8080/a/b?c=d HTTP/1.1\r\nHost: up\r\n\r\n",
        "absolute_ws_userinfo.bin": b"GET ws://user:secret@h/chat HTTP/1.1\r\n\r\n",
        "absolute_no_path.bin": b"GET HTTPS://u:p@h HTTP/1.1\r\n\r\n",
        "connect_userinfo.bin": b"CONNECT u:p@h:443 HTTP/1.1\r\n\r\n",
        "jwt_path.bin": b"GET /reset/" + JWT + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        "jsessionid.bin": b"GET /shop/cart;jsessionid=0A1B2C3D4E5F6A7B8C9D HTTP/1.1\r\n\r\n",
        "hex_and_uuid.bin": b"GET /k/0123456789abcdef0123/u/123e4567-e89b-12d3-a456-426614174000 HTTP/1.1\r\n\r\n",
        "empty.bin": b"",
        "all_ff_1024.bin": b"\xff" * 1024,
        "all_cr_1024.bin": b"\r" * 1024,
        "crlf_only.bin": b"\r\n\r\n",
        "method_only.bin": b"GET ",
        "non_utf8_path_1024.bin": (b"GET /" + b"\xff" * 2000)[:1024],
        "non_utf8_header.bin": b"GET / HTTP/1.1\r\nUser-Agent: " + b"\xfe" * 300 + b"\r\n\r\n",
        "options_star.bin": b"OPTIONS * HTTP/1.1\r\nHost: z\r\n\r\n",
        "deep_numeric_path.bin": b"GET " + b"/1" * 12 + b"/" + b"x" * 990 + b" HTTP/1.1\r\n\r\n",
    }


def _event(head: bytes, *, head_len: int | None = None, flags: int = 0, pid: int = 100, start: int = 1_000,
           family: int = socket.AF_INET, comm: bytes = b"server", status: bytes = b"HTTP/1.1 200 OK\r\n",
           route: bytes = b"") -> bytes:
    from agent import _http_event as ev

    r = np.zeros(1, ev.event_dtype(ev.HEAD_MAX))
    kept = head[: ev.HEAD_MAX]
    r["head"][0, : len(kept)] = np.frombuffer(kept, np.uint8)
    r["head_len"] = len(kept) if head_len is None else head_len
    r["flags"] = flags | (ev.F_HEAD_TRUNC if len(head) > ev.HEAD_MAX else 0)
    r["kind"], r["pid"], r["tid"], r["fd"], r["role"] = ev.KIND_EXCHANGE, pid, pid + 1, 7, ev.ROLE_SERVER
    r["start_ns"], r["end_ns"], r["req_bytes"], r["resp_bytes"] = start, start + 4_000, len(head), 99
    r["family"], r["sport"], r["dport"] = family, 8080, 40000
    r["saddr"][0, :4] = [127, 0, 0, 1]
    r["daddr"][0, :4] = [127, 0, 0, 1]
    r["comm"][0, : len(comm)] = np.frombuffer(comm[:16], np.uint8)
    r["status"][0, : len(status)] = np.frombuffer(status[:32], np.uint8)
    r["status_len"] = min(len(status), 32)
    r["route"][0, : len(route)] = np.frombuffer(route[:128], np.uint8)
    r["route_len"] = len(route)
    return r.tobytes()


def _events() -> dict[str, bytes]:
    from agent import _http_event as ev

    heads = _heads()
    long_url = b"GET /hello?q=" + b"a" * 1100 + b" HTTP/1.1\r\nHost: svc\r\n\r\n"
    return {
        "long_url_1100.bin": _event(long_url),
        "long_url_3000.bin": _event(b"GET /" + b"b" * 3000 + b" HTTP/1.1\r\n\r\n"),
        "head_len_65535.bin": _event(b"GET / HTTP/1.1\r\n\r\n", head_len=0xFFFF),
        "head_len_zero.bin": _event(b"GET / HTTP/1.1\r\n\r\n", head_len=0),
        "held_byte_full.bin": _event(b"ET /" + b"c" * 2000, flags=ev.F_HELD_BYTE),
        "comm_ff.bin": _event(b"GET / HTTP/1.1\r\n\r\n", comm=b"\xff" * 16),
        "route_ff.bin": _event(b"GET / HTTP/1.1\r\n\r\n", route=b"GET /\xff" + b"\xfe" * 123),
        "family_odd.bin": _event(b"GET / HTTP/1.1\r\n\r\n", family=0xFFFF),
        "status_junk.bin": _event(b"GET / HTTP/1.1\r\n\r\n", status=b"HTTP/1.1 9x9" + b"\xff" * 20),
        "batch_mixed.bin": b"".join(_event(h, pid=100 + i) for i, h in enumerate(heads.values())),
        "all_ff_record.bin": b"\xff" * ev.event_dtype(ev.HEAD_MAX).itemsize,
        "empty_batch.bin": b"",
    }


def tcp_record(**kw: object) -> bytes:
    """A ``struct tcp_event`` as the ring buffer hands it over: a curl client 127.0.0.1:40000 ->
    127.0.0.2:80, with ``kw`` set over it (also what tests/test_tcp_decode.py decodes)."""
    from agent import _tcp_event as ev

    e = ev.TcpEvent()
    e.sk, e.family, e.sport, e.dport = 0xFFFF8881, socket.AF_INET, 40000, 80
    e.saddr[:4] = [127, 0, 0, 1]
    e.daddr[:4] = [127, 0, 0, 2]
    e.comm = b"curl"
    for k, v in kw.items():
        setattr(e, k, v)
    return bytes(e)


def _tcp() -> dict[str, bytes]:
    from agent import _tcp_event as ev

    rec = tcp_record
    return {
        "closed_normal.bin": rec(start_ns=1_000, established_ns=2_000, end_ns=9_000, flags=ev.F_ESTABLISHED),
        "end_before_start.bin": rec(start_ns=9_000, established_ns=2_000, end_ns=1_000, flags=ev.F_ESTABLISHED),
        "all_ff.bin": b"\xff" * ev.TCP_EVENT_SIZE,
        "all_zero.bin": bytes(ev.TCP_EVENT_SIZE),
        "comm_ff.bin": rec(comm=b"\xff" * 16),
        "family_odd.bin": rec(family=0xFFFF),
        "drop_reason_unknown.bin": rec(drops=0xFFFFFFFF, drop_reason=0xFFFFFFFF, flags=ev.F_ESTABLISHED),
        # sent by check_conn: its end skipped by the kernel, found gone later (with an error and a reset)
        "close_unseen.bin": rec(start_ns=1_000, established_ns=2_000, end_ns=9_000, sk_err=-1, kind=ev.KIND_CLOSED,
                                flags=ev.F_ESTABLISHED | ev.F_CLOSED | ev.F_CLOSE_UNSEEN | ev.F_RST_SENT),
        # A drain as agent/tcp_bulk.py decodes it: normal, corrupt-time, non-closed and odd-family records.
        "drain_mixed.bin": b"".join((
            rec(start_ns=1_000, established_ns=2_000, end_ns=9_000, flags=ev.F_ESTABLISHED, kind=ev.KIND_CLOSED),
            rec(start_ns=(1 << 64) - 1, end_ns=1 << 62, kind=ev.KIND_CLOSED, sk_err=-1),
            rec(kind=ev.KIND_OPEN, family=10, saddr=(C.c_uint8 * 16)(*range(16))),
            b"\xff" * ev.TCP_EVENT_SIZE,
        )),
    }


def _wire() -> dict[str, bytes]:
    import msgpack

    from contract import wire
    from contract.records import HTTP_REQUEST, TCP_CONNECTION

    tcp_row = {c.name: c.default for c in TCP_CONNECTION.columns} | {"host": "h", "local_addr": "127.0.0.1",
                                                                      "remote_addr": "::1"}
    http_row = {c.name: c.default for c in HTTP_REQUEST.columns} | {"host": "h", "local_addr": "127.0.0.1",
                                                                      "remote_addr": "127.0.0.1", "path": "/x"}
    [(tcp_batch, _)] = wire.encode_batch(TCP_CONNECTION, [tcp_row, tcp_row])
    [(http_batch, _)] = wire.encode_batch(HTTP_REQUEST, [http_row])
    # File names: <kind>.<encoding>.<what>.bin (the headers a test sends with the value).
    return {
        "tcp_connection.msgpack.good.bin": wire.encode(tcp_row),
        "tcp_connection.msgpack.wrong_types.bin": wire.encode(tcp_row | {"bytes_sent": -1, "host": 5}),
        "tcp_connection.msgpack.not_a_map.bin": msgpack.packb([1, 2, 3]),
        "tcp_connection.msgpack.bad_utf8.bin": b"\x81\xa4host\xa2\xff\xfe",
        "tcp_connection.msgpack.truncated.bin": wire.encode(tcp_row)[:-3],
        "tcp_connection.arrow.good.bin": tcp_batch,
        "tcp_connection.arrow.truncated.bin": tcp_batch[: len(tcp_batch) // 2],
        "http_request.arrow.good.bin": http_batch,
        "http_request.arrow.flipped.bin": bytes(b ^ 0xFF if i % 97 == 13 else b for i, b in enumerate(http_batch)),
        "http_request.msgpack.empty.bin": b"",
        "http_request.arrow.ff.bin": b"\xff" * 64,
    }


def main() -> None:
    for target, files in (("http_head", _heads()), ("http_event", _events()), ("tcp_event", _tcp()),
                          ("wire", _wire())):
        for name, data in files.items():
            save(target, name, data)
    print(f"corpus written under {ROOT}")


if __name__ == "__main__":
    main()
