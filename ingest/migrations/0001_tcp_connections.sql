-- One row per TCP connection, written when it closes (agent/tcp_source.py).
-- Sorted for "this host / this process, over time"; partitioned by day of close so retention drops
-- whole partitions. non_replicated_deduplication_window makes a retried batch (same
-- insert_deduplication_token) a no-op: fleet ingest relies on it.
CREATE TABLE IF NOT EXISTS blindspot.tcp_connections
(
    host                 LowCardinality(String),
    conn_id              UInt64,
    start_time           DateTime64(9, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    end_time             DateTime64(9, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    duration_ns          UInt64 CODEC(T64, ZSTD(1)),
    handshake_ns         UInt64 CODEC(T64, ZSTD(1)),
    role                 LowCardinality(String),
    family               UInt8,
    local_addr           IPv6 CODEC(ZSTD(1)),
    local_port           UInt16,
    remote_addr          IPv6 CODEC(ZSTD(1)),
    remote_port          UInt16,
    pid                  UInt32,
    comm                 LowCardinality(String),
    bytes_sent           UInt64 CODEC(T64, ZSTD(1)),
    bytes_received       UInt64 CODEC(T64, ZSTD(1)),
    retransmits          UInt32 CODEC(T64, ZSTD(1)),
    srtt_us              UInt32 CODEC(T64, ZSTD(1)),
    close_reason         LowCardinality(String),
    started_before_agent UInt8,
    owner_source         LowCardinality(String),
    -- Addresses as people write them (1.2.3.4, not ::ffff:1.2.3.4); computed on read, not stored.
    local_ip             String ALIAS if(family = 4, IPv4NumToString(toIPv4(local_addr)), IPv6NumToString(local_addr)),
    remote_ip            String ALIAS if(family = 4, IPv4NumToString(toIPv4(remote_addr)), IPv6NumToString(remote_addr))
)
ENGINE = MergeTree
PARTITION BY toDate(end_time)
ORDER BY (host, comm, end_time)
TTL toDateTime(end_time) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

-- Connections still open, snapshotted every few seconds: a connection open for hours is visible
-- while it is open, and tcp_connections keeps exactly one row per connection.
CREATE TABLE IF NOT EXISTS blindspot.tcp_connections_open
(
    snapshot_time        DateTime64(9, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    host                 LowCardinality(String),
    conn_id              UInt64,
    start_time           DateTime64(9, 'UTC'),
    role                 LowCardinality(String),
    family               UInt8,
    local_addr           IPv6,
    local_port           UInt16,
    remote_addr          IPv6,
    remote_port          UInt16,
    pid                  UInt32,
    comm                 LowCardinality(String),
    bytes_sent           UInt64,
    bytes_received       UInt64,
    started_before_agent UInt8,
    local_ip             String ALIAS if(family = 4, IPv4NumToString(toIPv4(local_addr)), IPv6NumToString(local_addr)),
    remote_ip            String ALIAS if(family = 4, IPv4NumToString(toIPv4(remote_addr)), IPv6NumToString(remote_addr))
)
ENGINE = MergeTree
PARTITION BY toDate(snapshot_time)
ORDER BY (host, snapshot_time, conn_id)
TTL toDateTime(snapshot_time) + INTERVAL 2 DAY
SETTINGS non_replicated_deduplication_window = 10000;

-- The latest snapshot of each host: "what is open right now".
CREATE VIEW IF NOT EXISTS blindspot.open_connections AS
SELECT *, dateDiff('second', start_time, snapshot_time) AS age_s
FROM blindspot.tcp_connections_open
WHERE (host, snapshot_time) IN (
    SELECT host, max(snapshot_time) FROM blindspot.tcp_connections_open
    WHERE snapshot_time > now() - INTERVAL 1 HOUR GROUP BY host
);

-- The pipeline's own counters, per host and component, as deltas per interval: completeness of the
-- data is itself queryable (events lost in the kernel, dropped, dead-lettered).
CREATE TABLE IF NOT EXISTS blindspot.pipeline_counters
(
    time      DateTime64(9, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    host      LowCardinality(String),
    component LowCardinality(String),
    counter   LowCardinality(String),
    value     UInt64 CODEC(T64, ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toDate(time)
ORDER BY (host, component, counter, time)
TTL toDateTime(time) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;
