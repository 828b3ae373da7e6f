-- Following a gray decision across every hop (issue 12, part 2), from links already captured.
-- Parameterized views over raw http_requests rows: call them with a window, e.g.
--   SELECT * FROM blindspot.http_hops(t_from = now() - INTERVAL 1 HOUR, t_to = now())
-- Every row used (inbound, outbound and upstream) must lie in the window: a chain that crosses its
-- start loses the hops before it.
--
-- http_hops: one row per hop, a call made while serving an inbound request (the caller) and the
-- request it became at the service that answered it (the callee). Linked as the agent links them:
--   caller -> outbound call: parent_request_id (Go uprobes: same host and pid), or, without it, an
--     X-Request-ID the service forwarded (same host and pid, the call inside the inbound request's
--     span; link = 'x-request-id');
--   outbound call -> callee: the same TCP connection seen from both ends (the callee's remote address
--     and port are the call's local ones, its local port the call's remote one), the callee's span
--     inside the call's to within 1 ms (both ends stamp syscall exits: on loopback a read can return
--     before the write that fed it), and the two spans overlapping (so the next request on a
--     keep-alive connection, which starts after the call ended, never matches). Hosts may differ;
--     NAT between them hides the hop.
CREATE VIEW IF NOT EXISTS blindspot.http_hops AS
SELECT o.time AS time, link,
       i.host AS caller_host, i.request_id AS caller_request_id, i.service AS caller_service,
       i.service_version AS caller_version, i.x_gray_version AS caller_header, i.x_request_id AS caller_x_request_id,
       o.request_id AS call_request_id, o.upstream_host AS upstream_host, o.x_gray_version AS call_header,
       o.status AS call_status,
       u.host AS callee_host, u.request_id AS callee_request_id, u.service AS callee_service,
       u.service_version AS callee_version, u.x_gray_version AS callee_header, u.route AS callee_route,
       u.status AS callee_status
FROM (
    SELECT 'parent_request_id' AS link, o.host AS host, o.pid AS pid, o.parent_request_id AS parent_request_id,
           o.request_id AS request_id, o.time AS time, o.end_time AS end_time, o.local_addr AS local_addr,
           o.local_port AS local_port, o.remote_port AS remote_port, o.upstream_host AS upstream_host,
           o.x_gray_version AS x_gray_version, o.status AS status
    FROM blindspot.http_requests AS o
    WHERE o.side = 'client' AND o.parent_request_id != 0
      AND o.time >= {t_from:DateTime64(9, 'UTC')} AND o.time <= {t_to:DateTime64(9, 'UTC')}
    UNION ALL
    SELECT 'x-request-id' AS link, o.host, o.pid, i.request_id, o.request_id, o.time, o.end_time, o.local_addr,
           o.local_port, o.remote_port, o.upstream_host, o.x_gray_version, o.status
    FROM (SELECT * FROM blindspot.http_requests
          WHERE side = 'client' AND parent_request_id = 0 AND x_request_id != ''
            AND time >= {t_from:DateTime64(9, 'UTC')} AND time <= {t_to:DateTime64(9, 'UTC')}) AS o
    INNER JOIN (SELECT host, pid, x_request_id, request_id, time, end_time FROM blindspot.http_requests
                WHERE side = 'server' AND x_request_id != ''
                  AND time >= {t_from:DateTime64(9, 'UTC')} AND time <= {t_to:DateTime64(9, 'UTC')}) AS i
      ON i.host = o.host AND i.pid = o.pid AND i.x_request_id = o.x_request_id
    WHERE o.time >= i.time AND o.end_time <= i.end_time
) AS o
INNER JOIN (SELECT host, pid, request_id, service, service_version, x_gray_version, x_request_id
            FROM blindspot.http_requests
            WHERE side = 'server'
              AND time >= {t_from:DateTime64(9, 'UTC')} AND time <= {t_to:DateTime64(9, 'UTC')}) AS i
  ON i.host = o.host AND i.pid = o.pid AND i.request_id = o.parent_request_id
INNER JOIN (SELECT host, request_id, service, service_version, x_gray_version, route, status, time, end_time,
                   remote_addr, remote_port, local_port
            FROM blindspot.http_requests
            WHERE side = 'server'
              AND time >= {t_from:DateTime64(9, 'UTC')} AND time <= {t_to:DateTime64(9, 'UTC')}) AS u
  ON u.remote_addr = o.local_addr AND u.remote_port = o.local_port AND u.local_port = o.remote_port
WHERE u.time >= o.time - toIntervalMillisecond(1) AND u.end_time <= o.end_time + toIntervalMillisecond(1)
  AND u.time < o.end_time AND o.time < u.end_time;

-- http_chains: every inbound request that entered from outside (no hop in the window leads to it:
-- the root) and every hop it caused, at any depth (up to 16). Each row carries the chain's gray lane:
-- the X-Gray-Version the root arrived with, else the version of the first gray service the chain
-- reached (lane_source 'header' or 'routed'; '' until one is reached). A gray service is one that
-- served more than one version in the window. depth 0 is the root itself (no caller).
-- leak = 1: the row reached a gray service that runs a version named like the lane, but another
-- version of it (entered as v2 and reached a stable instance while a v2 runs, or the reverse). Header
-- values are compared with service_version as they are: a lane named otherwise ('canary') finds no
-- leak.
CREATE VIEW IF NOT EXISTS blindspot.http_chains AS
WITH RECURSIVE
    gray AS (
        SELECT service, groupUniqArray(service_version) AS versions
        FROM blindspot.http_requests
        WHERE side = 'server' AND time >= {t_from:DateTime64(9, 'UTC')} AND time <= {t_to:DateTime64(9, 'UTC')}
        GROUP BY service HAVING length(versions) > 1
    ),
    hops AS (SELECT * FROM blindspot.http_hops(t_from = {t_from:DateTime64(9, 'UTC')}, t_to = {t_to:DateTime64(9, 'UTC')})),
    chain AS (
        SELECT r.time AS time, r.host AS root_host, r.request_id AS root_request_id, r.service AS root_service,
               r.service_version AS root_version, r.x_gray_version AS root_header,
               r.x_request_id AS root_x_request_id, toUInt8(0) AS depth, '' AS link,
               toUInt64(0) AS caller_request_id, '' AS caller_service, '' AS caller_version,
               r.host AS callee_host, r.request_id AS callee_request_id, r.service AS callee_service,
               r.service_version AS callee_version, r.x_gray_version AS callee_header,
               if(r.x_gray_version != '', r.x_gray_version, if(g.service != '', r.service_version, '')) AS lane,
               multiIf(r.x_gray_version != '', 'header', g.service != '', 'routed', '') AS lane_source,
               toUInt8(r.x_gray_version != '' AND g.service != '' AND has(g.versions, r.x_gray_version)
                       AND r.service_version != r.x_gray_version) AS leak
        FROM (SELECT * FROM blindspot.http_requests
              WHERE side = 'server' AND time >= {t_from:DateTime64(9, 'UTC')} AND time <= {t_to:DateTime64(9, 'UTC')}
                AND (host, request_id) NOT IN (SELECT callee_host, callee_request_id FROM hops)) AS r
        LEFT JOIN gray AS g ON g.service = r.service
        UNION ALL
        SELECT h.time, c.root_host, c.root_request_id, c.root_service, c.root_version, c.root_header,
               c.root_x_request_id, toUInt8(c.depth + 1), h.link,
               h.caller_request_id, h.caller_service, h.caller_version,
               h.callee_host, h.callee_request_id, h.callee_service, h.callee_version, h.callee_header,
               if(c.lane != '', c.lane, if(g.service != '', h.callee_version, '')),
               if(c.lane != '', c.lane_source, if(g.service != '', 'routed', '')),
               toUInt8(c.lane != '' AND g.service != '' AND has(g.versions, c.lane) AND h.callee_version != c.lane)
        FROM chain AS c
        INNER JOIN hops AS h ON h.caller_host = c.callee_host AND h.caller_request_id = c.callee_request_id
        LEFT JOIN gray AS g ON g.service = h.callee_service
        WHERE c.depth < 16
    )
SELECT * FROM chain;

-- gray_leaks: the leaking rows of http_chains, with what to drill into (the root's host, request id and
-- X-Request-ID; the callee's host and request id).
CREATE VIEW IF NOT EXISTS blindspot.gray_leaks AS
SELECT time, root_host, root_request_id, root_x_request_id, root_service, root_version, root_header,
       lane, lane_source, depth, link, caller_service, caller_version, callee_service, callee_version,
       callee_host, callee_request_id
FROM blindspot.http_chains(t_from = {t_from:DateTime64(9, 'UTC')}, t_to = {t_to:DateTime64(9, 'UTC')})
WHERE leak = 1;
