"""Agent -> Kafka. Public API:

    from agent.kafka_sink import KafkaSink, KafkaSinkConfig, client_settings
"""

from agent.kafka_sink.config import KafkaSinkConfig, client_settings, redacted
from agent.kafka_sink.sink import KafkaSink

__all__ = ["KafkaSink", "KafkaSinkConfig", "client_settings", "redacted"]
