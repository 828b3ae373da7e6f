"""The ingest worker's Prometheus metrics (the style of every component's: contract/metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contract.metrics import MetricSet


class WorkerMetrics(MetricSet):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        kw = self.kw
        self.consumed = Counter("blindspot_ingest_records_consumed", "Messages read from Kafka",
                                ["topic"], **kw)
        self.written = Counter("blindspot_ingest_records_written", "Rows accepted by ClickHouse",
                               ["table"], **kw)
        self.dead = Counter("blindspot_ingest_records_dead_lettered", "Messages sent to the dead-letter topic",
                            ["reason"], **kw)
        self.retries = Counter("blindspot_ingest_retries", "Retried operations after an infrastructure fault",
                               ["operation"], **kw)
        self.faults = Counter("blindspot_ingest_infrastructure_faults",
                              "Infrastructure faults (retried, never skipped) by operation and exception class",
                              ["operation", "error"], **kw)
        self.paused = Gauge("blindspot_ingest_paused",
                            "1 while consumption is paused waiting for the store or the broker", **kw)
        self.expired = Counter("blindspot_ingest_records_expired",
                               "Rows older than their table's TTL on arrival (not stored)", ["table"], **kw)
        self.truncated = Counter("blindspot_ingest_dead_letters_truncated",
                                 "Dead letters cut to fit the dead-letter topic (bs-dlq-truncated)", **kw)
        self.replayed = Counter("blindspot_ingest_batches_replayed",
                                "Batches cut again from a recorded intent after a crash or rebalance", **kw)
        self.lag = Gauge("blindspot_ingest_consumer_lag_messages", "High watermark minus position",
                         ["topic", "partition"], **kw)
        self.batch_rows = Histogram("blindspot_ingest_batch_rows", "Records per batch",
                                    buckets=(1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000), **kw)
        self.batch_seconds = Histogram("blindspot_ingest_batch_duration_seconds",
                                       "Decode, insert and commit time of one batch", **kw)
