"""The ClickHouse side of Blindspot: schema migrations, services that reach the engine (embedded chDB
or a server over HTTP), and a batching sink. Public API:

    from ingest import ClickHouseSink, open_service, migrate
"""

from contract.errors import (
    BadRecord,
    IngestError,
    PermanentError,
    SchemaError,
    SinkUnavailable,
    TransientError,
)
from ingest.clickhouse_sink import ClickHouseSink, ClickHouseSinkConfig, open_service
from ingest.schema import migrate

__all__ = [
    "BadRecord",
    "ClickHouseSink",
    "ClickHouseSinkConfig",
    "IngestError",
    "PermanentError",
    "SchemaError",
    "SinkUnavailable",
    "TransientError",
    "migrate",
    "open_service",
]
