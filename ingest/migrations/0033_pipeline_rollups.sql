-- The pipeline's own counters per minute (3 days) and per hour (retention), summed per host, component
-- and counter: completeness panels over 30 days of a fleet read no raw counter rows. The {tier} table and
-- view are made once per minute and hour tier (see 0031, TIERS in ingest/schema.py).
CREATE TABLE IF NOT EXISTS blindspot.pipeline_counters_{tier}
(
    {bucket}  DateTime('UTC'),
    host      LowCardinality(String),
    component LowCardinality(String),
    counter   LowCardinality(String),
    value     UInt64
)
ENGINE = SummingMergeTree(value)
PARTITION BY toDate({bucket})
ORDER BY (host, component, counter, {bucket})
TTL {bucket} + INTERVAL {bucket_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.pipeline_counters_{tier}_mv TO blindspot.pipeline_counters_{tier} AS
SELECT {start_of_bucket}(time) AS {bucket}, host, component, counter, sum(value) AS value
FROM blindspot.pipeline_counters
GROUP BY {bucket}, host, component, counter;
