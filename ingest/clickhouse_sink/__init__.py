"""ClickHouse sink, laid out like Vector's sinks: config, service (how to reach the engine), sink."""

from ingest.clickhouse_sink.config import ClickHouseSinkConfig
from ingest.clickhouse_sink.service import ChdbService, ClickHouseService, ServerService, open_service
from ingest.clickhouse_sink.sink import ClickHouseSink, SinkCounters

__all__ = [
    "ChdbService",
    "ClickHouseService",
    "ClickHouseSink",
    "ClickHouseSinkConfig",
    "ServerService",
    "SinkCounters",
    "open_service",
]
