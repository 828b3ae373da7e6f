-- Cascaded rollups: only the per-host minute rollups (and the hourly peers) read the raw rows; every
-- coarser rollup reads the rollup below it. Each view over tcp_connections or http_requests costs CPU
-- per raw row on every insert (on chDB: ~0.6-1.0 µs a row each, docs/tcp-cost.md), and an insert fed
-- six of them; a view over a rollup reads that rollup's inserted block, a few rows per minute and key.
--   tcp_connections -> tcp_conn_1m -> tcp_conn_1h        http_requests -> http_1m -> http_1h
--   tcp_conn_{tier} -> tcp_conn_fleet_{tier}              http_{tier} -> http_fleet_{tier}   (one template per tier)
--   tcp_connections -> tcp_peers_1h -> tcp_peers_1d       http_requests -> http_peers_1h -> http_peers_1d
-- Same rows as before: every column is a sum (or a sumForEach state, merged here), so summing the
-- finer tier's rows per coarser key gives what the raw rows gave; tests/test_rollup_tiers.py checks it
-- on seeded rows. A retried insert (same token) is deduplicated in every table of the chain (the sink
-- sets deduplicate_blocks_in_dependent_materialized_views).
-- Views are replaced: migrate with ingest stopped, as for any view change (see 0055).

DROP VIEW IF EXISTS blindspot.tcp_conn_1h_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.tcp_conn_1h_mv TO blindspot.tcp_conn_1h AS
SELECT toStartOfHour(minute) AS hour, host, service, role,
       sum(opened) AS opened, sum(closed) AS closed, sum(failed) AS failed, sum(resets) AS resets,
       sum(retransmits) AS retransmits, sum(bytes_sent) AS bytes_sent, sum(bytes_received) AS bytes_received,
       sumForEachMergeState(handshake_hist) AS handshake_hist,
       sumForEachMergeState(duration_hist) AS duration_hist
FROM blindspot.tcp_conn_1m
GROUP BY hour, host, service, role;

DROP VIEW IF EXISTS blindspot.tcp_conn_fleet_{tier}_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.tcp_conn_fleet_{tier}_mv TO blindspot.tcp_conn_fleet_{tier} AS
SELECT {bucket}, service, role,
       sum(opened) AS opened, sum(closed) AS closed, sum(failed) AS failed, sum(resets) AS resets,
       sum(retransmits) AS retransmits, sum(bytes_sent) AS bytes_sent, sum(bytes_received) AS bytes_received,
       sumForEachMergeState(handshake_hist) AS handshake_hist,
       sumForEachMergeState(duration_hist) AS duration_hist
FROM blindspot.tcp_conn_{tier}
GROUP BY {bucket}, service, role;

DROP VIEW IF EXISTS blindspot.tcp_peers_1d_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.tcp_peers_1d_mv TO blindspot.tcp_peers_1d AS
SELECT toDate(hour) AS day, host, service, role, remote_addr, remote_port,
       sum(connections) AS connections, sum(bytes_sent) AS bytes_sent, sum(bytes_received) AS bytes_received
FROM blindspot.tcp_peers_1h
GROUP BY day, host, service, role, remote_addr, remote_port;

DROP VIEW IF EXISTS blindspot.http_1h_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.http_1h_mv TO blindspot.http_1h AS
SELECT toStartOfHour(minute) AS hour,
       host, service, service_version, side, route, status_class, gray_header, browser, protocol, grpc_status,
       sum(requests) AS requests, sum(errors) AS errors,
       sum(request_bytes) AS request_bytes, sum(response_bytes) AS response_bytes,
       sumForEachMergeState(latency_hist) AS latency_hist
FROM blindspot.http_1m
GROUP BY hour, host, service, service_version, side, route, status_class, gray_header, browser, protocol,
         grpc_status;

DROP VIEW IF EXISTS blindspot.http_fleet_{tier}_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.http_fleet_{tier}_mv TO blindspot.http_fleet_{tier} AS
SELECT {bucket}, service, service_version, side, route, status_class, gray_header, browser, protocol, grpc_status,
       sum(requests) AS requests, sum(errors) AS errors,
       sum(request_bytes) AS request_bytes, sum(response_bytes) AS response_bytes,
       sumForEachMergeState(latency_hist) AS latency_hist
FROM blindspot.http_{tier}
GROUP BY {bucket}, service, service_version, side, route, status_class, gray_header, browser, protocol,
         grpc_status;

DROP VIEW IF EXISTS blindspot.http_peers_1d_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.http_peers_1d_mv TO blindspot.http_peers_1d AS
SELECT toDate(hour) AS day, host, service, side, browser, ua_product, peer, sum(requests) AS requests
FROM blindspot.http_peers_1h
GROUP BY day, host, service, side, browser, ua_product, peer
