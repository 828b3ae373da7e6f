"""A host agent's sources and pipeline, built from configuration: one place for `blindspot run`
(blindspot/embedded.py) and `blindspot agent` (agent/fleet.py), so both trace the same things."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from agent.http_source import HttpSource
from agent.pipeline import Pipeline, Sink, Source
from agent.tcp_source import TcpSource

if TYPE_CHECKING:
    from blindspot.config import Config


def settle_host(cfg: Config) -> str:
    """The host name every record carries: configured, else the machine's."""
    cfg.pipeline.host = cfg.pipeline.host or cfg.host or cfg.tcp.host or os.uname().nodename
    cfg.tcp.host = cfg.http.hostname = cfg.pipeline.host
    return cfg.pipeline.host


def build_pipeline(cfg: Config, sink: Sink) -> Pipeline:
    """TCP always; Go HTTP unless disabled; every source emitting into the returned pipeline."""
    settle_host(cfg)
    pipeline = Pipeline([], sink, cfg.pipeline)
    sources: list[Source] = [TcpSource(cfg.tcp, emit=pipeline.emit)]
    if cfg.http_enabled:
        sources.append(HttpSource(pipeline.emit, cfg.http, emit_table=pipeline.emit_table))
    pipeline.sources = sources
    return pipeline
