"""The agent's whole pipeline, read from source to sink.

    kernel ─► sources.poll ─emit─► enrich ─► batch ─► [hand-off: bounded queue] ─► writer ─► sink
              (ring buffers)      (host)   (rows/age)   full: dropped, counted    thread    ClickHouse
                                                                                           or Kafka
    every snapshot_interval_s: open connections ─► the same path
    every counters_interval_s: the pipeline's own counters ─► pipeline_counters ─► the same path

The kernel side never waits for the sink: a slow or absent sink fills the queue, and what does not fit
is dropped and counted (``dropped_queue_full``), never lost in silence. Kernel-side loss is read
from the sources and carried the same way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from blindspot import metrics
from blindspot.records import KINDS, PIPELINE_COUNTER, RecordKind
from ingest import IngestError, TransientError
from ingest.batch import Batch, Batcher, batch_len

log = logging.getLogger(__name__)


class Source(Protocol):
    name: str

    def open(self) -> None: ...
    def poll(self, timeout_ms: int) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class Sink(Protocol):
    """Takes one batch of one kind (records, or an Arrow table of the kind's schema); returns once it
    is accepted (raises ingest errors otherwise).
    A sink that loses records after ``write`` returned (asynchronous delivery, e.g. Kafka) also has
    ``counts() -> {"dropped": n, ...}``; the pipeline reports those drops as ``dropped_sink``."""

    def write(self, kind: RecordKind, rows: Batch) -> object: ...


@dataclass
class PipelineConfig:
    host: str = ""
    component: str = "agent"
    poll_ms: int = 50  # drain interval: ring buffers must hold this long's worth of records
    batch_max_rows: int = 20_000
    batch_max_age_s: float = 1.0
    queue_batches: int = 64
    snapshot_interval_s: float = 10.0
    counters_interval_s: float = 60.0


# Counters that are written to pipeline_counters, as deltas per interval.
REPORTED = ("captured", "lost_ringbuf", "lost_map_full", "dropped_queue_full", "dropped_sink",
            "dropped_write_error", "rows_written",
            "rejected")  # rejected: records a source refused (HTTP: decoder failures, counted per record)
# ... and every counter with one of these prefixes (failures counted by kind: agent/errors.py, Go binaries
# refused by reason: agent/go_binary.py; HTTP exchanges before their process was fully traced, and those of
# processes traced from exec that proved not ours: agent/http_source.py), once it is non-zero.
REPORTED_PREFIXES = ("source_errors:", "go_binary_", "requests_before_traced", "untraced_records")


class Pipeline:
    def __init__(self, sources: Sequence[Source], sink: Sink, config: PipelineConfig) -> None:
        self.sources = list(sources)
        self.sink = sink
        self.config = config
        self.batcher = Batcher(config.batch_max_rows, config.batch_max_age_s)
        self.handoff: queue.Queue[tuple[RecordKind, Batch] | None] = queue.Queue(
            config.queue_batches
        )
        self.counts: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=20)  # latest closed connections (live view)
        self.open_connections = 0
        self.started = time.monotonic()
        self._reported: dict[str, int] = {}
        self._exported: dict[str, int] = {}  # what the Prometheus counters have been told so far
        self._writer = threading.Thread(target=self._write_loop, name="writer", daemon=True)
        self._write_errors_logged: set[type] = set()
        self._poll_errors_logged: set[tuple[str, type]] = set()

    # --- source side ---------------------------------------------------------------------
    def emit(self, kind_name: str, row: dict[str, Any]) -> None:
        self.counts["captured"] += 1
        self.counts[f"captured:{kind_name}"] += 1
        if kind_name == "tcp_connection":
            self.recent.append(row)
        batch = self.batcher.add(kind_name, row)
        if batch is not None:
            self._hand_off(kind_name, batch)

    def emit_table(self, kind_name: str, table: pa.Table) -> None:
        """Many records at once, already columnar (a source that decodes in batches)."""
        self.counts["captured"] += table.num_rows
        self.counts[f"captured:{kind_name}"] += table.num_rows
        batch = self.batcher.add_table(kind_name, table)
        if batch is not None:
            self._hand_off(kind_name, batch)

    def _hand_off(self, kind_name: str, rows: Batch) -> None:
        try:
            self.handoff.put_nowait((KINDS[kind_name], rows))
        except queue.Full:
            n = batch_len(rows)
            self.counts["dropped_queue_full"] += n
            metrics.DROPPED.labels("queue_full").inc(n)
            log.warning("sink is behind: dropped %d %s records (queue full)", n, kind_name)
        metrics.QUEUE_BATCHES.set(self.handoff.qsize())

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

    # --- sink side -----------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            item = self.handoff.get()
            if item is None:
                return
            kind, rows = item
            n = batch_len(rows)
            t0 = time.perf_counter()
            try:
                self.sink.write(kind, rows)
            except IngestError as e:
                reason = "shutdown" if isinstance(e, TransientError) else "sink_error"
                self.counts["dropped_sink"] += n
                metrics.DROPPED.labels(reason).inc(n)
                log.error("dropped %d %s rows (%s): %s", n, kind.name, reason, e)
                continue
            except Exception as e:
                # Not an ingest error: a bug or an unexpected state of the sink. Counted as what it is,
                # logged with its traceback once per exception type, and the writer goes on.
                self.counts["dropped_write_error"] += n
                metrics.DROPPED.labels("write_error").inc(n)
                if type(e) not in self._write_errors_logged:
                    self._write_errors_logged.add(type(e))
                    log.exception("dropped %d %s rows: unexpected error in the sink's write "
                                  "(counted as dropped_write_error; further ones not logged)", n, kind.name)
                continue
            self.counts["rows_written"] += n
            metrics.ROWS_WRITTEN.labels(kind.table).inc(n)
            metrics.BATCH_ROWS.observe(n)
            metrics.BATCH_SECONDS.observe(time.perf_counter() - t0)

    # --- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, duration_s: float | None = None) -> None:
        for s in self.sources:
            s.open()
        self._writer.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        next_snapshot = time.monotonic() + self.config.snapshot_interval_s
        next_counters = time.monotonic() + self.config.counters_interval_s
        next_metrics = time.monotonic()
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                # Drain every source without blocking, then sleep: waking up per record (epoll on
                # each ring buffer) cost twice the CPU per record of draining in batches.
                for s in self.sources:
                    self._poll(s)
                now = time.monotonic()
                if now >= next_snapshot:
                    self.snapshot()
                    next_snapshot = now + self.config.snapshot_interval_s
                if now >= next_counters:
                    self.report_counters()
                    next_counters = now + self.config.counters_interval_s
                for kind_name, rows in self.batcher.due(now):
                    self._hand_off(kind_name, rows)
                if now >= next_metrics:
                    self.export_metrics()
                    next_metrics = now + 1.0
                stop.wait(self.config.poll_ms / 1000)
        finally:
            self.shutdown()

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
                metrics.RECORDS.labels(key.split(":", 1)[1]).inc(delta)
            elif key in ("lost_ringbuf", "lost_map_full"):
                metrics.KERNEL_LOST.labels(key.removeprefix("lost_")).inc(delta)
            elif key.startswith("source_errors:"):
                _, source, what = key.split(":", 2)
                metrics.SOURCE_ERRORS.labels(source, what).inc(delta)
            elif key.startswith("go_binary_rejected:"):
                metrics.GO_BINARIES_REJECTED.labels(key.split(":", 1)[1]).inc(delta)

    def snapshot(self) -> None:
        n = 0
        for s in self.sources:
            snap = getattr(s, "snapshot_open", None)
            if snap is not None:
                n += snap()
        self.open_connections = n
        metrics.OPEN_CONNECTIONS.set(n)

    def report_counters(self) -> None:
        """Deltas since the last report, as pipeline_counters rows (zeros included: a quiet host
        and a broken one must look different)."""
        now = time.time_ns()
        current = self.all_counters()
        extra = sorted(k for k in current if k.startswith(REPORTED_PREFIXES) and (current[k] or k in self._reported))
        for name in (*REPORTED, *extra):
            value = int(current.get(name, 0))
            delta = value - self._reported.get(name, 0)
            self._reported[name] = value
            row = {"time": now, "host": self.config.host, "component": self.config.component,
                   "counter": name, "value": delta}
            batch = self.batcher.add(PIPELINE_COUNTER.name, row)
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
