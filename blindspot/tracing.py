"""A host agent's sources and pipeline, built from configuration: one place for `blindspot run`
(blindspot/commands/run.py) and `blindspot agent` (blindspot/commands/agent.py), so both trace the
same things.

    TcpSource ─┐
    HttpSource ┴─ emit(kind, Arrow table) ─► Pipeline ─► sink (ClickHouseSink or KafkaSink)
"""

from __future__ import annotations

from agent.go_tls_source import GoTlsSource
from agent.http_source import HttpSource
from agent.pipeline import Pipeline, Sink, Source
from agent.tcp_source import TcpSource
from blindspot.config import Config


def build_pipeline(cfg: Config, sink: Sink, component: str) -> Pipeline:
    """TCP always; Go HTTP unless disabled; every source emitting into the returned pipeline."""
    pipeline = Pipeline([], sink, cfg.pipeline, host=cfg.host, component=component)
    sources: list[Source] = [TcpSource(cfg.tcp, pipeline.emit, host=cfg.host)]
    if cfg.http.enabled:
        sources.append(HttpSource(cfg.http, pipeline.emit, host=cfg.host))
        if cfg.http.go_tls or cfg.http.go_h2c:  # a uprobe per TLS / net.Conn read and write (docs/go-tls.md)
            sources.append(GoTlsSource(cfg.http, pipeline.emit, host=cfg.host))
    pipeline.sources = sources
    return pipeline
