"""decode: a batch of kernel exchange records (struct http_event) -> http_request columns, at once.

One Python call per batch, not per request: fixed fields are numpy columns; the request line and the
allow-listed headers are RE2 patterns applied by Arrow to all heads together; values that repeat
(paths -> routes, pids -> services, addresses, comms) are worked out once per distinct value. Only
the rare rows that need it take a per-row path: values that are not valid UTF-8 (kept with U+FFFD),
heads whose first byte came in an earlier read, extra configured headers (a JSON column).

The rules are the ones agent/http_parse.py states for one head; tests/test_http_unit.py checks both
against the same cases.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent import _http_event as ev
from agent.clock import Clock
from agent.http_parse import (
    HEADER_COLUMNS,
    MAX_PATH,
    MAX_VALUE,
    METHODS,
    redact_path,
    route_from_pattern,
    strip_target,
    template_path,
)
from agent.tcp_decode import address, bounded, comm_text
from contract.records import HTTP_REQUEST

# "METHOD " as the first bytes of a little-endian u64, with the mask of its length (all fit in 8).
_METHOD_KEYS = [(int.from_bytes(m + b" ", "little"), (1 << (8 * len(m) + 8)) - 1, len(m) + 1) for m in sorted(METHODS)]
_METHOD_NAMES = pa.array([""] + [m.decode() for m in sorted(METHODS)], pa.string())
_HTTP1 = np.frombuffer(b"HTTP/1.", np.uint8)
VALUE_LIMIT = 1024  # bytes of a header column: max_value is capped there
CR, LF, SP, TAB, QUESTION, HASH, SLASH = 13, 10, 32, 9, 63, 35, 47


@dataclass(frozen=True)
class Heads:
    """What the request heads of a batch say; ``ok`` marks the ones that are requests at all."""

    ok: np.ndarray  # bool
    method: pa.Array
    path: pa.Array
    version: pa.Array
    complete: np.ndarray  # bool: the blank line ending the head was captured
    headers: dict[str, pa.Array]  # lower-case name -> value (text, "" when absent)


def utf8(values: pa.Array, max_bytes: int) -> pa.Array:
    """Binary values as text; bytes that are not UTF-8 become U+FFFD (per row, only when some value
    needs it), and a value that grew past ``max_bytes`` with them is cut at a character boundary
    (the column's bound: a longer value would be refused downstream)."""
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([bounded(b.decode("utf-8", "replace"), max_bytes) for b in values.to_pylist()], pa.string())


def _slices(rows: np.ndarray, at: np.ndarray, start: np.ndarray, end: np.ndarray, *, size: int | None = None,
            src: np.ndarray | None = None) -> pa.Array:
    """A binary array of ``size`` values (default: one per row of ``rows``, a 2-D C-contiguous uint8
    array): value at[k] is rows[src[k], start[k]:end[k]] (src defaults to at), the others empty."""
    n = rows.shape[0] if size is None else size
    width = rows.shape[1]
    src = at if src is None else src
    lengths = np.zeros(n, np.int64)
    lengths[at] = end - start
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    first = np.zeros(n, np.int64)
    first[at] = src * width + start
    src = np.repeat(first - offsets[:-1], lengths) + np.arange(offsets[-1])
    data = rows.reshape(-1)[src]
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)])


def _first_per_row(row_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a row-sorted list of row numbers: the distinct rows and the index of each one's first entry."""
    if not len(row_of):
        return row_of, row_of
    starts = np.flatnonzero(np.r_[True, row_of[1:] != row_of[:-1]])
    return row_of[starts], starts


def _strip(rows: np.ndarray, r: np.ndarray, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blanks (SP, HTAB) off both ends of rows[r, s:e]; a few passes cover what real heads carry."""
    s, e = s.copy(), e.copy()
    for _ in range(8):
        c = rows[r, np.minimum(s, rows.shape[1] - 1)]
        lead = (s < e) & ((c == SP) | (c == TAB))
        c = rows[r, np.maximum(e - 1, 0)]
        trail = (s < e) & ((c == SP) | (c == TAB))
        if not (lead.any() or trail.any()):
            break
        s += lead
        e -= trail & (s < e)
    return s, e


NAME_WORDS = 2  # header names up to 15 bytes (+ ':') are compared as two u64 words


def _line_bytes(flat: np.ndarray, starts: np.ndarray, k: int) -> np.ndarray:
    """``k`` bytes from each start of ``flat``, lower-cased (long header names only)."""
    g = flat[np.minimum(starts[:, None] + np.arange(k), flat.size - 1)]
    return np.where((g >= 65) & (g <= 90), g + 32, g)


def parse_heads(rows: np.ndarray, lengths: np.ndarray, names: Sequence[str], max_value: int,
                cut: np.ndarray | None = None) -> Heads:
    """Request line and the headers ``names`` (lower case) of each head: row i of ``rows`` (2-D
    uint8, C-contiguous) holds ``lengths[i]`` bytes of it, whatever follows is ignored. ``cut`` marks
    the heads the capture bound cut (the kernel's BS_HTTP_F_HEAD_TRUNC).

    A request line is METHOD SP target SP HTTP/1.x, alone on its line; the path is the target up to
    '?' or '#' (queries often carry tokens). A request line cut by the capture bound (a long URL: no
    CRLF, no version) is still a request when ``cut`` says so: method and path as far as captured,
    version "". A header is a line ``name:`` (RFC 9112: no blank before the colon), the first
    occurrence wins; lines after the blank line are a body, and a line cut by the capture bound (no
    CRLF after it) is not guessed at.

    Total: any bytes, any lengths (clamped to 0..width), any number of rows.
    """
    n, width = rows.shape
    if width == 0:  # no bytes at all: one zero column keeps every index below in range
        rows, width = np.zeros((n, 1), np.uint8), 1
    rows = np.ascontiguousarray(rows, np.uint8)
    cols = np.arange(width)
    lengths = np.clip(np.asarray(lengths).astype(np.int64), 0, width)
    cut = np.zeros(n, bool) if cut is None else np.asarray(cut, bool)
    max_value = min(max(int(max_value), 0), VALUE_LIMIT)
    # Every CRLF inside a head, in row-major order (found from the CRs: one pass over the bytes).
    flat = rows.reshape(-1)
    r, c = np.divmod(np.flatnonzero(flat == CR), width)
    crlf = (flat[np.minimum(r * width + c + 1, flat.size - 1)] == LF) & (c + 1 < lengths[r])
    r, c = r[crlf], c[crlf]
    line_rows, first = _first_per_row(r)
    line_end = lengths.copy()  # the request line ends at the first CRLF, or with the capture
    line_end[line_rows] = c[first]
    line_cut = np.ones(n, bool)
    line_cut[line_rows] = False
    line_cut &= cut  # no CRLF and the capture was full: the line goes on beyond what we have

    # Request line (searched only as wide as the longest one; line_end <= width).
    w = max(int(line_end.max()) if n else 0, 1)
    head = rows[:, :w]
    lcols = cols[:w]
    first8 = np.zeros((n, 8), np.uint8)
    first8[:, : min(w, 8)] = head[:, :8]
    key = first8.view("<u8").ravel()
    method = np.zeros(n, np.int64)
    for i, (value, mask, k) in enumerate(_METHOD_KEYS, 1):
        method[((key & np.uint64(mask)) == np.uint64(value)) & (line_end >= k)] = i
    target = np.array([0] + [k for _, _, k in _METHOD_KEYS])[method]  # first byte after "METHOD "
    in_line = (lcols >= target[:, None]) & (lcols < line_end[:, None])
    spaces = (head == SP) & in_line
    target_end = np.where(spaces.any(1), spaces.argmax(1), line_end)
    version_start = np.minimum(target_end + 1, line_end)
    spaces &= lcols > target_end[:, None]
    vw = min(len(_HTTP1), w)
    vcols = np.minimum(version_start[:, None] + np.arange(vw), w - 1)
    vmatch = head[np.arange(n)[:, None], vcols] == _HTTP1[:vw]
    whole = ((target_end < line_end) & ~spaces.any(1) & (line_end - version_start > len(_HTTP1))
             & vmatch.all(1))
    # A line the capture cut inside its target or its version: what was captured of the version
    # must match, the rest is not there to check.
    beyond = version_start[:, None] + np.arange(vw) >= line_end[:, None]
    partial = line_cut & (line_end > target) & ~spaces.any(1) & (vmatch | beyond).all(1)
    ok = (method > 0) & (whole | partial)
    version_start = np.where(whole, version_start, line_end)  # a cut line has no version
    stop = ((head == QUESTION) | (head == HASH)) & (lcols >= target[:, None]) & (lcols < target_end[:, None])
    path_end = np.where(stop.any(1), stop.argmax(1), target_end)
    path_end = np.minimum(path_end, target + MAX_PATH)
    at = np.flatnonzero(ok)
    method_text = _METHOD_NAMES.take(pa.array(np.where(ok, method, 0)))
    path = _slices(rows, at, target[at], path_end[at])
    version = _slices(rows, at, version_start[at], line_end[at])
    absolute = ok & (rows[np.arange(n), np.minimum(target, width - 1)] != SLASH) & (path_end > target)
    if absolute.any():  # not origin-form (a proxy request, CONNECT): no authority/userinfo; rare, so per row
        fixed = path.to_pylist()
        for i in np.flatnonzero(absolute).tolist():
            fixed[i] = strip_target(fixed[i])
        path = pa.array(fixed, pa.binary())

    # Header lines: between consecutive CRLFs of one row, before the blank line.
    same = r[1:] == r[:-1]
    lr, ls, le = r[:-1][same], c[:-1][same] + 2, c[1:][same]
    blank = ls == le
    complete = np.zeros(n, bool)
    body_from = np.full(n, width + 1)
    blank_rows, blank_first = _first_per_row(lr[blank])
    complete[blank_rows] = True
    body_from[blank_rows] = ls[blank][blank_first]
    keep = ls < body_from[lr]
    lr, ls, le = lr[keep], ls[keep], le[keep]
    headers: dict[str, pa.Array] = {}
    if names:
        # The first 16 bytes of every line, lower-cased, as two u64 words: one masked compare per name.
        padded = np.concatenate([flat, np.zeros(NAME_WORDS * 8, np.uint8)])
        g = np.lib.stride_tricks.sliding_window_view(padded, NAME_WORDS * 8)[lr * width + ls]
        g = np.where((g >= 65) & (g <= 90), g + 32, g).view("<u8")  # ASCII lower case
        found = []
        for nm in names:
            pat = nm.encode("latin-1") + b":"
            match = le - ls >= len(pat)
            if len(pat) > NAME_WORDS * 8:  # longer names: compare byte by byte
                match &= (_line_bytes(flat, lr * width + ls, len(pat)) == np.frombuffer(pat.lower(), np.uint8)).all(1)
            else:
                for word in range(NAME_WORDS):
                    chunk = pat[word * 8 : word * 8 + 8]
                    if chunk:
                        word_mask = np.uint64((1 << (8 * len(chunk))) - 1)
                        match &= (g[:, word] & word_mask) == np.uint64(int.from_bytes(chunk, "little"))
            hit = np.flatnonzero(match)
            hit_rows, hit_first = _first_per_row(lr[hit])
            j = hit[hit_first]
            found.append((hit_rows, ls[j] + len(pat), le[j]))
        # All names' values in one array (one strip, one gather, one UTF-8 check), then split by name.
        src, vs, ve = (np.concatenate(part) for part in zip(*found, strict=True))
        at = np.concatenate([rows_ + i * n for i, (rows_, _, _) in enumerate(found)])
        vs, ve = _strip(rows, src, vs, ve)
        values = utf8(_slices(rows, at, vs, np.minimum(ve, vs + max_value), size=n * len(names), src=src),
                      max_value)
        headers = {nm: values.slice(i * n, n) for i, nm in enumerate(names)}
    return Heads(ok, method_text, utf8(path, MAX_PATH), utf8(version, width), complete, headers)


def _statuses(status: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The code of each "HTTP/1.x NNN" status line; 0 where there is none."""
    s = status[:, :12].astype(np.int32)
    digits = s[:, 9:12] - ord("0")
    prefix = (s[:, :7] == np.frombuffer(b"HTTP/1.", np.uint8)).all(1) & ((s[:, 7] == 48) | (s[:, 7] == 49))
    ok = (length >= 12) & prefix & (s[:, 8] == 32) & ((digits >= 0) & (digits <= 9)).all(1)
    return np.where(ok, digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2], 0).astype(np.uint16)


@dataclass
class RequestHead:
    method: str
    path: str  # without the query string
    version: str
    headers: dict[str, str]  # lower-case name -> value, allow-listed names that were present
    complete: bool  # the blank line ending the head was captured


def parse_request_head(buf: bytes, allow: frozenset[str] = frozenset(HEADER_COLUMNS),
                       max_value: int = MAX_VALUE, *, truncated: bool | None = None) -> RequestHead | None:
    """parse_heads for one head (tests, tools). The row is exactly ``buf`` wide, as a full capture
    is: no padding that could hide an index past the end. ``truncated`` (the kernel's flag) defaults
    to "buf filled a 1 KiB capture"."""
    rows = np.frombuffer(buf, np.uint8)[None, :]
    cut = len(buf) >= ev.HEAD_MAX if truncated is None else truncated
    h = parse_heads(rows, np.array([len(buf)]), sorted(allow), max_value, np.array([cut]))
    if not h.ok[0]:
        return None
    headers = {k: v[0].as_py() for k, v in h.headers.items() if v[0].as_py()}
    return RequestHead(h.method[0].as_py(), h.path[0].as_py(), h.version[0].as_py(), headers, bool(h.complete[0]))


def parse_status(buf: bytes) -> int:
    """The status code of one response head's first bytes (0 if it is not an HTTP/1 status line)."""
    row = np.frombuffer(buf[:32].ljust(32, b"\0"), np.uint8)[None, :]
    return int(_statuses(row, np.array([min(len(buf), 32)]))[0])


def _per_distinct(words: np.ndarray, fn: Callable[[int], str]) -> pa.Array:
    """fn(row index) for each row of ``words`` (n x m uint64 keys), computed once per distinct key:
    a service's addresses, comms and pids repeat across its requests."""
    n = len(words)
    if n and (words == words[0]).all():  # one value (a server's own address, one comm): no sort
        return pa.repeat(pa.scalar(fn(0), pa.string()), n)
    order = np.lexsort(words.T[::-1])
    ordered = words[order]
    new = np.ones(n, bool)
    new[1:] = (ordered[1:] != ordered[:-1]).any(1)
    inverse = np.empty(n, np.int64)
    inverse[order] = np.cumsum(new) - 1
    return pa.array([fn(int(i)) for i in order[new]], pa.string()).take(pa.array(inverse))


def _words(raw: np.ndarray) -> np.ndarray:
    """Rows of bytes (n x 8k uint8) as n x k uint64 keys."""
    return np.ascontiguousarray(raw).view("<u8")


def _addresses(family: np.ndarray, raw: np.ndarray) -> pa.Array:
    keys = np.concatenate([family.astype(np.uint64)[:, None], _words(raw)], axis=1)

    def text(i: int) -> str:
        fam = int(family[i])
        return address(fam, raw[i].tobytes()) if fam in (socket.AF_INET, socket.AF_INET6) else "::"

    return _per_distinct(keys, text)


EXTRA_MAX = 8192  # bytes of the extra_headers column


def _extra_json(names: Sequence[str], values: Sequence[str]) -> str:
    """Extra configured headers as a JSON object; headers that would take it past EXTRA_MAX bytes
    (many long values, escapes) are left out rather than the row refused downstream."""
    text = json.dumps({h: v for h, v in zip(names, values, strict=True) if v}, ensure_ascii=False)
    if len(text.encode()) <= EXTRA_MAX:
        return text
    kept: dict[str, str] = {}
    for h, v in zip(names, values, strict=True):
        if v and len(json.dumps({**kept, h: v}, ensure_ascii=False).encode()) <= EXTRA_MAX:
            kept[h] = v
    return json.dumps(kept, ensure_ascii=False)


_END_REASONS = pa.array([ev.END_REASONS.get(i, "") for i in range(256)], pa.string())


def request_ids(salt: int, pid: np.ndarray, fd: np.ndarray, start_ns: np.ndarray, role: np.ndarray) -> np.ndarray:
    """A 64-bit id per exchange, unique per host (salt): splitmix64's finalizer over the connection
    (pid, fd), its start and which end this is. Never 0 (0 means "no parent")."""
    with np.errstate(over="ignore"):
        x = (pid.astype(np.uint64) << np.uint64(32)) | (fd.astype(np.int64).astype(np.uint64) & np.uint64(0xFFFFFFFF))
        x = (x ^ np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15) + start_ns.astype(np.uint64)
        x = x + role.astype(np.uint64) * np.uint64(0x632BE59BD9B4E019)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return np.where(x == 0, np.uint64(1), x)


@dataclass
class DecodeContext:
    hostname: str
    salt: int
    headers: tuple[str, ...]  # allow-list, lower case
    max_value: int
    service: Callable[[int], tuple[str, str, str]]  # pid -> (service, version, go version)
    redact_paths: bool = True  # http_parse.redact_path on stored paths (routes are always templated)


@dataclass
class Decoded:
    """Rows of one batch: ``table`` (http_request columns) and, row for row, what linking needs."""

    table: pa.Table
    pid: np.ndarray
    role: np.ndarray
    goroutine: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray
    request_id: np.ndarray
    parse_errors: int


def _heads_of(events: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each record's head bytes as C-contiguous rows, their lengths (a corrupt head_len is clamped
    to the capture) and whether the capture bound cut them."""
    width = events.dtype["head"].shape[0]
    lengths = np.minimum(events["head_len"].astype(np.int64), width)
    cut = ((events["flags"] & ev.F_HEAD_TRUNC) != 0) | (lengths >= width)
    rows = np.ascontiguousarray(events["head"][:, : int(lengths.max(initial=0)) + 1])
    held = (events["flags"] & ev.F_HELD_BYTE) != 0
    if held.any():  # the head's first byte came in Go's 1-byte background read before it
        shifted = np.zeros((len(events), rows.shape[1] + 1), np.uint8)
        shifted[~held, :-1] = rows[~held]
        shifted[held, 0] = events["held_byte"][held]
        shifted[held, 1:] = rows[held]
        rows, lengths = shifted, lengths + held
    return rows, lengths, cut


def decode(events: np.ndarray, ctx: DecodeContext, clock: Clock) -> Decoded:
    """http_request rows for ``events`` (a numpy array of ev.event_dtype); heads that are not HTTP/1
    requests are left out and counted in ``parse_errors``."""
    if len(events) == 0:
        empty = np.empty(0, np.int64)
        return Decoded(HTTP_REQUEST.arrow_schema.empty_table(), empty, empty, empty, empty, empty, empty, 0)
    rows, lengths, cut = _heads_of(events)
    heads = parse_heads(rows, lengths, ctx.headers, ctx.max_value, cut)
    keep = heads.ok
    parse_errors = int(len(events) - np.count_nonzero(keep))
    if parse_errors:
        events = events[keep]
        mask = pa.array(keep)
        heads = Heads(np.ones(len(events), bool), heads.method.filter(mask), heads.path.filter(mask),
                      heads.version.filter(mask), heads.complete[keep],
                      {k: v.filter(mask) for k, v in heads.headers.items()})
    n = len(events)
    pid, role, fd = events["pid"], events["role"], events["fd"]
    start_ns, end_ns = events["start_ns"].astype(np.int64), events["end_ns"].astype(np.int64)
    server = role == ev.ROLE_SERVER
    absent = pa.repeat(pa.scalar("", pa.string()), n)
    hdr = {name: heads.headers.get(name, absent) for name in HEADER_COLUMNS}

    # Routes: the registered ServeMux pattern where a Go uprobe read one, else the templated path.
    # Both, and the redacted path, are worked out once per distinct path.
    distinct = pc.dictionary_encode(heads.path)
    paths = distinct.dictionary.to_pylist()
    route = pa.array([template_path(p) for p in paths], pa.string()).take(distinct.indices)
    path = (pa.array([redact_path(p) for p in paths], pa.string()).take(distinct.indices) if ctx.redact_paths
            else heads.path)
    route_len = events["route_len"]
    has_pattern = route_len > 0
    route_source = pc.if_else(pa.array(has_pattern), "pattern", "template")
    if has_pattern.any():
        patterns = [route_from_pattern(bytes(r[:k]).decode("utf-8", "replace")) if k else ""
                    for r, k in zip(events["route"], route_len.tolist(), strict=True)]
        route = pc.if_else(pa.array(has_pattern), pa.array(patterns, pa.string()), route)

    pids, pid_row = np.unique(pid, return_inverse=True)
    infos = [ctx.service(int(p)) for p in pids]
    pid_row = pa.array(pid_row.ravel())
    service, version, go_version = (pa.array([i[k] for i in infos], pa.string()).take(pid_row) for k in range(3))
    wall_start = start_ns + clock.offsets_at(start_ns)
    wall_end = np.where(end_ns > 0, end_ns + clock.offsets_at(end_ns), wall_start)
    duration = np.where(end_ns > 0, np.maximum(end_ns - start_ns, 0), 0).astype(np.uint64)
    family = events["family"]
    request_id = request_ids(ctx.salt, pid, fd, events["start_ns"], role)
    extra = [h for h in ctx.headers if h not in HEADER_COLUMNS]
    if extra:
        values = [heads.headers[h].to_pylist() for h in extra]
        extra_headers = pa.array([_extra_json(extra, row) for row in zip(*values, strict=True)], pa.string())
    else:
        extra_headers = pa.repeat(pa.scalar("", pa.string()), n)
    truncated = ((events["flags"] & ev.F_HEAD_TRUNC) != 0) | ~heads.complete

    columns = {
        "time": pa.array(wall_start, HTTP_REQUEST.column("time").type),
        "end_time": pa.array(wall_end, HTTP_REQUEST.column("end_time").type),
        "duration_ns": pa.array(duration, pa.uint64()),
        "host": pa.repeat(pa.scalar(ctx.hostname, pa.string()), n),
        "service": service,
        "service_version": version,
        "go_version": go_version,
        "pid": pa.array(pid, pa.uint32()),
        "tid": pa.array(events["tid"], pa.uint32()),
        "comm": _per_distinct(_words(events["comm"]), lambda i: comm_text(events["comm"][i].tobytes())),
        "side": pc.if_else(pa.array(server), "server", "client"),
        "method": heads.method,
        "path": path,
        "route": route,
        "route_source": route_source,
        "status": pa.array(_statuses(events["status"], events["status_len"]), pa.uint16()),
        "request_bytes": pa.array(events["req_bytes"], pa.uint64()),
        "response_bytes": pa.array(events["resp_bytes"], pa.uint64()),
        "family": pa.array(np.where(family == socket.AF_INET, 4, 6).astype(np.uint8), pa.uint8()),
        "local_addr": _addresses(family, events["saddr"]),
        "local_port": pa.array(events["sport"], pa.uint16()),
        "remote_addr": _addresses(family, events["daddr"]),
        "remote_port": pa.array(events["dport"], pa.uint16()),
        "upstream_host": pc.if_else(pa.array(server), "", hdr["host"]),
        **{col: hdr[name] for name, col in HEADER_COLUMNS.items()},
        "extra_headers": extra_headers,
        "head_truncated": pa.array(truncated.astype(np.uint8), pa.uint8()),
        "end_reason": _END_REASONS.take(pa.array(events["end_reason"])),
        "request_id": pa.array(request_id, pa.uint64()),
        "parent_request_id": pa.array(np.zeros(n, np.uint64), pa.uint64()),
        "protocol": pa.repeat(pa.scalar("http/1.1", pa.string()), n),
        "encrypted": pa.array(np.zeros(n, np.uint8), pa.uint8()),  # agent/go_tls_source.py sets it
        "grpc_status": pa.repeat(pa.scalar("", pa.string()), n),
    }
    table = pa.Table.from_arrays([columns[c.name] for c in HTTP_REQUEST.columns], schema=HTTP_REQUEST.arrow_schema)
    return Decoded(table, pid, role, events["goroutine"], start_ns, end_ns, request_id, parse_errors)
