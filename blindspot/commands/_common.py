"""Flags that several commands share, and how flags become configuration overrides."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from blindspot import config as config_mod

# flag dest -> (config section or "", key, transform of the flag's value)
TRACING_FLAGS: dict[str, tuple[str, str, Any]] = {
    "metrics_address": ("", "metrics_address", None),
    "snapshot_interval": ("pipeline", "snapshot_interval_s", None),
    "no_http": ("http", "enabled", lambda v: not v),
    "go_uprobes": ("http", "go_uprobes", None),
    "http_headers": ("http", "headers", lambda v: v.lower()),
    "keep_raw_paths": ("http", "redact_paths", lambda v: not v),
}
KAFKA_FLAGS: dict[str, tuple[str, str, Any]] = {
    "kafka": ("kafka", "bootstrap", None),
    "kafka_config": ("kafka", "properties", None),
    "topic_prefix": ("kafka", "topic_prefix", None),
}
COMMON_FLAGS: dict[str, tuple[str, str, Any]] = {
    "data_dir": ("", "data_dir", None),
    "retention_days": ("", "retention_days", None),
}


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument("--data-dir", metavar="DIR", help="embedded data folder (default /var/lib/blindspot)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")


def add_kafka(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers ([kafka] bootstrap)")
    p.add_argument("--kafka-config", metavar="FILE",
                   help="librdkafka properties file (TLS, SASL, ...); or BLINDSPOT_RDKAFKA_* variables")
    p.add_argument("--topic-prefix", metavar="PREFIX",
                   help="prefix of every topic name (the same on agents and ingest)")


def add_tracing(p: argparse.ArgumentParser) -> None:
    """Flags of every command that traces this host (`run`, `agent`)."""
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop by itself after this long")
    p.add_argument("--snapshot-interval", type=float, metavar="SECONDS",
                   help="how often open connections are written to tcp_connections_open (default 10)")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="Prometheus /metrics address (default 127.0.0.1:9435; 'off' to disable)")
    p.add_argument("--no-http", action="store_true", default=None,
                   help="trace TCP only, not Go net/http requests")
    p.add_argument("--go-uprobes", action="store_true", default=None,
                   help="also route patterns and outbound->inbound links via Go uprobes (costly: ~19 us/hit)")
    p.add_argument("--http-headers", metavar="NAMES",
                   help="request headers to capture, comma-separated (default: x-gray-version, "
                   "x-request-id, traceparent, user-agent, host; never Authorization/Cookie unless named)")
    p.add_argument("--keep-raw-paths", action="store_true", default=None,
                   help="store request paths as sent, without redacting token-like segments and ;matrix "
                   "parameters (userinfo and query strings are never stored; routes stay templated)")


def overrides(args: argparse.Namespace, *tables: dict[str, tuple[str, str, Any]]) -> dict[str, Any]:
    """The flags given on the command line (None: not given) as nested config values."""
    out: dict[str, Any] = {}
    for table in tables:
        for dest, (section, key, transform) in table.items():
            value = getattr(args, dest, None)
            if value is None:
                continue
            if transform is not None:
                value = transform(value)
            (out.setdefault(section, {}) if section else out)[key] = value
    return out


def load(args: argparse.Namespace, *tables: dict[str, tuple[str, str, Any]]) -> config_mod.Config:
    return config_mod.load(getattr(args, "config", None), flags=overrides(args, *tables))


def can_trace(command: str) -> bool:
    """False (after saying why) if this process cannot load BPF programs."""
    if os.geteuid() != 0:
        print(f"blindspot {command}: needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN): see README, "
              "Privileges", file=sys.stderr)
        return False
    return True
