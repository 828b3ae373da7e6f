-- The pipeline's own counters per minute (3 days) and per hour (retention), summed per host, component
-- and counter: completeness panels over 30 days of a fleet read no raw counter rows.
CREATE TABLE IF NOT EXISTS blindspot.pipeline_counters_1m
(
    minute       DateTime('UTC'),
    host      LowCardinality(String),
    component LowCardinality(String),
    counter   LowCardinality(String),
    value     UInt64
)
ENGINE = SummingMergeTree(value)
PARTITION BY toDate(minute)
ORDER BY (host, component, counter, minute)
TTL minute + INTERVAL 3 DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.pipeline_counters_1m_mv TO blindspot.pipeline_counters_1m AS
SELECT toStartOfMinute(time) AS minute, host, component, counter, sum(value) AS value
FROM blindspot.pipeline_counters
GROUP BY minute, host, component, counter;

CREATE TABLE IF NOT EXISTS blindspot.pipeline_counters_1h
(
    hour       DateTime('UTC'),
    host      LowCardinality(String),
    component LowCardinality(String),
    counter   LowCardinality(String),
    value     UInt64
)
ENGINE = SummingMergeTree(value)
PARTITION BY toDate(hour)
ORDER BY (host, component, counter, hour)
TTL hour + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.pipeline_counters_1h_mv TO blindspot.pipeline_counters_1h AS
SELECT toStartOfHour(time) AS hour, host, component, counter, sum(value) AS value
FROM blindspot.pipeline_counters
GROUP BY hour, host, component, counter;
