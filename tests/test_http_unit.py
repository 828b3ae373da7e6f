"""HTTP decoding without root: request heads, status lines, routes, header bounds, record layout,
Go binary reading (build info, pclntab vs symtab, DWARF vs the fallback table)."""

from __future__ import annotations

import ctypes as C

import pytest

from agent import _http_event as ev
from agent.http_decode import parse_request_head, parse_status
from agent.http_parse import HEADER_COLUMNS, MAX_PATH, MAX_VALUE, redact_path, route_from_pattern, template_path


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
    assert C.sizeof(ev.HttpProc) == 40 + ev.EXEC_PATH_MAX == 168


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


# --- heads that fill the capture exactly (the helper's row is exactly the head: nothing hides an
# index past the end) -------------------------------------------------------------------------------
CAPTURE = 1024


def test_request_line_longer_than_the_capture_is_kept() -> None:
    """curl "http://svc/hello?q=<1100 x a>": the line fills the capture; the query is cut anyway."""
    head = (b"GET /hello?q=" + b"a" * 1100 + b" HTTP/1.1\r\nHost: svc\r\n\r\n")[:CAPTURE]
    h = parse_request_head(head)
    assert h is not None and (h.method, h.path, h.version, h.complete) == ("GET", "/hello", "", False)
    long_path = (b"POST /" + b"b" * 3000 + b" HTTP/1.1\r\n\r\n")[:CAPTURE]
    h = parse_request_head(long_path)
    assert h is not None and h.method == "POST" and h.path == "/" + "b" * (CAPTURE - 6) and not h.complete


def test_cut_line_is_a_request_only_when_the_capture_cut_it() -> None:
    assert parse_request_head(b"GET /partial", truncated=False) is None  # a short read: not guessed at
    h = parse_request_head(b"GET /partial", truncated=True)
    assert h is not None and h.path == "/partial"


@pytest.mark.parametrize("keep", [b" ", b" H", b" HTTP/1."])
def test_request_line_cut_in_its_version(keep: bytes) -> None:
    target = b"/" + b"v" * (CAPTURE - 4 - 1 - len(keep))
    head = b"GET " + target + keep
    assert len(head) == CAPTURE
    h = parse_request_head(head)
    assert h is not None and (h.method, h.path, h.version) == ("GET", target.decode(), "")
    assert parse_request_head(b"GET " + target + b" XTTP") is None  # what was captured must match


@pytest.mark.parametrize("fill", [0, 1, 2])
def test_request_line_ending_at_the_capture_edge(fill: int) -> None:
    """The CRLF ends exactly at the capture's end, is cut in half by it, or is cut off entirely."""
    line = b"GET /" + b"p" * (CAPTURE - len(b"GET / HTTP/1.1\r\n")) + b" HTTP/1.1\r\n"
    assert len(line) == CAPTURE
    h = parse_request_head(line[: CAPTURE - fill] if fill else line)
    assert h is not None and h.method == "GET" and h.path.startswith("/ppp")
    assert h.version.startswith("HTTP/1.1")  # the version was captured, its CRLF (maybe) not


def test_header_at_the_capture_end() -> None:
    start = b"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: "
    head = start + b"u" * (CAPTURE - len(start) - 2) + b"\r\n"
    assert len(head) == CAPTURE
    h = parse_request_head(head, max_value=2000)
    assert h is not None and h.headers == {"host": "h", "user-agent": "u" * (CAPTURE - len(start) - 2)}
    h = parse_request_head(head[:-1])  # the CRLF cut: the line is not guessed at
    assert h is not None and "user-agent" not in h.headers


@pytest.mark.parametrize(("target", "path"), [
    (b"HTTP://user:pw@h/x", "/x"),
    (b"HtTpS://user:pw@h:8443/a/b?c=d", "/a/b"),
    (b"ws://user:pw@h/chat", "/chat"),
    (b"x-custom+v1.2://u@h/p", "/p"),
    (b"HTTPS://u:p@h", "/"),
    (b"http://u:p@h?q=/x", "/"),
    (b"u:p@h:443", "h:443"),  # a hostile CONNECT authority
    (b"*", "*"),
    (b"/a/user:pw@not-userinfo", "/a/user:pw@not-userinfo"),  # origin-form: a path like any other
])
def test_absolute_form_never_keeps_userinfo(target: bytes, path: str) -> None:
    h = parse_request_head(b"GET " + target + b" HTTP/1.1\r\n\r\n")
    assert h is not None and h.path == path


JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"


@pytest.mark.parametrize(("path", "stored", "route"), [
    (f"/reset/{JWT}", "/reset/{token}", "/reset/{token}"),
    ("/shop/cart;jsessionid=0A1B2C3D4E5F/items", "/shop/cart/items", "/shop/cart/items"),
    ("/k/0123456789abcdef01", "/k/{hex}", "/k/{hex}"),
    ("/u/123e4567-e89b-12d3-a456-426614174000", "/u/{uuid}", "/u/{uuid}"),
    ("/api/sk_live_51HxYzAbCdEf0123456789", "/api/{token}", "/api/{token}"),
    ("/users/42/orders/abc123", "/users/42/orders/abc123", "/users/{id}/orders/abc123"),
    ("/static/app.bundle.js", "/static/app.bundle.js", "/static/app.bundle.js"),
    ("/docs/getting-started-with-blindspot", "/docs/getting-started-with-blindspot",
     "/docs/getting-started-with-blindspot"),  # long, but no digit: a slug
])
def test_path_redaction_rule(path: str, stored: str, route: str) -> None:
    assert redact_path(path) == stored
    assert template_path(path) == route


def test_route_never_outgrows_its_column() -> None:
    path = "/1" * 12 + "/" + "x" * 1000
    assert len(template_path(path).encode()) <= MAX_PATH


def test_redact_paths_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    from blindspot import config

    empty = {"BLINDSPOT_CONFIG": os.devnull}
    assert config.load(env=empty).http.redact_paths is True
    assert config.load(env=empty | {"BLINDSPOT_HTTP_REDACT_PATHS": "false"}).http.redact_paths is False
    f = tmp_path / "b.toml"
    f.write_text("[http]\nredact_paths = false\n")
    assert config.load(str(f), env={}).http.redact_paths is False
