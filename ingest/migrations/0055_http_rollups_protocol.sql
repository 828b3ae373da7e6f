-- HTTP rollups by protocol (http/1.1, h2, h2c, grpc) and gRPC status, and one rule for what counts as a
-- failed request, shared by the rollups' errors column and `blindspot canary` (issue 14).
--
-- A request failed (the server's fault, as HTTP 5xx) when: no response (status 0), status >= 500, or a
-- gRPC status that OpenTelemetry's conventions count as a server error: UNKNOWN 2, DEADLINE_EXCEEDED 4,
-- UNIMPLEMENTED 12, INTERNAL 13, UNAVAILABLE 14, DATA_LOSS 15. The caller's codes (NOT_FOUND,
-- INVALID_ARGUMENT, PERMISSION_DENIED, CANCELLED...) are like 4xx: not a failure of the service.
CREATE FUNCTION IF NOT EXISTS blindspot_request_failed AS (status, grpc_status) ->
    status = 0 OR status >= 500 OR grpc_status IN ('2', '4', '12', '13', '14', '15');

-- The two new key columns go at the end of the sorting key (the only change of a sorting key ClickHouse
-- allows, in the ALTER that adds them, and without a default expression): rollup rows from before this
-- migration carry protocol '' (they were all HTTP/1: h2 and gRPC capture came with 0050, in the same
-- release), which dashboards read as 'http/1.1' (grafana/build_dashboards.py PROTOCOL). The view is
-- replaced: inserts between its DROP and CREATE (a server with workers still writing while one of them
-- migrates) reach http_requests but not this rollup; migrate with ingest stopped, as for any view change.
ALTER TABLE blindspot.http_{tier}
    ADD COLUMN IF NOT EXISTS protocol LowCardinality(String) AFTER browser,
    ADD COLUMN IF NOT EXISTS grpc_status LowCardinality(String) AFTER protocol,
    MODIFY ORDER BY (host, service, service_version, side, route, {bucket}, status_class, gray_header, browser,
                     protocol, grpc_status);

DROP VIEW IF EXISTS blindspot.http_{tier}_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.http_{tier}_mv TO blindspot.http_{tier} AS
SELECT
    {start_of_bucket}(time) AS {bucket},
    host, service, service_version, side,
    if(route = '', path, route) AS route,
    if(status = 0, 'none', concat(toString(intDiv(status, 100)), 'xx')) AS status_class,
    x_gray_version AS gray_header,
    toUInt8(startsWith(user_agent, 'Mozilla/')) AS browser,
    if(protocol = '', 'http/1.1', protocol) AS protocol,
    grpc_status,
    toUInt64(count()) AS requests,
    toUInt64(countIf(blindspot_request_failed(status, grpc_status))) AS errors,
    sum(request_bytes) AS request_bytes,
    sum(response_bytes) AS response_bytes,
    sumForEachState(blindspot_latency_bucket(duration_ns)) AS latency_hist
FROM blindspot.http_requests
GROUP BY {bucket}, host, service, service_version, side, route, status_class, gray_header, browser, protocol,
         grpc_status;

ALTER TABLE blindspot.http_fleet_{tier}
    ADD COLUMN IF NOT EXISTS protocol LowCardinality(String) AFTER browser,
    ADD COLUMN IF NOT EXISTS grpc_status LowCardinality(String) AFTER protocol,
    MODIFY ORDER BY (service, service_version, side, route, {bucket}, status_class, gray_header, browser,
                     protocol, grpc_status);

DROP VIEW IF EXISTS blindspot.http_fleet_{tier}_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.http_fleet_{tier}_mv TO blindspot.http_fleet_{tier} AS
SELECT
    {start_of_bucket}(time) AS {bucket},
    service, service_version, side,
    if(route = '', path, route) AS route,
    if(status = 0, 'none', concat(toString(intDiv(status, 100)), 'xx')) AS status_class,
    x_gray_version AS gray_header,
    toUInt8(startsWith(user_agent, 'Mozilla/')) AS browser,
    if(protocol = '', 'http/1.1', protocol) AS protocol,
    grpc_status,
    toUInt64(count()) AS requests,
    toUInt64(countIf(blindspot_request_failed(status, grpc_status))) AS errors,
    sum(request_bytes) AS request_bytes,
    sum(response_bytes) AS response_bytes,
    sumForEachState(blindspot_latency_bucket(duration_ns)) AS latency_hist
FROM blindspot.http_requests
GROUP BY {bucket}, service, service_version, side, route, status_class, gray_header, browser, protocol,
         grpc_status;
