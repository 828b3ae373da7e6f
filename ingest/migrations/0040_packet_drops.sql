-- Packet drops from the kernel (skb:kfree_skb with its reason; agent/packet_drops.py, docs/drops.md).
-- On each connection: how many of its packets the kernel dropped and the reason of most of them
-- (closed rows and open snapshots alike). Added at the end: inserts name their columns.
ALTER TABLE blindspot.tcp_connections
    ADD COLUMN IF NOT EXISTS drops UInt32 CODEC(T64, ZSTD(1)) AFTER owner_source,
    ADD COLUMN IF NOT EXISTS drop_reason LowCardinality(String) AFTER drops;

ALTER TABLE blindspot.tcp_connections_open
    ADD COLUMN IF NOT EXISTS drops UInt32 AFTER started_before_agent,
    ADD COLUMN IF NOT EXISTS drop_reason LowCardinality(String) AFTER drops;

-- "Connections with most drops" reads raw rows over the dashboard's range: most connections drop
-- nothing, so a min/max index lets the engine skip every block whose largest drops is 0.
ALTER TABLE blindspot.tcp_connections ADD INDEX IF NOT EXISTS drops_minmax drops TYPE minmax GRANULARITY 1;

ALTER TABLE blindspot.tcp_connections_open ADD INDEX IF NOT EXISTS drops_minmax drops TYPE minmax GRANULARITY 1;

-- Every drop of the host, per network namespace and reason, as deltas per interval (every snapshot
-- interval of the agent); conn_drops: those also counted on a connection's row.
CREATE TABLE IF NOT EXISTS blindspot.packet_drops
(
    time       DateTime64(9, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    host       LowCardinality(String),
    netns      UInt32,
    reason     LowCardinality(String),
    drops      UInt64 CODEC(T64, ZSTD(1)),
    conn_drops UInt64 CODEC(T64, ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toDate(time)
ORDER BY (host, reason, time)
TTL toDateTime(time) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

-- Per minute (3 days) and per hour (retention), per host and reason, as the other rollups
-- (0033_pipeline_rollups.sql; the {tier} table and view are made once per tier, TIERS in
-- ingest/schema.py): a retried batch is deduplicated here too (own window, and
-- deduplicate_blocks_in_dependent_materialized_views=1 set by the sink).
CREATE TABLE IF NOT EXISTS blindspot.packet_drops_{tier}
(
    {bucket}   DateTime('UTC'),
    host       LowCardinality(String),
    reason     LowCardinality(String),
    drops      UInt64,
    conn_drops UInt64
)
ENGINE = SummingMergeTree((drops, conn_drops))
PARTITION BY toDate({bucket})
ORDER BY (host, reason, {bucket})
TTL {bucket} + INTERVAL {bucket_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.packet_drops_{tier}_mv TO blindspot.packet_drops_{tier} AS
SELECT {start_of_bucket}(time) AS {bucket}, host, reason, sum(drops) AS drops, sum(conn_drops) AS conn_drops
FROM blindspot.packet_drops
GROUP BY {bucket}, host, reason;
