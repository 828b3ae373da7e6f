"""HTTP decoding without root: request heads, status lines, routes, header bounds, record layout,
Go binary reading (build info, pclntab vs symtab, DWARF vs the fallback table)."""

from __future__ import annotations

import ctypes as C

import pytest

from agent import _http_event as ev
from agent.http_decode import parse_request_head, parse_status
from agent.http_parse import HEADER_COLUMNS, MAX_VALUE, route_from_pattern, template_path


def test_request_head_fields_and_allow_list() -> None:
    raw = (b"POST /api/v1/users/42?token=secret HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\xc3\xabst\r\n"
           b"Authorization: Bearer x\r\nCookie: a=b\r\nX-Gray-Version: v2\r\nx-request-id: r1\r\n"
           b"X-Request-ID: second\r\n\r\nbody")
    h = parse_request_head(raw)
    assert h is not None
    assert (h.method, h.path, h.version, h.complete) == ("POST", "/api/v1/users/42", "HTTP/1.1", True)
    assert h.headers == {"host": "example.com", "user-agent": "tëst", "x-gray-version": "v2", "x-request-id": "r1"}


def test_head_bounds_and_truncation() -> None:
    long = b"v" * 1000
    h = parse_request_head(b"GET / HTTP/1.1\r\nX-Gray-Version: " + long + b"\r\nUser-Agent: cut-he")
    assert h is not None and not h.complete
    assert h.headers["x-gray-version"] == "v" * MAX_VALUE
    assert "user-agent" not in h.headers  # a line cut by the capture bound is not guessed at


def test_hostile_values_are_data() -> None:
    v = b"'); DROP TABLE t; -- <script>\xff"
    h = parse_request_head(b"GET /x HTTP/1.1\r\nX-Request-ID: " + v + b"\r\n\r\n")
    assert h is not None and h.headers["x-request-id"] == "'); DROP TABLE t; -- <script>\ufffd"


@pytest.mark.parametrize("raw", [b"", b"GARBAGE", b"GET /x\r\n", b"GET /x HTTP/2.0\r\n\r\n", b"FOO / HTTP/1.1\r\n"])
def test_not_a_request(raw: bytes) -> None:
    assert parse_request_head(raw) is None


def test_absolute_form_target() -> None:
    h = parse_request_head(b"GET http://up.example:8080/a/b?q=1 HTTP/1.1\r\n\r\n")
    assert h is not None and h.path == "/a/b"


def test_status_and_routes() -> None:
    assert parse_status(b"HTTP/1.1 404 Not Found\r\n") == 404
    assert parse_status(b"HTTP/1.0 200 OK") == 200
    assert parse_status(b"SSH-2.0") == 0
    assert template_path("/users/123/orders/9f8e7d6c5b4a3f2e") == "/users/{id}/orders/{hex}"
    assert template_path("/u/123e4567-e89b-12d3-a456-426614174000") == "/u/{uuid}"
    assert template_path("/static/app.js") == "/static/app.js"
    assert route_from_pattern("GET /users/{id}") == "/users/{id}"
    assert route_from_pattern("example.com/x/") == "example.com/x/"


def test_default_header_columns() -> None:
    assert set(HEADER_COLUMNS) == {"x-gray-version", "x-request-id", "traceparent", "user-agent", "host"}
    assert not {"authorization", "cookie"} & set(HEADER_COLUMNS)


def test_event_layout_matches_header() -> None:
    for head_max in (256, 1024, 4096):
        cls = ev.event_class(head_max)
        assert C.sizeof(cls) == 296 + head_max
        assert cls.head.offset == 296  # type: ignore[attr-defined]
    assert C.sizeof(ev.HttpProc) == 16


@pytest.mark.go
def test_go_binaries_stripped_match_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Functions found through .gopclntab in stripped builds are the symtab's in plain builds; the
    fallback offset table equals what DWARF says, for every Go version built."""
    from agent import go_binary
    from tests import gobuild

    monkeypatch.setattr(go_binary, "DWARF_S_PER_MIN", float("inf"))  # every plain build read from its DWARF

    if not gobuild.go_available():
        pytest.skip("no go command")
    for go in gobuild.GO_VERSIONS:
        plain = go_binary.inspect(gobuild.build(go, "plain").bin("router"))
        stripped = go_binary.inspect(gobuild.build(go, "stripped").bin("router"))
        assert plain.offsets_from == "dwarf" and stripped.offsets_from.startswith("table")
        assert stripped.stripped and not plain.stripped
        assert set(plain.functions) == set(go_binary.FUNCTIONS)
        assert stripped.functions == plain.functions and stripped.file_offsets == plain.file_offsets
        assert stripped.offsets == plain.offsets, go
        assert plain.go_version == go and plain.main_path == "blindspot.test/gohttp/router"
