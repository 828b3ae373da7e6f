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

from agent.kafka_sink import KafkaSink, KafkaSinkConfig
from agent.pipeline import Pipeline
from agent.sources import build_pipeline, settle_host
from blindspot import metrics
from blindspot.config import Config

log = logging.getLogger(__name__)


def run(cfg: Config, kafka: KafkaSinkConfig, duration_s: float | None = None) -> Pipeline:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics.serve(cfg.metrics_address)
    cfg.pipeline.component = "agent"
    sink = KafkaSink(kafka, host=settle_host(cfg))  # its asynchronous drops: Pipeline.all_counters
    pipeline = build_pipeline(cfg, sink)  # the same sources as `blindspot run`
    t0 = time.monotonic()
    log.info("tracing %s on %s; publishing to Kafka at %s", " + ".join(s.name for s in pipeline.sources),
             cfg.pipeline.host, kafka.bootstrap_servers)
    try:
        pipeline.run(stop, duration_s)  # its shutdown flushes every batch into the sink
    finally:
        left = sink.close()  # SIGTERM path: wait for the broker's acknowledgements (bounded)
    c = sink.counts()
    log.info("stopped after %.1fs: %d records delivered to Kafka, %d dropped (%d unacknowledged at exit)",
             time.monotonic() - t0, c.get("delivered", 0), c.get("dropped", 0), left)
    return pipeline
