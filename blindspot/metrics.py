"""The Prometheus endpoint of a long-running Blindspot process. The metrics themselves are declared by
each component (agent/metrics.py, agent/kafka_sink/sink.py, ingest/metrics.py; style: contract/metrics.py)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from contract.errors import ConfigError

log = logging.getLogger(__name__)


class MetricsAddressError(ConfigError):
    """The metrics address cannot be used (a message for the user, not a traceback)."""


def serve(address: str) -> None:
    """Expose /metrics on ``host:port`` (empty or "off": don't)."""
    if not address or address == "off":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise MetricsAddressError(f"--metrics-address {address!r}: expected HOST:PORT (or 'off')")
    try:
        server, _ = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")  # noqa: S104 (operator's choice)
    except OSError as e:
        raise MetricsAddressError(f"--metrics-address {address!r}: cannot listen ({e.strerror or e})") from None
    log.info("Prometheus metrics on http://%s:%d/metrics", host, server.server_port)  # port 0: the one bound
