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
        self.loop_step = Histogram(
            "blindspot_loop_step_seconds",
            "Time of one step of the agent's loop (a source's poll, the snapshot, ...): no ring buffer is "
            "drained while one runs", ["step"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), **kw)
        self.queue_batches = Gauge("blindspot_handoff_queue_batches", "Batches waiting for the writer", **kw)
        self.exec_to_traced = Histogram(
            "blindspot_http_exec_to_traced_seconds",
            "Time from a Go process's exec to fully traced (syscalls, offsets and uprobes in place); 0 when "
            "the kernel traced it at exec (a process of its executable was already traced)",
            buckets=(0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), **kw)
        self.requests_before_traced = Counter(
            "blindspot_http_requests_before_traced",
            "HTTP exchanges of Go processes that started before the process was fully traced (no route "
            "pattern, no link to their inbound request)", **kw)
        for reason in ("not_http", "decode_error"):  # visible at 0 from the start
            self.rejected.labels("http", reason)
