"""The agent's Kafka sink: records in, Kafka messages out, every record's outcome counted.

``write(kind, rows)`` (the pipeline's batches) sends Arrow batch messages; ``emit(kind_name, row)`` sends
one msgpack record. Either way the kind's topic, keyed by host so one host's records stay in order
within a partition (contract/wire.py). Each record ends in exactly one of:
delivered (acknowledged by all in-sync replicas), or dropped with a reason: ``queue_full`` (the bound
in KafkaSinkConfig was reached while the broker was away), ``delivery_failed`` (timed out or refused),
``shutdown`` (still unacknowledged when the flush on exit gave up), ``encode_error``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter as _Tally
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.kafka_sink.config import KafkaSinkConfig
from agent.kafka_sink.service import ProducerService
from contract import wire
from contract.metrics import MetricSet
from contract.records import KINDS, RecordKind

log = logging.getLogger(__name__)


class KafkaSinkMetrics(MetricSet):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        kw = self.kw
        self.published = Counter("blindspot_agent_records_published", "Records queued for Kafka",
                                 ["kind"], **kw)
        self.delivered = Counter("blindspot_agent_records_delivered", "Records acknowledged by Kafka",
                                 ["kind"], **kw)
        self.dropped = Counter("blindspot_agent_records_dropped", "Records that never reached Kafka",
                               ["reason"], **kw)
        self.queued = Gauge("blindspot_agent_producer_queue_messages",
                            "Messages queued or in flight to Kafka", **kw)


class KafkaSink:
    def __init__(self, config: KafkaSinkConfig, *, host: str | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.host = host or socket.gethostname()
        self._host_key = self.host.encode()
        self._m = KafkaSinkMetrics.on(registry)
        self._m.queued.set_function(lambda: self._service.queued())
        self._lock = threading.Lock()
        self._tally: _Tally[str] = _Tally()  # delivered / dropped:<reason>, also for pipeline_counters
        self._reported: _Tally[str] = _Tally()
        self._service = ProducerService(config.librdkafka())
        self._topics = {name: config.topic_prefix + k.topic for name, k in KINDS.items()}
        self._published = {name: self._m.published.labels(name) for name in KINDS}
        # One delivery callback per kind, made once: no header parsing per acknowledged message.
        self._callbacks = {name: self._delivery_cb(name) for name in KINDS}
        self._closed = False

    # -- hot path ------------------------------------------------------------------------------
    def emit(self, kind_name: str, row: dict[str, Any]) -> None:
        kind = KINDS[kind_name]
        try:
            value = wire.encode(row)
        except Exception as e:  # a value msgpack cannot represent: a bug in a source; count it
            log.error("cannot encode %s record: %s", kind_name, e)
            self._drop("encode_error")
            return
        host = row.get("host")
        key = host.encode() if isinstance(host, str) else self._host_key
        try:
            self._service.produce(self._topics[kind_name], value, key, wire.headers_for(kind),
                                  self._callbacks[kind_name])
        except BufferError:
            self._drop("queue_full")
            return
        self._published[kind_name].inc()

    def write(self, kind: RecordKind, rows: pa.Table) -> None:
        """The agent pipeline's sink interface (agent/pipeline.py): a batch of one kind becomes a few
        Arrow messages (one host each, at most wire.MAX_BATCH_ROWS rows): columnar from the agent on,
        so ingest workers do no per-record decoding (docs/wire-format.md)."""
        topic, headers = self._topics[kind.name], wire.headers_for(kind, wire.ENC_ARROW)
        for host, host_rows in self._by_host(rows):
            key = host.encode()
            for value, n in wire.encode_batch(kind, host_rows):
                try:
                    self._service.produce(topic, value, key, headers, self._batch_cb(kind.name, n))
                except BufferError:
                    self._drop("queue_full", n)
                    continue
                self._published[kind.name].inc(n)

    def _by_host(self, rows: pa.Table) -> list[tuple[str, pa.Table]]:
        """The batch split by its rows' host (the message key); one part in the usual case."""
        hosts = rows.column("host").unique().to_pylist() if rows.num_rows else []
        if len(hosts) <= 1:
            return [(hosts[0] if hosts else self.host, rows)]
        return [(h, rows.filter(pc.equal(rows.column("host"), h))) for h in hosts]

    def _batch_cb(self, kind_name: str, n: int) -> Any:
        delivered = self._m.delivered.labels(kind_name)

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                delivered.inc(n)
                with self._lock:
                    self._tally["delivered"] += n
            else:
                if not self._closed:
                    log.warning("kafka delivery failed (%d records): %s", n, err)
                self._drop("shutdown" if self._closed else "delivery_failed", n)

        return on_delivery

    def _delivery_cb(self, kind_name: str) -> Any:
        delivered = self._m.delivered.labels(kind_name)

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                delivered.inc()
                with self._lock:
                    self._tally["delivered"] += 1
            else:
                reason = "shutdown" if self._closed else "delivery_failed"
                if reason == "delivery_failed":
                    log.warning("kafka delivery failed: %s", err)
                self._drop(reason)

        return on_delivery

    def _drop(self, reason: str, n: int = 1) -> None:
        self._m.dropped.labels(reason).inc(n)
        with self._lock:
            self._tally["dropped"] += n
            self._tally["dropped:" + reason] += n

    # -- lifecycle -----------------------------------------------------------------------------
    def flush(self, timeout_s: float | None = None) -> int:
        return self._service.flush(self.config.flush_timeout_s if timeout_s is None else timeout_s)

    def close(self, timeout_s: float | None = None) -> int:
        """Flush (SIGTERM path); whatever is still unacknowledged afterwards is counted as dropped."""
        if self._closed:
            return 0
        t = self.config.flush_timeout_s if timeout_s is None else timeout_s
        left = self._service.flush(t)
        self._closed = True
        if left:
            log.error("%d records still unacknowledged after %.0fs: dropped (counted)", left, t)
        self._service.close(0)
        return left

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._tally)

    def counter_deltas(self) -> dict[str, int]:
        """Counts since the previous call, for the per-minute ``pipeline_counters`` rows."""
        with self._lock:
            now = _Tally(self._tally)
            delta = now - self._reported
            self._reported = now
        return dict(delta)
