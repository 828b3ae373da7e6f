"""Configuration of the agent's Kafka sink (its librdkafka pass-through settings: contract/kafka.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
