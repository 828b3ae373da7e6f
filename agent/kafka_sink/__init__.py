"""Agent -> Kafka. Public API:

    from agent.kafka_sink import KafkaSink, KafkaSinkConfig

librdkafka pass-through settings (TLS, SASL) come from contract/kafka.py, shared with ingest.
"""

from agent.kafka_sink.config import KafkaSinkConfig
from agent.kafka_sink.sink import KafkaSink

__all__ = ["KafkaSink", "KafkaSinkConfig"]
