"""The ingest worker: Kafka -> validate -> ClickHouse, each record stored once, none lost.

How a batch goes (one topic-partition at a time, so a batch is a contiguous offset range):

1. Cut the range [first, last] at ``batch_max_rows`` / ``batch_max_bytes`` / ``batch_max_age_s``.
2. Record the intent: commit offset ``first`` (unchanged position) with metadata ``bs1:pending:<last>``.
3. Decode and validate; bad messages go to the dead-letter topic with their reason.
4. Insert the good rows with ``insert_deduplication_token = topic:partition:first-last`` (and the
   worker's own per-host per-minute counters with that token + ``:c``).
5. Wait until the broker has every dead letter, then commit ``last + 1``.

A crash (or a lost partition) anywhere leaves the committed offset at ``first`` with the intent beside
it. Whoever owns the partition next reads the intent and cuts exactly the same range again, so the
repeated insert carries the same token and ClickHouse drops it, also in rollups behind materialized
views (``deduplicate_blocks_in_dependent_materialized_views``). Only dead letters can repeat (at least
once, with ``bs-src`` to tell). Transient errors are retried with capped exponential backoff; the
worker never commits past a batch ClickHouse has not accepted.

Public API: ``Worker``, ``WorkerStats``, ``main``.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import logging
import signal
import threading
import time
from collections import Counter as _Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import confluent_kafka
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from blindspot import wire
from blindspot.records import PIPELINE_COUNTER, RecordKind
from ingest._errors import PermanentError, SchemaError, TransientError
from ingest.clickhouse_sink.service import ClickHouseService
from ingest.kafka_source import DeadLetters, KafkaSourceConfig, ensure_topics
from ingest.validate import BadMessage, Rejected, build_batch, check_table

__all__ = ["Worker", "WorkerStats", "main"]

log = logging.getLogger(__name__)
INTENT = "bs1:pending:"
DATABASE = "blindspot"
LEAVE_GROUP_TIMEOUT_S = 10.0  # serving the revoke at stop: a commit round trip, or a lost assignment
T = TypeVar("T")


class _Stopping(Exception):
    """Raised inside a retry loop when the worker is asked to stop: leave without committing."""


class _PartitionGone(Exception):
    """A commit was refused because the group moved on (rebalance): the partition is someone else's.
    Whatever was inserted is covered by the intent: the next owner cuts the same range again."""


# Commit errors that mean "not yours any more", not "try again".
_GONE = {confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS, confluent_kafka.KafkaError.ILLEGAL_GENERATION,
         confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID, confluent_kafka.KafkaError.FENCED_INSTANCE_ID,
         confluent_kafka.KafkaError._ASSIGNMENT_LOST, confluent_kafka.KafkaError._STATE}


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        kw: dict[str, Any] = {"registry": registry} if registry is not None else {}
        self.consumed = Counter("blindspot_ingest_records_consumed", "Messages read from Kafka",
                                ["topic"], **kw)
        self.written = Counter("blindspot_ingest_records_written", "Rows accepted by ClickHouse",
                               ["table"], **kw)
        self.dead = Counter("blindspot_ingest_records_dead_lettered", "Messages sent to the dead-letter topic",
                            ["reason"], **kw)
        self.retries = Counter("blindspot_ingest_retries", "Retried operations after a transient error",
                               ["operation"], **kw)
        self.replayed = Counter("blindspot_ingest_batches_replayed",
                                "Batches cut again from a recorded intent after a crash or rebalance", **kw)
        self.lag = Gauge("blindspot_ingest_consumer_lag_messages", "High watermark minus position",
                         ["topic", "partition"], **kw)
        self.batch_rows = Histogram("blindspot_ingest_batch_rows", "Records per batch",
                                    buckets=(1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000), **kw)
        self.batch_seconds = Histogram("blindspot_ingest_batch_duration_seconds",
                                       "Decode, insert and commit time of one batch", **kw)


@dataclass
class WorkerStats:
    consumed: int = 0
    written: int = 0
    dead_lettered: int = 0
    batches: int = 0
    replayed: int = 0
    retries: int = 0
    by_reason: _Tally[str] = field(default_factory=_Tally)


@dataclass
class _Seg:
    """Where consecutive rows of an insert came from: a message, and which of its rows."""

    msg: Any
    rows: Sequence[int]
    raw: pa.Table | None  # the Arrow batch as received (None: a msgpack record)


def _split(segs: list[_Seg], n: int) -> tuple[list[_Seg], list[_Seg]]:
    """The first ``n`` rows' segments and the rest."""
    left: list[_Seg] = []
    for i, seg in enumerate(segs):
        if n <= 0:
            return left, segs[i:]
        if len(seg.rows) <= n:
            left.append(seg)
            n -= len(seg.rows)
            continue
        return [*left, _Seg(seg.msg, seg.rows[:n], seg.raw)], [_Seg(seg.msg, seg.rows[n:], seg.raw), *segs[i + 1:]]
    return left, []


@dataclass
class _Batch:
    msgs: list[Any] = field(default_factory=list)
    nbytes: int = 0
    rows: int = 0
    started: float = 0.0
    replay_end: int | None = None  # set when an intent from a previous owner dictates the range


class Worker:
    """One consumer in the group. ``run(stop)`` until ``stop`` is set; then flush and commit."""

    def __init__(self, config: KafkaSourceConfig, service: ClickHouseService, *,
                 registry: CollectorRegistry | None = None, worker_host: str = "ingest") -> None:
        self.config = config
        self.service = service
        self.stats = WorkerStats()
        self.worker_host = worker_host
        self._m = _Metrics(registry)
        self._topic_kind: dict[str, RecordKind] = config.topic_kinds()
        self._batches: dict[tuple[str, int], _Batch] = {}
        self._stop = threading.Event()
        self._consumer: confluent_kafka.Consumer | None = None
        self._dlq: DeadLetters | None = None
        self._last_lag = 0.0

    # -- rebalance -----------------------------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        # Read the intents a previous owner may have left: those ranges are cut again identically.
        committed = self._retry("read_offsets", lambda: consumer.committed(partitions, timeout=10))
        for tp in committed:
            b = _Batch()
            md = tp.metadata or ""
            if md.startswith(INTENT):
                b.replay_end = int(md[len(INTENT):])
                log.info("partition %s[%d]: replaying the range up to %d", tp.topic, tp.partition, b.replay_end)
            self._batches[(tp.topic, tp.partition)] = b
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # Commit what we hold before someone else owns it (they would replay it anyway: the intent).
        for tp in partitions:
            key = (tp.topic, tp.partition)
            try:
                if self._batches.get(key) and self._batches[key].msgs:
                    self._flush(key)
            except (_Stopping, _PartitionGone, confluent_kafka.KafkaException) as e:
                log.warning("partition %s[%d] revoked before its batch was committed: %s", *key, e)
            self._batches.pop(key, None)
        log.info("revoked %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self._batches.pop((tp.topic, tp.partition), None)
        log.warning("lost %s (no commit)", [f"{p.topic}[{p.partition}]" for p in partitions])

    # -- main loop -----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        cfg = self.config
        ensure_topics(cfg)
        self._dlq = DeadLetters(cfg)
        consumer = self._consumer = confluent_kafka.Consumer(cfg.consumer_conf())
        consumer.subscribe(cfg.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        try:
            while not self._stop.is_set():
                # Whatever is queued, without waiting to fill a count (consume() would sit out its whole
                # timeout for that); only when nothing is queued, block until one message arrives.
                msgs = consumer.consume(num_messages=10_000, timeout=0)
                if not msgs:
                    one = consumer.poll(0.2)
                    msgs = [one] if one is not None else []
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                            self._caught_up((str(m.topic()), int(m.partition() or 0)))
                        else:
                            log.warning("kafka: %s", err)
                        continue
                    self._add(m)
                now = time.monotonic()
                for key, b in list(self._batches.items()):
                    if b.msgs and b.replay_end is None and now - b.started >= cfg.batch_max_age_s:
                        self._flush_or_forget(key)
                if now - self._last_lag > 5:
                    self._update_lag()
            # SIGTERM: what we hold goes in and is committed before we leave the group.
            for key, b in list(self._batches.items()):
                if b.msgs:
                    self._flush_or_forget(key)
        except _Stopping:
            log.warning("stopped while retrying: uncommitted batches will be replayed by the next owner")
        finally:
            self._leave_group(consumer)
            self._dlq.close()

    def _leave_group(self, consumer: Any) -> None:
        """Leave the group, then close. A rebalance still queued when close() runs can block
        librdkafka's assign() in the rebalance callback forever, holding the GIL (librdkafka #4884;
        seen here when a worker that stopped polling is stopped). So unsubscribe first and serve the
        revoke (or lost) callback through poll() until nothing is assigned; messages polled meanwhile
        are not committed, so the next owner reads them again."""
        consumer.unsubscribe()
        deadline = time.monotonic() + LEAVE_GROUP_TIMEOUT_S
        while consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.1)
        consumer.close()

    def _add(self, m: Any) -> None:
        key = (m.topic(), m.partition())
        b = self._batches.get(key)
        if b is None:  # assignment callbacks always run first; be safe anyway
            b = self._batches[key] = _Batch()
        off = m.offset()
        if b.replay_end is not None and off > b.replay_end and b.msgs:
            self._flush_or_forget(key)  # a gap (compaction, transaction marker) ended the replay range early
            b = self._batches.setdefault(key, _Batch())
        if not b.msgs:
            b.started = time.monotonic()
        b.msgs.append(m)
        value = m.value() or b""
        b.nbytes += len(value)
        b.rows += self._records_in(m, value)
        self.stats.consumed += 1
        if b.replay_end is not None:
            if off >= b.replay_end:
                self._flush_or_forget(key)
        elif b.rows >= self.config.batch_max_rows or b.nbytes >= self.config.batch_max_bytes:
            self._flush_or_forget(key)

    def _caught_up(self, key: tuple[str, int]) -> None:
        """The partition has nothing more for now: a sizeable batch goes in at once rather than after
        ``batch_max_age_s`` (a trickle still waits, so inserts stay few and large)."""
        b = self._batches.get(key)
        if b and b.msgs and b.replay_end is None and b.rows >= self.config.batch_max_rows // 10:
            self._flush_or_forget(key)

    def _records_in(self, m: Any, value: bytes) -> int:
        """Records in one message, for the batch's row bound: an Arrow batch's length is in its header
        (no column is decoded here); anything else counts as one."""
        kind = self._topic_kind.get(m.topic())
        if kind is None or m.headers() != wire.headers_for(kind, wire.ENC_ARROW):
            return 1
        try:
            return int(sum(b.num_rows for b in pa.ipc.open_stream(value)))
        except (pa.ArrowException, OSError, ValueError):
            return 1  # dead-lettered when the batch is flushed

    def _flush_or_forget(self, key: tuple[str, int]) -> None:
        try:
            self._flush(key)
        except _PartitionGone as e:
            log.warning("partition %s[%d] moved on before its commit (%s); its next owner replays it", *key, e)
            self._batches.pop(key, None)

    # -- one batch -----------------------------------------------------------------------------
    def _flush(self, key: tuple[str, int]) -> None:
        b = self._batches[key]
        msgs = b.msgs
        topic, partition = key
        first, last = msgs[0].offset(), msgs[-1].offset()
        token = f"{topic}:{partition}:{first}-{last}"
        t0 = time.perf_counter()
        consumer = self._consumer
        assert consumer is not None and self._dlq is not None
        replay = b.replay_end is not None
        if replay:
            self.stats.replayed += 1
            self._m.replayed.inc()
        else:
            intent = confluent_kafka.TopicPartition(topic, partition, first, metadata=f"{INTENT}{last}")
            self._commit(intent)

        kind = self._topic_kind.get(topic)
        dead = _Tally[tuple[int, str]]()  # (minute, host) -> dead letters, for pipeline_counters
        rows: list[dict[str, Any]] = []  # msgpack: one record a message
        row_msgs: list[Any] = []
        parts: list[pa.Table] = []  # arrow batches in a foreign schema: checked one by one
        part_segs: list[_Seg] = []
        fast: list[tuple[Any, pa.Table]] = []  # arrow batches in exactly our schema: checked together
        for m in msgs:
            try:
                if kind is None:
                    raise wire.WireError("unknown_kind", f"no record kind reads topic {topic}")
                _kind, enc = wire.message_kind(m.headers(), kind)
                if enc == wire.ENC_MSGPACK:
                    rows.append(wire.decode(m.value()))
                    row_msgs.append(m)
                    continue
                raw = wire.decode_batch(m.value())
                if raw.schema.equals(kind.arrow_schema):
                    fast.append((m, raw))
                    continue
                good, rejected = check_table(kind, raw)
            except (wire.WireError, BadMessage) as e:
                self._dead_letter(m, e.reason, e.detail, dead)
                continue
            seg = self._seg_after_rejects(m, raw, rejected, dead)
            if good.num_rows:
                parts.append(good)
                part_segs.append(seg)
        if fast:
            assert kind is not None
            # One check over all of them: per-column work once per batch, not once per message.
            whole = pa.concat_tables([raw for _, raw in fast])
            good, rejected = check_table(kind, whole)
            starts = list(itertools.accumulate((raw.num_rows for _, raw in fast), initial=0))
            by_msg: dict[int, list[Rejected]] = {}
            for r in rejected:
                j = bisect.bisect_right(starts, r.index) - 1
                by_msg.setdefault(j, []).append(Rejected(r.index - starts[j], r.reason, r.detail))
            fast_segs = [self._seg_after_rejects(m, raw, by_msg.get(j, []), dead)
                         for j, (m, raw) in enumerate(fast)]
            if good.num_rows:
                parts.insert(0, good)
                part_segs[:0] = [sg for sg in fast_segs if sg.rows]
        # Single msgpack records first, then the Arrow rows: a fixed order, so a replay is identical.
        segs: list[_Seg] = []
        if kind is not None and rows:
            table, rejected = build_batch(kind, rows)
            gone = {r.index for r in rejected}
            for r in rejected:
                self._dead_letter(row_msgs[r.index], r.reason, r.detail, dead)
            segs = [_Seg(m, range(1), None) for i, m in enumerate(row_msgs) if i not in gone]
            if table.num_rows:
                parts.insert(0, table)
        segs += part_segs
        if kind is not None and parts:
            table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
            self._insert(kind, table, segs, token, dead)
            self._m.written.labels(kind.table).inc(table.num_rows)
        self._insert_counters(kind, segs, dead, token)
        if not self._dlq.flush():
            raise TransientError("dead letters not delivered; batch will be read again")
        self._commit(confluent_kafka.TopicPartition(topic, partition, last + 1, metadata=""))
        self._batches[key] = _Batch()
        self.stats.batches += 1
        self._m.consumed.labels(topic).inc(len(msgs))
        self._m.batch_rows.observe(b.rows)
        self._m.batch_seconds.observe(time.perf_counter() - t0)

    def _seg_after_rejects(self, m: Any, raw: pa.Table, rejected: list[Rejected], dead: _Tally[tuple[int, str]]
                           ) -> _Seg:
        """Dead-letter the rejected rows of one Arrow message; the segment of the rows that stay."""
        if not rejected:
            return _Seg(m, range(raw.num_rows), raw)
        for r in rejected:
            self._dead_letter(m, r.reason, r.detail, dead, raw=raw, row=r.index)
        gone = {r.index for r in rejected}
        return _Seg(m, [i for i in range(raw.num_rows) if i not in gone], raw)

    def _insert(self, kind: RecordKind, table: pa.Table, segs: list[_Seg], token: str,
                dead: _Tally[tuple[int, str]]) -> None:
        """Insert; a batch the engine refuses is split until the refused rows are found (each half has
        its own deterministic token, so a replay splits and deduplicates the same way)."""
        if table.num_rows == 0:
            return
        try:
            self._retry("insert", lambda: self.service.insert_arrow(DATABASE, kind.table, table,
                                                                    dedup_token=token))
            self.stats.written += table.num_rows
        except SchemaError:
            raise  # the tables are wrong: no record can go in; stop and let an operator look
        except PermanentError as e:
            if table.num_rows == 1:
                seg = segs[0]
                self._dead_letter(seg.msg, "rejected_by_clickhouse", str(e)[:300], dead, raw=seg.raw,
                                  row=seg.rows[0] if seg.raw is not None else None)
                return
            half = table.num_rows // 2
            left, right = _split(segs, half)
            self._insert(kind, table.slice(0, half), left, token + "/a", dead)
            self._insert(kind, table.slice(half), right, token + "/b", dead)

    def _insert_counters(self, kind: RecordKind | None, segs: list[_Seg], dead: _Tally[tuple[int, str]],
                         token: str) -> None:
        """Per-host per-minute ``ingested`` / ``dead_lettered`` rows, minute and host taken from the
        messages themselves (Kafka timestamp, key) so a replayed batch makes identical rows."""
        if kind is PIPELINE_COUNTER:
            return
        tally = _Tally[tuple[int, str, str]]()
        for seg in segs:
            tally[(_minute_ns(seg.msg), _host(seg.msg), "ingested")] += len(seg.rows)
        for (minute, host), n in dead.items():
            tally[(minute, host, "dead_lettered")] += n
        if not tally:
            return
        keys = sorted(tally)
        rows = [{"time": t, "host": h, "component": "ingest", "counter": c, "value": tally[(t, h, c)]}
                for t, h, c in keys]
        table = PIPELINE_COUNTER.to_arrow(rows)
        self._retry("insert", lambda: self.service.insert_arrow(DATABASE, PIPELINE_COUNTER.table, table,
                                                                dedup_token=token + ":c"))

    def _dead_letter(self, m: Any, reason: str, detail: str, dead: _Tally[tuple[int, str]],
                     raw: pa.Table | None = None, row: int | None = None) -> None:
        """One bad record (or a whole unreadable message) to the dead-letter topic. A bad row inside an
        Arrow batch goes alone, as a one-row batch, with its index in ``bs-src-row``."""
        assert self._dlq is not None
        if raw is not None and row is not None:
            self._dlq.send(m, reason, detail, value=wire.ipc_bytes(raw.slice(row, 1)), row=row)
        else:
            self._dlq.send(m, reason, detail)
        dead[(_minute_ns(m), _host(m))] += 1
        self.stats.dead_lettered += 1
        self.stats.by_reason[reason] += 1
        self._m.dead.labels(reason).inc()

    def _commit(self, tp: Any) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            self._retry("commit", lambda: consumer.commit(offsets=[tp], asynchronous=False))
        except confluent_kafka.KafkaException as e:
            if e.args and getattr(e.args[0], "code", lambda: None)() in _GONE:
                raise _PartitionGone(str(e)) from e
            raise

    # -- retries, lag --------------------------------------------------------------------------
    def _retry(self, operation: str, fn: Callable[[], T]) -> T:
        delay = self.config.retry_initial_s
        while True:
            try:
                return fn()
            except (TransientError, confluent_kafka.KafkaException) as e:
                if isinstance(e, confluent_kafka.KafkaException) and (
                        not _retriable(e) or e.args[0].code() in _GONE):
                    raise
                self.stats.retries += 1
                self._m.retries.labels(operation).inc()
                log.warning("%s failed (%s); retrying in %.1fs", operation, e, delay)
                if self._stop.wait(delay):
                    raise _Stopping() from e
                delay = min(delay * 2, self.config.retry_max_s)

    def _update_lag(self) -> None:
        self._last_lag = time.monotonic()
        consumer = self._consumer
        if consumer is None:
            return
        try:
            for tp in consumer.position(consumer.assignment()):
                # Cached: the high watermark comes with every fetch response; asking the broker per
                # partition would stall the loop for a round trip each.
                _lo, hi = consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and hi >= 0:
                    self._m.lag.labels(tp.topic, str(tp.partition)).set(max(0, hi - tp.offset))
        except confluent_kafka.KafkaException as e:
            log.debug("lag: %s", e)


def _retriable(e: confluent_kafka.KafkaException) -> bool:
    err = e.args[0] if e.args else None
    if err is None or not hasattr(err, "retriable"):
        return False
    # A lost membership is not retried: the partition is someone else's now (its intent is kept).
    return bool(err.retriable()) or err.code() in (
        confluent_kafka.KafkaError._TRANSPORT, confluent_kafka.KafkaError._TIMED_OUT,
        confluent_kafka.KafkaError.REQUEST_TIMED_OUT, confluent_kafka.KafkaError.COORDINATOR_NOT_AVAILABLE,
        confluent_kafka.KafkaError.NOT_COORDINATOR, confluent_kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS)


def _minute_ns(m: Any) -> int:
    _kind, ts_ms = m.timestamp()
    return (max(ts_ms, 0) // 60_000) * 60_000 * 1_000_000


def _host(m: Any) -> str:
    k = m.key()
    return k.decode("utf-8", "replace")[:256] if k else ""


# -- CLI -----------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka", required=True, metavar="BOOTSTRAP", help="Kafka bootstrap servers")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--clickhouse", metavar="URL", help="ClickHouse server (password from $CLICKHOUSE_PASSWORD)")
    where.add_argument("--data-dir", metavar="DIR", help="embedded engine (chDB) folder owned by this process")
    p.add_argument("--kafka-config", metavar="FILE", help="librdkafka properties (TLS/SASL); or BLINDSPOT_RDKAFKA_*")
    p.add_argument("--group", default="blindspot-ingest", help="consumer group id")
    p.add_argument("--topic-prefix", default="", help="prefix of every topic name (as given to the agents)")
    p.add_argument("--batch-rows", type=int, default=50_000)
    p.add_argument("--batch-bytes", type=int, default=32 * 1024 * 1024)
    p.add_argument("--batch-age", type=float, default=1.0, help="seconds")
    p.add_argument("--retention-days", type=int, default=30)
    p.add_argument("--metrics-address", default="127.0.0.1:9436", metavar="HOST:PORT",
                   help="Prometheus /metrics (default 127.0.0.1:9436; 'off' to disable)")


def main(args: argparse.Namespace) -> int:
    from agent.kafka_sink.config import client_settings
    from blindspot import metrics
    from ingest.clickhouse_sink.service import open_service
    from ingest.schema import migrate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = KafkaSourceConfig(args.kafka, group_id=args.group, topic_prefix=args.topic_prefix,
                            batch_max_rows=args.batch_rows, batch_max_bytes=args.batch_bytes,
                            batch_max_age_s=args.batch_age,
                            extra=client_settings(args.kafka_config))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # A ClickHouse server that is not up yet is waited for (a fleet restarts in any order); a locked
    # embedded folder is not: another process owns it, and waiting would not change that.
    delay = cfg.retry_initial_s
    while True:
        try:
            service = open_service(data_dir=args.data_dir, url=args.clickhouse)
            try:
                migrate(service, retention_days=args.retention_days)
            except BaseException:
                service.close()
                raise
            break
        except TransientError as e:
            if args.data_dir:
                raise
            log.warning("ClickHouse not reachable (%s); retrying in %.1fs", e, delay)
            if stop.wait(delay):
                return 1
            delay = min(delay * 2, cfg.retry_max_s)
    metrics.serve(args.metrics_address)
    queries = None
    if args.data_dir:
        # This process owns the embedded folder: `blindspot query --data-dir` goes through it meanwhile.
        from blindspot.query_server import QueryServer

        service.execute("USE blindspot")
        queries = QueryServer(args.data_dir, service).start()
    worker = Worker(cfg, service)
    try:
        worker.run(stop)
    finally:
        if queries is not None:
            queries.close()
        service.close()
    s = worker.stats
    log.info("ingest stopped: consumed %d, written %d, dead-lettered %d, batches %d (replayed %d), "
             "retries %d", s.consumed, s.written, s.dead_lettered, s.batches, s.replayed, s.retries)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="blindspot ingest")
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
