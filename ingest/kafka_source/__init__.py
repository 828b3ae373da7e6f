"""Kafka -> ingest: consumer configuration, topics, dead letters. Public API:

    from ingest.kafka_source import KafkaSourceConfig, DeadLetters, ensure_topics, DLQ_TOPIC
"""

from ingest.kafka_source.config import DLQ_MAX_BYTES, DLQ_TOPIC, KafkaSourceConfig, default_topics
from ingest.kafka_source.source import (
    H_DETAIL,
    H_ERROR,
    H_REASON,
    H_SRC,
    H_SRC_ROW,
    H_TRUNCATED,
    DeadLetters,
    ensure_topics,
)

__all__ = ["DLQ_MAX_BYTES", "DLQ_TOPIC", "H_DETAIL", "H_ERROR", "H_REASON", "H_SRC", "H_SRC_ROW", "H_TRUNCATED",
           "DeadLetters", "KafkaSourceConfig", "default_topics", "ensure_topics"]
