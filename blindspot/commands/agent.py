"""``blindspot agent --kafka``: the same pipeline as ``blindspot run``, publishing to Kafka instead of
writing into an embedded engine. No data folder, no chDB: ingest workers (``blindspot ingest``) own
ClickHouse.

    TcpSource, HttpSource (kernel) ─► Pipeline ─► KafkaSink ─► topic per record kind, key = host
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from agent.kafka_sink import KafkaSink, KafkaSinkConfig
from agent.pipeline import Pipeline
from blindspot import metrics
from blindspot.commands import _common
from blindspot.config import Config
from blindspot.tracing import build_pipeline
from contract.kafka import client_settings

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "agent", help="trace this host and publish to Kafka (needs root)",
        description="Trace this host's TCP connections and Go HTTP requests and publish every record to "
        "Kafka, one topic per record kind, keyed by host. TLS/SASL settings: --kafka-config FILE (librdkafka "
        "properties) or BLINDSPOT_RDKAFKA_* environment variables. SIGTERM flushes before exiting.",
    )
    _common.add_common(p)
    _common.add_kafka(p)
    _common.add_tracing(p)


def main(args: argparse.Namespace) -> int:
    cfg = _common.load(args, _common.COMMON_FLAGS, _common.TRACING_FLAGS, _common.KAFKA_FLAGS)
    if not cfg.kafka.bootstrap:
        print("blindspot agent: no Kafka to publish to: --kafka BOOTSTRAP, [kafka] bootstrap or "
              "BLINDSPOT_KAFKA_BOOTSTRAP", file=sys.stderr)
        return 2
    if not _common.can_trace("agent"):
        return 2
    kafka = KafkaSinkConfig(cfg.kafka.bootstrap, topic_prefix=cfg.kafka.topic_prefix,
                            extra=client_settings(cfg.kafka.properties))
    run(cfg, kafka, duration_s=args.duration)
    return 0


def run(cfg: Config, kafka: KafkaSinkConfig, duration_s: float | None = None) -> Pipeline:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics.serve(cfg.metrics_address)
    sink = KafkaSink(kafka, host=cfg.host)  # its asynchronous drops: Pipeline.all_counters
    pipeline = build_pipeline(cfg, sink, component="agent")  # the same sources as `blindspot run`
    t0 = time.monotonic()
    log.info("tracing %s on %s; publishing to Kafka at %s", " + ".join(s.name for s in pipeline.sources),
             cfg.host, kafka.bootstrap_servers)
    try:
        pipeline.run(stop, duration_s)  # its shutdown flushes every batch into the sink
    finally:
        left = sink.close()  # SIGTERM path: wait for the broker's acknowledgements (bounded)
    c = sink.counts()
    log.info("stopped after %.1fs: %d records delivered to Kafka, %d dropped (%d unacknowledged at exit)",
             time.monotonic() - t0, c.get("delivered", 0), c.get("dropped", 0), left)
    return pipeline
