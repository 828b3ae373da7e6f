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

from agent.kafka_sink import KafkaSink, KafkaSinkConfig
from agent.pipeline import Pipeline
from agent.sources import build_sources
from blindspot import metrics
from blindspot.config import Config

log = logging.getLogger(__name__)


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

    sources = build_sources(cfg, emit)  # the same sources as `blindspot run`
    sink = KafkaSink(kafka, host=cfg.pipeline.host)  # its asynchronous drops: Pipeline.all_counters
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
