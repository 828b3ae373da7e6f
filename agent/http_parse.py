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
_LONG_HEX = re.compile(r"^(?=.*\d)[0-9a-fA-F]{16,}$")
_NUM = re.compile(r"^\d+$")
# A credential-looking segment: 20+ characters of base64url / JWT / percent-encoding alphabet that mix
# letters and digits (JWTs, API keys, reset and session tokens). Plain words and slugs have no digit.
_TOKEN = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-.~=+%]{20,}$")
# Userinfo of an absolute-form target (RFC 3986: scheme "://" [userinfo "@"] host), any scheme and case.
_SCHEME = re.compile(rb"^[A-Za-z][A-Za-z0-9+.\-]*://")


def _secret(seg: str) -> str | None:
    """The placeholder for a path segment that may be a credential, else None (see redact_path)."""
    if _UUID.match(seg):
        return "{uuid}"
    if _LONG_HEX.match(seg):
        return "{hex}"
    if _TOKEN.match(seg):
        return "{token}"
    return None


def strip_target(target: bytes) -> bytes:
    """The path of a request target that is not origin-form ("/..."): absolute-form
    ("HtTp://user:pw@host/x" -> "/x", any scheme, any case: the authority with its userinfo is
    dropped, no path gives "/"); anything else keeps what follows its last '@' before the first '/'
    (a hostile "CONNECT user:pw@h:443" keeps "h:443"). Origin-form and "*" are returned as they are."""
    if target.startswith(b"/"):
        return target
    m = _SCHEME.match(target)
    if m:
        slash = target.find(b"/", m.end())
        return target[slash:] if slash >= 0 else b"/"
    authority_end = target.find(b"/")
    at = target.rfind(b"@", 0, authority_end if authority_end >= 0 else len(target))
    return target[at + 1 :] if at >= 0 else target


@functools.lru_cache(maxsize=8192)
def redact_path(path: str) -> str:
    """The stored path (``[http] redact_paths``, on by default). Per '/'-separated segment:
    matrix parameters are dropped (``;jsessionid=..``: everything from the segment's first ';'),
    then a segment is replaced when it may be a credential:

    - a UUID (8-4-4-4-12 hex) -> ``{uuid}``
    - 16+ hex digits with at least one digit (keys, digests) -> ``{hex}``
    - 20+ characters of ``[A-Za-z0-9_-.~=+%]`` with at least one letter and one digit (JWTs
      ``xxx.yyy.zzz``, base64url tokens, percent-encoded keys) -> ``{token}``

    Numbers and plain words are kept: they are what makes a path useful and rarely a secret."""
    out = []
    for seg in path.split("/"):
        seg = seg.split(";", 1)[0]
        out.append(_secret(seg) or seg)
    return "/".join(out)


@functools.lru_cache(maxsize=8192)  # a service's paths repeat: skip the regexes for known ones
def template_path(path: str, max_segments: int = 12) -> str:
    """A low-cardinality route for a path when no registered pattern is known: identifiers become
    placeholders (/users/123 -> /users/{id}), and every segment redact_path hides is hidden here too,
    whatever ``redact_paths`` says (routes never carry tokens). Deep paths are cut at ``max_segments``."""
    segs = path.split("/")
    out = []
    for s in segs[: max_segments + 1]:
        s = s.split(";", 1)[0]
        if _NUM.match(s):
            out.append("{id}")
        elif _HEX.match(s):
            out.append("{hex}")
        else:
            out.append(_secret(s) or s)
    if len(segs) > max_segments + 1:
        out.append("...")
    route = "/".join(out)
    if len(route.encode()) > MAX_PATH:  # placeholders can be longer than what they replace
        route = route.encode()[:MAX_PATH].decode("utf-8", "ignore")
    return route


def route_from_pattern(pattern: str) -> str:
    """ServeMux pattern as registered ("GET /users/{id}", "example.com/x") minus its method."""
    method, sep, rest = pattern.partition(" ")
    if sep and method.isupper():
        return rest.strip()
    return pattern
