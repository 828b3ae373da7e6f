"""``blindspot agent --kafka``: the same pipeline as ``blindspot run``, publishing to Kafka instead of
writing into an embedded engine. No data folder, no chDB: ingest workers (``blindspot ingest``) own
ClickHouse.

    TcpSource, HttpSource (kernel) ─► Pipeline ─► KafkaSink ─► topic per record kind, key = host
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from agent.http_source import HttpSource
from agent.kafka_sink import KafkaSink, KafkaSinkConfig
from agent.pipeline import Pipeline, Source
from agent.tcp_source import TcpSource
from blindspot import metrics
from blindspot.config import Config

log = logging.getLogger(__name__)


class _WithSinkCounters:
    """The TCP source, whose counters also carry the Kafka sink's drops as ``dropped_sink``: those happen
    after ``write`` returned (delivery is asynchronous), so the pipeline learns of them here and
    reports them in pipeline_counters. (A wrapper, not another source: the pipeline blocks in its
    only source's poll, and a second source would turn that into sleeping.)"""

    def __init__(self, inner: Any, sink: KafkaSink) -> None:
        self._inner = inner
        self._sink = sink
        self.name = inner.name

    def counters(self) -> dict[str, int]:
        return {**self._inner.counters(), "dropped_sink": self._sink.counts().get("dropped", 0)}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def run(cfg: Config, kafka: KafkaSinkConfig, duration_s: float | None = None) -> Pipeline:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics.serve(cfg.metrics_address)
    cfg.pipeline.component = "agent"
    pipeline: Pipeline | None = None

    def emit(kind: str, row: dict[str, Any]) -> None:
        assert pipeline is not None
        pipeline.emit(kind, row)

    # The same sources as `blindspot run` (blindspot/embedded.py).
    tcp = TcpSource(cfg.tcp, emit=emit)
    cfg.pipeline.host = cfg.pipeline.host or cfg.host or cfg.tcp.host or tcp.host
    sink = KafkaSink(kafka, host=cfg.pipeline.host)
    sources: list[Source] = [_WithSinkCounters(tcp, sink)]  # type: ignore[list-item]
    if cfg.http_enabled:
        cfg.http.hostname = cfg.pipeline.host
        sources.append(HttpSource(emit, cfg.http))
    pipeline = Pipeline(sources, sink, cfg.pipeline)
    t0 = time.monotonic()
    log.info("tracing %s on %s; publishing to Kafka at %s", " + ".join(s.name for s in sources),
             cfg.pipeline.host, kafka.bootstrap_servers)
    try:
        pipeline.run(stop, duration_s)  # its shutdown flushes every batch into the sink
    finally:
        left = sink.close()  # SIGTERM path: wait for the broker's acknowledgements (bounded)
    c = sink.counts()
    log.info("stopped after %.1fs: %d records delivered to Kafka, %d dropped (%d unacknowledged at exit)",
             time.monotonic() - t0, c.get("delivered", 0), c.get("dropped", 0), left)
    return pipeline
