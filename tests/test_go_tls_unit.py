"""Go TLS / HTTP/2 capture without the kernel: the exchange builder and the probe finder are total
(any calls, any file), and the RET finder sees every RET of real Go code."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from agent import go_tls_binary


def test_exchanges_total_on_any_calls() -> None:
    """The exchange builder takes any calls in any order without raising (unit, no kernel)."""
    from agent.go_tls_source import Call, Exchanges, records

    rnd = random.Random(7)
    x = Exchanges(head_max=256, max_conns=4)
    pieces = [b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", b"G", b"ET /x HTTP/1.1\r\nHost: a\r\n\r\n",
              b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"", b"\xff" * 300, b"POST /a HTTP/1.1\r\n"]
    for i in range(5000):
        data = rnd.choice(pieces)
        x.feed(Call(pid=rnd.randint(1, 3), tid=1, fd=rnd.randint(-1, 5), ts_ns=i, conn=rnd.randint(1, 9),
                    goroutine=0, length=len(data) + rnd.randint(0, 2), is_write=rnd.random() < 0.5, data=data,
                    has_addr=rnd.random() < 0.5, sport=rnd.randint(0, 3)))
        if i % 500 == 0:
            x.expire(i, 100)
    x.expire(10**12, 0, {1, 2, 3})
    done = x.take()
    assert done and not x.conns
    ev = records(done, 256)
    assert len(ev) == len(done)


def test_probe_finder_total_on_any_file(tmp_path: Path) -> None:
    rnd = random.Random(5)
    exe = Path(os.path.realpath("/proc/self/exe"))  # a real ELF without Go's crypto/tls
    blobs = [b"", b"\x7fELF", os.urandom(4096), exe.read_bytes()[:5000]]
    for i, blob in enumerate(blobs):
        f = tmp_path / f"f{i}"
        f.write_bytes(blob)
        assert go_tls_binary.find(str(f)) is None
    mangled = bytearray(exe.read_bytes()[: 1 << 20])
    for _ in range(200):
        mangled[rnd.randrange(len(mangled))] = rnd.randrange(256)
    f = tmp_path / "mangled"
    f.write_bytes(bytes(mangled))
    assert go_tls_binary.find(str(f)) is None
    assert go_tls_binary.find(str(tmp_path / "absent")) is None


def test_ret_offsets() -> None:
    # push rbp; mov rbp,rsp; ret; nop; ret
    code = bytes([0x55, 0x48, 0x89, 0xE5, 0xC3, 0x90, 0xC3])
    assert go_tls_binary.ret_offsets(code, 0x1000) == [0x1004, 0x1006]
    # a 0xC3 byte inside another instruction is not a RET: mov eax, 0xc3
    assert go_tls_binary.ret_offsets(bytes([0xB8, 0xC3, 0, 0, 0, 0xC3]), 0) == [5]


def test_real_go_binary_probes() -> None:
    go = shutil.which("go")
    if go is None:
        return
    exe = Path(os.path.realpath(go))
    # the go command uses crypto/tls (module downloads): its Read has RETs and both entries are in text
    p = go_tls_binary.find(str(exe))
    assert p is not None and p.read_rets and p.read < p.read_rets[0] and p.write > 0


def _record(src: object, *, wrote: bool, data: bytes, length: int, flags: int, ts: int) -> None:
    """One tls_event as the kernel writes it (bpf/go_tls_event.h), through the source's ring callback."""
    import ctypes

    from agent import _go_tls_event as tev

    values = {"kind": tev.KIND_DATA, "pid": 4242, "tid": 4242, "fd": 7, "ts_ns": ts, "conn": 0xC0FFEE,
              "goroutine": 1, "len": length, "data_len": len(data), "dir": tev.DIR_WRITE if wrote else tev.DIR_READ,
              "flags": flags | tev.F_PLAIN, "saddr": b"", "daddr": b"", "sport": 0, "dport": 0, "family": 2,
              "_pad": 0, "comm": b"grpcapp"}
    raw = tev.HEADER_STRUCT.pack(*[values[n] for n in tev.FIELD_NAMES]) + data
    buf = ctypes.create_string_buffer(raw, len(raw))
    src._on_data(None, ctypes.cast(buf, ctypes.c_void_p), len(raw))  # type: ignore[attr-defined]


def test_a_lost_continuation_record_is_a_gap_not_a_shift() -> None:
    """An h2c read of 40,052 bytes goes to user space in records of 16 KiB (F_MORE, F_CONT); when the
    ring loses the continuations (none by the drain after the one that read the start), the bytes they
    carried are a gap of exactly that size: the 40 KB DATA frame is skipped through it and the next
    call's frames stay aligned (the stream ends exact). An orphaned continuation (its start lost) is
    counted and loses the framing, never shifts it."""
    import hpack

    from agent import _go_tls_event as tev
    from agent.config import HttpConfig
    from agent.go_tls_source import GoTlsSource
    from agent.h2_decode import PREFACE
    from tests.test_h2_unit import frame

    cap = 16384
    for lose in ("none", "continuations", "start"):
        src = GoTlsSource(HttpConfig(go_h2c=True), lambda *_: None, host="h")
        h = hpack.Encoder().encode([(":method", "POST"), (":path", "/big"), (":scheme", "http"),
                                    (":authority", "x")])
        call = PREFACE + frame(1, 4, 1, h) + frame(0, 1, 1, b"q" * 40_000)
        parts = [call[i : i + cap] for i in range(0, len(call), cap)]
        assert len(parts) == 3
        for i, part in enumerate(parts):
            flags = (tev.F_MORE if i < 2 else 0) | (tev.F_CONT if i else 0)
            if (lose == "continuations" and i) or (lose == "start" and i == 0):
                continue
            _record(src, wrote=False, data=part, length=len(call) - i * cap, flags=flags, ts=10 + i)
        src._settle_owed()  # the drain that read the first record
        src._settle_owed()  # and the next one: had they been written, the continuations would be in it
        resp = frame(1, 5, 1, hpack.Encoder().encode([(":status", "204")]))
        _record(src, wrote=True, data=resp, length=len(resp), flags=0, ts=20)
        rows, counts = src._h2_rows, src._c
        if lose == "start":  # never decoded: no preface seen, the orphans counted
            assert (rows, counts["tls_chunks_orphaned"]) == ([], 1)  # the second continues the first
            continue
        (row,) = rows
        assert (row["path"], row["request_bytes"], row["status"], row["end_reason"]) == ("/big", 40_000, 204, "end")
        assert (counts["tls_chunks"], counts["tls_chunks_lost"]) == ((2, 0) if lose == "none" else (0, 1))


def test_an_orphaned_continuation_loses_the_framing_never_shifts_it() -> None:
    """A call whose first record was lost (only its continuation arrived) moved an unknown number of
    bytes before it: the connection's framing is lost (its open stream ends h2_lost), even inside a
    DATA payload that a gap of the continuation's own size would seem to fit."""
    import hpack

    from agent import _go_tls_event as tev
    from agent.config import HttpConfig
    from agent.go_tls_source import GoTlsSource
    from agent.h2_decode import PREFACE
    from tests.test_h2_unit import frame

    src = GoTlsSource(HttpConfig(go_h2c=True), lambda *_: None, host="h")
    h = hpack.Encoder().encode([(":method", "POST"), (":path", "/big"), (":scheme", "http"), (":authority", "x")])
    big = frame(0, 1, 1, b"q" * 100_000)  # one DATA frame over several calls
    first = PREFACE + frame(1, 4, 1, h) + big[:1000]
    _record(src, wrote=False, data=first, length=len(first), flags=0, ts=1)
    # the next call (40,000 bytes of the payload) lost its first record; its continuation arrives
    _record(src, wrote=False, data=big[1000 + 16384 : 1000 + 32768], length=40_000 - 16384, flags=tev.F_CONT, ts=2)
    (row,) = src._h2_rows
    assert (row["path"], row["end_reason"], src._c["tls_chunks_orphaned"]) == ("/big", "h2_lost", 1)
