"""HTTPS of Go programs: HTTP/1.1 exchanges from the plaintext crypto/tls reads and writes.

Kernel side (bpf/go_tls.c): uprobes on crypto/tls.(*Conn).Write (entry) and (*Conn).Read (entry and
each RET instruction, agent/go_tls_binary.py) send the plaintext of every call. Here,
:class:`Exchanges` rebuilds request/response exchanges per TLS connection from those calls; each one
becomes a record of the plaintext path's layout (struct http_event) and goes through the same
decoder (agent/http_decode.py), so HTTPS rows have exactly the columns and rules of plaintext ones,
plus ``encrypted`` = 1 and ``protocol`` = 'http/1.1'.

Cost: every Read and Write of a traced Go program hits a uprobe (~19 us each on our machines, at
least three per exchange), so this is a switch, ``[http] go_tls``, off by default (docs/go-tls.md).
What is not HTTP/1 (HTTP/2 negotiated by ALPN: the client preface, frames) is counted in
``tls_not_http1`` and not stored.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from agent import _go_tls_event as tev
from agent import _http_event as ev
from agent import go_procs, go_tls_binary, grpc_link_binary, h2_decode
from agent._bpf_abi import load_bpf, recursion_misses
from agent.bpf_maps import all_keys
from agent.clock import system_clock
from agent.config import HttpConfig
from agent.errors import SourceErrors
from agent.go_procs import GoProcess
from agent.http_decode import DecodeContext, _extra_json, decode, request_ids
from agent.http_parse import HEADER_COLUMNS, MAX_PATH, METHODS, redact_path, template_path
from agent.http_source import _kernel_defines
from agent.tcp_decode import address, bounded, comm_text
from contract.records import HTTP_REQUEST

log = logging.getLogger(__name__)

KIND = HTTP_REQUEST.name
BPF_SOURCE = tev.HEADER.parent / "go_tls.c"
Emit = Callable[[str, pa.Table], None]
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
METHOD_STARTS = frozenset(m[0] for m in METHODS)
REAP_INTERVAL_S = 5.0
NO_RESPONSE_S = 30.0  # an exchange without any response is emitted after this long
MAX_OWED = 16_384  # calls awaiting their continuation records (one per connection and direction)
_END = {v: k for k, v in ev.END_REASONS.items()}
MAX_LINKS = 16384  # gRPC link records waiting for their outbound row
MAX_SERVER_IDS = 16384  # request ids of recent inbound gRPC rows, for links resolved after them


@dataclass
class Call:
    """One Read or Write of a TLS connection's plaintext (a struct tls_event)."""

    pid: int
    tid: int
    fd: int
    ts_ns: int
    conn: int
    goroutine: int
    length: int
    is_write: bool
    data: bytes
    family: int = 0
    saddr: bytes = b"\0" * 16
    daddr: bytes = b"\0" * 16
    sport: int = 0
    dport: int = 0
    has_addr: bool = False
    comm: bytes = b""
    plain: bool = False  # net.(*conn) of an h2c connection, not crypto/tls


@dataclass
class _Exchange:
    role: int
    first: Call  # the call that moved the request head
    start_ns: int
    head: bytearray
    head_cut: bool
    req_bytes: int
    resp_start_ns: int = 0
    resp_bytes: int = 0
    status: bytes = b""
    end_ns: int = 0
    last_ns: int = 0
    held: bool = False  # the head's first byte came in a 1-byte read before it


@dataclass
class _Conn:
    active: _Exchange | None = None
    held: int = -1  # a 1-byte read (Go's server background read): maybe the next head's first byte
    last_ns: int = 0
    ident: tuple[int, int, int] = (0, 0, 0)  # (fd, sport, dport): a reused *tls.Conn address is a new connection


@dataclass
class Exchanges:
    """Per TLS connection (pid, *tls.Conn), the HTTP/1 exchange in progress; finished ones in ``done``.

    A request head is a call in the request direction (Read: served, Write: made) starting with
    ``METHOD SP``; bytes the other way starting ``HTTP/1.`` begin its response. An exchange ends at
    the next head, when the connection turns out to be another one, or when nothing moved for
    ``quiet_ns`` after its response (``expire``). Total: any calls in any order."""

    head_max: int = ev.HEAD_MAX
    max_conns: int = 16384
    conns: dict[tuple[int, int], _Conn] = field(default_factory=dict)
    done: list[tuple[_Exchange, int]] = field(default_factory=list)  # (exchange, end reason)
    counts: dict[str, int] = field(default_factory=lambda: {"tls_not_http1": 0, "tls_conns_full": 0,
                                                            "tls_h2": 0})

    def feed(self, c: Call) -> None:
        key = (c.pid, c.conn)
        st = self.conns.get(key)
        data = c.data
        ident = (c.fd, c.sport, c.dport)
        if st is not None and st.active is not None and c.has_addr and st.ident != ident:
            self._finish(st, _END["close"])  # the address now belongs to another connection
            st.held = -1
        # Go's server reads 1 byte in the background while a handler runs (and after a response):
        # the next head's first byte may come alone.
        # (Also on a connection not known yet: one older than the agent, whose next head's first byte
        # this read took.)
        if not c.is_write and c.length == 1 and len(data) == 1 and (st is None or st.active is None or (
                st.active.role == ev.ROLE_SERVER and (st.active.resp_bytes > 0 or data[0] in METHOD_STARTS))):
            if st is None:
                if data[0] not in METHOD_STARTS:
                    return
                if len(self.conns) >= self.max_conns:
                    self.counts["tls_conns_full"] += 1
                    return
                st = self.conns[key] = _Conn()
            st.held = data[0]
            st.last_ns = c.ts_ns
            return
        held = st.held if st is not None and not c.is_write else -1
        joined = bytes([held]) + data if held >= 0 else data
        if _is_head(joined):
            if st is None:
                if len(self.conns) >= self.max_conns:
                    self.counts["tls_conns_full"] += 1
                    return
                st = self.conns[key] = _Conn()
            if st.active is not None:
                self._finish(st, _END["next"])
            st.held = -1
            st.ident = ident
            head = bytearray(joined[: self.head_max])
            st.active = _Exchange(ev.ROLE_CLIENT if c.is_write else ev.ROLE_SERVER, c, c.ts_ns, head,
                                  _cut(joined, self.head_max, c.length > len(data)),
                                  c.length + (1 if held >= 0 else 0), last_ns=c.ts_ns, held=held >= 0)
            st.last_ns = c.ts_ns
            return
        if st is None:
            if data.startswith(H2_PREFACE[: len(data)]) or data.startswith(H2_PREFACE):
                self.counts["tls_h2"] += 1
            elif not data.startswith(b"HTTP/1."):
                self.counts["tls_not_http1"] += 1
            return
        if held >= 0:  # the held byte was a body's (or nothing's): it belongs to the request in progress
            st.held = -1
            if st.active is not None:
                st.active.req_bytes += 1
        st.last_ns = c.ts_ns
        x = st.active
        if x is None:
            return
        x.last_ns = c.ts_ns
        response_dir = (x.role == ev.ROLE_SERVER) == c.is_write
        if not response_dir:
            x.req_bytes += c.length
            if b"\r\n\r\n" not in x.head and len(x.head) < self.head_max:  # a head longer than one call
                x.head += data[: self.head_max - len(x.head)]
                x.head_cut = _cut(bytes(x.head), self.head_max, c.length > len(data))
            return
        if x.resp_bytes == 0:
            if not data.startswith(b"HTTP/1."):
                return
            x.resp_start_ns = c.ts_ns
            x.status = data[: ev.STATUS_MAX]
        x.resp_bytes += c.length
        x.end_ns = c.ts_ns

    def _finish(self, st: _Conn, reason: int) -> None:
        assert st.active is not None
        self.done.append((st.active, reason))
        st.active = None

    def expire(self, now_ns: int, quiet_ns: int, pids: set[int] | None = None) -> None:
        """Exchanges quiet for ``quiet_ns`` after their response (or without one for NO_RESPONSE_S),
        and every one of ``pids`` (exited), end here; connections idle that long are forgotten."""
        quiet = ev.END_QUIET
        for key in list(self.conns):
            st = self.conns[key]
            gone = pids is not None and key[0] in pids
            x = st.active
            if x is not None and (gone or (x.resp_bytes and now_ns - x.last_ns > quiet_ns) or
                                  now_ns - x.last_ns > NO_RESPONSE_S * 1e9):
                self._finish(st, quiet)
            if st.active is None and (gone or now_ns - st.last_ns > max(quiet_ns, int(NO_RESPONSE_S * 1e9))):
                del self.conns[key]

    def take(self) -> list[tuple[_Exchange, int]]:
        out, self.done = self.done, []
        return out


def _cut(head: bytes, head_max: int, more: bool) -> bool:
    """The capture bound cut the head: its blank line is not within what was kept, and more came."""
    return b"\r\n\r\n" not in head[:head_max] and (more or len(head) > head_max)


def _is_head(b: bytes) -> bool:
    sp = b.find(b" ", 0, 8)
    return sp > 0 and b[:sp] in METHODS and len(b) > sp + 1


def records(done: list[tuple[_Exchange, int]], head_max: int) -> np.ndarray:
    """Finished exchanges as struct http_event records: what the plaintext path's decoder reads."""
    out = np.zeros(len(done), ev.event_dtype(head_max))
    for i, (x, reason) in enumerate(done):
        c = x.first
        r = out[i]
        r["kind"] = ev.KIND_EXCHANGE
        r["pid"], r["tid"], r["fd"] = c.pid, c.tid, c.fd
        r["start_ns"], r["resp_start_ns"], r["end_ns"] = x.start_ns, x.resp_start_ns, x.end_ns
        r["req_bytes"], r["resp_bytes"] = x.req_bytes, x.resp_bytes
        r["goroutine"] = c.goroutine
        r["saddr"] = np.frombuffer(c.saddr, np.uint8)
        r["daddr"] = np.frombuffer(c.daddr, np.uint8)
        r["sport"], r["dport"], r["family"] = c.sport, c.dport, c.family
        head = bytes(x.head[:head_max])
        r["head"][: len(head)] = np.frombuffer(head, np.uint8)
        r["head_len"] = len(head)
        r["status"][: len(x.status)] = np.frombuffer(x.status, np.uint8)
        r["status_len"] = len(x.status)
        r["role"] = x.role
        r["end_reason"] = reason
        comm = c.comm[:16]
        r["comm"][: len(comm)] = np.frombuffer(comm, np.uint8)
        r["flags"] = (ev.F_HEAD_TRUNC if x.head_cut else 0) | (ev.F_ADDR if c.has_addr else 0)
    return out



@dataclass
class _H2:
    conn: h2_decode.H2Conn
    first: Call  # addresses, fd, comm of the connection
    protocol: str  # h2 (over TLS) | h2c
    last_ns: int = 0


def _status(v: str) -> int:
    return int(v) if v.isdigit() and len(v) == 3 else 0


class GoTlsSource:
    """Source shape (agent/pipeline.py): open(), poll(timeout_ms), counters(), close()."""

    name = "go_tls"
    kinds = (KIND,)

    def __init__(self, config: HttpConfig, emit: Emit, *, host: str) -> None:
        self.cfg = config
        self.host = host
        self._emit = emit
        self.bpf: Any = None
        self.procs: dict[int, GoProcess] = {}
        self._uprobes: dict[tuple[int, int], list[bytes]] = {}
        self._uprobe_users: dict[tuple[int, int], set[int]] = {}
        self._allow = frozenset(h.lower() for h in self.cfg.headers)
        self._errors = SourceErrors(self.name, log)
        self._x = Exchanges(self.cfg.head_max, self.cfg.max_conns)
        self._clock = system_clock()
        salt = int.from_bytes(hashlib.blake2b(self.host.encode(), digest_size=8).digest(), "little")
        # request ids: the plaintext path's, over (pid, fd, start): another salt keeps the two apart
        self._ctx = DecodeContext(self.host, salt ^ 0x7F5A, tuple(sorted(self._allow)), self.cfg.max_value,
                                  self._service, self.cfg.redact_paths)
        self._c = {"captured": 0, "parse_errors": 0, "rejected": 0, "tls_procs_attached": 0,
                   "tls_procs_detached": 0, "tls_calls": 0, "tls_chunks": 0, "tls_chunks_lost": 0,
                   "tls_chunks_orphaned": 0}
        # (pid, conn, plain, wrote) -> (bytes of a call still to come in continuation records, the
        # record's sequence number, the call): a continuation lost in the ring is a gap (_settle_owed)
        self._owed: dict[tuple[int, int, bool, bool], tuple[int, int, Call]] = {}
        self._seq = self._settled_seq = 0
        self._kernel: dict[str, int] = {}
        self._last_reap = time.monotonic()
        self._last_expire = 0.0
        self._gone: dict[int, GoProcess] = {}
        self._h2: dict[tuple[int, int, bool], _H2] = {}  # (pid, conn, plain) -> HTTP/2 connection
        self._h2_rows: list[dict[str, Any]] = []
        self._h2_counts = {"h2_conns": 0, "h2_streams": 0, "h2_frames": 0, "h2_lost": 0, "h2_hpack_errors": 0,
                           "h2_streams_dropped": 0}
        # gRPC linking: (pid, outbound conn, stream id) -> (ts, inbound conn, stream id), from link records
        self._links: dict[tuple[int, int, int], tuple[int, int, int]] = {}
        self._server_ids: dict[tuple[int, int, int], int] = {}  # (pid, conn, stream id) -> request id
        self._link_counts = {"grpc_link_records": 0, "grpc_linked": 0, "grpc_link_no_inbound": 0,
                             "grpc_link_unused": 0, "grpc_link_dropped": 0, "grpc_link_procs": 0}

    # --- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        from bcc import BPF

        cflags = [f"-I{tev.HEADER.parent}", f"-DBS_TLS_RINGBUF_PAGES={self.cfg.ringbuf_pages}",
                  *_kernel_defines()]
        self.bpf = load_bpf(src_file=str(BPF_SOURCE).encode(), cflags=cflags)
        for prog in ("uprobe_tls_read", "uprobe_tls_read_ret", "uprobe_tls_write", "uprobe_net_read",
                     "uprobe_net_read_ret", "uprobe_net_write", "uprobe_grpc_handle", "uprobe_grpc_newstream_ret"):
            self.bpf.load_func(prog.encode(), BPF.KPROBE)
        self.bpf[b"tls_events"].open_ring_buffer(self._on_data)
        self.bpf[b"tls_procs"].open_ring_buffer(self._on_proc)
        for pid in self.cfg.pids or go_procs.scan_pids():
            self._consider(pid)

    def close(self) -> None:
        if self.bpf is None:
            return
        self.poll(0)
        for pid in list(self.procs):
            self._detach(pid)
        self._x.expire(time.clock_gettime_ns(time.CLOCK_MONOTONIC), 0, set(self._gone) | {0})
        self._h2_expire(0, everything=True)
        self._links_expire(0, everything=True)
        self._decode()
        self.counters()
        self.bpf.cleanup()
        self.bpf = None

    def counters(self) -> dict[str, int]:
        if self.bpf is not None:
            stats = self.bpf[b"tls_stats"]
            tot = [sum(stats[C.c_int(i)]) for i in range(tev.STAT_N)]
            self._kernel = {
                "kernel_emitted": tot[tev.STAT_EMITTED],
                "lost_kernel": tot[tev.STAT_LOST_RINGBUF],
                "lost_ringbuf": tot[tev.STAT_LOST_RINGBUF],
                "uprobe_hits": tot[tev.STAT_HITS],
                "source_errors:go_tls:read_return_unmatched": tot[tev.STAT_READ_LOST],
                "source_errors:go_tls:kernel_aux_map_full": tot[tev.STAT_AUX_FULL],
                # saved by a second try (bpf/go_tls.c output): not lost
                "source_errors:go_tls:kernel_ringbuf_retried": tot[tev.STAT_RINGBUF_RETRIED],
                # events the kernel did not run our programs for (another probe program running on that
                # CPU): a request or response missed, or recorded without its end
                "source_errors:go_tls:kernel_events_missed": recursion_misses(self.bpf),
                "h2c_conns_seen": tot[tev.STAT_H2C_CONNS],
                # a connection that began before the agent: its HPACK state is unknown, it is not decoded
                "h2c_untracked_frames": tot[tev.STAT_H2C_UNTRACKED],
                "grpc_link_inbound_streams": tot[tev.STAT_GRPC_INBOUND],
                # an outbound gRPC stream opened on a goroutine no handleStream began (a plain client, or
                # a handler's own child goroutine): not linked
                "grpc_link_no_handler": tot[tev.STAT_GRPC_NO_HANDLER],
            }
        rejected = {f"go_tls_binary_rejected:{k}": v for k, v in go_tls_binary.REJECTED.items()}
        rejected |= {f"grpc_link_binary_rejected:{k}": v for k, v in grpc_link_binary.REJECTED.items()}
        return {**self._c, **self._x.counts, **self._h2_counts, **self._link_counts, **self._kernel,
                "procs_traced": len(self.procs), **self._errors.counters(), **rejected}

    def poll(self, timeout_ms: int) -> None:
        assert self.bpf is not None
        self._clock.refresh()
        self.bpf.ring_buffer_poll(0)
        self._settle_owed()
        now = time.monotonic()
        gone: set[int] = set()
        if now - self._last_reap >= REAP_INTERVAL_S:
            self._last_reap = now
            for pid in [p for p in self.procs if not os.path.exists(f"/proc/{p}")]:
                self._detach(pid)
                gone.add(pid)
        # Quiet exchanges end within a quarter of quiet_s: walking every open connection at each poll
        # (every 50 ms) is work for nothing
        if gone or now - self._last_expire >= self.cfg.quiet_s / 4:
            self._last_expire = now
            now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # the kernel's clock, as records carry it
            self._x.expire(now_ns, int(self.cfg.quiet_s * 1e9), gone)
            self._h2_expire(now_ns, gone=gone)
            self._links_expire(now_ns)
        self._decode()

    def flush(self) -> None:
        self._decode()

    # --- processes ------------------------------------------------------------------------------
    def traced(self, pid: int) -> bool:
        return pid in self.procs

    def add_pid(self, pid: int) -> bool:
        """Trace ``pid`` now (tests); True if it is a Go program with crypto/tls."""
        self._consider(pid)
        return pid in self.procs

    def _consider(self, pid: int) -> None:
        if pid in self.procs or pid == os.getpid() or (self.cfg.pids and pid not in self.cfg.pids):
            return
        if self.cfg.exe_prefix:
            try:
                if not os.readlink(f"/proc/{pid}/exe").startswith(self.cfg.exe_prefix):
                    return
            except OSError:
                return
        try:
            p = go_procs.inspect_pid(pid, want_offsets=True, configured=self.cfg.services)
        except Exception as e:
            self._errors.record("inspect", e, f"pid {pid}")
            return
        if p is None:
            return
        tls = go_tls_binary.find(p.exe) if self.cfg.go_tls else None
        net = (go_tls_binary.find(p.exe, go_tls_binary.FN_NET_READ, go_tls_binary.FN_NET_WRITE)
               if self.cfg.go_h2c else None)
        if tls is None and net is None:
            return
        link = grpc_link_binary.find(p.exe) if net is not None and self.cfg.grpc_link else None
        try:
            self._attach(p, tls, net, link)
        except Exception as e:
            self._errors.record("attach", e, f"pid {pid}")

    def _attach(self, p: GoProcess, tls: go_tls_binary.TlsProbes | None, net: go_tls_binary.TlsProbes | None,
                link: grpc_link_binary.LinkProbes | None = None) -> None:
        leaf = self.bpf[b"tls_pids"].Leaf()
        leaf.tcpconn_fd = p.binary.offsets.get("tcpconn_fd", -1)
        leaf.netfd_sysfd = p.binary.offsets.get("netfd_sysfd", -1)
        for name in ("g_goid", "stream_id", "stream_ct", "h2s_conn", "h2c_conn"):
            setattr(leaf, name, getattr(link, name) if link is not None else -1)
        if p.inode not in self._uprobes:
            names = []
            for probes, kind in ((tls, "tls"), (net, "net")):
                if probes is None:
                    continue
                names += [self._attach_uprobe(p.exe, probes.read, f"uprobe_{kind}_read"),
                          self._attach_uprobe(p.exe, probes.write, f"uprobe_{kind}_write")]
                names += [self._attach_uprobe(p.exe, off, f"uprobe_{kind}_read_ret") for off in probes.read_rets]
            if link is not None:
                names.append(self._attach_uprobe(p.exe, link.handle, "uprobe_grpc_handle"))
                names += [self._attach_uprobe(p.exe, off, "uprobe_grpc_newstream_ret") for off in link.newstream_rets]
            self._uprobes[p.inode] = names
        self._uprobe_users.setdefault(p.inode, set()).add(p.pid)
        self.bpf[b"tls_pids"][C.c_uint32(p.pid)] = leaf
        self.procs[p.pid] = p
        self._c["tls_procs_attached"] += 1
        self._link_counts["grpc_link_procs"] += link is not None

    def _attach_uprobe(self, path: str, file_offset: int, prog: str) -> bytes:
        """Entry-style uprobe at a file offset (never a uretprobe: Go moves stacks)."""
        from bcc import BPF, lib

        fn = self.bpf.load_func(prog.encode(), BPF.KPROBE)
        ev_name = self.bpf._get_uprobe_evname(b"p", path.encode(), file_offset, -1)
        fd = lib.bpf_attach_uprobe(fn.fd, 0, ev_name, path.encode(), file_offset, -1)
        if fd < 0:
            raise OSError(f"uprobe {prog} at {path}+{file_offset:#x} failed")
        self.bpf._add_uprobe_fd(ev_name, fd)
        return bytes(ev_name)

    def _detach(self, pid: int) -> None:
        p = self.procs.pop(pid, None)
        if p is None or self.bpf is None:
            return
        self._gone[pid] = p
        self._c["tls_procs_detached"] += 1
        with contextlib.suppress(KeyError):
            del self.bpf[b"tls_pids"][C.c_uint32(pid)]
        self._owed = {k: v for k, v in self._owed.items() if k[0] != pid}
        for table in (self.bpf[b"tls_reads"], self.bpf[b"h2c_conns"], self.bpf[b"h2_tls_conns"],
                      self.bpf[b"grpc_inbound"]):
            for k in [k for k in all_keys(table) if k.pid == pid]:
                with contextlib.suppress(KeyError):
                    del table[k]
        users = self._uprobe_users.get(p.inode)
        if users is not None:
            users.discard(pid)
            if not users:
                del self._uprobe_users[p.inode]
                for name in self._uprobes.pop(p.inode, []):
                    with contextlib.suppress(Exception):
                        self.bpf.detach_uprobe_event(name)

    # --- records --------------------------------------------------------------------------------
    def _on_proc(self, _ctx, data, _size) -> None:  # type: ignore[no-untyped-def]
        try:  # a ctypes callback: nothing may escape
            kind, pid = C.cast(data, C.POINTER(C.c_uint32 * 2)).contents
            if kind == tev.KIND_PROC_EXEC:
                self._consider(pid)
        except Exception as e:
            self._errors.record("proc_event", e)

    def _on_data(self, _ctx, data, size) -> None:  # type: ignore[no-untyped-def]
        try:  # a ctypes callback: nothing may escape
            if size == tev.LINK_SIZE and C.cast(data, C.POINTER(C.c_uint32)).contents.value == tev.KIND_GRPC_LINK:
                self._on_link(tev.LINK_STRUCT.unpack(C.string_at(data, size)))
                return
            if size < tev.HEADER_SIZE:
                self._errors.record("short_record", None, f"{size} bytes")
                return
            raw = C.string_at(data, size)
            f = dict(zip(tev.FIELD_NAMES, tev.HEADER_STRUCT.unpack_from(raw), strict=True))
            n = min(f["data_len"], size - tev.HEADER_SIZE, tev.DATA_MAX)
            more = bool(f["flags"] & tev.F_MORE)  # HTTP/2: the call goes on in the next record (F_CONT)
            self._c["tls_chunks" if f["flags"] & tev.F_CONT else "tls_calls"] += 1
            call = Call(f["pid"], f["tid"], f["fd"], f["ts_ns"], f["conn"], f["goroutine"], f["len"],
                        f["dir"] == tev.DIR_WRITE, raw[tev.HEADER_SIZE : tev.HEADER_SIZE + n],
                        f["family"], f["saddr"], f["daddr"], f["sport"], f["dport"],
                        bool(f["flags"] & tev.F_ADDR), f["comm"].split(b"\0", 1)[0], bool(f["flags"] & tev.F_PLAIN))
            # A call in several records (F_MORE ... F_CONT) comes contiguously for its connection and
            # direction; a record lost in between (ring full) leaves a gap of the bytes still owed,
            # which the HTTP/2 decoder skips through a DATA payload or marks as lost framing.
            side = (call.pid, call.conn, call.plain, call.is_write)
            owed = self._owed.pop(side, None)
            if more:
                if len(self._owed) >= MAX_OWED:  # bounded: entries of connections that died mid-call
                    self._owed.clear()
                self._seq += 1
                self._owed[side] = (max(f["len"] - n, 0), self._seq, call)
            if f["flags"] & tev.F_CONT:  # only the HTTP/2 decoder wants the rest of a call (HTTP/1: its head)
                if owed is None:  # its start was lost: how many bytes before it is unknown
                    self._c["tls_chunks_orphaned"] += 1
                    self._h2_gap(call, None)
                elif (call.pid, call.conn, call.plain) in self._h2:
                    self._feed_h2(call, more)
                return
            if owed is not None:
                self._c["tls_chunks_lost"] += 1
                self._h2_gap(call, owed[0])
            if call.plain or (call.pid, call.conn, False) in self._h2 or call.data.startswith(H2_PREFACE[:14]):
                self._feed_h2(call, more)
            else:
                self._x.feed(call)
        except Exception as e:
            self._errors.record("data_event", e)

    def _settle_owed(self) -> None:
        """After a drain of the ring: a call still owed its continuation records since the drain before
        lost them (one BPF program run writes them all, so a drain in its middle is followed by one
        that has the rest): a gap of the bytes they carried."""
        for side, (n, seq, call) in list(self._owed.items()):
            if seq <= self._settled_seq:
                del self._owed[side]
                self._c["tls_chunks_lost"] += 1
                self._h2_gap(call, n)
        self._settled_seq = self._seq

    # --- HTTP/2 ----------------------------------------------------------------------------------
    def _h2_gap(self, c: Call, n: int | None) -> None:
        """``n`` bytes of ``c``'s connection and direction were moved but never seen; None: a number
        unknown, so the connection's framing is lost."""
        h = self._h2.get((c.pid, c.conn, c.plain))
        if h is not None:
            if n is None:
                h.conn.lose_framing()
            else:
                h.conn.feed(c.is_write, b"", n, c.ts_ns)
            self._h2_take(h)

    def _feed_h2(self, c: Call, more: bool = False) -> None:
        key = (c.pid, c.conn, c.plain)
        h = self._h2.get(key)
        if h is None or (c.has_addr and (c.fd, c.sport, c.dport) != (h.first.fd, h.first.sport, h.first.dport)):
            if h is not None:  # the address now belongs to another connection
                h.conn.close("close")
                self._h2_take(h)
            if not c.data.startswith(H2_PREFACE[: min(len(c.data), len(H2_PREFACE))]) or not c.data:
                return  # not from its start: the HPACK state is unknown (the kernel passes no such h2c)
            if len(self._h2) >= self.cfg.max_conns:
                self._h2_counts["h2_conns_full"] = self._h2_counts.get("h2_conns_full", 0) + 1
                return
            h = self._h2[key] = _H2(h2_decode.H2Conn(server=not c.is_write), c, "h2c" if c.plain else "h2")
            self._h2_counts["h2_conns"] += 1
        h.last_ns = c.ts_ns
        h.conn.feed(c.is_write, c.data, len(c.data) if more else c.length, c.ts_ns)  # more: the rest comes next
        self._h2_take(h)

    def _h2_take(self, h: _H2) -> None:
        for s in h.conn.take():
            self._h2_rows.append(self._h2_row(h, s))

    def _h2_expire(self, now_ns: int, gone: set[int] = frozenset(), everything: bool = False) -> None:  # type: ignore[assignment]
        idle = int(max(self.cfg.quiet_s, NO_RESPONSE_S) * 1e9)
        for key in list(self._h2):
            h = self._h2[key]
            if everything or key[0] in gone or now_ns - h.last_ns > idle:
                h.conn.close("quiet")
                self._h2_take(h)
                for k, v in h.conn.counts.items():
                    self._h2_counts[k] = self._h2_counts.get(k, 0) + v
                del self._h2[key]

    # --- gRPC linking ---------------------------------------------------------------------------
    def _on_link(self, f: tuple[int, ...]) -> None:
        """A handler goroutine of inbound (in_conn, in_sid) opened outbound (out_conn, out_sid)."""
        _, pid, ts, _goid, in_conn, out_conn, in_sid, out_sid = f
        self._link_counts["grpc_link_records"] += 1
        if len(self._links) >= MAX_LINKS:
            del self._links[next(iter(self._links))]
            self._link_counts["grpc_link_dropped"] += 1
        self._links[(pid, out_conn, out_sid)] = (ts, in_conn, in_sid)

    def _inbound_id(self, pid: int, conn: int, sid: int) -> int:
        """The request id of inbound stream ``sid`` of connection ``conn`` (open or recently ended), 0
        if its connection is not decoded (began before the agent, lost)."""
        rid = self._server_ids.get((pid, conn, sid))
        if rid is not None:
            return rid
        # h2c (*net.TCPConn), or a *tls.Conn (grpc-go's own TLS wraps it: no match, docs/go-tls.md)
        for plain in (True, False):
            h = self._h2.get((pid, conn, plain))
            s = h.conn.streams.get(sid) if h is not None and h.conn.server else None
            if s is not None and s.start_ns:
                return self._h2_request_id(h, s)  # type: ignore[arg-type]
        return 0

    def _h2_request_id(self, h: _H2, s: h2_decode.Stream) -> int:
        c = h.first
        return int(request_ids(self._ctx.salt, np.array([c.pid]), np.array([c.fd]),
                               np.array([s.start_ns + s.id], np.uint64),
                               np.array([ev.ROLE_SERVER if h.conn.server else ev.ROLE_CLIENT]))[0])

    def _parent(self, h: _H2, s: h2_decode.Stream, rid: int) -> int:
        """Remember a server row's id; a client row's parent: the inbound row whose handler opened it."""
        c = h.first
        if h.conn.server:
            if s.request.get("content-type", "").startswith("application/grpc"):
                if len(self._server_ids) >= MAX_SERVER_IDS:
                    del self._server_ids[next(iter(self._server_ids))]
                self._server_ids[(c.pid, c.conn, s.id)] = rid
            return 0
        link = self._links.pop((c.pid, c.conn, s.id), None)
        if link is None:
            return 0
        parent = self._inbound_id(c.pid, link[1], link[2])
        if parent:
            self._link_counts["grpc_linked"] += 1
        else:
            self._link_counts["grpc_link_no_inbound"] += 1
        return parent

    def _links_expire(self, now_ns: int, everything: bool = False) -> None:
        """Link records whose outbound row never came (its connection not decoded, or lost)."""
        idle = int(max(self.cfg.quiet_s, NO_RESPONSE_S) * 1e9) * 2
        for k in [k for k, v in self._links.items() if everything or now_ns - v[0] > idle]:
            del self._links[k]
            self._link_counts["grpc_link_unused"] += 1

    def _h2_row(self, h: _H2, s: h2_decode.Stream) -> dict[str, Any]:
        c = h.first
        server = h.conn.server
        rq, rs = s.request, s.response
        path = rq.get(":path", "").split("?", 1)[0]
        path = bounded(path, MAX_PATH)
        grpc = rq.get("content-type", "").startswith("application/grpc")
        protocol = "grpc" if grpc else h.protocol
        wall = self._clock.wall
        start = s.start_ns
        end = s.end_ns or start
        headers = {n: rq.get(":authority" if n == "host" else n, "") for n in self._allow}
        headers = {n: bounded(v[: self.cfg.max_value], self.cfg.max_value) for n, v in headers.items()}
        extra = [n for n in sorted(self._allow) if n not in HEADER_COLUMNS]
        self._h2_counts["h2_streams"] += 1
        rid = self._h2_request_id(h, s)
        parent = self._parent(h, s, rid)
        p = self.procs.get(c.pid) or self._gone.get(c.pid)
        fam = c.family
        return {
            "time": wall(start), "end_time": wall(end), "duration_ns": max(end - start, 0),
            "host": self.host, "service": p.service if p else "", "service_version": p.version if p else "",
            "go_version": p.binary.go_version if p else "", "pid": c.pid, "tid": c.tid,
            "comm": comm_text(c.comm), "side": "server" if server else "client",
            "method": bounded(rq.get(":method", ""), 16),
            # a gRPC path is the method's name (/pkg.Service/Method), never a credential: not redacted
            "path": redact_path(path) if self.cfg.redact_paths and not grpc else path,
            "route": bounded(path, 1024) if grpc else template_path(path),
            "route_source": "grpc" if grpc else "template",
            "status": _status(rs.get(":status", "")), "grpc_status": bounded(rs.get("grpc-status", ""), 4),
            "request_bytes": s.req_bytes, "response_bytes": s.resp_bytes,
            "family": 4 if fam == 2 else 6,
            "local_addr": address(fam, c.saddr) if fam in (2, 10) else "::", "local_port": c.sport,
            "remote_addr": address(fam, c.daddr) if fam in (2, 10) else "::", "remote_port": c.dport,
            "upstream_host": "" if server else bounded(rq.get(":authority", ""), 1024),
            **{col: headers.get(n, "") for n, col in HEADER_COLUMNS.items()},
            "extra_headers": _extra_json(extra, [headers[n] for n in extra]) if extra else "",
            "head_truncated": int(s.cut), "end_reason": s.end_reason, "request_id": int(rid),
            "parent_request_id": parent, "protocol": protocol, "encrypted": 0 if c.plain else 1,
        }

    def _service(self, pid: int) -> tuple[str, str, str]:
        p = self.procs.get(pid) or self._gone.get(pid)
        return (p.service, p.version, p.binary.go_version) if p else ("", "", "")

    def _decode(self) -> None:
        if self._h2_rows:
            rows, self._h2_rows = self._h2_rows, []
            self._c["captured"] += len(rows)
            self._emit(KIND, HTTP_REQUEST.to_arrow(rows))
        done = self._x.take()
        if not done:
            return
        try:
            events = records(done, self.cfg.head_max)
            dec = decode(events, self._ctx, self._clock)
        except Exception as e:  # a decoder bug loses these rows, counted
            self._c["rejected"] += len(done)
            self._errors.record("decode", e, f"{len(done)} exchanges lost", n=len(done))
            return
        self._c["parse_errors"] += dec.parse_errors
        table = dec.table
        if not table.num_rows:
            return
        n = table.num_rows
        at = table.schema.get_field_index("encrypted")
        table = table.set_column(at, HTTP_REQUEST.arrow_schema.field("encrypted"), pa.array(np.ones(n, np.uint8)))
        self._c["captured"] += n
        self._emit(KIND, table)
