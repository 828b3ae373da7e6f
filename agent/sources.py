"""The kernel sources a host agent runs, built from configuration: one place for `blindspot run`
(blindspot/embedded.py) and `blindspot agent` (agent/fleet.py), so both trace the same things."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.http_source import HttpSource
from agent.pipeline import Source
from agent.tcp_source import Emit, TcpSource

if TYPE_CHECKING:
    from blindspot.config import Config


def build_sources(cfg: Config, emit: Emit) -> list[Source]:
    """TCP always; Go HTTP unless disabled. Settles the host name every record carries."""
    tcp = TcpSource(cfg.tcp, emit=emit)
    cfg.pipeline.host = cfg.pipeline.host or cfg.host or cfg.tcp.host or tcp.host
    tcp.host = cfg.pipeline.host
    sources: list[Source] = [tcp]
    if cfg.http_enabled:
        cfg.http.hostname = cfg.pipeline.host
        sources.append(HttpSource(emit, cfg.http))
    return sources
