"""tcp_source: TCP connection lifecycles from the kernel (bpf/tcp_lifecycle.c), via bcc.

The seam at the kernel edge: everything below ``poll`` is BPF; everything it emits is plain rows of
``tcp_connections``. Needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_RESOURCE; bcc also wants
CAP_SYS_ADMIN to read tracefs and compile) — see README, "Privileges".
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from agent import _tcp_event as ev
from agent import packet_drops, procfs
from agent._bpf_abi import load_bpf, recursion_misses_by_program, run_raw_tracepoint
from agent.bpf_maps import lookup_batch
from agent.btf import BTFUnavailable, FieldRef, offset_of
from agent.clock import system_clock
from agent.config import TcpSourceConfig
from agent.errors import SourceErrors
from agent.ringbuf import FixedRingReader
from agent.tcp_bulk import DTYPE, decode_closed_batch
from agent.tcp_decode import decode_closed, decode_open
from contract.records import PACKET_DROP, TCP_CONNECTION, TCP_OPEN_CONNECTION, RecordKind

log = logging.getLogger(__name__)
# A drain that finds the ring this full, or this long after the previous one, is a warning: the ring
# loses records once full (a second's churn fills ~a quarter of the default ring).
RING_WARN_FILL = 0.5
RING_WARN_GAP_S = 1.0
# Entries that looked open in two snapshots in a row are checked against the kernel's socket
# (check_conn, ~4 us each): at most this many per snapshot, a random choice when there are more.
MAX_OPEN_CHECKS = 20_000

Emit = Callable[[str, pa.Table], None]  # (record kind, its rows): one record form, Arrow

# -D name -> kernel field. Every struct read in the BPF program is listed here.
KERNEL_FIELDS = {
    "BS_OFF_SRTT_US": FieldRef("tcp_sock", "srtt_us"),
    "BS_OFF_BYTES_RECEIVED": FieldRef("tcp_sock", "bytes_received"),
    "BS_OFF_BYTES_ACKED": FieldRef("tcp_sock", "bytes_acked"),
    "BS_OFF_TOTAL_RETRANS": FieldRef("tcp_sock", "total_retrans"),
    "BS_OFF_SK_ERR": FieldRef("sock", "sk_err"),
    # what the classic inet_sock_set_state tracepoint would copy out (the programs attach raw), and what
    # check_conn compares: is the socket at an entry's address still that connection?
    "BS_OFF_SK_PROTOCOL": FieldRef("sock", "sk_protocol"),
    "BS_OFF_INET_SPORT": FieldRef("inet_sock", "inet_sport"),
    "BS_OFF_SKC_RCV_SADDR": FieldRef("sock_common", "skc_rcv_saddr"),
    "BS_OFF_SKC_V6_RCV_SADDR": FieldRef("sock_common", "skc_v6_rcv_saddr"),
    "BS_OFF_SKC_STATE": FieldRef("sock_common", "skc_state"),
    "BS_OFF_SKC_FAMILY": FieldRef("sock_common", "skc_family"),
    "BS_OFF_SKC_NUM": FieldRef("sock_common", "skc_num"),
    "BS_OFF_SKC_DPORT": FieldRef("sock_common", "skc_dport"),
    "BS_OFF_SKC_DADDR": FieldRef("sock_common", "skc_daddr"),
    "BS_OFF_SKC_V6_DADDR": FieldRef("sock_common", "skc_v6_daddr"),
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
    kinds = (TCP_CONNECTION, TCP_OPEN_CONNECTION, PACKET_DROP)

    def __init__(self, config: TcpSourceConfig, emit: Emit, *, host: str) -> None:
        self.config = config
        self._emit = emit
        self._bpf: Any = None
        self.clock = system_clock()
        self.host = host
        self.boot_id = procfs.boot_id()
        self.start_ns = time.time_ns()
        self.app_bytes = False
        self.decoded = 0
        self.drop_names: dict[int, str] = {}  # the running kernel's drop reasons; empty: drops not traced
        self._drop_tally: packet_drops.DropTally | None = None
        self._drops_by_reason: Counter[str] = Counter()  # packet_drops:<reason> (Prometheus, not pipeline_counters)
        self._last_counters: dict[str, int] = {}
        self._closed: list[dict[str, Any]] = []  # decoded one by one (snapshot sweeps)
        self._ring: FixedRingReader | None = None
        self._rescue: FixedRingReader | None = None
        self._pending: list[np.ndarray] = []  # records read from the ring, not decoded yet
        self._pending_n = 0
        self._last_decode = time.monotonic()
        self._last_drain = time.monotonic()
        self._ring_late = 0  # drains that found the ring RING_WARN_FILL full
        self._ring_late_logged = -60.0
        self._drained = False  # the first drain comes after every other source has opened
        self._check_fd: int | None = None  # check_conn, loaded to be run on demand
        self._twin_links: list[int] = []  # on_*_nested, attached after their programs (bcc attaches one per tracepoint)
        self._open_before: dict[int, tuple[int, int, int]] = {}  # sk -> identity, at the last snapshot
        self._missed: dict[str, int] = {}  # events the kernel skipped, per program, as last read
        self._missed_total = 0  # of which no twin took: lost
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
            f"-DBS_RESCUE_RINGBUF_PAGES={self.config.rescue_ringbuf_pages}",
            *kernel_field_defines(),
        ]
        if self.app_bytes:
            cflags.append("-DBS_HAVE_SOCK_LENGTH")
        drops = packet_drops.kernel_drops()
        if drops is not None:
            cflags += drops[0]
            self.drop_names = dict(drops[1].names)
            self._drop_tally = packet_drops.DropTally(self.drop_names)
        self._bpf = load_bpf(src_file=str(ev.BPF_DIR / "tcp_lifecycle.c").encode(), cflags=cflags)
        try:
            self._check_fd = self._bpf.load_func(b"check_conn", BPF.RAW_TRACEPOINT).fd
        except Exception as e:  # bcc raises a bare Exception; the lifecycles work without it
            log.warning("open connections will not be checked against the kernel's sockets: %s", e)
        self._attach_twins()
        self._seed_listeners()
        # Read in bulk straight from the ring's mmap (no callback per record): agent/ringbuf.py.
        self._ring = FixedRingReader(self._bpf["events"].map_fd, self.config.ringbuf_pages * mmap.PAGESIZE, DTYPE)
        self._rescue = FixedRingReader(self._bpf["events_rescue"].map_fd,
                                       self.config.rescue_ringbuf_pages * mmap.PAGESIZE, DTYPE)
        self._last_drain = time.monotonic()  # recording from here: the sources opened after us take time too

    def _attach_twins(self) -> None:
        """Attach each on_*_nested program after its tracepoint's own, which bcc attached at load
        (bpf/tcp_lifecycle.c: a twin takes the events its program did not finish, which it knows by
        running after it: a tracepoint runs its programs in the order they were attached)."""
        from bcc import BPF, lib

        twins = [(b"on_state_nested", b"inet_sock_set_state"), (b"on_destroy_nested", b"tcp_destroy_sock")]
        if self.drop_names:
            twins.append((b"on_drop_nested", b"kfree_skb"))
        for fn, tp in twins:
            try:
                fd, why = lib.bpf_attach_raw_tracepoint(self._bpf.load_func(fn, BPF.RAW_TRACEPOINT).fd, tp), "refused"
            except Exception as e:  # bcc raises a bare Exception
                fd, why = -1, str(e)
            if fd < 0:
                log.warning("%s not attached (%s): its events the kernel skips stay skipped (counted)",
                            fn.decode(), why)
            else:
                self._twin_links.append(fd)

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

    def _decode(self) -> None:
        """Decode every record read so far into one tcp_connections table, and hand it on. Nothing
        raises out of here: a decoder bug loses (and counts) the records of this one drain."""
        self._last_decode = time.monotonic()
        if not self._pending:
            return
        recs = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_n = [], 0
        closed = recs[recs["kind"] == ev.KIND_CLOSED]
        if len(closed) < len(recs):  # the kernel sends closed records only: never guessed at
            self._errors.record("event_kind", None, "a ring record that is not a closed connection",
                                n=len(recs) - len(closed))
        if not len(closed):
            return
        try:
            table = decode_closed_batch(closed, clock=self.clock, host=self.host, boot_id=self.boot_id,
                                        agent_start_ns=self.start_ns, app_bytes=self.app_bytes,
                                        drop_names=self.drop_names)
        except Exception as ex:
            self._errors.record("event", ex, f"{len(closed)} closed-connection records lost", n=len(closed))
            return
        self.decoded += table.num_rows
        self._emit(TCP_CONNECTION.name, table)

    def _emit_closed(self, e: ev.TcpRecord) -> None:
        row = decode_closed(
            e,
            clock=self.clock,
            host=self.host,
            boot_id=self.boot_id,
            agent_start_ns=self.start_ns,
            app_bytes=self.app_bytes,
            drop_names=self.drop_names,
        )
        self.decoded += 1
        self._closed.append(row)

    def _emit_closed_rows(self) -> None:
        # Rows decoded in one poll (one ring-buffer drain) go on as one table.
        if self._closed:
            rows, self._closed = self._closed, []
            self._emit(TCP_CONNECTION.name, rows_table(TCP_CONNECTION, rows, self._errors))

    def poll(self, timeout_ms: int) -> None:
        """Read what the kernel submitted (never blocks: the ring wakes nobody, the pipeline polls on a
        timer); decode it once ``decode_interval_s`` has passed or ``decode_max_rows`` are waiting."""
        assert self._ring is not None
        self.clock.refresh()
        self._check_ring()
        try:
            self._read_rings()
            if (self._pending_n >= self.config.decode_max_rows
                    or time.monotonic() - self._last_decode >= self.config.decode_interval_s):
                self._decode()
        finally:
            self._emit_closed_rows()

    def _check_ring(self) -> None:
        """How close the ring came to losing records since the last drain: counted when it is half
        full, logged (once a minute) with the time since that drain, which says where to look: a long
        gap is the agent's loop or process held up, a short one a burst larger than the ring."""
        assert self._ring is not None
        now = time.monotonic()
        gap, self._last_drain = now - self._last_drain, now
        fill = self._ring.pending_bytes() / self._ring.size
        if fill >= RING_WARN_FILL:
            self._ring_late += 1
        if not self._drained and fill < RING_WARN_FILL:  # start-up: the other sources were opening
            self._drained = True
            log.info("first drain of the tcp ring buffer %.2f s after it opened (%.0f%% full)", gap, 100 * fill)
            return
        self._drained = True
        if (fill >= RING_WARN_FILL or gap >= RING_WARN_GAP_S) and now - self._ring_late_logged >= 60.0:
            self._ring_late_logged = now
            log.warning("tcp ring buffer %.0f%% full, %.2f s after the previous drain (it loses records when "
                        "full; drains over half full are counted as ring_half_full:tcp; logged once a minute)",
                        100 * fill, gap)

    def flush(self) -> None:
        """Read and hand on everything the kernel has submitted so far, now."""
        assert self._ring is not None
        self.clock.refresh()
        self._read_rings()
        self._decode()
        self._emit_closed_rows()

    def _read_rings(self) -> None:
        assert self._ring is not None and self._rescue is not None
        for ring in (self._ring, self._rescue):
            recs = ring.read()
            if len(recs):
                self._pending.append(recs)
                self._pending_n += len(recs)

    def snapshot_open(self) -> int:
        """Emit one ``tcp_connections_open`` row per open connection; return how many. Also emits
        connections closed longer than ``closed_grace_s`` ago whose owner still holds the fd, and
        those whose socket is gone although their entry still looks open (``_check_open``)."""
        now = time.time_ns()
        stale_before = time.monotonic_ns() - int(self.config.closed_grace_s * 1e9)
        conns = self._bpf["conns"]
        open_now: dict[int, tuple[int, int, int]] = {}
        open_rows: list[tuple[int, dict[str, Any]]] = []
        for k, leaf in self._walk(conns):
            c = ev.unpack(bytes(leaf))
            if c.flags & ev.F_SENT:
                # Sent already; its delete was refused (bpf/tcp_lifecycle.c). The kernel replaces it when
                # the address is reused: deleting it here could delete the new connection instead.
                continue
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
            open_now[c.sk] = (c.start_ns, c.established_ns, c.sport << 16 | c.dport)
            try:
                row = decode_open(c, clock=self.clock, host=self.host, boot_id=self.boot_id,
                                  agent_start_ns=self.start_ns, snapshot_ns=now, drop_names=self.drop_names)
            except Exception as ex:  # one bad entry, not the snapshot
                self._errors.record("snapshot", ex, "one open connection not reported")
                continue
            if row is not None:
                open_rows.append((c.sk, row))
        gone = self._check_open({sk: i for sk, i in open_now.items() if self._open_before.get(sk) == i})
        self._open_before = {sk: i for sk, i in open_now.items() if sk not in gone}
        self._emit_closed_rows()
        rows = [row for sk, row in open_rows if sk not in gone]
        if rows:
            self._emit(TCP_OPEN_CONNECTION.name, rows_table(TCP_OPEN_CONNECTION, rows, self._errors))
        self.report_drops()
        return len(rows)

    def _check_open(self, entries: dict[int, tuple[int, int, int]]) -> set[int]:
        """Of ``entries`` (sk -> start_ns, established_ns, ports: unchanged since the last snapshot),
        those whose socket the kernel has closed or reused: bpf/tcp_lifecycle.c's check_conn sent
        them as closed (``close_unseen``), through the ring like any other end."""
        if self._check_fd is None or not entries:
            return set()
        sks = list(entries)
        if len(sks) > MAX_OPEN_CHECKS:  # bounded time per snapshot; every entry comes up in time
            sks = random.sample(sks, MAX_OPEN_CHECKS)
        gone: set[int] = set()
        for sk in sks:
            try:
                answer = run_raw_tracepoint(self._check_fd, [sk, *entries[sk]])
            except OSError as e:  # kernel before 5.10, or a refusal: not retried, so not repeated
                self._errors.record("open_check", e, "open connections are no longer checked against the "
                                    "kernel's sockets; an entry whose end the kernel skipped stays open")
                self._check_fd = None
                break
            if answer == ev.CHECK_GONE:
                gone.add(sk)
        return gone

    def _walk(self, table: Any) -> Iterator[tuple[Any, Any]]:
        """The map's entries in batches (agent/bpf_maps.py: a key-by-key walk restarts whenever the
        key it stands on closes, for seconds under churn); key by key where the kernel refuses."""
        seen = 0
        try:
            for pair in lookup_batch(table):
                seen += 1
                yield pair
        except OSError as e:
            if seen:  # refused midway: this snapshot is partial, the next one is whole again
                self._errors.record("snapshot", e, f"batch lookup stopped after {seen} entries")
                return
            self._errors.record("snapshot", e, "batch lookup refused: walking the map key by key")
            yield from table.items()

    def report_drops(self) -> int:
        """Emit one ``packet_drops`` row per (reason, netns) whose kernel counts moved since the last
        call; return how many."""
        if self._drop_tally is None or self._bpf is None:
            return 0
        try:
            entries = packet_drops.map_entries(self._bpf["drops"])
            rows = self._drop_tally.rows(entries, host=self.host, time_ns=time.time_ns())
        except Exception as ex:  # the next call reports these drops: counts are cumulative
            self._errors.record("drops", ex, "packet drops not read this time")
            return 0
        for row in rows:
            self._drops_by_reason[row["reason"]] += row["drops"]
        if rows:
            self._emit(PACKET_DROP.name, rows_table(PACKET_DROP, rows, self._errors))
        return len(rows)

    def counters(self) -> dict[str, int]:
        """Cumulative kernel-side counters: records emitted, and records/connections lost."""
        drops = {f"packet_drops:{reason}": n for reason, n in self._drops_by_reason.items()}
        if self._bpf is None:  # closed: the last values read
            return {**self._last_counters, **self._errors.counters(), **drops}
        stats = self._bpf["stats"]
        per_slot = [sum(stats[stats.Key(i)]) for i in range(ev.STAT_N)]
        self._last_counters = {
            "kernel_emitted": per_slot[ev.STAT_EMITTED],
            "lost_ringbuf": per_slot[ev.STAT_LOST_RINGBUF],
            "lost_map_full": per_slot[ev.STAT_LOST_MAP_FULL],
            "source_errors:tcp:kernel_listeners_full": per_slot[ev.STAT_LISTENERS_FULL],
            "source_errors:tcp:kernel_drop_keys_full": per_slot[ev.STAT_DROP_KEYS_FULL],
            # refused by the ring and taken by the rescue ring, or map operations refused once and retried
            # (bpf/tcp_lifecycle.c): records saved, not lost
            "source_errors:tcp:kernel_ringbuf_rescued": per_slot[ev.STAT_RINGBUF_RESCUED],
            "source_errors:tcp:kernel_map_refused": per_slot[ev.STAT_MAP_REFUSED],
            # events the kernel skipped, a program already running on that CPU (a state change, a
            # socket's end, a drop): their connections may be recorded wrong, or not at all
            "source_errors:tcp:kernel_events_missed": self._events_missed(per_slot[ev.STAT_NESTED_HANDLED]),
            "source_errors:tcp:kernel_events_nested": per_slot[ev.STAT_NESTED_HANDLED],
            # connections whose end the kernel skipped, found gone later and sent (close_unseen)
            "source_errors:tcp:close_unseen": per_slot[ev.STAT_CLOSE_UNSEEN],
            "decoded": self.decoded,
            "ring_half_full:tcp": self._ring_late,
        }
        return {**self._last_counters, **self._errors.counters(), **drops}

    def _events_missed(self, handled: int) -> int:
        """Events the kernel skipped, summed over the programs, less those their twins handled (a twin
        skipped itself is no event lost: its program took that event); logged, by program, as it grows."""
        now = {k: n for k, n in recursion_misses_by_program(self._bpf).items() if not k.endswith("_nested")}
        missed = max(sum(now.values()) - handled, 0)
        if missed > self._missed_total:
            grew = {k: n - self._missed.get(k, 0) for k, n in now.items() if n > self._missed.get(k, 0)}
            log.warning("the kernel skipped %d more of the tcp source's events (%s; a program already running on "
                        "that CPU): their connections may be recorded without that step", missed - self._missed_total,
                        ", ".join(f"{name.removeprefix('raw_tracepoint__')} {n}" for name, n in sorted(grew.items())))
        self._missed, self._missed_total = now, missed
        return missed

    def close(self) -> None:
        if self._bpf is not None:
            self.flush()  # drain what the kernel already submitted
            self.report_drops()
            self.counters()
            for ring in (self._ring, self._rescue):
                if ring is not None:
                    ring.close()
            self._ring = self._rescue = None
            for fd in self._twin_links:
                os.close(fd)
            self._twin_links = []
            self._bpf.cleanup()
            self._bpf = None
