"""HTTP request lifecycles of Go processes: a source for agent/pipeline.py.

Kernel side (bpf/http_trace.c): the read/write syscall tracepoints of traced processes see plaintext
HTTP/1; one record per exchange (request + response) with the first bytes of the request head. The
Go uprobes are optional (``go_uprobes``): each hit costs ~19 us on our machines, so by default routes
are templated from the path and outbound calls are not linked; with them, the ServeMux pattern is
read (Go 1.22+) and each outbound request made while serving an inbound one points at it through
``parent_request_id``.

Emits ``http_request`` rows (table http_requests, ingest/migrations/0010_http_requests.sql).
"""

from __future__ import annotations

import contextlib
import ctypes as C
import hashlib
import json
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import _http_event as ev
from agent import btf, go_procs, http_parse
from agent._bpf_abi import struct_format
from agent.go_binary import FN_FINISH_REQUEST, FN_PC_ROUNDTRIP
from agent.go_procs import GoProcess
from agent.tcp_decode import Clock, address
from blindspot.records import HTTP_REQUEST

KIND = HTTP_REQUEST.name
BPF_SOURCE = ev.BPF_DIR / "http_trace.c"
GO_OFFSET_KEYS = ("response_conn", "response_req", "conn_rwc", "req_pattern", "req_pat", "pattern_str",
                  "persistconn_conn", "tcpconn_fd", "netfd_sysfd")
Emit = Callable[[str, dict], None]

# Kernel struct fields on the fd -> socket -> addresses walk, read from BTF.
_KERNEL_FIELDS = {
    "BS_OFF_TASK_FILES": ("task_struct", "files"),
    "BS_OFF_FILES_FDT": ("files_struct", "fdt"),
    "BS_OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "BS_OFF_FDT_FD": ("fdtable", "fd"),
    "BS_OFF_FILE_PRIVATE": ("file", "private_data"),
    "BS_OFF_FILE_F_OP": ("file", "f_op"),
    "BS_OFF_SOCKET_SK": ("socket", "sk"),
    "BS_OFF_SKC_DADDR": ("sock_common", "skc_daddr"),
    "BS_OFF_SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "BS_OFF_SKC_DPORT": ("sock_common", "skc_dport"),
    "BS_OFF_SKC_NUM": ("sock_common", "skc_num"),
    "BS_OFF_SKC_FAMILY": ("sock_common", "skc_family"),
    "BS_OFF_SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
    "BS_OFF_SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
}


@dataclass
class HttpConfig:
    go_uprobes: bool = False  # route patterns + outbound->inbound links, at ~19 us per probe hit here
    headers: tuple[str, ...] = tuple(http_parse.HEADER_COLUMNS)  # allow-list (lower-case names)
    max_value: int = http_parse.MAX_VALUE
    head_max: int = 1024  # bytes of each request head captured (power of two, 256..4096)
    max_conns: int = 16384
    ringbuf_pages: int = 1024  # 4 MiB
    link_wait_s: float = 2.0  # how long an outbound row waits for its inbound one
    quiet_s: float = 1.0  # an exchange with nothing moved for this long after its response has ended
    services: dict[str, tuple[str, str]] = field(default_factory=dict)  # comm -> (service, version)
    pids: tuple[int, ...] = ()  # trace only these; empty = every Go process
    exe_prefix: str = ""  # trace only binaries under this path (tests: the Go build cache)
    hostname: str = field(default_factory=socket.gethostname)


def _kernel_defines() -> list[str]:
    out = [f"-D{name}={btf.offset_of(btf.FieldRef(s, p))}" for name, (s, p) in _KERNEL_FIELDS.items()]
    fops = 0
    try:  # socket_file_ops: lets the fd walk refuse files that are not sockets
        for line in Path("/proc/kallsyms").read_text().splitlines():
            if line.endswith(" socket_file_ops"):
                fops = int(line.split()[0], 16)
                break
    except OSError:
        pass
    out.append(f"-DBS_SOCKET_FILE_OPS={fops:#x}ULL")
    return out


# struct http_event up to head[] (bpf/http_event.h); checked against the ctypes mirror at import.
_FIXED = struct.Struct(struct_format(ev.event_class(256)._fields_[:-1]))  # type: ignore[attr-defined,arg-type]
assert _FIXED.size == ev.event_class(256).head.offset  # type: ignore[attr-defined]


def _addr(raw: bytes, family: int) -> str:
    return address(family, raw) if family in (socket.AF_INET, socket.AF_INET6) else "::"


class HttpSource:
    """Source shape: open(), poll(timeout_ms) -> emit(kind, row) per record, counters(), close()."""

    name = "http"
    kinds = (KIND,)

    def __init__(self, emit: Emit, config: HttpConfig | None = None):
        self.cfg = config or HttpConfig()
        self._emit = emit
        self.bpf: Any = None
        self.procs: dict[int, GoProcess] = {}
        self._uprobes: dict[tuple[int, int], list[bytes]] = {}  # binary inode -> uprobe event names
        self._uprobe_users: dict[tuple[int, int], set[int]] = {}
        self._allow = frozenset(h.lower() for h in self.cfg.headers)
        self._extra = tuple(h for h in self._allow if h not in http_parse.HEADER_COLUMNS)
        self._c = {"captured": 0, "parse_errors": 0, "procs_attached": 0, "procs_detached": 0,
                   "linked": 0, "link_timeouts": 0}
        # Go linking: recent server rows by (pid, goroutine), outbound rows waiting for theirs.
        self._servers: dict[tuple[int, int], deque] = {}
        self._waiting: deque = deque()
        self._clock = Clock()
        # Salt for request ids: unique per host; a tuple of ints hashes the same in every run.
        self._salt = int.from_bytes(hashlib.blake2b(self.cfg.hostname.encode(), digest_size=8).digest(), "little")
        self._last_sweep = 0.0
        self._swept: set[tuple[int, int]] = set()  # (conn key, start_ns) emitted by _sweep_quiet
        self._event_cls = ev.event_class(self.cfg.head_max)

    # --- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        from bcc import BPF  # Debian's python3-bpfcc; imported late so parsing works without it

        cflags = [
            f"-I{ev.BPF_DIR}",
            f"-DBS_HTTP_MAX_CONNS={self.cfg.max_conns}",
            f"-DBS_RINGBUF_PAGES={self.cfg.ringbuf_pages}",
            f"-DBS_HTTP_HEAD_MAX={self.cfg.head_max}",
            f"-DBS_GO_UPROBES={int(self.cfg.go_uprobes)}",
            *_kernel_defines(),
        ]
        self.bpf = BPF(src_file=str(BPF_SOURCE), cflags=cflags)
        self.bpf["events"].open_ring_buffer(self._on_record)
        if self.cfg.go_uprobes:  # load (verify) once, before any process needs them
            for prog in ("uprobe_finish_request", "uprobe_persistconn_roundtrip"):
                self.bpf.load_func(prog.encode(), BPF.KPROBE)
        for pid in self.cfg.pids or go_procs.scan_pids():
            self._consider(pid)

    def close(self) -> None:
        if self.bpf is None:
            return
        self.poll(0)
        self._flush_waiting(force=True)
        for pid in list(self.procs):
            self._detach(pid)
        self.bpf.cleanup()
        self.bpf = None

    def counters(self) -> dict[str, int]:
        out = dict(self._c)
        if self.bpf is not None:
            stats = self.bpf["stats"]
            tot = [sum(stats[C.c_int(i)]) for i in range(ev.STAT_N)]
            out["kernel_emitted"] = tot[ev.STAT_EMITTED]
            out["lost_kernel"] = tot[ev.STAT_LOST_RINGBUF] + tot[ev.STAT_LOST_MAP_FULL]
            out["lost_ringbuf"] = tot[ev.STAT_LOST_RINGBUF]
            out["lost_map_full"] = tot[ev.STAT_LOST_MAP_FULL]
            out["uprobe_hits"] = tot[ev.STAT_UPROBE_HITS]
        out["procs_traced"] = len(self.procs)
        return out

    def poll(self, timeout_ms: int) -> None:
        assert self.bpf is not None
        self._clock.refresh()
        self.bpf.ring_buffer_poll(timeout_ms)
        now = time.monotonic()
        if now - self._last_sweep >= self.cfg.quiet_s / 4:
            self._last_sweep = now
            self._sweep_quiet()
        self._flush_waiting()

    # --- processes ------------------------------------------------------------------------------
    def traced(self, pid: int) -> bool:
        return pid in self.procs

    def _consider(self, pid: int) -> None:
        if pid in self.procs or pid == os.getpid():
            return
        if self.cfg.pids and pid not in self.cfg.pids:
            return
        if self.cfg.exe_prefix:
            try:
                if not os.readlink(f"/proc/{pid}/exe").startswith(self.cfg.exe_prefix):
                    return
            except OSError:
                return
        p = go_procs.inspect_pid(pid, want_offsets=self.cfg.go_uprobes, configured=self.cfg.services)
        if p is None:
            return
        self._attach(p)

    def add_pid(self, pid: int) -> bool:
        """Trace ``pid`` now (tests; a pid allow-list); True if it is a Go process."""
        if self.cfg.pids and pid not in self.cfg.pids:
            self.cfg.pids = (*self.cfg.pids, pid)
        self._consider(pid)
        return pid in self.procs

    def _attach(self, p: GoProcess) -> None:
        assert self.bpf is not None
        gp = self.bpf["pids"].Leaf()
        for k in GO_OFFSET_KEYS:
            setattr(gp, k, p.binary.offsets.get(k, -1) if self.cfg.go_uprobes else -1)
        self.bpf["pids"][C.c_uint32(p.pid)] = gp
        if self.cfg.go_uprobes:
            users = self._uprobe_users.setdefault(p.inode, set())
            users.add(p.pid)
            if p.inode not in self._uprobes:
                attached = []
                for fn, prog in ((FN_FINISH_REQUEST, "uprobe_finish_request"),
                                 (FN_PC_ROUNDTRIP, "uprobe_persistconn_roundtrip")):
                    off = p.binary.file_offsets.get(fn)
                    if off:
                        attached.append(self._attach_uprobe(p.exe, off, prog))
                self._uprobes[p.inode] = attached
        # Only now is it traced: callers may wait for this before sending traffic.
        self.procs[p.pid] = p
        self._c["procs_attached"] += 1

    def _detach(self, pid: int) -> None:
        p = self.procs.get(pid)
        if p is None or self.bpf is None:
            return
        self._sweep_quiet(exited=pid)  # a process exits without close(): its open exchanges end here
        del self.procs[pid]
        self._c["procs_detached"] += 1
        try:
            del self.bpf["pids"][C.c_uint32(pid)]
        except KeyError:
            pass
        conns = self.bpf["conns"]
        for k in [k for k in conns.keys() if k.value >> 32 == pid]:
            with contextlib.suppress(KeyError):
                del conns[k]
        users = self._uprobe_users.get(p.inode)
        if users is not None:
            users.discard(pid)
            if not users:
                del self._uprobe_users[p.inode]
                for ev_name in self._uprobes.pop(p.inode, []):
                    with contextlib.suppress(Exception):  # the binary may be gone with its process
                        self.bpf.detach_uprobe_event(ev_name)

    def _attach_uprobe(self, path: str, file_offset: int, prog: str) -> bytes:
        """Entry uprobe at a file offset we computed (bcc's own address lookup fails on Go binaries
        without symbols, and on /proc/<pid>/exe paths). Never a uretprobe: Go moves stacks."""
        from bcc import BPF, lib

        assert self.bpf is not None
        fn = self.bpf.load_func(prog.encode(), BPF.KPROBE)
        ev_name = self.bpf._get_uprobe_evname(b"p", path.encode(), file_offset, -1)
        fd = lib.bpf_attach_uprobe(fn.fd, 0, ev_name, path.encode(), file_offset, -1)
        if fd < 0:
            raise OSError(f"uprobe {prog} at {path}+{file_offset:#x} failed")
        self.bpf._add_uprobe_fd(ev_name, fd)
        return ev_name

    def _sweep_quiet(self, exited: int = 0) -> None:
        """Emit exchanges whose response ended but whose connection went quiet: the kernel side only
        sees an end when the next request or a close comes (a keep-alive client waits). A marker in
        ``flushed`` stops the kernel from sending the same exchange again later."""
        assert self.bpf is not None
        conns, flushed = self.bpf["conns"], self.bpf["flushed"]
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        quiet_ns = int(self.cfg.quiet_s * 1e9)
        live = set()
        for k, st in conns.items():
            e = st.ev
            if not st.active:
                continue
            mark = (k.value, e.start_ns)
            live.add(mark)
            if mark in self._swept:
                continue
            if exited:
                if k.value >> 32 != exited:
                    continue
            elif not (e.resp_bytes and now - e.end_ns > quiet_ns):
                continue
            flushed[k] = C.c_uint64(e.start_ns)
            self._swept.add(mark)
            ev_copy = self._event_cls()
            C.memmove(C.addressof(ev_copy), C.addressof(e), C.sizeof(ev_copy))
            ev_copy.end_reason = ev.END_QUIET
            self._on_exchange(bytes(ev_copy))
        self._swept &= live

    # --- records --------------------------------------------------------------------------------
    def _on_record(self, _ctx, data, size) -> None:
        kind = C.cast(data, C.POINTER(C.c_uint32)).contents.value
        if kind == ev.KIND_EXCHANGE:
            self._on_exchange(C.string_at(data, size))
        elif kind == ev.KIND_PROC_EXEC:
            self._consider(C.cast(data, C.POINTER(ev.HttpProc)).contents.pid)
        elif kind == ev.KIND_PROC_EXIT:
            self._detach(C.cast(data, C.POINTER(ev.HttpProc)).contents.pid)

    def _wall(self, mono_ns: int) -> int:
        return self._clock.wall(mono_ns)

    def _on_exchange(self, raw: bytes) -> None:
        # One struct.unpack of the fixed part: ctypes field access per field costs more than parsing.
        (_, pid, tid, fd, start_ns, _resp_start, end_ns, req_bytes, resp_bytes, goroutine, saddr, daddr, sport,
         dport, family, head_len, status_len, route_len, role, end_reason, held_byte, _, flags, _, comm, status_b,
         route_b) = _FIXED.unpack_from(raw)
        head = raw[_FIXED.size : _FIXED.size + head_len]
        if flags & ev.F_HELD_BYTE:
            head = bytes([held_byte]) + head
        req = http_parse.parse_request_head(head, self._allow, self.cfg.max_value)
        if req is None:
            self._c["parse_errors"] += 1
            return
        p = self.procs.get(pid)
        status = http_parse.parse_status(status_b[:status_len])
        server = role == ev.ROLE_SERVER
        route_source = "template"
        route = http_parse.template_path(req.path)
        if route_len:
            route = http_parse.route_from_pattern(route_b[:route_len].decode("utf-8", "replace"))
            route_source = "pattern"
        start, end = self._wall(start_ns), self._wall(end_ns)
        hdr = req.headers
        row = {
            "time": start,
            "end_time": end or start,
            "duration_ns": max(0, end_ns - start_ns) if end_ns else 0,
            "host": self.cfg.hostname,
            "service": p.service if p else "",
            "service_version": p.version if p else "",
            "go_version": p.binary.go_version if p else "",
            "pid": pid,
            "tid": tid,
            "comm": comm.split(b"\0", 1)[0].decode("utf-8", "replace"),
            "side": "server" if server else "client",
            "method": req.method,
            "path": req.path,
            "route": route,
            "route_source": route_source,
            "status": status,
            "request_bytes": req_bytes,
            "response_bytes": resp_bytes,
            "family": 4 if family == socket.AF_INET else 6,
            "local_addr": _addr(saddr, family),
            "local_port": sport,
            "remote_addr": _addr(daddr, family),
            "remote_port": dport,
            "upstream_host": "" if server else hdr.get("host", ""),
            **{col: hdr.get(name, "") for name, col in http_parse.HEADER_COLUMNS.items()},
            "extra_headers": json.dumps({k: hdr[k] for k in self._extra if k in hdr}, ensure_ascii=False)
            if self._extra else "",
            "head_truncated": int(bool(flags & ev.F_HEAD_TRUNC) or not req.complete),
            "end_reason": ev.END_REASONS.get(end_reason, ""),
            "request_id": self._request_id(pid, fd, start_ns, role),
            "parent_request_id": 0,
        }
        self._c["captured"] += 1
        if server:
            if goroutine:
                key = (pid, goroutine)
                q = self._servers.setdefault(key, deque(maxlen=64))
                q.append((start_ns, end_ns or start_ns, row["request_id"], time.monotonic()))
                self._match_waiting(key)
            self._emit(KIND, row)
        elif goroutine:
            if not self._link(row, pid, goroutine, start_ns):
                self._waiting.append((time.monotonic(), pid, goroutine, start_ns, row))
        else:
            self._emit(KIND, row)

    def _request_id(self, pid: int, fd: int, start_ns: int, role: int) -> int:
        return (hash((self._salt, pid, fd, start_ns, role)) & 0xFFFFFFFFFFFFFFFF) or 1

    # --- linking outbound to inbound (Go uprobes) -----------------------------------------------
    def _link(self, row: dict, pid: int, g: int, start_ns: int) -> bool:
        for s_start, s_end, rid, _ in self._servers.get((pid, g), ()):
            if s_start <= start_ns <= s_end:
                row["parent_request_id"] = rid
                self._c["linked"] += 1
                self._emit(KIND, row)
                return True
        return False

    def _match_waiting(self, key: tuple[int, int]) -> None:
        if not self._waiting:
            return
        keep: deque = deque()
        for item in self._waiting:
            _, pid, g, start, row = item
            if (pid, g) != key or not self._link(row, pid, g, start):
                keep.append(item)
        self._waiting = keep

    def _flush_waiting(self, force: bool = False) -> None:
        now = time.monotonic()
        while self._waiting and (force or now - self._waiting[0][0] > self.cfg.link_wait_s):
            row = self._waiting.popleft()[4]
            self._c["link_timeouts"] += 1
            self._emit(KIND, row)
        # Forget server rows older than twice the wait: no outbound row can still need them.
        if len(self._servers) > 4096 or force:
            cutoff = now - 2 * self.cfg.link_wait_s
            for k in [k for k, q in self._servers.items() if q and q[-1][3] < cutoff]:
                del self._servers[k]

