"""``blindspot run``: the embedded pipeline on one machine with no servers.

    TcpSource  (kernel) ─┐
    HttpSource (kernel) ─┴► Pipeline ─► ClickHouseSink ─► chDB on --data-dir
                                         ▲
    blindspot query ── <data-dir>/query.sock (this process owns the folder)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

from agent.pipeline import Pipeline
from blindspot import live, metrics
from blindspot.commands import _common
from blindspot.config import Config, secure_data_dir
from blindspot.query_server import QueryServer
from blindspot.tracing import build_pipeline
from ingest.clickhouse_sink import ChdbService, ClickHouseSink
from ingest.schema import migrate

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run", help="trace this host into the embedded engine (needs root)",
        description="Trace this host's TCP connections and Go HTTP requests with eBPF and write them into "
        "the embedded ClickHouse engine (chDB) in --data-dir. Shows live counters and the latest closed "
        "connections. Ctrl-C (or --duration) stops it after flushing everything.",
    )
    _common.add_common(p)
    _common.add_tracing(p)
    p.add_argument("--retention-days", type=int, metavar="N", help="TTL of new tables (default 30)")
    p.add_argument("--no-live", action="store_true", help="log counters instead of the live view")


def main(args: argparse.Namespace) -> int:
    cfg = _common.load(args, _common.COMMON_FLAGS, _common.TRACING_FLAGS)
    if not _common.can_trace("run"):
        return 2
    run(cfg, duration_s=args.duration, show_live=not args.no_live)
    return 0


def run(cfg: Config, duration_s: float | None = None, show_live: bool = True) -> Pipeline:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    # Private data at rest: the folder 0700 (refused if others can write it), every file this process
    # creates 0600 (chDB's included: it inherits the umask).
    os.umask(0o077)
    secure_data_dir(cfg.data_dir)
    metrics.serve(cfg.metrics_address)  # before the socket: a bad address leaves nothing behind
    service = ChdbService(cfg.data_dir)
    applied = migrate(service, retention_days=cfg.retention_days)
    service.execute("USE blindspot")  # unqualified names in `blindspot query` resolve here
    if applied:
        log.info("schema: applied %s", ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
    sink = ClickHouseSink(service, stop=stop)
    queries = QueryServer(cfg.data_dir, service).start()

    try:
        pipeline = build_pipeline(cfg, sink, component="embedded")
        # Batches wait up to 5 s here (DEFAULT_BATCH_AGE_S): a query flushes them first.
        queries.call_before_each_query(pipeline.flush_pending)
        view = threading.Thread(target=live.show, args=(pipeline, stop), name="live", daemon=True)
        if show_live:
            view.start()
        t0 = time.monotonic()
        log.info("tracing %s on %s; data in %s; Ctrl-C to stop", " + ".join(s.name for s in pipeline.sources),
                 cfg.host, cfg.data_dir)
        pipeline.run(stop, duration_s)
        stop.set()
        if view.is_alive():
            view.join()
        c = pipeline.all_counters()
        log.info("stopped after %.1fs: %d connections, %d rows written, %d dropped, %d lost in kernel",
                 time.monotonic() - t0, c.get("captured:tcp_connection", 0), c.get("rows_written", 0),
                 c.get("dropped_queue_full", 0) + c.get("dropped_sink", 0),
                 c.get("lost_ringbuf", 0) + c.get("lost_map_full", 0))
        return pipeline
    finally:
        queries.close()
        service.close()
