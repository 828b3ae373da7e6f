-- HTTP request rollups (from http_requests, 0010) per minute (3 days) and per hour (retention).
-- Key: who served (host, service, version, side), what (route, status class), the X-Gray-Version header
-- the request arrived with (gray-release routing) and whether a browser made it (User-Agent Mozilla/...).
-- Latency as fixed-bucket counts (blindspot_latency_bucket), so percentiles and heatmaps read no raw rows.
-- Per-host tables sort by host first: dashboards read them only with a host picked (else *_fleet_*).
-- Each {tier} table and its view are made once per minute and hour tier (see 0031, TIERS in ingest/schema.py).

CREATE TABLE IF NOT EXISTS blindspot.http_{tier}
(
    {bucket}        DateTime('UTC'),
    host            LowCardinality(String),
    service         LowCardinality(String),
    service_version LowCardinality(String),
    side            LowCardinality(String),
    route           LowCardinality(String),
    status_class    LowCardinality(String),
    gray_header     LowCardinality(String),
    browser         UInt8,
    requests        SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    request_bytes   SimpleAggregateFunction(sum, UInt64),
    response_bytes  SimpleAggregateFunction(sum, UInt64),
    latency_hist    AggregateFunction(sumForEach, Array(UInt64))
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate({bucket})
ORDER BY (host, service, service_version, side, route, {bucket}, status_class, gray_header, browser)
TTL {bucket} + INTERVAL {bucket_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.http_{tier}_mv TO blindspot.http_{tier} AS
SELECT
    {start_of_bucket}(time) AS {bucket},
    host, service, service_version, side,
    if(route = '', path, route) AS route,
    if(status = 0, 'none', concat(toString(intDiv(status, 100)), 'xx')) AS status_class,
    x_gray_version AS gray_header,
    toUInt8(startsWith(user_agent, 'Mozilla/')) AS browser,
    toUInt64(count()) AS requests,
    toUInt64(countIf(status >= 500 OR status = 0)) AS errors,
    sum(request_bytes) AS request_bytes,
    sum(response_bytes) AS response_bytes,
    sumForEachState(blindspot_latency_bucket(duration_ns)) AS latency_hist
FROM blindspot.http_requests
GROUP BY {bucket}, host, service, service_version, side, route, status_class, gray_header, browser;

-- Who calls whom: requests per User-Agent product and peer, hourly (overview: what no browser did).
-- Peer: the upstream a client-side request went to, else the remote address.
CREATE TABLE IF NOT EXISTS blindspot.http_peers_1h
(
    hour       DateTime('UTC'),
    host       LowCardinality(String),
    service    LowCardinality(String),
    side       LowCardinality(String),
    browser    UInt8,
    ua_product LowCardinality(String),
    peer       String,
    requests   SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(hour)
ORDER BY (host, service, side, hour, browser, ua_product, peer)
TTL hour + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.http_peers_1h_mv TO blindspot.http_peers_1h AS
SELECT toStartOfHour(time) AS hour, host, service, side,
       toUInt8(startsWith(user_agent, 'Mozilla/')) AS browser,
       if(user_agent = '', '(none)', substring(splitByChar('/', user_agent)[1], 1, 64)) AS ua_product,
       if(side = 'client' AND upstream_host != '', upstream_host, replaceRegexpOne(IPv6NumToString(remote_addr), '^::ffff:', '')) AS peer,
       toUInt64(count()) AS requests
FROM blindspot.http_requests
GROUP BY hour, host, service, side, browser, ua_product, peer;

-- Fleet tiers without host (see 0031): picked when the host variable is All.
CREATE TABLE IF NOT EXISTS blindspot.http_fleet_{tier}
(
    {bucket}        DateTime('UTC'),
    service         LowCardinality(String),
    service_version LowCardinality(String),
    side            LowCardinality(String),
    route           LowCardinality(String),
    status_class    LowCardinality(String),
    gray_header     LowCardinality(String),
    browser         UInt8,
    requests        SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    request_bytes   SimpleAggregateFunction(sum, UInt64),
    response_bytes  SimpleAggregateFunction(sum, UInt64),
    latency_hist    AggregateFunction(sumForEach, Array(UInt64))
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate({bucket})
ORDER BY (service, service_version, side, route, {bucket}, status_class, gray_header, browser)
TTL {bucket} + INTERVAL {bucket_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.http_fleet_{tier}_mv TO blindspot.http_fleet_{tier} AS
SELECT
    {start_of_bucket}(time) AS {bucket},
    service, service_version, side,
    if(route = '', path, route) AS route,
    if(status = 0, 'none', concat(toString(intDiv(status, 100)), 'xx')) AS status_class,
    x_gray_version AS gray_header,
    toUInt8(startsWith(user_agent, 'Mozilla/')) AS browser,
    toUInt64(count()) AS requests,
    toUInt64(countIf(status >= 500 OR status = 0)) AS errors,
    sum(request_bytes) AS request_bytes,
    sum(response_bytes) AS response_bytes,
    sumForEachState(blindspot_latency_bucket(duration_ns)) AS latency_hist
FROM blindspot.http_requests
GROUP BY {bucket}, service, service_version, side, route, status_class, gray_header, browser;

-- ... and per day, for ranges of weeks.
CREATE TABLE IF NOT EXISTS blindspot.http_peers_1d
(
    day        Date,
    host       LowCardinality(String),
    service    LowCardinality(String),
    side       LowCardinality(String),
    browser    UInt8,
    ua_product LowCardinality(String),
    peer       String,
    requests   SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (host, service, side, day, browser, ua_product, peer)
TTL day + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.http_peers_1d_mv TO blindspot.http_peers_1d AS
SELECT toDate(time) AS day, host, service, side,
       toUInt8(startsWith(user_agent, 'Mozilla/')) AS browser,
       if(user_agent = '', '(none)', substring(splitByChar('/', user_agent)[1], 1, 64)) AS ua_product,
       if(side = 'client' AND upstream_host != '', upstream_host, replaceRegexpOne(IPv6NumToString(remote_addr), '^::ffff:', '')) AS peer,
       toUInt64(count()) AS requests
FROM blindspot.http_requests
GROUP BY day, host, service, side, browser, ua_product, peer;
