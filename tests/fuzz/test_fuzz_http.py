"""Fuzz targets: the HTTP head batch decoder (parse_heads) and the whole decode of raw struct
http_event batches. Total (never raises, whatever the bytes, lengths and row count), bounded (every
value fits its column, so downstream never refuses a row), private (no userinfo, no token in routes
or, by default, in paths) and exact on well-formed requests."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent import _http_event as ev
from agent.clock import Clock
from agent.http_decode import DecodeContext, decode, parse_heads
from agent.http_parse import _SCHEME, HEADER_COLUMNS, MAX_PATH, METHODS, _secret
from contract.records import HTTP_REQUEST
from ingest.validate import check_table
from tests.fuzz.corpus import seeds

NAMES = sorted([*HEADER_COLUMNS, "x-extra", "a-header-name-longer-than-sixteen"])
_METHODS = sorted(m.decode() for m in METHODS)

# --- strategies -----------------------------------------------------------------------------------
_tchar = st.sampled_from(list("abcXYZ019-_.~%@:;=+,!*$&'()"))
_segment = st.one_of(
    st.text(_tchar, max_size=12),
    st.sampled_from(["42", "123e4567-e89b-12d3-a456-426614174000", "0123456789abcdef01",
                     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlMTIz", "a;jsessionid=AB12CD34EF56AB78",
                     "app.js", "v1"]),
)
_path = st.lists(_segment, max_size=6).map(lambda s: "/" + "/".join(s))


@st.composite
def _scheme(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(["http", "https", "ws", "wss", "ftp", "x-custom+v1.2"]))
    return "".join(c.upper() if draw(st.booleans()) else c for c in base)


_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
_header_name = st.one_of(st.sampled_from([*NAMES, "Host", "USER-AGENT", "X-Request-Id", "Content-Length"]),
                         st.text(st.sampled_from(list("abcxyz-")), min_size=1, max_size=20))


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict]:
    """A well-formed HTTP/1 request head and what the decoder must read from it."""
    method = draw(st.sampled_from(_METHODS))
    path = draw(_path)
    form = draw(st.sampled_from(["origin", "absolute", "absolute_userinfo"]))
    target = path
    if form != "origin":
        userinfo = "user:pw@" if form == "absolute_userinfo" else ""
        target = f"{draw(_scheme())}://{userinfo}host.example:8080{path}"
    query = draw(st.sampled_from(["", "?q=1", "?token=eyJ.secret", "#frag"]))
    headers = draw(st.lists(st.tuples(_header_name, _value), max_size=6))
    head = f"{method} {target}{query} HTTP/1.{draw(st.sampled_from('01'))}\r\n"
    head += "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    want: dict[str, str] = {}
    for n, v in headers:
        want.setdefault(n.lower(), v)
    return head.encode(), {"method": method, "path": path, "headers": want}


_junk = st.binary(max_size=1100)
_headish = st.one_of(
    _junk,
    requests().map(lambda r: r[0]),
    st.tuples(requests(), st.integers(0, 400)).map(lambda t: t[0][0][: t[1]]),  # cut anywhere
    st.tuples(st.sampled_from([b"GET ", b"POST ", b"GET /", b"PUT http://u:p@h/"]), _junk).map(b"".join),
)
_lengths = st.one_of(st.integers(-(2**31), 2**32), st.sampled_from([0, 1, 255, 256, 1023, 1024, 1025, 0xFFFF]))


def _rows(heads: list[bytes], width: int, fill: int = 0) -> np.ndarray:
    rows = np.full((len(heads), width), fill, np.uint8)
    for i, h in enumerate(heads):
        rows[i, : min(len(h), width)] = np.frombuffer(h[:width], np.uint8)
    return rows


def _check_heads(h, n: int, max_value: int) -> None:  # type: ignore[no-untyped-def]
    assert len(h.ok) == len(h.complete) == len(h.method) == len(h.path) == len(h.version) == n
    for i in range(n):
        path = h.path[i].as_py()
        assert len(path.encode()) <= MAX_PATH
        if h.ok[i]:
            assert h.method[i].as_py() in _METHODS
        else:
            assert path == ""
    for values in h.headers.values():
        assert len(values) == n
        assert all(len(v.encode()) <= max_value for v in values.to_pylist())


# --- target: parse_heads ----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "data"), seeds("http_head"))
def test_corpus_heads(name: str, data: bytes) -> None:
    for width in {len(data), len(data) + 1, 1024}:
        if width < len(data):
            continue
        rows = _rows([data, data], max(width, 0))
        for cut in (False, True):
            h = parse_heads(rows, np.array([len(data), width + 7]), NAMES, 256, np.array([cut, cut]))
            _check_heads(h, 2, 256)
            if cut and name.startswith(("long_", "line_")):  # request lines the capture cut stay requests
                assert h.ok[0] and h.method[0].as_py() in _METHODS and h.path[0].as_py().startswith("/")


@given(heads=st.lists(_headish, max_size=6), widths=st.integers(0, 1100), lengths=st.lists(_lengths, max_size=6),
       cut=st.lists(st.booleans(), max_size=6), fill=st.sampled_from([0, 13, 0xFF]),
       max_value=st.sampled_from([0, 1, 16, 256, 5000, -3]))
@example(heads=[b"GET /hello?q=" + b"a" * 1100], widths=1024, lengths=[1024], cut=[True], fill=0, max_value=256)
@example(heads=[b"GET /" + b"a" * 2000], widths=1024, lengths=[2**32], cut=[False], fill=0, max_value=256)
@example(heads=[], widths=0, lengths=[], cut=[], fill=0, max_value=256)
def test_parse_heads_total(heads: list[bytes], widths: int, lengths: list[int], cut: list[bool], fill: int,
                           max_value: int) -> None:
    n = len(heads)
    ln = np.array([(lengths[i] if i < len(lengths) else len(h)) for i, h in enumerate(heads)], np.int64)
    cuts = np.array([(cut[i] if i < len(cut) else False) for i in range(n)], bool)
    h = parse_heads(_rows(heads, widths, fill), ln, NAMES, max_value, cuts)
    _check_heads(h, n, max(min(max_value, 1024), 0))


@given(reqs=st.lists(requests(), min_size=1, max_size=5), extra=st.integers(0, 40), fill=st.sampled_from([0, 32, 13]))
def test_well_formed_requests_round_trip(reqs: list[tuple[bytes, dict]], extra: int, fill: int) -> None:
    """Exactly the generated method, path and first value of each allow-listed header, whatever
    other rows share the batch and whatever stale bytes follow (exact width when extra = 0)."""
    heads = [r[0] for r in reqs]
    width = max(len(h) for h in heads) + extra
    h = parse_heads(_rows(heads, width, fill), np.array([len(x) for x in heads]), NAMES, 256)
    for i, (_, want) in enumerate(reqs):
        assert h.ok[i]
        assert (h.method[i].as_py(), h.path[i].as_py()) == (want["method"], want["path"])
        got = {k: v[i].as_py() for k, v in h.headers.items() if v[i].as_py()}
        assert got == {k: v for k, v in want["headers"].items() if k in NAMES}


# --- target: decode of raw struct http_event batches --------------------------------------------
def _ctx(redact: bool = True, headers: tuple[str, ...] = tuple(NAMES), max_value: int = 256) -> DecodeContext:
    return DecodeContext("host-a", 42, headers, max_value, lambda p: ("svc", "v1", "go1.26"), redact)


def _check_decoded(events: np.ndarray, ctx: DecodeContext) -> None:
    dec = decode(events, ctx, Clock(10**18))
    table = dec.table
    assert table.schema.equals(HTTP_REQUEST.arrow_schema)
    assert table.num_rows + dec.parse_errors == len(events)
    good, rejected = check_table(HTTP_REQUEST, table)  # every value fits its column: nothing refused
    assert rejected == [] and good.num_rows == table.num_rows
    for path, route in zip(table.column("path").to_pylist(), table.column("route").to_pylist(), strict=True):
        assert "user:pw@" not in path and "user:pw@" not in route
        for seg in route.split("/"):
            assert _secret(seg) is None, route
        if ctx.redact_paths:
            assert ";" not in path
            assert all(_secret(seg) is None for seg in path.split("/")), path


def _events(data: bytes, head_max: int) -> np.ndarray:
    dt = ev.event_dtype(head_max)
    usable = len(data) - len(data) % dt.itemsize
    return np.frombuffer(data[:usable], np.uint8).view(dt).copy()


@pytest.mark.parametrize(("name", "data"), seeds("http_event"))
def test_corpus_events(name: str, data: bytes) -> None:
    events = _events(data, ev.HEAD_MAX)
    for ctx in (_ctx(), _ctx(redact=False), _ctx(headers=(), max_value=0)):
        _check_decoded(events, ctx)


@st.composite
def records(draw: st.DrawFn, head_max: int) -> bytes:
    r = np.zeros(1, ev.event_dtype(head_max))
    head = draw(_headish)
    r["head"][0, : min(len(head), head_max)] = np.frombuffer(head[:head_max], np.uint8)
    r["head_len"] = draw(st.one_of(st.just(min(len(head), head_max)), st.integers(0, 0xFFFF)))
    r["flags"] = draw(st.one_of(st.just(ev.F_HEAD_TRUNC if len(head) > head_max else 0), st.integers(0, 2**32 - 1)))
    r["held_byte"] = draw(st.integers(0, 255))
    for f in ("pid", "tid", "fd"):
        r[f] = draw(st.integers(0, 2**31 - 1))
    for f in ("start_ns", "end_ns", "resp_start_ns", "req_bytes", "resp_bytes", "goroutine"):
        r[f] = draw(st.one_of(st.integers(0, 10**12), st.integers(0, 2**64 - 1)))
    r["family"] = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6, 0, 0xFFFF]))
    r["saddr"][0] = np.frombuffer(draw(st.binary(min_size=16, max_size=16)), np.uint8)
    r["daddr"][0] = np.frombuffer(draw(st.binary(min_size=16, max_size=16)), np.uint8)
    r["role"], r["end_reason"] = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    r["comm"][0] = np.frombuffer(draw(st.binary(min_size=16, max_size=16)), np.uint8)
    status = draw(st.one_of(st.just(b"HTTP/1.1 200 OK\r\n"), st.binary(max_size=32)))
    r["status"][0, : len(status)] = np.frombuffer(status, np.uint8)
    r["status_len"] = draw(st.integers(0, 0xFFFF))
    route = draw(st.one_of(st.just(b""), st.just(b"GET /users/{id}"), st.binary(max_size=ev.ROUTE_MAX)))
    r["route"][0, : len(route)] = np.frombuffer(route, np.uint8)
    r["route_len"] = draw(st.one_of(st.just(len(route)), st.integers(0, 0xFFFF)))
    return r.tobytes()


@st.composite
def batches(draw: st.DrawFn) -> tuple[int, bytes]:
    head_max = draw(st.sampled_from([256, ev.HEAD_MAX]))
    recs = draw(st.lists(records(head_max), max_size=5))
    return head_max, b"".join(recs)


@given(batch=batches(), redact=st.booleans(), raw=st.binary(max_size=3000), use_raw=st.booleans())
def test_decode_total(batch: tuple[int, bytes], redact: bool, raw: bytes, use_raw: bool) -> None:
    head_max, data = batch
    _check_decoded(_events(raw if use_raw else data, head_max), _ctx(redact))


# --- target: the per-value rules of agent/http_parse.py ---------------------------------------------
@given(path=st.one_of(st.text(max_size=300), _path), target=st.binary(max_size=300))
@example(path="/" + "/1" * 20 + "/" + "x" * 1000, target=b"HtTp://user:pw@h/x")
def test_http_parse_rules_total(path: str, target: bytes) -> None:
    from agent.http_parse import redact_path, route_from_pattern, strip_target, template_path

    stored, route = redact_path(path), template_path(path)
    assert ";" not in stored and all(_secret(seg) is None for seg in stored.split("/"))
    assert len(route.encode()) <= MAX_PATH and all(_secret(seg) is None for seg in route.split("/"))
    assert len(stored) <= len(path)  # redaction never lengthens a path: it stays within its column
    route_from_pattern(path)
    out = strip_target(target)
    assert len(out) <= len(target) or out == b"/"
    m = _SCHEME.match(target)
    if m:  # absolute-form: only the path is left, never anything of the authority (userinfo)
        slash = target.find(b"/", m.end())
        assert out == (target[slash:] if slash >= 0 else b"/")
    elif not target.startswith(b"/"):
        assert b"@" not in out.split(b"/", 1)[0]
