-- TCP connection rollups for dashboards: per minute (kept 3 days, for ranges within the last 2 days)
-- and per hour (kept for the retention period, for everything longer or older). Both are fed from the
-- raw table by their own materialized view, so neither depends on the other being complete.
-- The two tiers are one text: a table and view naming {tier} are made once per tier, {bucket} the
-- column (minute, hour), {start_of_bucket} its function, {bucket_ttl_days} its TTL (TIERS in
-- ingest/schema.py). A column is added here once and reaches both tiers.
-- A connection contributes twice (ARRAY JOIN): "opened" in the bucket of its start, everything else in
-- the bucket of its close. Rows of connections first seen mid-life (started_before_agent) have no
-- real start time and count only as closed.
-- failed: never reached ESTABLISHED (close_reason refused, timeout, connect_failed, handshake_failed, as
-- agent/tcp_decode.py names them); resets: closed by an RST after the handshake.
-- non_replicated_deduplication_window here too: a retried batch (same insert_deduplication_token,
-- deduplicate_blocks_in_dependent_materialized_views=1, set by the sink) must not be counted twice.
CREATE TABLE IF NOT EXISTS blindspot.tcp_conn_{tier}
(
    {bucket}       DateTime('UTC'),
    host           LowCardinality(String),
    service        LowCardinality(String),
    role           LowCardinality(String),
    opened         SimpleAggregateFunction(sum, UInt64),
    closed         SimpleAggregateFunction(sum, UInt64),
    failed         SimpleAggregateFunction(sum, UInt64),
    resets         SimpleAggregateFunction(sum, UInt64),
    retransmits    SimpleAggregateFunction(sum, UInt64),
    bytes_sent     SimpleAggregateFunction(sum, UInt64),
    bytes_received SimpleAggregateFunction(sum, UInt64),
    handshake_hist AggregateFunction(sumForEach, Array(UInt64)),
    duration_hist  AggregateFunction(sumForEach, Array(UInt64))
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate({bucket})
ORDER BY (host, service, role, {bucket})
TTL {bucket} + INTERVAL {bucket_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.tcp_conn_{tier}_mv TO blindspot.tcp_conn_{tier} AS
SELECT
    {start_of_bucket}(if(ev = 0, start_time, end_time)) AS {bucket},
    host,
    comm AS service,
    role,
    toUInt64(countIf(ev = 0)) AS opened,
    toUInt64(countIf(ev = 1)) AS closed,
    toUInt64(countIf(ev = 1 AND close_reason IN ('refused', 'timeout', 'connect_failed', 'handshake_failed')
                      AND handshake_ns = 0)) AS failed,
    toUInt64(countIf(ev = 1 AND close_reason IN ('reset_received', 'reset_sent'))) AS resets,
    toUInt64(sumIf(retransmits, ev = 1)) AS retransmits,
    sumIf(bytes_sent, ev = 1) AS bytes_sent,
    sumIf(bytes_received, ev = 1) AS bytes_received,
    sumForEachIfState(blindspot_latency_bucket(handshake_ns), ev = 1 AND handshake_ns > 0) AS handshake_hist,
    sumForEachIfState(blindspot_duration_bucket(duration_ns), ev = 1) AS duration_hist
FROM blindspot.tcp_connections
ARRAY JOIN [0, 1] AS ev
WHERE NOT (ev = 0 AND started_before_agent = 1)
GROUP BY {bucket}, host, service, role;

-- Top talkers: bytes per peer, hourly only (a top-N table over hours or days needs no finer time).
CREATE TABLE IF NOT EXISTS blindspot.tcp_peers_1h
(
    hour           DateTime('UTC'),
    host           LowCardinality(String),
    service        LowCardinality(String),
    role           LowCardinality(String),
    remote_addr    IPv6,
    remote_port    UInt16,
    connections    SimpleAggregateFunction(sum, UInt64),
    bytes_sent     SimpleAggregateFunction(sum, UInt64),
    bytes_received SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(hour)
ORDER BY (host, service, role, hour, remote_addr, remote_port)
TTL hour + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.tcp_peers_1h_mv TO blindspot.tcp_peers_1h AS
SELECT toStartOfHour(end_time) AS hour, host, comm AS service, role,
       remote_addr, if(role = 'server', toUInt16(0), remote_port) AS remote_port,
       toUInt64(count()) AS connections, sum(bytes_sent) AS bytes_sent, sum(bytes_received) AS bytes_received
FROM blindspot.tcp_connections
GROUP BY hour, host, service, role, remote_addr, remote_port;

-- Fleet tiers: the same without host, for the (usual) view of all hosts: a fleet of 1,000 hosts
-- would otherwise make a 30-day panel read millions of per-host rows. Dashboards pick them when the
-- host variable is All.
CREATE TABLE IF NOT EXISTS blindspot.tcp_conn_fleet_{tier}
(
    {bucket}       DateTime('UTC'),
    service        LowCardinality(String),
    role           LowCardinality(String),
    opened         SimpleAggregateFunction(sum, UInt64),
    closed         SimpleAggregateFunction(sum, UInt64),
    failed         SimpleAggregateFunction(sum, UInt64),
    resets         SimpleAggregateFunction(sum, UInt64),
    retransmits    SimpleAggregateFunction(sum, UInt64),
    bytes_sent     SimpleAggregateFunction(sum, UInt64),
    bytes_received SimpleAggregateFunction(sum, UInt64),
    handshake_hist AggregateFunction(sumForEach, Array(UInt64)),
    duration_hist  AggregateFunction(sumForEach, Array(UInt64))
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate({bucket})
ORDER BY (service, role, {bucket})
TTL {bucket} + INTERVAL {bucket_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.tcp_conn_fleet_{tier}_mv TO blindspot.tcp_conn_fleet_{tier} AS
SELECT
    {start_of_bucket}(if(ev = 0, start_time, end_time)) AS {bucket},
    comm AS service,
    role,
    toUInt64(countIf(ev = 0)) AS opened,
    toUInt64(countIf(ev = 1)) AS closed,
    toUInt64(countIf(ev = 1 AND close_reason IN ('refused', 'timeout', 'connect_failed', 'handshake_failed')
                      AND handshake_ns = 0)) AS failed,
    toUInt64(countIf(ev = 1 AND close_reason IN ('reset_received', 'reset_sent'))) AS resets,
    toUInt64(sumIf(retransmits, ev = 1)) AS retransmits,
    sumIf(bytes_sent, ev = 1) AS bytes_sent,
    sumIf(bytes_received, ev = 1) AS bytes_received,
    sumForEachIfState(blindspot_latency_bucket(handshake_ns), ev = 1 AND handshake_ns > 0) AS handshake_hist,
    sumForEachIfState(blindspot_duration_bucket(duration_ns), ev = 1) AS duration_hist
FROM blindspot.tcp_connections
ARRAY JOIN [0, 1] AS ev
WHERE NOT (ev = 0 AND started_before_agent = 1)
GROUP BY {bucket}, service, role;

-- ... and per day: a top-N table over weeks reads days, not hours.
CREATE TABLE IF NOT EXISTS blindspot.tcp_peers_1d
(
    day           DateTime('UTC'),
    host           LowCardinality(String),
    service        LowCardinality(String),
    role           LowCardinality(String),
    remote_addr    IPv6,
    remote_port    UInt16,
    connections    SimpleAggregateFunction(sum, UInt64),
    bytes_sent     SimpleAggregateFunction(sum, UInt64),
    bytes_received SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (host, service, role, day, remote_addr, remote_port)
TTL day + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.tcp_peers_1d_mv TO blindspot.tcp_peers_1d AS
SELECT toDate(end_time) AS day, host, comm AS service, role,
       remote_addr, if(role = 'server', toUInt16(0), remote_port) AS remote_port,
       toUInt64(count()) AS connections, sum(bytes_sent) AS bytes_sent, sum(bytes_received) AS bytes_received
FROM blindspot.tcp_connections
GROUP BY day, host, service, role, remote_addr, remote_port;
