"""Prometheus metrics of long-running Blindspot processes (Prometheus naming conventions)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

RECORDS = Counter("blindspot_records_total", "Records produced by a source", ["kind"])
KERNEL_LOST = Counter(
    "blindspot_kernel_lost_total", "Records or connections lost in the kernel", ["reason"]
)
ROWS_WRITTEN = Counter("blindspot_sink_rows_written_total", "Rows the sink accepted", ["table"])
DROPPED = Counter("blindspot_dropped_records_total", "Records dropped after capture", ["reason"])
REJECTED = Counter(
    "blindspot_rejected_records_total", "Records a source refused as malformed, counted and skipped",
    ["source", "reason"],
)
SINK_RETRIES = Counter("blindspot_sink_retries_total", "Sink writes retried after a transient error")
BATCH_ROWS = Histogram(
    "blindspot_sink_batch_rows", "Rows per batch written", buckets=(1, 10, 100, 1e3, 1e4, 1e5)
)
BATCH_SECONDS = Histogram("blindspot_sink_batch_duration_seconds", "Time to write one batch")
OPEN_CONNECTIONS = Gauge("blindspot_open_connections", "TCP connections open at the last snapshot")
SOURCE_ERRORS = Counter(
    "blindspot_source_errors_total", "Failures a source counted and went on (bad record, full map, ...)",
    ["source", "what"],
)
GO_BINARIES_REJECTED = Counter(
    "blindspot_go_binaries_rejected_total", "Executables refused by the Go binary reader, by reason", ["reason"]
)
QUEUE_BATCHES = Gauge("blindspot_handoff_queue_batches", "Batches waiting for the writer")


class MetricsAddressError(ValueError):
    """The metrics address cannot be used (a message for the user, not a traceback)."""


def serve(address: str) -> None:
    """Expose /metrics on ``host:port`` (empty or "off": don't)."""
    if not address or address == "off":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise MetricsAddressError(f"--metrics-address {address!r}: expected HOST:PORT (or 'off')")
    try:
        server, _ = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")  # noqa: S104 (operator's choice)
    except OSError as e:
        raise MetricsAddressError(f"--metrics-address {address!r}: cannot listen ({e.strerror or e})") from None
    log.info("Prometheus metrics on http://%s:%d/metrics", host, server.server_port)  # port 0: the one bound
