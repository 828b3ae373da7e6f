"""tcp_source: TCP connection lifecycles from the kernel (bpf/tcp_lifecycle.c), via bcc.

The seam at the kernel edge: everything below ``poll`` is BPF; everything it emits is plain rows of
``tcp_connections``. Needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_RESOURCE; bcc also wants
CAP_SYS_ADMIN to read tracefs and compile) — see README, "Privileges".
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from agent import _tcp_event as ev
from agent import procfs
from agent._bpf_abi import load_bpf
from agent.btf import BTFUnavailable, FieldRef, offset_of
from agent.config import TcpSourceConfig
from agent.errors import SourceErrors
from agent.tcp_decode import Clock, decode_closed, decode_open
from contract.records import TCP_CONNECTION, TCP_OPEN_CONNECTION, RecordKind

log = logging.getLogger(__name__)

Emit = Callable[[str, pa.Table], None]  # (record kind, its rows): one record form, Arrow

# -D name -> kernel field. Every struct read in the BPF program is listed here.
KERNEL_FIELDS = {
    "BS_OFF_SRTT_US": FieldRef("tcp_sock", "srtt_us"),
    "BS_OFF_BYTES_RECEIVED": FieldRef("tcp_sock", "bytes_received"),
    "BS_OFF_BYTES_ACKED": FieldRef("tcp_sock", "bytes_acked"),
    "BS_OFF_TOTAL_RETRANS": FieldRef("tcp_sock", "total_retrans"),
    "BS_OFF_SK_ERR": FieldRef("sock", "sk_err"),
}


def rows_table(kind: RecordKind, rows: list[dict[str, Any]], errors: SourceErrors) -> pa.Table:
    """Decoded rows as one table of ``kind``'s schema; a row that does not fit its columns (a decoder
    bug) is counted as ``encode`` and left out, and the others go on."""
    try:
        return kind.to_arrow(rows)
    except Exception:  # find the bad ones: rare, so one by one is fine
        good = []
        for r in rows:
            try:
                kind.to_arrow([r])
            except Exception as e:
                errors.record("encode", e, f"one {kind.name} record lost")
                continue
            good.append(r)
        return kind.to_arrow(good)


def kernel_field_defines() -> list[str]:
    """-D flags with BTF offsets, or [] to let the program fall back to the headers' offsetof."""
    try:
        return [f"-D{name}={offset_of(ref)}" for name, ref in KERNEL_FIELDS.items()]
    except BTFUnavailable as e:
        log.warning("no BTF (%s): using kernel headers' struct layout; right only if they match", e)
        return []


class TcpSource:
    name = "tcp"
    kinds = (TCP_CONNECTION, TCP_OPEN_CONNECTION)

    def __init__(self, config: TcpSourceConfig, emit: Emit, *, host: str) -> None:
        self.config = config
        self._emit = emit
        self._bpf: Any = None
        self.clock = Clock()
        self.host = host
        self.boot_id = procfs.boot_id()
        self.start_ns = time.time_ns()
        self.app_bytes = False
        self.decoded = 0
        self._last_counters: dict[str, int] = {}
        self._closed: list[dict[str, Any]] = []  # decoded in this poll
        self._errors = SourceErrors(self.name, log)

    def open(self) -> None:
        from bcc import BPF  # Debian's python3-bpfcc; imported here so the rest runs without it

        self.app_bytes = bool(
            BPF.tracepoint_exists("sock", "sock_send_length")
            and BPF.tracepoint_exists("sock", "sock_recv_length")
        )
        cflags = [
            f"-I{ev.BPF_DIR}",
            f"-DBS_MAX_CONNS={self.config.max_conns}",
            f"-DBS_RINGBUF_PAGES={self.config.ringbuf_pages}",
            *kernel_field_defines(),
        ]
        if self.app_bytes:
            cflags.append("-DBS_HAVE_SOCK_LENGTH")
        self._bpf = load_bpf(src_file=str(ev.BPF_DIR / "tcp_lifecycle.c").encode(), cflags=cflags)
        self._seed_listeners()
        self._bpf["events"].open_ring_buffer(self._on_event)

    def _seed_listeners(self) -> None:
        listeners = self._bpf["listeners"]
        n = 0
        for port, pid, comm in procfs.listener_owners():
            leaf = listeners.Leaf()
            leaf.pid = pid
            leaf.comm = comm.encode()[:15]
            try:
                listeners[listeners.Key(port)] = leaf
            except Exception as e:  # full: that port's owner is learnt at its next listen()
                self._errors.record("listeners_map_full", e, f"port {port} pid {pid}")
                continue
            n += 1
        log.info("seeded %d listening sockets' owners from /proc", n)

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> None:
        # A ctypes callback: nothing may escape (bcc would print it and go on as if nothing happened).
        try:
            e = ev.unpack(ctypes.string_at(data, ev.TCP_EVENT_SIZE))
            if e.kind == ev.KIND_CLOSED:
                self._emit_closed(e)
        except Exception as ex:
            self._errors.record("event", ex, "one closed-connection record lost")

    def _emit_closed(self, e: ev.TcpRecord) -> None:
        row = decode_closed(
            e,
            clock=self.clock,
            host=self.host,
            boot_id=self.boot_id,
            agent_start_ns=self.start_ns,
            app_bytes=self.app_bytes,
        )
        self.decoded += 1
        self._closed.append(row)

    def _emit_closed_rows(self) -> None:
        # Rows decoded in one poll (one ring-buffer drain) go on as one table.
        if self._closed:
            rows, self._closed = self._closed, []
            self._emit(TCP_CONNECTION.name, rows_table(TCP_CONNECTION, rows, self._errors))

    def poll(self, timeout_ms: int) -> None:
        self.clock.refresh()
        try:
            self._bpf.ring_buffer_poll(timeout_ms)
        finally:
            self._emit_closed_rows()

    def snapshot_open(self) -> int:
        """Emit one ``tcp_connections_open`` row per open connection; return how many. Also emits
        connections closed longer than ``closed_grace_s`` ago whose owner still holds the fd."""
        now = time.time_ns()
        stale_before = time.monotonic_ns() - int(self.config.closed_grace_s * 1e9)
        conns = self._bpf["conns"]
        open_rows: list[dict[str, Any]] = []
        for k, leaf in conns.items():
            c = ev.unpack(bytes(leaf))
            if c.flags & ev.F_CLOSED:
                if c.end_ns < stale_before:
                    try:
                        del conns[k]  # the deleter emits: the kernel may be emitting it right now
                    except KeyError:
                        continue
                    try:
                        self._emit_closed(c)
                    except Exception as ex:
                        self._errors.record("event", ex, "one closed-connection record lost")
                continue
            try:
                row = decode_open(c, clock=self.clock, host=self.host, boot_id=self.boot_id,
                                  agent_start_ns=self.start_ns, snapshot_ns=now)
            except Exception as ex:  # one bad entry, not the snapshot
                self._errors.record("snapshot", ex, "one open connection not reported")
                continue
            if row is not None:
                open_rows.append(row)
        self._emit_closed_rows()
        if open_rows:
            self._emit(TCP_OPEN_CONNECTION.name, rows_table(TCP_OPEN_CONNECTION, open_rows, self._errors))
        return len(open_rows)

    def counters(self) -> dict[str, int]:
        """Cumulative kernel-side counters: records emitted, and records/connections lost."""
        if self._bpf is None:  # closed: the last values read
            return {**self._last_counters, **self._errors.counters()}
        stats = self._bpf["stats"]
        per_slot = [sum(stats[stats.Key(i)]) for i in range(ev.STAT_N)]
        self._last_counters = {
            "kernel_emitted": per_slot[ev.STAT_EMITTED],
            "lost_ringbuf": per_slot[ev.STAT_LOST_RINGBUF],
            "lost_map_full": per_slot[ev.STAT_LOST_MAP_FULL],
            "source_errors:tcp:kernel_listeners_full": per_slot[ev.STAT_LISTENERS_FULL],
            "decoded": self.decoded,
        }
        return {**self._last_counters, **self._errors.counters()}

    def close(self) -> None:
        if self._bpf is not None:
            self.poll(0)  # drain what the kernel already submitted
            self.counters()
            self._bpf.cleanup()
            self._bpf = None
