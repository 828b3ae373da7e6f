"""The agent's Prometheus metrics: one object per registry, as for the Kafka sink and the ingest worker.

The pipeline moves its plain-int counters into these once a second (``Pipeline.export_metrics``):
sources never touch Prometheus on their hot path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contract.metrics import MetricSet


class AgentMetrics(MetricSet):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        kw = self.kw
        self.records = Counter("blindspot_records", "Records produced by a source", ["kind"], **kw)
        self.kernel_lost = Counter("blindspot_kernel_lost", "Records or connections lost in the kernel",
                                   ["reason"], **kw)
        self.rows_written = Counter("blindspot_sink_rows_written", "Rows the sink accepted", ["table"], **kw)
        self.dropped = Counter("blindspot_dropped_records", "Records dropped after capture", ["reason"], **kw)
        self.rejected = Counter("blindspot_rejected_records",
                                "Records a source refused as malformed, counted and skipped",
                                ["source", "reason"], **kw)
        self.batch_rows = Histogram("blindspot_sink_batch_rows", "Rows per batch written",
                                    buckets=(1, 10, 100, 1e3, 1e4, 1e5), **kw)
        self.batch_seconds = Histogram("blindspot_sink_batch_duration_seconds", "Time to write one batch", **kw)
        self.open_connections = Gauge("blindspot_open_connections", "TCP connections open at the last snapshot",
                                      **kw)
        self.source_errors = Counter("blindspot_source_errors",
                                     "Failures a source counted and went on (bad record, full map, ...)",
                                     ["source", "what"], **kw)
        self.go_binaries_rejected = Counter("blindspot_go_binaries_rejected",
                                            "Executables refused by the Go binary reader, by reason", ["reason"],
                                            **kw)
        self.packet_drops = Counter("blindspot_packet_drops", "Packets the kernel dropped, by its reason "
                                    "(skb:kfree_skb; rows in packet_drops)", ["reason"], **kw)
        self.queue_batches = Gauge("blindspot_handoff_queue_batches", "Batches waiting for the writer", **kw)
        for reason in ("not_http", "decode_error"):  # visible at 0 from the start
            self.rejected.labels("http", reason)
