"""What an HTTP/1 exchange's capture keeps: the header allow-list, the bounds, and low-cardinality
routes. Pure functions, unit-tested without root (tests/test_http_unit.py); agent/http_decode.py
applies them to whole batches.

Captured values are data: bounded in length, never interpreted. Bytes that are not UTF-8 are kept
with U+FFFD in their place (the only change); everything else is stored as it came.
"""

from __future__ import annotations

import functools
import re

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
