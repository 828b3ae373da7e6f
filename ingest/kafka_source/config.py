"""Configuration of the ingest worker's Kafka side (consumer group, batching, dead-letter topic).

librdkafka security settings pass through exactly as for the agent (agent/kafka_sink/config.py):
a properties file or ``BLINDSPOT_RDKAFKA_*`` environment variables, never command-line values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract.records import KINDS, RecordKind

DLQ_TOPIC = "blindspot.dlq.v1"
# The dead-letter topic's max.message.bytes and its producer's message.max.bytes: room for the largest
# message a worker reads at the broker's default limit (1 MiB) plus the headers the worker adds. A
# dead letter that would still not fit is cut (ingest/kafka_source/source.py: bs-dlq-truncated).
DLQ_MAX_BYTES = 4 * 1024 * 1024


def default_topics(prefix: str = "") -> list[str]:
    return sorted({prefix + k.topic for k in KINDS.values()})


@dataclass
class KafkaSourceConfig:
    bootstrap_servers: str
    group_id: str = "blindspot-ingest"
    # Prepended to every topic name (record topics and the dead-letter topic), e.g. "staging.": several
    # deployments can share one cluster. Must match the agents' --topic-prefix.
    topic_prefix: str = ""
    # A batch is one topic-partition's contiguous offset range, cut at whichever bound comes first.
    batch_max_rows: int = 50_000
    batch_max_bytes: int = 32 * 1024 * 1024
    batch_max_age_s: float = 1.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    # Partitions created by ``ensure_topics`` when a topic is missing (the broker's replication default).
    partitions: int = 6
    # ClickHouse may be away for a while; retries happen inside one poll interval, so allow a long one.
    max_poll_interval_ms: int = 900_000
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def dlq_topic(self) -> str:
        return self.topic_prefix + DLQ_TOPIC

    @property
    def topics(self) -> list[str]:
        return default_topics(self.topic_prefix)

    def topic_kinds(self) -> dict[str, RecordKind]:
        return {self.topic_prefix + k.topic: k for k in KINDS.values()}

    def consumer_conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id,
            "client.id": "blindspot-ingest",
            # Offsets move only when ClickHouse has the batch (ingest/worker.py commits them).
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # End-of-partition events: a worker that has caught up flushes a big batch without waiting.
            "enable.partition.eof": True,
            # Eager rebalancing: partitions are revoked before the member rejoins, while its generation
            # is still valid, so the commit in the revoke callback is accepted (with cooperative
            # rebalancing it can race the next generation and be refused).
            "partition.assignment.strategy": "roundrobin",
            "max.poll.interval.ms": self.max_poll_interval_ms,
            "session.timeout.ms": 30_000,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
        }
        conf.update(self.extra)
        return conf

    def dlq_producer_conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": "blindspot-ingest-dlq",
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "zstd",
            "linger.ms": 20,
            # A dead letter must not be lost quietly: the batch waits for its acknowledgement.
            "message.timeout.ms": 0,
            "message.max.bytes": DLQ_MAX_BYTES,
        }
        conf.update(self.extra)
        return conf
