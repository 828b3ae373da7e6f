"""The agent's whole pipeline, read from source to sink.

    kernel ─► source.poll ─emit(kind, Arrow table)─► Batcher ─► [hand-off: bounded queue] ─► writer ─► sink
              (ring buffers, decoders)                  (rows/age)   full: dropped, counted    thread    ClickHouse
                                                                                                         or Kafka
    every snapshot_interval_s: open connections ─► the same path
    every counters_interval_s: the pipeline's own counters ─► pipeline_counters ─► the same path
    flush_pending() (a query through the running agent): every batch now, then wait for the writer

The kernel side never waits for the sink: a slow or absent sink fills the queue, and what does not fit
is dropped and counted (``dropped_queue_full``), never lost in silence. Kernel-side loss is read
from the sources and carried the same way.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import pyarrow as pa

from agent.config import PipelineConfig
from agent.metrics import AgentMetrics
from contract.batch import Batch, Batcher
from contract.errors import IngestError, TransientError
from contract.records import KINDS, PIPELINE_COUNTER, TCP_CONNECTION, RecordKind

log = logging.getLogger(__name__)

# Batching by component, where the config leaves it unset. Into the embedded store every insert has a
# fixed cost (its rollup views: ~80 ms of CPU and 7 new parts per insert of tcp_connections, whatever
# its size; docs/tcp-cost.md), so batches are larger and wait longer there (and fewer may queue: the
# same memory bound); a query through the running agent flushes them first (flush_pending), so it
# still sees what was captured. Kafka messages are cheap: small batches, soon.
COMPONENT_DEFAULTS: dict[str, dict[str, float]] = {
    "embedded": {"batch_max_rows": 100_000, "batch_max_age_s": 5.0, "queue_batches": 16},
    "agent": {"batch_max_rows": 20_000, "batch_max_age_s": 1.0, "queue_batches": 64},
}
SLOW_STEP_S = 1.0  # a loop step this long is logged: a ring buffer holds ~4 s of records at 14,000 conns/s
FORCED_FLUSH_MIN_INTERVAL_S = 0.25  # flush_pending inserts at most this often (a query waits for its turn)


class _Flushed:
    """A marker through the hand-off queue: the writer has written everything queued before it."""

    def __init__(self, waiters: list[threading.Event]) -> None:
        self.waiters = waiters


class Source(Protocol):
    name: str

    def open(self) -> None: ...
    def poll(self, timeout_ms: int) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class Sink(Protocol):
    """Takes one batch of one kind (an Arrow table of the kind's schema); returns once it is accepted
    (raises contract.errors' IngestError otherwise).
    A sink that loses records after ``write`` returned (asynchronous delivery, e.g. Kafka) also has
    ``counts() -> {"dropped": n, ...}``; the pipeline reports those drops as ``dropped_sink``."""

    def write(self, kind: RecordKind, rows: Batch) -> object: ...


# Counters that are written to pipeline_counters, as deltas per interval.
REPORTED = ("captured", "lost_ringbuf", "lost_map_full", "dropped_queue_full", "dropped_sink",
            "dropped_write_error", "rows_written",
            "rejected")  # rejected: records a source refused (HTTP: decoder failures, counted per record)
# ... and every counter with one of these prefixes (failures counted by kind: agent/errors.py, Go binaries
# refused by reason: agent/go_binary.py; HTTP exchanges before their process was fully traced, and those of
# processes traced from exec that proved not ours: agent/http_source.py; loop steps over SLOW_STEP_S: a
# ring buffer went undrained that long; drains that found a ring half full: agent/tcp_source.py), once
# it is non-zero.
REPORTED_PREFIXES = ("source_errors:", "slow_loop_steps:", "ring_half_full:", "go_binary_", "requests_before_traced",
                     "untraced_records")
# A source's counters of refused records -> the reason label of blindspot_rejected_records_total.
REJECTION_REASONS = {"rejected": "decode_error", "parse_errors": "not_http"}


class Pipeline:
    def __init__(self, sources: Sequence[Source], sink: Sink, config: PipelineConfig, *, host: str,
                 component: str = "agent", metrics: AgentMetrics | None = None) -> None:
        self.sources = list(sources)
        self.sink = sink
        self.config = config
        self.host = host
        self.component = component  # pipeline_counters.component: agent, embedded
        self.metrics = metrics or AgentMetrics.on()
        own = COMPONENT_DEFAULTS.get(component, COMPONENT_DEFAULTS["agent"])
        self.batcher = Batcher(int(config.batch_max_rows or own["batch_max_rows"]),
                               config.batch_max_age_s or own["batch_max_age_s"])
        self.handoff: queue.Queue[tuple[RecordKind, Batch] | _Flushed | None] = queue.Queue(
            int(config.queue_batches or own["queue_batches"])
        )
        self._flush_lock = threading.Lock()
        self._flush_waiters: list[threading.Event] = []
        self._next_forced_flush = 0.0
        self._stopped = False
        self.counts: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=20)  # latest closed connections (live view)
        self.open_connections = 0
        self.started = time.monotonic()
        self._reported: dict[str, int] = {}
        self._exported: dict[str, int] = {}  # what the Prometheus counters have been told so far
        self._writer = threading.Thread(target=self._write_loop, name="writer", daemon=True)
        self._write_errors_logged: set[type] = set()
        self._poll_errors_logged: set[tuple[str, type]] = set()
        self._slow_logged: dict[str, float] = {}
        self._step: tuple[str, float, int] | None = None  # the loop step running: (name, start, thread)

    # --- source side ---------------------------------------------------------------------
    def emit(self, kind_name: str, table: pa.Table) -> None:
        """A source's records of one kind, as an Arrow table of the kind's schema."""
        n = table.num_rows
        self.counts["captured"] += n
        self.counts[f"captured:{kind_name}"] += n
        if kind_name == TCP_CONNECTION.name and n:
            keep = self.recent.maxlen or 0
            self.recent.extend(TCP_CONNECTION.to_rows(table.slice(max(0, n - keep))))
        batch = self.batcher.add(kind_name, table)
        if batch is not None:
            self._hand_off(kind_name, batch)

    def _hand_off(self, kind_name: str, rows: Batch) -> None:
        try:
            self.handoff.put_nowait((KINDS[kind_name], rows))
        except queue.Full:
            n = rows.num_rows
            self.counts["dropped_queue_full"] += n
            self.metrics.dropped.labels("queue_full").inc(n)
            log.warning("sink is behind: dropped %d %s records (queue full)", n, kind_name)
        self.metrics.queue_batches.set(self.handoff.qsize())

    def kernel_counters(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for s in self.sources:
            total.update(s.counters())
        return dict(total)

    def all_counters(self) -> dict[str, int]:
        """Sources' counters, then the pipeline's own (which win), with drops after the sink's write."""
        current = {**self.kernel_counters(), **self.counts}
        sink_counts = getattr(self.sink, "counts", None)
        if sink_counts is not None:
            current["dropped_sink"] = current.get("dropped_sink", 0) + int(sink_counts().get("dropped", 0))
        return current

    def flush_pending(self, timeout_s: float = 5.0) -> bool:
        """Hand on every batch the pipeline holds and wait until the writer has written them (a query
        then sees every record the sources have emitted). At most one such insert per
        FORCED_FLUSH_MIN_INTERVAL_S: a call within it waits for the next one (with nothing batched,
        it only waits for the writer). False if that did not happen within ``timeout_s`` (the
        pipeline not running yet, or the sink far behind)."""
        done = threading.Event()
        with self._flush_lock:
            if self._stopped:  # everything it held is written
                return True
            self._flush_waiters.append(done)
        return done.wait(timeout_s)

    def _forced_flush(self, now: float) -> None:
        """The run loop's half of flush_pending: every batch, then the marker the writer answers. With
        nothing batched, only the marker (no insert: no turn to wait for)."""
        empty = self.batcher.pending() == 0
        with self._flush_lock:
            if not self._flush_waiters or (not empty and now < self._next_forced_flush):
                return
            waiters, self._flush_waiters = self._flush_waiters, []
        if not empty:
            self._next_forced_flush = now + FORCED_FLUSH_MIN_INTERVAL_S
            for kind_name, rows in self.batcher.drain():
                self._hand_off(kind_name, rows)
        try:
            self.handoff.put_nowait(_Flushed(waiters))
        except queue.Full:  # the sink is behind (the loop never waits for it): the queries go on
            for w in waiters:
                w.set()

    # --- sink side -----------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            item = self.handoff.get()
            if item is None:
                return
            if isinstance(item, _Flushed):
                for w in item.waiters:
                    w.set()
                continue
            kind, rows = item
            n = rows.num_rows
            t0 = time.perf_counter()
            try:
                self.sink.write(kind, rows)
            except IngestError as e:
                reason = "shutdown" if isinstance(e, TransientError) else "sink_error"
                self.counts["dropped_sink"] += n
                self.metrics.dropped.labels(reason).inc(n)
                log.error("dropped %d %s rows (%s): %s", n, kind.name, reason, e)
                continue
            except Exception as e:
                # Not an ingest error: a bug or an unexpected state of the sink. Counted as what it is,
                # logged with its traceback once per exception type, and the writer goes on.
                self.counts["dropped_write_error"] += n
                self.metrics.dropped.labels("write_error").inc(n)
                if type(e) not in self._write_errors_logged:
                    self._write_errors_logged.add(type(e))
                    log.exception("dropped %d %s rows: unexpected error in the sink's write "
                                  "(counted as dropped_write_error; further ones not logged)", n, kind.name)
                continue
            self.counts["rows_written"] += n
            self.metrics.rows_written.labels(kind.table).inc(n)
            self.metrics.batch_rows.observe(n)
            self.metrics.batch_seconds.observe(time.perf_counter() - t0)

    # --- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, duration_s: float | None = None) -> None:
        for s in self.sources:
            s.open()
        # What start-up made (bcc's compiled programs and tables, the engine, every module) lives as
        # long as the process: out of the collector's sight, a full collection no longer walks it all
        # (it was most of an idle agent's CPU)
        gc.freeze()
        self._writer.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        next_snapshot = time.monotonic() + self.config.snapshot_interval_s
        next_counters = time.monotonic() + self.config.counters_interval_s
        next_metrics = time.monotonic()
        loop_done = threading.Event()
        threading.Thread(target=self._watch_loop, args=(loop_done,), name="blindspot-loop-watchdog",
                         daemon=True).start()
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                # Drain every source without blocking, then sleep: waking up per record (epoll on
                # each ring buffer) cost twice the CPU per record of draining in batches.
                for s in self.sources:
                    with self._timed(s.name):
                        self._poll(s)
                now = time.monotonic()
                if now >= next_snapshot:
                    with self._timed("snapshot"):
                        self.snapshot()
                    next_snapshot = now + self.config.snapshot_interval_s
                if now >= next_counters:
                    with self._timed("counters"):
                        self.report_counters()
                    next_counters = now + self.config.counters_interval_s
                with self._timed("batch"):
                    for kind_name, rows in self.batcher.due(now):
                        self._hand_off(kind_name, rows)
                    self._forced_flush(now)
                if now >= next_metrics:
                    with self._timed("metrics"):
                        self.export_metrics()
                    next_metrics = now + 1.0
                stop.wait(self.config.poll_ms / 1000)
        finally:
            loop_done.set()
            self.shutdown()

    @contextlib.contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        """Time one step of the loop: while any step runs, no ring buffer is drained, and a ring holds
        only seconds of records under churn. A step over ``SLOW_STEP_S`` is logged (once a minute per
        step) with its time, and the watchdog logs where it stands while it runs; every step's time
        is in ``blindspot_loop_step_seconds``."""
        t0 = time.perf_counter()
        self._step = (step, t0, threading.get_ident())
        try:
            yield
        finally:
            self._step = None
            took = time.perf_counter() - t0
            self.metrics.loop_step.labels(step).observe(took)
            if took >= SLOW_STEP_S:
                self.counts[f"slow_loop_steps:{step}"] += 1
                now = time.monotonic()
                if now - self._slow_logged.get(step, -60.0) >= 60.0:
                    self._slow_logged[step] = now
                    log.warning("loop step %s took %.2f s: no ring buffer was drained meanwhile "
                                "(counted as slow_loop_steps:%s; logged once a minute)", step, took, step)

    def _watch_loop(self, stop: threading.Event) -> None:
        """Log the loop's stack when one step has run for ``SLOW_STEP_S`` (once a minute per step): a
        stall is then found where it happens, not guessed at from its time."""
        dumped: dict[str, float] = {}
        while not stop.wait(SLOW_STEP_S / 4):
            current = self._step
            if current is None:
                continue
            step, t0, ident = current
            now = time.perf_counter()
            if now - t0 < SLOW_STEP_S or now - dumped.get(step, -60.0) < 60.0:
                continue
            frame = sys._current_frames().get(ident)
            if frame is not None and self._step is current:
                dumped[step] = now
                stack = "".join(traceback.format_stack(frame, limit=12))
                log.warning("loop step %s running for %.2f s, at:\n%s", step, now - t0, stack)

    def _poll(self, s: Source) -> None:
        """One source's poll; what it raises is counted and logged once per exception type, and the
        other sources (and this one, at the next turn) go on."""
        try:
            s.poll(0)
        except Exception as e:
            key = f"source_errors:{s.name}:poll"
            self.counts[key] += 1
            if (s.name, type(e)) not in self._poll_errors_logged:
                self._poll_errors_logged.add((s.name, type(e)))
                log.exception("source %s: poll failed (counted as %s; further ones not logged)", s.name, key)

    def export_metrics(self) -> None:
        """Move counter deltas into Prometheus (the hot path only bumps plain ints)."""
        current = self.all_counters()
        for key, value in current.items():
            delta = int(value) - self._exported.get(key, 0)
            if delta <= 0:
                continue
            self._exported[key] = int(value)
            if key.startswith("captured:"):
                self.metrics.records.labels(key.split(":", 1)[1]).inc(delta)
            elif key in ("lost_ringbuf", "lost_map_full"):
                self.metrics.kernel_lost.labels(key.removeprefix("lost_")).inc(delta)
            elif key.startswith("source_errors:"):
                _, source, what = key.split(":", 2)
                self.metrics.source_errors.labels(source, what).inc(delta)
            elif key.startswith("go_binary_rejected:"):
                self.metrics.go_binaries_rejected.labels(key.split(":", 1)[1]).inc(delta)
            elif key.startswith("packet_drops:"):
                self.metrics.packet_drops.labels(key.split(":", 1)[1]).inc(delta)
            elif key == "requests_before_traced":
                self.metrics.requests_before_traced.inc(delta)
        # Go processes: exec to fully traced (agent/go_exes.py), as the HTTP source measured them.
        for s in self.sources:
            take = getattr(s, "take_exec_to_traced", None)
            if take is not None:
                for seconds in take():
                    self.metrics.exec_to_traced.observe(seconds)
        # Records a source refused, per source: malformed (the decoder failed) or not the protocol.
        for s in self.sources:
            counts = s.counters()
            for counter, reason in REJECTION_REASONS.items():
                key = f"{s.name}:{counter}"
                delta = int(counts.get(counter, 0)) - self._exported.get(key, 0)
                if delta > 0:
                    self._exported[key] = self._exported.get(key, 0) + delta
                    self.metrics.rejected.labels(s.name, reason).inc(delta)

    def snapshot(self) -> None:
        n = 0
        for s in self.sources:
            snap = getattr(s, "snapshot_open", None)
            if snap is not None:
                n += snap()
        self.open_connections = n
        self.metrics.open_connections.set(n)

    def report_counters(self) -> None:
        """Deltas since the last report, as pipeline_counters rows (zeros included: a quiet host
        and a broken one must look different)."""
        now = time.time_ns()
        current = self.all_counters()
        extra = sorted(k for k in current if k.startswith(REPORTED_PREFIXES) and (current[k] or k in self._reported))
        rows = []
        for name in (*REPORTED, *extra):
            value = int(current.get(name, 0))
            delta = value - self._reported.get(name, 0)
            self._reported[name] = value
            rows.append({"time": now, "host": self.host, "component": self.component, "counter": name,
                         "value": delta})
        batch = self.batcher.add(PIPELINE_COUNTER.name, PIPELINE_COUNTER.to_arrow(rows))
        if batch is not None:
            self._hand_off(PIPELINE_COUNTER.name, batch)
        lost = current.get("lost_ringbuf", 0) + current.get("lost_map_full", 0)
        if lost:
            log.warning("kernel-side loss so far: %d (ring buffer %d, connection table %d)", lost,
                        current.get("lost_ringbuf", 0), current.get("lost_map_full", 0))

    def shutdown(self) -> None:
        """Close every source (each drains its kernel side and hands on what it still holds), report
        the counters, flush every batch, and wait for the writer."""
        for s in self.sources:
            try:
                s.close()
            except Exception:
                log.exception("closing source %s failed; records it still held are lost", s.name)
        if self._writer.is_alive():
            self.report_counters()
            for kind_name, rows in self.batcher.drain():
                self.handoff.put((KINDS[kind_name], rows))  # blocking: shutdown waits for the sink
            self.handoff.put(None)
            self._writer.join()
        with self._flush_lock:  # queries waiting for a flush: everything is written now
            waiters, self._flush_waiters = self._flush_waiters, []
            self._stopped = True
        for w in waiters:
            w.set()
