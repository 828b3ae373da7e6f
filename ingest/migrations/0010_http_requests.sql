-- One row per HTTP/1 request a traced Go process served (side = 'server') or made (side = 'client'),
-- written when its response ended (agent/http_source.py). Joins tcp_connections on
-- (host, pid, local_addr, local_port, remote_addr, remote_port). An outbound request made while
-- serving an inbound one has parent_request_id = that inbound row's request_id (Go uprobes on).
-- Header columns hold allow-listed request headers verbatim, each cut at a bounded length.
CREATE TABLE IF NOT EXISTS blindspot.http_requests
(
    time              DateTime64(9, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    end_time          DateTime64(9, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    duration_ns       UInt64 CODEC(T64, ZSTD(1)),
    host              LowCardinality(String),
    service           LowCardinality(String),
    service_version   LowCardinality(String),
    go_version        LowCardinality(String),
    pid               UInt32,
    tid               UInt32,
    comm              LowCardinality(String),
    side              LowCardinality(String),
    method            LowCardinality(String),
    path              String CODEC(ZSTD(1)),
    route             LowCardinality(String),
    route_source      LowCardinality(String),
    status            UInt16,
    request_bytes     UInt64 CODEC(T64, ZSTD(1)),
    response_bytes    UInt64 CODEC(T64, ZSTD(1)),
    family            UInt8,
    local_addr        IPv6 CODEC(ZSTD(1)),
    local_port        UInt16,
    remote_addr       IPv6 CODEC(ZSTD(1)),
    remote_port       UInt16,
    upstream_host     LowCardinality(String),
    x_gray_version    LowCardinality(String),
    x_request_id      String CODEC(ZSTD(1)),
    traceparent       String CODEC(ZSTD(1)),
    user_agent        LowCardinality(String),
    host_header       LowCardinality(String),
    extra_headers     String CODEC(ZSTD(1)),
    head_truncated    UInt8,
    end_reason        LowCardinality(String),
    request_id        UInt64,
    parent_request_id UInt64,
    remote_ip         String ALIAS if(family = 4, IPv4NumToString(toIPv4(remote_addr)), IPv6NumToString(remote_addr))
)
ENGINE = MergeTree
PARTITION BY toDate(time)
ORDER BY (host, service, route, time)
TTL toDateTime(time) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;
