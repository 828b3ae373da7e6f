"""HTTP/2 streams from the bytes one end of a connection read and wrote (Go's crypto/tls or net.Conn
calls, agent/go_tls_source.py): frames per direction, header blocks through HPACK (the ``hpack``
package), one :class:`Stream` per request when it ends.

Only what the frames say is reported. What cannot be decoded is counted and marked, never guessed:
a direction whose bytes were cut by the capture bound where a frame header or a header block lay
(``lost``: every open stream ends with reason ``h2_lost`` and the connection is not read further), a
header block HPACK refuses (its dynamic table is then unknown: ``h2_hpack``). A connection that began
before the agent never shows its preface and is not decoded here at all (the kernel side only passes
connections it saw start).

Total: any bytes, any order of calls; nothing raises out of :meth:`H2Conn.feed`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
MAX_FRAME = 1 << 24
MAX_STREAMS = 1024  # open streams kept per connection; beyond, the oldest ends as h2_lost
MAX_BLOCK = 64 << 10  # bytes of one header block (HEADERS + CONTINUATION) kept
MAX_HEADER_LIST = 64 << 10


@dataclass
class Stream:
    id: int
    start_ns: int = 0  # request HEADERS seen
    resp_start_ns: int = 0  # response HEADERS seen
    end_ns: int = 0
    request: dict[str, str] = field(default_factory=dict)  # request headers (lower-case names)
    response: dict[str, str] = field(default_factory=dict)  # response headers and trailers
    req_bytes: int = 0  # DATA payload bytes toward the server
    resp_bytes: int = 0  # DATA payload bytes toward the client
    req_done: bool = False
    resp_done: bool = False
    end_reason: str = ""  # "end" | "reset" | "h2_lost" | "h2_hpack" | "quiet"
    cut: bool = False  # a header block longer than MAX_BLOCK: its headers are not known


@dataclass
class _Dir:
    to_server: bool
    buf: bytearray = field(default_factory=bytearray)
    need_preface: bool = False
    hpack: hpack.Decoder = field(default_factory=hpack.Decoder)
    block: bytearray = field(default_factory=bytearray)  # header block being continued
    block_stream: int = 0
    block_end_stream: bool = False
    block_cut: bool = False
    skip: int = 0  # bytes of a DATA frame's payload still to come (counted, not kept)
    skip_stream: int = 0
    skip_end: bool = False  # that DATA frame ended its stream

    def __post_init__(self) -> None:
        self.hpack.max_header_list_size = MAX_HEADER_LIST
        self.hpack.max_allowed_table_size = 1 << 16


class H2Conn:
    """One HTTP/2 connection from one end. ``server``: this end read the preface."""

    def __init__(self, server: bool) -> None:
        self.server = server
        self.c2s = _Dir(True, need_preface=True)
        self.s2c = _Dir(False)
        self.streams: dict[int, Stream] = {}
        self.done: list[Stream] = []
        self.lost = ""  # why this connection is no longer read ("" while it is)
        self.counts = {"h2_frames": 0, "h2_lost": 0, "h2_hpack_errors": 0, "h2_streams_dropped": 0}

    def feed(self, wrote: bool, data: bytes, length: int, ts_ns: int) -> None:
        """``data``: the first bytes of a call that moved ``length`` bytes (``wrote``: this end wrote them)."""
        if self.lost:
            return
        d = self.s2c if wrote == self.server else self.c2s
        try:
            self._feed(d, data, max(length, len(data)), ts_ns)
        except Exception:  # a decoder bug: this connection is not read further, its streams end marked
            self._lose("h2_lost")

    def _feed(self, d: _Dir, data: bytes, length: int, ts: int) -> None:
        gap = length - len(data)  # bytes the call moved beyond its capture
        data, gap = self._skip(d, data, gap, ts)
        d.buf += data
        if d.need_preface:
            if len(d.buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(d.buf)) or gap:
                    self._lose("h2_lost")
                return
            if not d.buf.startswith(PREFACE):
                self._lose("h2_lost")
                return
            del d.buf[: len(PREFACE)]
            d.need_preface = False
        while len(d.buf) >= 9 and not self.lost:
            n = int.from_bytes(d.buf[:3], "big")
            ftype, flags = d.buf[3], d.buf[4]
            sid = struct.unpack_from(">I", d.buf, 5)[0] & 0x7FFFFFFF
            if len(d.buf) < 9 + n:
                if ftype == DATA:  # counted as it comes, never kept: the rest is skipped (also through a gap)
                    have = len(d.buf) - 9
                    self._data_bytes(d, sid, have)
                    s = self.streams.get(sid)
                    if s is not None:
                        s.end_ns = ts
                    d.skip, d.skip_stream, d.skip_end = n - have, sid, bool(flags & END_STREAM)
                    del d.buf[:]
                    _, gap = self._skip(d, b"", gap, ts)
                elif n > MAX_BLOCK + 64:  # a header block or control frame too long to keep whole
                    self._lose("h2_lost")
                break
            payload = bytes(d.buf[9 : 9 + n])
            del d.buf[: 9 + n]
            self.counts["h2_frames"] += 1
            self._frame(d, ftype, flags, sid, payload, ts)
        if gap and not self.lost:  # what the capture missed held a frame header: the framing is lost
            self._lose("h2_lost")

    def _skip(self, d: _Dir, data: bytes, gap: int, ts: int) -> tuple[bytes, int]:
        """The rest of a DATA frame being skipped: from the captured bytes first, then from the gap."""
        if not d.skip:
            return data, gap
        take = min(d.skip, len(data))
        data = data[take:]
        take2 = min(d.skip - take, gap)
        gap -= take2
        self._data_bytes(d, d.skip_stream, take + take2)
        d.skip -= take + take2
        if not d.skip:
            self.counts["h2_frames"] += 1
            if d.skip_end:
                self._end_half(d, d.skip_stream, ts)
        return data, gap

    def _data_bytes(self, d: _Dir, sid: int, n: int) -> None:
        s = self.streams.get(sid)
        if s is None:
            return
        if d.to_server:
            s.req_bytes += n
        else:
            s.resp_bytes += n

    def _frame(self, d: _Dir, ftype: int, flags: int, sid: int, payload: bytes, ts: int) -> None:
        if ftype == DATA:
            pad = payload[0] + 1 if flags & PADDED and payload else 0
            self._data_bytes(d, sid, max(len(payload) - pad, 0))
            s = self.streams.get(sid)
            if s is not None:
                s.end_ns = ts
            if flags & END_STREAM:
                self._end_half(d, sid, ts)
        elif ftype in (HEADERS, PUSH_PROMISE):
            p = payload
            if flags & PADDED:
                pad, p = p[0], p[1:]
                p = p[: max(len(p) - pad, 0)]
            if ftype == PUSH_PROMISE:
                p = p[4:]  # promised stream id: its headers still go through HPACK
            elif flags & PRIORITY_FLAG:
                p = p[5:]
            d.block = bytearray(p[:MAX_BLOCK])
            d.block_cut = len(p) > MAX_BLOCK
            d.block_stream = sid if ftype == HEADERS else 0
            d.block_end_stream = bool(flags & END_STREAM)
            if flags & END_HEADERS:
                self._block(d, ts)
        elif ftype == CONTINUATION:
            room = MAX_BLOCK - len(d.block)
            d.block += payload[:room]
            d.block_cut = d.block_cut or len(payload) > room
            if flags & END_HEADERS:
                self._block(d, ts)
        elif ftype == RST_STREAM:
            s = self.streams.pop(sid, None)
            if s is not None:
                s.end_ns = ts
                s.end_reason = "reset"
                self.done.append(s)

    def _block(self, d: _Dir, ts: int) -> None:
        sid, block = d.block_stream, bytes(d.block)
        d.block = bytearray()
        if d.block_cut:  # the HPACK state cannot follow a block we did not keep whole
            self._lose("h2_hpack")
            return
        try:
            headers = d.hpack.decode(block, raw=True)
        except Exception:  # hpack's errors: the dynamic table is unknown from here on
            self.counts["h2_hpack_errors"] += 1
            self._lose("h2_hpack")
            return
        if not sid:
            return
        fields = {}
        for k, v in headers:
            name = k.decode("latin-1").lower()
            if name not in fields:  # the first occurrence, as on HTTP/1
                fields[name] = v.decode("utf-8", "replace")
        s = self.streams.get(sid)
        if d.to_server:
            if s is None:
                if len(self.streams) >= MAX_STREAMS:
                    old = self.streams.pop(next(iter(self.streams)))
                    old.end_reason = "h2_lost"
                    self.done.append(old)
                    self.counts["h2_streams_dropped"] += 1
                s = self.streams[sid] = Stream(sid, start_ns=ts)
                s.request = fields
            # (request trailers: not kept)
        else:
            if s is None:
                return
            if not s.resp_start_ns:
                s.resp_start_ns = ts
            for name, value in fields.items():
                s.response.setdefault(name, value)
        s.end_ns = ts
        if d.block_end_stream:
            self._end_half(d, sid, ts)

    def _end_half(self, d: _Dir, sid: int, ts: int) -> None:
        s = self.streams.get(sid)
        if s is None:
            return
        if d.to_server:
            s.req_done = True
        else:
            s.resp_done = True
        s.end_ns = ts
        if s.req_done and s.resp_done:
            s.end_reason = "end"
            self.done.append(self.streams.pop(sid))

    def _lose(self, reason: str) -> None:
        self.lost = reason
        self.counts["h2_lost"] += 1
        for s in self.streams.values():
            s.end_reason = reason
            self.done.append(s)
        self.streams.clear()

    def lose_framing(self) -> None:
        """Bytes of unknown length were moved but never seen: the framing is lost (``h2_lost``)."""
        if not self.lost:
            self._lose("h2_lost")

    def close(self, reason: str = "quiet") -> None:
        """The connection is over (or quiet): its open streams end with ``reason``."""
        for s in self.streams.values():
            s.end_reason = reason
            self.done.append(s)
        self.streams.clear()

    def take(self) -> list[Stream]:
        out, self.done = self.done, []
        return out
