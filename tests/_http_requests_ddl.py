"""TEMPORARY: the ``http_requests`` table the Go HTTP work (issue 4) adds as migration 0010.

Until that migration is in main, tests create this copy before ``migrate()`` so the HTTP rollups
(0032) have their source table. Columns as agreed with issue 4; drop this file once 0010 lands.
"""

HTTP_REQUESTS_DDL = """
CREATE TABLE IF NOT EXISTS blindspot.http_requests
(
    start_time        DateTime64(9, 'UTC'),
    end_time          DateTime64(9, 'UTC'),
    duration_ns       UInt64,
    side              LowCardinality(String),
    host              LowCardinality(String),
    service           LowCardinality(String),
    service_version   LowCardinality(String),
    pid               UInt32,
    comm              LowCardinality(String),
    method            LowCardinality(String),
    path              String,
    route             LowCardinality(String),
    status            UInt16,
    request_size      UInt64,
    response_size     UInt64,
    local_addr        IPv6,
    local_port        UInt16,
    remote_addr       IPv6,
    remote_port       UInt16,
    x_gray_version    LowCardinality(String),
    x_request_id      String,
    traceparent       String,
    user_agent        String,
    host_header       String,
    upstream          String,
    parent_request_id String
)
ENGINE = MergeTree
PARTITION BY toDate(start_time)
ORDER BY (service, host, start_time)
SETTINGS non_replicated_deduplication_window = 10000
"""


def ensure_http_requests(service) -> None:  # type: ignore[no-untyped-def]
    exists = service.query_arrow(
        "SELECT count() AS n FROM system.tables WHERE database = 'blindspot' AND name = 'http_requests'"
    ).to_pydict()["n"][0]
    if not exists:
        service.execute("CREATE DATABASE IF NOT EXISTS blindspot")
        service.execute(HTTP_REQUESTS_DDL)
