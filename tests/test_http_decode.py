"""agent/http_decode.py on hand-made kernel records, without root: a batch decodes row for row as
each head would alone, whatever else shares the batch."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from agent import _http_event as ev
from agent.clock import Clock
from agent.http_decode import DecodeContext, decode, parse_request_head, request_ids
from agent.http_parse import HEADER_COLUMNS
from contract.records import HTTP_REQUEST
from tests.clocks import stepped

HEAD_MAX = 256
SERVICES = {100: ("checkout", "v2", "go1.23.12"), 200: ("router", "", "go1.26.8")}


def record(head: bytes, *, pid: int = 100, fd: int = 7, role: int = ev.ROLE_SERVER, start: int = 1_000,
           end: int = 5_000, status: bytes = b"HTTP/1.1 200 OK\r\n", family: int = socket.AF_INET,
           held: int | None = None, stale: bytes = b"") -> np.ndarray:
    r = np.zeros(1, ev.event_dtype(HEAD_MAX))
    # Bytes past head_len are whatever the connection's previous exchange left there.
    junk = (stale * HEAD_MAX)[:HEAD_MAX] if stale else b""
    r["head"][0, : len(junk)] = np.frombuffer(junk, np.uint8)
    kept = head[:HEAD_MAX]
    r["head"][0, : len(kept)] = np.frombuffer(kept, np.uint8)
    r["head_len"] = len(kept)
    r["flags"] = ev.F_HEAD_TRUNC if len(head) > HEAD_MAX else 0
    if held is not None:
        r["flags"] |= ev.F_HELD_BYTE
        r["held_byte"] = held
    r["status"][0, : len(status)] = np.frombuffer(status[:32], np.uint8)
    r["status_len"] = min(len(status), 32)
    r["kind"], r["pid"], r["tid"], r["fd"], r["role"] = ev.KIND_EXCHANGE, pid, pid + 1, fd, role
    r["start_ns"], r["end_ns"], r["req_bytes"], r["resp_bytes"] = start, end, len(head), 99
    r["family"], r["sport"], r["dport"] = family, 8080, 40000
    if family == socket.AF_INET:
        r["saddr"][0, :4] = [10, 0, 0, 1]
        r["daddr"][0, :4] = [10, 0, 0, 2]
    else:
        r["saddr"][0] = np.frombuffer(socket.inet_pton(socket.AF_INET6, "fd00::1"), np.uint8)
        r["daddr"][0] = np.frombuffer(socket.inet_pton(socket.AF_INET6, "fd00::2"), np.uint8)
    r["comm"][0, :6] = np.frombuffer(b"server", np.uint8)
    r["end_reason"] = 1
    return r


CTX = DecodeContext("host-a", 42, tuple(sorted(HEADER_COLUMNS)), 256, lambda p: SERVICES.get(p, ("", "", "")))


def rows_of(*records: np.ndarray, ctx: DecodeContext = CTX, clock: Clock | None = None) -> tuple[list[dict], int]:
    dec = decode(np.concatenate(records), ctx, clock or Clock(10**18))
    return HTTP_REQUEST.to_rows(dec.table), dec.parse_errors


def test_batch_rows_match_their_records() -> None:
    heads = [
        b"GET /users/42?token=x HTTP/1.1\r\nHost: a.example\r\nX-Gray-Version: v2\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nx-request-id:   padded\t \r\nContent-Length: 4\r\n\r\nX-Gray-Version: body",
        b"not http at all",
        b"DELETE /items/7 HTTP/1.0\r\nUser-Agent: t\xc3\xabst\r\nX-Request-ID: \xff\xfe\r\n\r\n",
    ]
    recs = [record(heads[0], status=b"HTTP/1.1 404 Not Found\r\n"),
            record(heads[1], pid=200, role=ev.ROLE_CLIENT, family=socket.AF_INET6, status=b"HTTP/1.1 5"),
            record(heads[2]),
            record(heads[3], start=2_000, end=0, status=b"")]
    rows, errors = rows_of(*recs)
    assert errors == 1 and len(rows) == 3
    a, b, c = rows
    assert {k: a[k] for k in ("method", "path", "route", "route_source", "status", "x_gray_version", "host_header",
                              "upstream_host", "side", "service", "service_version", "go_version", "comm",
                              "local_addr", "remote_addr", "family", "head_truncated", "end_reason")} == {
        "method": "GET", "path": "/users/42", "route": "/users/{id}", "route_source": "template", "status": 404,
        "x_gray_version": "v2", "host_header": "a.example", "upstream_host": "", "side": "server",
        "service": "checkout", "service_version": "v2", "go_version": "go1.23.12", "comm": "server",
        "local_addr": "10.0.0.1", "remote_addr": "10.0.0.2", "family": 4, "head_truncated": 0, "end_reason": "idle"}
    assert (a["time"], a["end_time"], a["duration_ns"]) == (10**18 + 1_000, 10**18 + 5_000, 4_000)
    # Blanks around a value go; a header-looking line in the body is not a header.
    assert (b["x_request_id"], b["x_gray_version"], b["status"]) == ("padded", "", 0)
    assert (b["side"], b["service"], b["local_addr"], b["family"]) == ("client", "router", "fd00::1", 6)
    # Not UTF-8: U+FFFD in place of the bad bytes, the rest as sent; no response: it ends where it began.
    assert (c["user_agent"], c["x_request_id"], c["method"], c["status"]) == ("tëst", "\ufffd\ufffd", "DELETE", 0)
    assert c["end_time"] == c["time"] and c["duration_ns"] == 0
    assert len({r["request_id"] for r in rows}) == 3 and all(r["request_id"] for r in rows)


def test_each_time_by_the_wall_clock_of_its_moment() -> None:
    """An exchange read after the wall clock was stepped keeps the times it had: its start before the
    step, its end after it."""
    clock = stepped(10**18, (3_000, 7_000_000))
    rows, _ = rows_of(record(b"GET /a HTTP/1.1\r\n\r\n", start=1_000, end=5_000),
                      record(b"GET /b HTTP/1.1\r\n\r\n", start=4_000, end=0, status=b""), clock=clock)
    assert [(r["time"], r["end_time"], r["duration_ns"]) for r in rows] == [
        (10**18 + 1_000, 10**18 + 7_005_000, 4_000), (10**18 + 7_004_000, 10**18 + 7_004_000, 0)]


def test_each_row_decodes_as_it_would_alone() -> None:
    heads = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
             b"GET /a/b/c/d/e/f HTTP/1.1\r\nX-Gray-Version: " + b"v" * 200 + b"\r\n\r\n",
             b"PUT /p HTTP/1.1\r\nHost: y\r\nUser-Agent: cut-he",
             b"GET http://up.example:8080/x/y?q=1 HTTP/1.1\r\n\r\n",
             b"GET http://up.example HTTP/1.1\r\n\r\n"]
    together, _ = rows_of(*[record(h) for h in heads])
    for h, row in zip(heads, together, strict=True):
        alone, _ = rows_of(record(h))
        assert alone[0] | {"request_id": 0} == row | {"request_id": 0}
    assert [r["path"] for r in together] == ["/", "/a/b/c/d/e/f", "/p", "/x/y", "/"]
    assert together[2]["host_header"] == "y" and together[2]["user_agent"] == ""  # a cut line is not guessed at
    assert [r["head_truncated"] for r in together] == [0, 0, 1, 0, 0]


def test_stale_bytes_past_the_head_are_ignored() -> None:
    stale = b"\r\nX-Gray-Version: stale\r\n\r\n"
    longer = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n"  # the batch is read this wide
    rows, _ = rows_of(record(b"GET /x HTTP/1.1\r\nHost: h\r\n", stale=stale), record(longer))
    assert rows[0]["x_gray_version"] == "" and rows[0]["head_truncated"] == 1


def test_held_first_byte_is_put_back() -> None:
    rows, errors = rows_of(record(b"ET /held HTTP/1.1\r\nHost: h\r\n\r\n", held=ord("G")),
                           record(b"GET /plain HTTP/1.1\r\n\r\n"))
    assert errors == 0 and [(r["method"], r["path"]) for r in rows] == [("GET", "/held"), ("GET", "/plain")]


def test_extra_headers_go_to_json_and_secrets_stay_out() -> None:
    long_name = "x-forwarded-client-cert-hash"  # longer than the 16 bytes compared as words
    ctx = DecodeContext("h", 1, (*sorted(HEADER_COLUMNS), "x-tenant", long_name), 8, lambda p: ("", "", ""))
    head = (b"GET / HTTP/1.1\r\nX-Tenant: acme-corporation\r\nAuthorization: Bearer s3cr3t\r\nCookie: a=b\r\n"
            b"X-Forwarded-Client-Cert-Hash: abc\r\nX-Forwarded-Client-Cert-Hasp: no\r\n\r\n")
    rows, _ = rows_of(record(head), ctx=ctx)
    # bounded to max_value bytes; names compared whole, case-insensitively
    assert rows[0]["extra_headers"] == '{"x-tenant": "acme-cor", "x-forwarded-client-cert-hash": "abc"}'
    assert "s3cr3t" not in repr(rows[0]) and "a=b" not in repr(rows[0])


@pytest.mark.parametrize("n", [1, 2, 1000])
def test_request_ids_are_distinct_and_never_zero(n: int) -> None:
    pid = np.full(n, 5, np.uint32)
    ids = request_ids(7, pid, np.arange(n, dtype=np.int32), np.full(n, 123, np.uint64), np.ones(n, np.uint8))
    assert len(set(ids.tolist())) == n and 0 not in ids


def test_one_head_helper_agrees() -> None:
    h = parse_request_head(b"OPTIONS * HTTP/1.1\r\nHost: z\r\n\r\n")
    assert h is not None and (h.method, h.path, h.headers) == ("OPTIONS", "*", {"host": "z"})


# --- heads that fill the capture; private paths; a failing batch isolated by the source ------------
def test_request_line_filling_the_capture_decodes() -> None:
    """The 1 KiB long-URL crash: a request line as long as the capture (HEAD_MAX here) or longer."""
    long_query = b"GET /hello?q=" + b"a" * 1100 + b" HTTP/1.1\r\nHost: svc\r\n\r\n"
    long_path = b"GET /" + b"b" * 3000 + b" HTTP/1.1\r\n\r\n"
    exact = b"GET /" + b"c" * (HEAD_MAX - len(b"GET / HTTP/1.1\r\n")) + b" HTTP/1.1\r\n"
    rows, errors = rows_of(record(long_query), record(long_path), record(exact), record(b"GET /ok HTTP/1.1\r\n\r\n"))
    assert errors == 0
    assert [(r["method"], r["path"], r["head_truncated"]) for r in rows] == [
        ("GET", "/hello", 1), ("GET", "/" + "b" * (HEAD_MAX - 5), 1), ("GET", "/" + "c" * (HEAD_MAX - 16), 1),
        ("GET", "/ok", 0)]


def test_corrupt_lengths_are_clamped() -> None:
    r = record(b"GET /x HTTP/1.1\r\n\r\n")
    r["head_len"] = 0xFFFF
    zero = record(b"GET /y HTTP/1.1\r\n\r\n")
    zero["head_len"] = 0
    rows, errors = rows_of(r, zero)
    assert errors == 1 and [row["path"] for row in rows] == ["/x"]


def test_userinfo_and_tokens_stay_out_of_rows() -> None:
    jwt = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw"
    heads = [b"GET HTTP://user:pw@up.example/a HTTP/1.1\r\n\r\n",
             b"GET ws://user:pw@h/chat HTTP/1.1\r\n\r\n",
             b"GET /reset/" + jwt + b" HTTP/1.1\r\n\r\n",
             b"GET /cart;jsessionid=AB12CD34EF56/items/7 HTTP/1.1\r\n\r\n"]
    redacted, _ = rows_of(*[record(h) for h in heads])
    assert [(r["path"], r["route"]) for r in redacted] == [
        ("/a", "/a"), ("/chat", "/chat"), ("/reset/{token}", "/reset/{token}"), ("/cart/items/7", "/cart/items/{id}")]
    raw_ctx = DecodeContext(CTX.hostname, CTX.salt, CTX.headers, CTX.max_value, CTX.service, redact_paths=False)
    raw, _ = rows_of(*[record(h) for h in heads], ctx=raw_ctx)
    # Raw paths keep tokens, never userinfo; routes are templated either way.
    assert [r["path"] for r in raw] == ["/a", "/chat", "/reset/" + jwt.decode(),
                                        "/cart;jsessionid=AB12CD34EF56/items/7"]
    assert [r["route"] for r in raw] == [r["route"] for r in redacted]


def test_source_isolates_a_failing_batch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Should decode() still raise on some record, only that record is lost: counted, logged once."""
    from prometheus_client import CollectorRegistry

    from agent import http_source
    from agent.metrics import AgentMetrics
    from agent.pipeline import Pipeline, PipelineConfig

    real = http_source.decode

    def flaky(events, ctx, offset):  # type: ignore[no-untyped-def]
        if (events["pid"] == 666).any():
            raise IndexError("index 1024 is out of bounds")
        return real(events, ctx, offset)

    monkeypatch.setattr(http_source, "decode", flaky)
    tables: list = []
    src = http_source.HttpSource(http_source.HttpConfig(head_max=HEAD_MAX), lambda k, t: tables.append(t), host="h")
    recs = [record(b"GET /a HTTP/1.1\r\n\r\n", pid=100), record(b"GET /bad HTTP/1.1\r\n\r\n", pid=666),
            record(b"GET /b HTTP/1.1\r\n\r\n", pid=100), record(b"GET /bad2 HTTP/1.1\r\n\r\n", pid=666),
            record(b"junk", pid=100)]
    with caplog.at_level("ERROR", logger="agent.http_source"):
        for dec in src._decode_isolated(np.concatenate(recs)):
            src._dispatch(dec)
    assert sorted(p for t in tables for p in t.column("path").to_pylist()) == ["/a", "/b"]
    c = src.counters()
    assert (c["rejected"], c["parse_errors"], c["captured"]) == (2, 1, 2)
    pipeline = Pipeline([src], lambda *_: None, PipelineConfig(), host="h",  # type: ignore[arg-type]
                        metrics=AgentMetrics.on(CollectorRegistry()))
    pipeline.export_metrics()  # the source's plain counters -> Prometheus, per source and reason
    assert pipeline.metrics.rejected.labels("http", "decode_error")._value.get() == 2
    assert pipeline.metrics.rejected.labels("http", "not_http")._value.get() == 1
    errors = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(errors) == 1 and "pid 666" in errors[0].getMessage() and "/bad" not in errors[0].getMessage()


def test_capturing_credentials_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    from agent import http_source

    with caplog.at_level("WARNING", logger="agent.http_source"):
        http_source.HttpSource(http_source.HttpConfig(headers=("host", "Authorization", "cookie")), lambda k, t: None,
                               host="h")
        http_source.HttpSource(http_source.HttpConfig(), lambda k, t: None, host="h")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "authorization, cookie" in warned[0]
