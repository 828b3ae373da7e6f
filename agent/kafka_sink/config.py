"""Configuration of the agent's Kafka sink, and where its librdkafka settings come from.

Security settings (TLS, SASL) pass straight through to librdkafka, from a properties file
(``--kafka-config FILE``, ``key=value`` lines in librdkafka's own names, e.g. ``security.protocol``,
``sasl.mechanism``, ``sasl.username``, ``sasl.password``, ``ssl.ca.location``) or from the environment
(``BLINDSPOT_RDKAFKA_SASL_PASSWORD`` -> ``sasl.password``: prefix stripped, ``_`` -> ``.``, lowercased;
the file may also be named by ``$BLINDSPOT_KAFKA_PROPERTIES``).
Never from command-line values (visible in ``ps``), and never logged: ``redacted()`` hides them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "BLINDSPOT_RDKAFKA_"
ENV_FILE = "BLINDSPOT_KAFKA_PROPERTIES"
_SECRET_WORDS = ("password", "secret", "key", "token", "jaas")


@dataclass
class KafkaSinkConfig:
    bootstrap_servers: str
    client_id: str = "blindspot-agent"
    topic_prefix: str = ""  # as for ingest (KafkaSourceConfig.topic_prefix)
    # Compression applies to whole record batches; zstd shrinks a tcp_connection record ~6x
    # (docs/wire-format.md).
    compression: str = "zstd"
    linger_ms: int = 50
    batch_size: int = 1_000_000
    # The bound while the broker is unreachable: librdkafka keeps at most this many messages /
    # KiB queued, for at most this long. A record past any bound is dropped and counted
    # (blindspot_agent_records_dropped_total{reason=...}).
    queue_max_messages: int = 1_000_000
    queue_max_kbytes: int = 256 * 1024
    message_timeout_ms: int = 15 * 60 * 1000
    flush_timeout_s: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)  # librdkafka pass-through (file/env)

    def librdkafka(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            # Idempotence: retries never duplicate or reorder within a partition; implies acks=all.
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.compression,
            "linger.ms": self.linger_ms,
            "batch.size": self.batch_size,
            "queue.buffering.max.messages": self.queue_max_messages,
            "queue.buffering.max.kbytes": self.queue_max_kbytes,
            "message.timeout.ms": self.message_timeout_ms,
            # Murmur2 like the Java client: a host maps to the same partition from any client.
            "partitioner": "murmur2_random",
        }
        conf.update(self.extra)
        return conf


def load_properties(path: str | os.PathLike[str]) -> dict[str, str]:
    """librdkafka ``key=value`` lines; ``#`` comments and blank lines ignored."""
    out: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{n}: expected key=value")
        k, v = line.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k[len(ENV_PREFIX):].lower().replace("_", "."): v for k, v in env.items()
            if k.startswith(ENV_PREFIX)}


def client_settings(properties_file: str | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Pass-through settings: the file (or ``$BLINDSPOT_KAFKA_PROPERTIES``), then the environment on top."""
    env = os.environ if environ is None else environ
    path = properties_file or env.get(ENV_FILE)
    out = load_properties(path) if path else {}
    out.update(from_env(dict(env)))
    return out


def redacted(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` safe to log."""
    return {k: ("***" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in conf.items()}
