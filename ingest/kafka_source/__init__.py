"""Kafka -> ingest: consumer configuration, topics, dead letters. Public API:

    from ingest.kafka_source import KafkaSourceConfig, DeadLetters, ensure_topics, DLQ_TOPIC
"""

from ingest.kafka_source.config import DLQ_TOPIC, KafkaSourceConfig, default_topics
from ingest.kafka_source.source import H_DETAIL, H_REASON, H_SRC, H_SRC_ROW, DeadLetters, ensure_topics

__all__ = ["DLQ_TOPIC", "H_DETAIL", "H_REASON", "H_SRC", "H_SRC_ROW", "DeadLetters", "KafkaSourceConfig",
           "default_topics", "ensure_topics"]
