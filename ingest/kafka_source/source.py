"""Kafka-side helpers of the ingest worker: topics, the consumer, and the dead-letter producer.

A dead letter keeps the original key, value and headers, and adds why and where from:

    bs-dlq-reason   short word (undecodable, invalid_utf8, unknown_schema_version, wrong_type, ...)
    bs-dlq-detail   one line of detail (at most 500 bytes)
    bs-src          topic:partition:offset of the original message
    bs-src-row      for one bad record out of an Arrow batch: its index there (the value is then
                    that record alone, as a one-row Arrow batch)
"""

from __future__ import annotations

import logging
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic

from ingest.kafka_source.config import KafkaSourceConfig

log = logging.getLogger(__name__)

H_REASON = "bs-dlq-reason"
H_DETAIL = "bs-dlq-detail"
H_SRC = "bs-src"
H_SRC_ROW = "bs-src-row"


def ensure_topics(config: KafkaSourceConfig, topics: list[str] | None = None, timeout_s: float = 30) -> None:
    """Create missing topics (the record topics and the dead-letter topic); existing ones are kept."""
    conf: dict[str, Any] = {"bootstrap.servers": config.bootstrap_servers, **config.extra}
    admin = AdminClient(conf)
    want = topics if topics is not None else [*config.topics, config.dlq_topic]
    have = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in want if t not in have]
    if not missing:
        return
    futures = admin.create_topics([NewTopic(t, num_partitions=config.partitions) for t in missing],
                                  operation_timeout=timeout_s)
    for topic, fut in futures.items():
        try:
            fut.result()
            log.info("created topic %s (%d partitions)", topic, config.partitions)
        except confluent_kafka.KafkaException as e:
            if e.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                raise


class DeadLetters:
    """Produces dead letters; ``flush`` blocks until the broker has every one of them."""

    def __init__(self, config: KafkaSourceConfig) -> None:
        self.topic = config.dlq_topic
        self._producer = confluent_kafka.Producer(config.dlq_producer_conf())
        self._failed = 0

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failed += 1
            log.error("dead letter not delivered: %s", err)

    def send(self, msg: Any, reason: str, detail: str, *, value: bytes | None = None, row: int | None = None
             ) -> None:
        headers = list(msg.headers() or ())
        headers += [(H_REASON, reason.encode()), (H_DETAIL, detail.encode("utf-8", "replace")[:500]),
                    (H_SRC, f"{msg.topic()}:{msg.partition()}:{msg.offset()}".encode())]
        if row is not None:
            headers.append((H_SRC_ROW, str(row).encode()))
        while True:
            try:
                self._producer.produce(self.topic, msg.value() if value is None else value, msg.key(),
                                       headers=headers,
                                       on_delivery=self._on_delivery)
                return
            except BufferError:
                self._producer.poll(0.1)

    def flush(self) -> bool:
        """True when every dead letter so far is acknowledged; False if any failed (the batch is
        then not committed and is read again)."""
        while self._producer.flush(5.0):
            log.warning("waiting for the broker to take %d dead letters", len(self._producer))
        ok = self._failed == 0
        self._failed = 0
        return ok

    def close(self) -> None:
        self._producer.flush(10.0)
