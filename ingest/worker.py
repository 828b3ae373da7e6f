"""The ingest worker: Kafka -> validate -> ClickHouse, each record stored once, none lost.

How a batch goes (one topic-partition at a time, so a batch is a contiguous offset range):

1. Cut the range [first, last] at ``batch_max_rows`` / ``batch_max_bytes`` / ``batch_max_age_s``.
2. Record the intent (ingest/checkpoint.py): commit offset ``first`` (unchanged position) with the
   range's end and the reference time expiry is judged against, so a replay judges the same rows expired.
3. Decode and validate (ingest/decode.py; total: any exception of one message dead-letters that message
   with its exception class); bad messages go to the dead-letter topic with their reason; rows older
   than their table's TTL are set aside as ``expired`` (counted; dead-lettered under ``expired = dead-letter``).
4. Insert the good rows with the range's dedup token (ingest/checkpoint.py ``dedup_token``), and the
   worker's own per-host per-minute counters with that token + ``:c``.
5. Wait until the broker has every dead letter, then commit ``last + 1``.

Failures are classified (contract.errors.classify): the message's fault dead-letters it; an
infrastructure fault (disk full, read-only, engine or broker away, 5xx, timeouts) is retried through
contract.retry with the consumer's partitions paused and polled, so the worker stays in the group, reads
nothing new, and resumes exactly where it was. A store fault never dead-letters or skips a record.

Test-only seam (ingest/_crash.py): ``BLINDSPOT_TEST_CRASH_AT=<step>`` ends the process at that step
of a batch; tests/test_ingest_crash_steps.py kills a worker at each and checks the replay.

A crash (or a lost partition) anywhere leaves the committed offset at ``first`` with the intent beside
it. Whoever owns the partition next reads the intent and cuts exactly the same range again, so the
repeated insert carries the same token and ClickHouse drops it, also in rollups behind materialized
views (``deduplicate_blocks_in_dependent_materialized_views``). Only dead letters can repeat (at least
once, with ``bs-src`` to tell). Transient errors are retried with capped exponential backoff; the
worker never commits past a batch ClickHouse has not accepted.

Public API: ``Worker``, ``WorkerStats``. The process around it: blindspot/commands/ingest.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as _Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import confluent_kafka
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry

from contract import wire
from contract.errors import Fault, PermanentError, TransientError, classify
from contract.records import PIPELINE_COUNTER, RecordKind
from contract.retry import Stopping, retry
from ingest._crash import crash_point
from ingest.checkpoint import Intent, dedup_token
from ingest.clickhouse_sink.service import ClickHouseService
from ingest.decode import Seg, decode_batch, split
from ingest.kafka_source import DeadLetters, KafkaSourceConfig, ensure_topics
from ingest.metrics import WorkerMetrics
from ingest.schema import expiry

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger(__name__)
DATABASE = "blindspot"
LEAVE_GROUP_TIMEOUT_S = 10.0  # serving the revoke at stop: a commit round trip, or a lost assignment
# Rows this close to their TTL on arrival count as expired too: the engine must not drop a row we
# counted as ingested between our check and its insert.
EXPIRY_MARGIN_NS = 60 * 10**9
EXPIRED_POLICIES = ("drop", "dead-letter")
T = TypeVar("T")


class _PartitionGone(Exception):
    """A commit was refused because the group moved on (rebalance): the partition is someone else's.
    Whatever was inserted is covered by the intent: the next owner cuts the same range again."""



@dataclass
class WorkerStats:
    consumed: int = 0
    written: int = 0
    dead_lettered: int = 0
    batches: int = 0
    replayed: int = 0
    retries: int = 0
    expired: int = 0
    by_reason: _Tally[str] = field(default_factory=_Tally)


@dataclass
class _Batch:
    msgs: list[Any] = field(default_factory=list)
    nbytes: int = 0
    rows: int = 0
    started: float = 0.0
    replay_end: int | None = None  # set when an intent from a previous owner dictates the range
    replay_ref_ms: int | None = None  # the reference time recorded with that intent
    attempt: int = 0  # how many times the range was cut before (from the intent)
    crashed_at: int | None = None  # the offset a previous owner died decoding


class Worker:
    """One consumer in the group. ``run(stop)`` until ``stop`` is set; then flush and commit."""

    def __init__(self, config: KafkaSourceConfig, service: ClickHouseService, *,
                 registry: CollectorRegistry | None = None,
                 retention_days: int = 30, expired: str = "drop") -> None:
        if expired not in EXPIRED_POLICIES:
            raise ValueError(f"expired policy must be one of {EXPIRED_POLICIES}, not {expired!r}")
        self.config = config
        self.expired_policy = expired
        self._expiry = expiry(retention_days)  # table -> (time column, days)
        self._current: tuple[str, int] | None = None  # the partition whose batch is being flushed
        self._revoked: set[tuple[str, int]] = set()  # taken away while that batch waited for a retry
        self._held: list[Any] = []  # messages a paused poll still returned: handled next
        self._paused = False
        self._stale = False  # set by a rebalance: messages read before it are not handled
        self._truncated_seen = 0
        self.service = service
        self.stats = WorkerStats()
        self._m = WorkerMetrics.on(registry)
        self._topic_kind: dict[str, RecordKind] = config.topic_kinds()
        self._batches: dict[tuple[str, int], _Batch] = {}
        self._stop = threading.Event()
        self._consumer: confluent_kafka.Consumer | None = None
        self._dlq: DeadLetters | None = None
        self._last_lag = 0.0

    # -- rebalance -----------------------------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        # Read the intents a previous owner may have left: those ranges are cut again identically.
        self._rebalanced()
        # Plain waits here: this callback may run inside a paused poll of a retry (contract.retry).
        committed = retry("read_offsets", lambda: consumer.committed(partitions, timeout=10), wait=self._stop.wait,
                          initial_s=self.config.retry_initial_s, max_s=self.config.retry_max_s,
                          on_retry=self._count_fault)
        for tp in committed:
            b = _Batch()
            intent = Intent.parse(tp.metadata)
            if intent is not None:
                b.replay_end, b.replay_ref_ms, b.attempt, b.crashed_at = (intent.last, intent.ref_ms, intent.attempt,
                                                                          intent.decoding)
                log.info("partition %s[%d]: replaying the range up to %d", tp.topic, tp.partition, b.replay_end)
            self._batches[(tp.topic, tp.partition)] = b
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # Commit what we hold before someone else owns it (they would replay it anyway: the intent).
        # Not while a batch waits for the store (a poll inside a retry serves this callback): nothing
        # can go in now; the next owner replays from the intents.
        self._rebalanced()
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if self._current is not None:
                self._revoked.add(key)
                self._batches.pop(key, None)
                continue
            try:
                if self._batches.get(key) and self._batches[key].msgs:
                    self._flush(key)
            except (Stopping, _PartitionGone, confluent_kafka.KafkaException) as e:
                log.warning("partition %s[%d] revoked before its batch was committed: %s", *key, e)
            self._batches.pop(key, None)
        log.info("revoked %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._rebalanced()
        for tp in partitions:
            self._revoked.add((tp.topic, tp.partition))
            self._batches.pop((tp.topic, tp.partition), None)
        log.warning("lost %s (no commit)", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _rebalanced(self) -> None:
        """Messages read before a rebalance are not handled after it: every position is reset to the
        committed offset on assignment, so they are read again (eager rebalancing revokes all)."""
        self._stale = True
        self._held.clear()

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
                fresh = consumer.consume(num_messages=10_000, timeout=0)
                if not fresh and not self._held:
                    one = consumer.poll(0.2)
                    fresh = [one] if one is not None else []
                msgs, self._held = [*self._held, *fresh], []
                self._stale = False  # rebalances served above came before these messages
                for m in msgs:
                    if self._stale:  # a rebalance inside a retry's paused poll: these are read again
                        break
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
        except Stopping:
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
        (nothing is decoded or decompressed here); anything else counts as one."""
        kind = self._topic_kind.get(m.topic())
        if kind is None or m.headers() != wire.headers_for(kind, wire.ENC_ARROW):
            return 1
        return wire.batch_rows(value)

    def _flush_or_forget(self, key: tuple[str, int]) -> None:
        b = self._batches.get(key)
        try:
            self._flush(key)
        except _PartitionGone as e:
            log.warning("partition %s[%d] moved on before its commit (%s); its next owner replays it", *key, e)
            if self._batches.get(key) is b:  # not a fresh assignment of the same partition
                self._batches.pop(key, None)

    # -- one batch -----------------------------------------------------------------------------
    def _flush(self, key: tuple[str, int]) -> None:
        """The one place that orders a batch: intent -> decode -> insert -> counters -> dead letters
        delivered -> commit."""
        self._current = key
        self._revoked.discard(key)
        try:
            self._flush_batch(key)
        finally:
            self._current = None
            self._resume()

    def _flush_batch(self, key: tuple[str, int]) -> None:
        b = self._batches[key]
        msgs = b.msgs
        topic, partition = key
        first, last = msgs[0].offset(), msgs[-1].offset()
        token = dedup_token(topic, partition, first, last)
        t0 = time.perf_counter()
        consumer = self._consumer
        assert consumer is not None and self._dlq is not None
        replay = b.replay_end is not None
        attempt = b.attempt + 1
        if replay:
            self.stats.replayed += 1
            self._m.replayed.inc()
            ref_ms = b.replay_ref_ms if b.replay_ref_ms is not None else int(time.time() * 1000)
        else:
            ref_ms = int(time.time() * 1000)
        intent = Intent(last, ref_ms, attempt)

        def record(md: str) -> None:
            self._commit(confluent_kafka.TopicPartition(topic, partition, first, metadata=md))

        record(intent.metadata())
        crash_point("after_intent")

        kind = self._topic_kind.get(topic)
        dead = _Tally[tuple[int, str]]()  # (minute, host) -> dead letters, for pipeline_counters
        expired = _Tally[tuple[int, str]]()  # (minute, host) -> rows expired on arrival
        guard = None
        if intent.guarded:
            log.warning("partition %s[%d]: range %d-%d cut %d times; decoding it under guard", topic, partition,
                        first, last, attempt)

            def guard(offset: int) -> None:
                record(intent.metadata(decoding=offset))

        def reject(m: Any, reason: str, detail: str, *, raw: pa.Table | None = None, row: int | None = None,
                   error: str | None = None) -> None:
            self._dead_letter(m, reason, detail, dead, raw=raw, row=row, error=error)

        table, segs = decode_batch(topic, kind, msgs, reject, guard=guard, crashed_at=b.crashed_at)
        if guard is not None:
            record(intent.metadata())
        if kind is not None and table is not None and table.num_rows:
            table, segs = self._set_aside_expired(kind, table, segs, ref_ms, expired, dead)
        crash_point("before_insert")
        if kind is not None and table is not None and table.num_rows:
            self._insert(kind, table, segs, token, dead)
            self._m.written.labels(kind.table).inc(table.num_rows)
        crash_point("after_insert")
        self._insert_counters(kind, segs, dead, expired, token)
        crash_point("after_counters")

        def delivered() -> None:
            assert self._dlq is not None
            if not self._dlq.flush():
                raise TransientError("dead letters not yet acknowledged by the broker")

        self._retry("dead_letters", delivered)
        self._m.truncated.inc(self._dlq.truncated - self._truncated_seen)
        self._truncated_seen = self._dlq.truncated
        crash_point("before_commit")
        self._commit(confluent_kafka.TopicPartition(topic, partition, last + 1, metadata=""))
        if self._batches.get(key) is b:
            self._batches[key] = _Batch()
        self.stats.batches += 1
        self._m.consumed.labels(topic).inc(len(msgs))
        self._m.batch_rows.observe(b.rows)
        self._m.batch_seconds.observe(time.perf_counter() - t0)

    def _set_aside_expired(self, kind: RecordKind, table: pa.Table, segs: list[Seg], ref_ms: int,
                           expired: _Tally[tuple[int, str]], dead: _Tally[tuple[int, str]]
                           ) -> tuple[pa.Table, list[Seg]]:
        """Rows the engine would drop at insert (older than their table's TTL, judged against the
        intent's reference time): not inserted, counted ``expired``, dead-lettered if the policy says so."""
        ttl = self._expiry.get(kind.table)
        if ttl is None:
            return table, segs
        column, days = ttl
        cutoff = ref_ms * 1_000_000 - days * 86_400 * 10**9 + EXPIRY_MARGIN_NS
        times = table.column(column).cast(pa.int64())
        mask = pc.less(times, cutoff)
        if not pc.any(mask).as_py():
            return table, segs
        flags = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
        kept: list[Seg] = []
        pos = 0
        for seg in segs:
            n = len(seg.rows)
            mine = flags[pos:pos + n]
            pos += n
            if not mine.any():
                kept.append(seg)
                continue
            stay = [r for r, x in zip(seg.rows, mine, strict=True) if not x]
            for r, x in zip(seg.rows, mine, strict=True):
                if not x:
                    continue
                self.stats.expired += 1
                self._m.expired.labels(kind.table).inc()
                if self.expired_policy == "dead-letter":
                    self._dead_letter(seg.msg, "expired", f"{column} older than {days} days", expired,
                                      raw=seg.raw, row=r if seg.raw is not None else None, count=False)
                else:
                    expired[(_minute_ns(seg.msg), _host(seg.msg))] += 1
            if stay:
                kept.append(Seg(seg.msg, stay, seg.raw))
        return table.filter(pc.invert(mask)), kept

    def _insert(self, kind: RecordKind, table: pa.Table, segs: list[Seg], token: str,
                dead: _Tally[tuple[int, str]]) -> None:
        """Insert; infrastructure faults are retried in place (never split, never dead-lettered). A
        batch the engine refuses for a row's sake (contract.errors.ENGINE_ROW_CODES) is split until the
        refused rows are found (each half has its own deterministic token, so a replay splits and
        deduplicates the same way)."""
        if table.num_rows == 0:
            return
        try:
            self._retry("insert", lambda: self.service.insert_arrow(DATABASE, kind.table, table,
                                                                    dedup_token=token))
            self.stats.written += table.num_rows
        except PermanentError as e:
            if classify(e) is not Fault.MESSAGE:
                raise
            if table.num_rows == 1:
                seg = segs[0]
                self._dead_letter(seg.msg, "rejected_by_clickhouse", str(e)[:300], dead, raw=seg.raw,
                                  row=seg.rows[0] if seg.raw is not None else None, error=type(e).__name__)
                return
            half = table.num_rows // 2
            left, right = split(segs, half)
            self._insert(kind, table.slice(0, half), left, token + "/a", dead)
            self._insert(kind, table.slice(half), right, token + "/b", dead)

    def _insert_counters(self, kind: RecordKind | None, segs: list[Seg], dead: _Tally[tuple[int, str]],
                         expired: _Tally[tuple[int, str]], token: str) -> None:
        """Per-host per-minute ``ingested`` / ``dead_lettered`` / ``expired`` rows, minute and host taken
        from the messages themselves (Kafka timestamp, key) so a replayed batch makes identical rows."""
        if kind is PIPELINE_COUNTER:
            return
        tally = _Tally[tuple[int, str, str]]()
        for seg in segs:
            tally[(_minute_ns(seg.msg), _host(seg.msg), "ingested")] += len(seg.rows)
        for (minute, host), n in dead.items():
            tally[(minute, host, "dead_lettered")] += n
        for (minute, host), n in expired.items():
            tally[(minute, host, "expired")] += n
        if not tally:
            return
        keys = sorted(tally)
        rows = [{"time": t, "host": h, "component": "ingest", "counter": c, "value": tally[(t, h, c)]}
                for t, h, c in keys]
        table = PIPELINE_COUNTER.to_arrow(rows)
        self._retry("insert_counters", lambda: self.service.insert_arrow(
            DATABASE, PIPELINE_COUNTER.table, table, dedup_token=token + ":c"))

    def _dead_letter(self, m: Any, reason: str, detail: str, dead: _Tally[tuple[int, str]],
                     raw: pa.Table | None = None, row: int | None = None, error: str | None = None,
                     count: bool = True) -> None:
        """One bad record (or a whole unreadable message) to the dead-letter topic. A bad row inside an
        Arrow batch goes alone, as a one-row batch, with its index in ``bs-src-row``. ``dead`` is the
        pipeline counter tally it is counted in; ``count`` False keeps it out of ``dead_lettered``."""
        assert self._dlq is not None
        dlq = self._dlq
        if raw is not None and row is not None:
            one = wire.ipc_bytes(raw.slice(row, 1))
            self._retry("dead_letter", lambda: dlq.send(m, reason, detail, value=one, row=row, error=error))
        else:
            self._retry("dead_letter", lambda: dlq.send(m, reason, detail, error=error))
        dead[(_minute_ns(m), _host(m))] += 1
        if count:
            self.stats.dead_lettered += 1
        self.stats.by_reason[reason] += 1
        self._m.dead.labels(reason).inc()

    def _commit(self, tp: Any) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            self._retry("commit", lambda: consumer.commit(offsets=[tp], asynchronous=False))
        except confluent_kafka.KafkaException as e:
            if classify(e) is Fault.GONE:
                raise _PartitionGone(str(e)) from e
            raise

    # -- retries, pausing, lag -----------------------------------------------------------------
    def _retry(self, operation: str, fn: Callable[[], T]) -> T:
        return retry(operation, fn, wait=self._wait, initial_s=self.config.retry_initial_s,
                     max_s=self.config.retry_max_s, on_retry=self._count_fault)

    def _count_fault(self, operation: str, e: BaseException) -> None:
        self.stats.retries += 1
        self._m.retries.labels(operation).inc()
        self._m.faults.labels(operation, type(e).__name__).inc()

    def _wait(self, delay: float) -> bool:
        """Back off between retries without leaving the group: every assigned partition is paused (so
        nothing new is read) and the consumer is polled (heartbeats, rebalances, max.poll.interval.ms).
        True: stop. Raises _PartitionGone when the batch's partition was taken away meanwhile."""
        consumer = self._consumer
        if consumer is None or self._current is None:
            return self._stop.wait(delay)
        self._paused = True
        self._m.paused.set(1)
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            # Every poll: an assignment that arrived meanwhile is paused too.
            consumer.pause(consumer.assignment())
            left = deadline - time.monotonic()
            if left <= 0:
                break
            m = consumer.poll(min(left, 0.5))
            if m is not None and m.error() is None:
                self._held.append(m)  # fetched before the pause; handled after this batch, in order
            if self._current in self._revoked:
                raise _PartitionGone("revoked while waiting for the store")
        return self._stop.is_set()

    def _resume(self) -> None:
        if self._paused and self._consumer is not None:
            try:
                self._consumer.resume(self._consumer.assignment())
            except confluent_kafka.KafkaException as e:
                log.warning("resume: %s", e)
            self._paused = False
            self._m.paused.set(0)

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


def _minute_ns(m: Any) -> int:
    _kind, ts_ms = m.timestamp()
    return (max(ts_ms, 0) // 60_000) * 60_000 * 1_000_000


def _host(m: Any) -> str:
    k = m.key()
    return k.decode("utf-8", "replace")[:256] if k else ""
