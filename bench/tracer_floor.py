"""The agent with parts of its work left out, for bench_tcp.py's floor modes: what the rate ratio would
be if those parts cost nothing.

    .venv/bin/python -m bench.tracer_floor kernel|no-store

  kernel    the default configuration's BPF programs (TCP and HTTP sources, attached as `blindspot run`
            attaches them), the TCP ring read on the pipeline's timer and every record thrown away
            unread (the HTTP source runs as in `blindspot run`: bench_tcp's load carries no HTTP, so
            it only notes the load tool's start): the floor under any user space that records what
            these programs record
  no-store  the whole pipeline (decoding, batching, open-connection snapshots, counters) into a sink
            that throws each batch away: `blindspot run` without the embedded engine

Prints "ready" once every program is attached; runs until SIGTERM. Needs root. Not part of the product.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from agent.http_source import HttpSource
from agent.pipeline import Pipeline, Source
from agent.tcp_source import TcpSource
from blindspot import config as config_mod


class Discard:
    """A sink that accepts every batch and keeps nothing."""

    def __init__(self) -> None:
        self.rows = 0

    def write(self, kind: Any, rows: Any) -> None:
        self.rows += len(rows)


class RingsOnly(TcpSource):
    """The TCP source reading its rings on the same timer, its records never decoded."""

    discarded = 0

    def _decode(self) -> None:
        self._last_decode = time.monotonic()
        self.discarded += self._pending_n
        self._pending, self._pending_n = [], 0


class Ready:
    """A source opened after the others: says "ready" once their programs are attached."""

    name = "ready"

    def open(self) -> None:
        print("ready", flush=True)

    def poll(self, timeout_ms: int) -> None:
        pass

    def counters(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("floor", choices=("kernel", "no-store"))
    ap.add_argument("--snapshot-interval", type=float, default=10.0)
    a = ap.parse_args()
    cfg = config_mod.load(flags={"pipeline": {"snapshot_interval_s": a.snapshot_interval}})
    sink = Discard()
    pipeline = Pipeline([], sink, cfg.pipeline, host=cfg.host, component="embedded")
    tcp = (RingsOnly if a.floor == "kernel" else TcpSource)(cfg.tcp, pipeline.emit, host=cfg.host)
    sources: list[Source] = [tcp]
    if cfg.http.enabled:
        sources.append(HttpSource(cfg.http, pipeline.emit, host=cfg.host))
    pipeline.sources = [*sources, Ready()]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    pipeline.run(stop)
    print(f"tcp records discarded unread: {getattr(tcp, 'discarded', 0)}; rows into the sink: {sink.rows}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
