"""Decoding what the kernel captured of an HTTP/1 exchange: the request head, the status line, a
low-cardinality route. Pure functions, unit-tested without root (tests/test_http_unit.py).

Captured values are data: bounded in length, never interpreted. Bytes that are not UTF-8 are kept
with U+FFFD in their place (the only change); everything else is stored as it came.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

# Allow-listed request headers with a typed column of their own (lower-case name -> column).
HEADER_COLUMNS: dict[str, str] = {
    "x-gray-version": "x_gray_version",
    "x-request-id": "x_request_id",
    "traceparent": "traceparent",
    "user-agent": "user_agent",
    "host": "host_header",
}
# Never captured unless named explicitly in the configuration.
SENSITIVE = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
MAX_VALUE = 256  # bytes kept of any header value
MAX_PATH = 1024  # bytes kept of a path
METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"CONNECT", b"TRACE"})


def _text(b: bytes, limit: int) -> str:
    return b[:limit].decode("utf-8", "replace")


@dataclass
class RequestHead:
    method: str
    path: str  # without the query string (queries often carry tokens)
    version: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case name -> value (allow-listed)
    complete: bool = True  # the blank line ending the head was captured


def parse_request_head(buf: bytes, allow: frozenset[str] = frozenset(HEADER_COLUMNS),
                       max_value: int = MAX_VALUE) -> RequestHead | None:
    """The request line and allow-listed headers of ``buf`` (the first bytes of a request)."""
    line_end = buf.find(b"\r\n")
    line = buf if line_end < 0 else buf[:line_end]
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] not in METHODS or not parts[2].startswith(b"HTTP/1."):
        return None
    target = parts[1]
    if target.startswith((b"http://", b"https://")):  # absolute-form (proxy requests)
        slash = target.find(b"/", target.find(b"//") + 2)
        target = target[slash:] if slash >= 0 else b"/"
    target = target.split(b"?", 1)[0].split(b"#", 1)[0]
    head = RequestHead(parts[0].decode(), _text(target, MAX_PATH), parts[2].decode("ascii", "replace"))
    if line_end < 0:
        head.complete = False
        return head
    end = buf.find(b"\r\n\r\n")
    head.complete = end >= 0
    block = buf[line_end + 2 : end if end >= 0 else len(buf)]
    lines = block.split(b"\r\n")
    if end < 0 and lines:
        lines = lines[:-1]  # the last line may be cut mid-value: keep only whole lines
    for raw in lines:
        name, sep, value = raw.partition(b":")
        if not sep:
            continue
        key = name.strip().lower().decode("latin-1")
        if key in allow and key not in head.headers:  # first occurrence wins
            head.headers[key] = _text(value.strip(b" \t"), max_value)
    return head


_STATUS_RE = re.compile(rb"^HTTP/1\.[01] (\d{3})")


def parse_status(buf: bytes) -> int:
    m = _STATUS_RE.match(buf)
    return int(m.group(1)) if m else 0


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^(?=.*\d)[0-9a-fA-F]{12,}$")
_NUM = re.compile(r"^\d+$")
_TOKEN = re.compile(r"^(?=.*\d)[A-Za-z0-9_\-]{24,}$")


@functools.lru_cache(maxsize=8192)  # a service's paths repeat: skip the regexes for known ones
def template_path(path: str, max_segments: int = 12) -> str:
    """A low-cardinality route for a path when no registered pattern is known: identifiers become
    placeholders (/users/123 -> /users/{id}). Deep paths are cut at ``max_segments``."""
    segs = path.split("/")
    out = []
    for s in segs[: max_segments + 1]:
        if _NUM.match(s):
            out.append("{id}")
        elif _UUID.match(s):
            out.append("{uuid}")
        elif _HEX.match(s):
            out.append("{hex}")
        elif _TOKEN.match(s):
            out.append("{token}")
        else:
            out.append(s)
    if len(segs) > max_segments + 1:
        out.append("...")
    return "/".join(out)


def route_from_pattern(pattern: str) -> str:
    """ServeMux pattern as registered ("GET /users/{id}", "example.com/x") minus its method."""
    method, sep, rest = pattern.partition(" ")
    if sep and method.isupper():
        return rest.strip()
    return pattern
