"""``blindspot ingest``: an ingest worker, Kafka -> ClickHouse, each record once (ingest/worker.py).

    Kafka topics ─► Worker (batch per partition: intent → decode → insert → commit) ─► ClickHouse
                      └─► dead-letter topic (bad messages, with their reason)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from blindspot import metrics
from blindspot.commands import _common
from blindspot.config import Config, secure_data_dir
from blindspot.query_server import QueryServer
from contract.errors import PermanentError, TransientError
from contract.kafka import client_settings
from contract.retry import Stopping, retry
from ingest.clickhouse_sink.service import ClickHouseService, open_service
from ingest.kafka_source import KafkaSourceConfig
from ingest.schema import migrate
from ingest.worker import Worker

log = logging.getLogger(__name__)

INGEST_FLAGS: dict[str, tuple[str, str, Any]] = {
    "group": ("ingest", "group", None),
    "batch_rows": ("ingest", "batch_max_rows", None),
    "batch_bytes": ("ingest", "batch_max_bytes", None),
    "batch_age": ("ingest", "batch_max_age_s", None),
    "clickhouse": ("ingest", "clickhouse_url", None),
    "clickhouse_password_file": ("ingest", "clickhouse_password_file", None),
    "expired": ("ingest", "expired", None),
    "metrics_address": ("ingest", "metrics_address", None),
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "ingest", help="consume Kafka and write into ClickHouse, each record once",
        description="An ingest worker: consumer group on the record topics, batches into ClickHouse (a "
        "server with --clickhouse, or the embedded engine in --data-dir), offsets committed only after "
        "ClickHouse accepted a batch. Bad messages go to the dead-letter topic. Run several for more "
        "throughput; SIGTERM flushes and commits. Every flag has a config key ([kafka], [ingest]).",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    _common.add_kafka(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--clickhouse", metavar="URL",
                       help="ClickHouse server, http:// or https:// (TLS); no password in the URL: "
                            "$BLINDSPOT_CLICKHOUSE_PASSWORD or --clickhouse-password-file")
    where.add_argument("--data-dir", metavar="DIR", help="embedded engine (chDB) folder owned by this process")
    p.add_argument("--group", help="consumer group id (default blindspot-ingest)")
    p.add_argument("--batch-rows", type=int, metavar="N", help="rows per batch at most (default 50000)")
    p.add_argument("--batch-bytes", type=int, metavar="N", help="bytes per batch at most (default 32 MiB)")
    p.add_argument("--batch-age", type=float, metavar="SECONDS", help="a batch waits at most this long (default 1)")
    p.add_argument("--clickhouse-password-file", metavar="FILE", help="file holding the ClickHouse password")
    p.add_argument("--retention-days", type=int, metavar="N", help="TTL of new tables (default 30)")
    p.add_argument("--expired", choices=("drop", "dead-letter"),
                   help="rows older than the retention on arrival: counted 'expired' and dropped (default), or "
                        "also sent to the dead-letter topic")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="Prometheus /metrics (default 127.0.0.1:9436; 'off' to disable)")


def main(args: argparse.Namespace) -> int:
    cfg = _common.load(args, _common.COMMON_FLAGS, _common.KAFKA_FLAGS, INGEST_FLAGS)
    embedded = cfg.ingest.clickhouse_url is None
    if not cfg.kafka.bootstrap:
        print("blindspot ingest: no Kafka to consume: --kafka BOOTSTRAP, [kafka] bootstrap or "
              "BLINDSPOT_KAFKA_BOOTSTRAP", file=sys.stderr)
        return 2
    if embedded and "data_dir" not in cfg.model_fields_set:
        print("blindspot ingest: where to write: --clickhouse URL ([ingest] clickhouse_url) or --data-dir DIR "
              "(data_dir)", file=sys.stderr)
        return 2
    if embedded:
        # The embedded engine's files are as private as `run` makes them.
        os.umask(0o077)
        secure_data_dir(cfg.data_dir)
    return run(cfg)


def run(cfg: Config) -> int:
    kafka = KafkaSourceConfig(cfg.kafka.bootstrap, group_id=cfg.ingest.group, topic_prefix=cfg.kafka.topic_prefix,
                              batch_max_rows=cfg.ingest.batch_max_rows, batch_max_bytes=cfg.ingest.batch_max_bytes,
                              batch_max_age_s=cfg.ingest.batch_max_age_s, retry_initial_s=cfg.ingest.retry_initial_s,
                              retry_max_s=cfg.ingest.retry_max_s, extra=client_settings(cfg.kafka.properties))
    data_dir = None if cfg.ingest.clickhouse_url else str(cfg.data_dir)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    # A ClickHouse server that is not up yet is waited for (a fleet restarts in any order); a locked
    # embedded folder is not: another process owns it, and waiting would not change that.
    def opened() -> ClickHouseService:
        try:
            svc = open_service(data_dir=data_dir, url=cfg.ingest.clickhouse_url,
                               password_file=cfg.ingest.clickhouse_password_file)
        except TransientError as e:
            if data_dir:
                raise PermanentError(str(e)) from e
            raise
        try:
            migrate(svc, retention_days=cfg.retention_days)
        except BaseException:
            svc.close()
            raise
        return svc

    try:
        service = retry("open ClickHouse", opened, wait=stop.wait, initial_s=kafka.retry_initial_s,
                        max_s=kafka.retry_max_s)
    except Stopping:
        return 1
    metrics.serve(cfg.ingest.metrics_address)
    queries = None
    if data_dir:
        # This process owns the embedded folder: `blindspot query --data-dir` goes through it meanwhile.
        service.execute("USE blindspot")
        queries = QueryServer(data_dir, service).start()
    worker = Worker(kafka, service, retention_days=cfg.retention_days, expired=cfg.ingest.expired)
    try:
        worker.run(stop)
    finally:
        if queries is not None:
            queries.close()
        service.close()
    s = worker.stats
    log.info("ingest stopped: consumed %d, written %d, dead-lettered %d, expired %d, batches %d (replayed %d), "
             "retries %d", s.consumed, s.written, s.dead_lettered, s.expired, s.batches, s.replayed, s.retries)
    return 0
