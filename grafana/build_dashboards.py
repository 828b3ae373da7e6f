"""Writes grafana/dashboards/*.json: the four Blindspot dashboards, from one description.

Run ``python grafana/build_dashboards.py`` after editing; tests/test_grafana_dashboards.py fails when
the committed JSON differs from what this writes. Generated, because every time-series panel reads
two rollup tiers the same way:

* ``*_1m`` (kept 3 days) when the whole range lies within the last 2 days, else ``*_1h``. Both
  branches are in the SQL; the unused one has a constant-false WHERE, so the engine reads no parts
  of it. A 30-day panel of a large fleet therefore reads hourly rows, never raw rows.
* Buckets are at least one rollup step wide (``greatest($__interval_s, 60|3600)``), and rates divide
  by that width, so a small interval never shows comb-like gaps.

Panel SQL uses only the plugin's macros ($__fromTime, $__toTime, $__timeFilter, $__interval_s,
$__conditionalAll) and ``${var:singlequote}`` for variables (safe for single and multiple values).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DS = {"type": "grafana-clickhouse-datasource", "uid": "blindspot-clickhouse"}
SCHEMA_VERSION = 39
OUT = Path(__file__).with_name("dashboards")
RECENT = "INTERVAL 2 DAY"  # the 1m tier keeps 3 days (TIERS in ingest/schema.py): a margin of one day

LAT_BOUNDS = ["0.1", "0.25", "0.5", "1", "2.5", "5", "10", "25", "50", "100", "250", "500", "1000",
              "2500", "5000", "10000", "30000", "+Inf"]
DUR_BOUNDS = ["1ms", "10ms", "100ms", "1s", "10s", "1min", "10min", "1h", "+Inf"]


def cond(column: str, var: str) -> str:
    return f"$__conditionalAll({column} IN (${{{var}:singlequote}}), ${var})"


MINUTE_HOUR = (("1m", "minute", 60, "toStartOfMinute"), ("1h", "hour", 3600, "toStartOfHour"))
HOUR_DAY = (("1h", "hour", 3600, "toStartOfHour"), ("1d", "day", 86400, "toDate"))
FLEET = {"tcp_conn", "http"}  # families with host-less *_fleet_* tables
HOST_ALL = "($__conditionalAll(0, $host))"  # 1=1 when the host variable is All, else 0


def tiered(select: str, table: str, where: str, group: str, order: str = "", step: bool = True,
           tiers: tuple[tuple[str, str, int, str], ...] = MINUTE_HOUR) -> str:
    """One query over the tiers of rollup ``table``; exactly one branch has a true constant condition.

    Fine tier when the whole range lies within the last 2 days, else the coarse one; for families
    with fleet tables, the host-less table when $host is All, else the per-host table filtered by
    host. In ``select``/``where``/``group``: ``{t}`` the tier's time column, ``{bucket}`` its time
    bucket, ``{step}`` the bucket width in seconds.
    """
    parts = []
    scopes = [("", f"NOT {HOST_ALL} AND " + cond("host", "host")), ("_fleet", HOST_ALL)]
    if table not in FLEET:
        scopes = [("", cond("host", "host"))]
    for i, (suffix, tcol, width, start) in enumerate(tiers):
        recent = f"$__fromTime {'>=' if i == 0 else '<'} now() - {RECENT}"
        stepx = f"greatest($__interval_s, {width})"
        fill = {"t": tcol, "step": stepx, "bucket": f"toStartOfInterval({tcol}, INTERVAL {stepx} second)"}
        for scope, scope_where in scopes:
            sel = _fill(select, fill)
            if step:
                sel = f"{fill['bucket']} AS time, {sel}"
            w = f"{recent} AND {scope_where} AND {tcol} >= {start}($__fromTime) AND {tcol} <= $__toTime"
            if where:
                w += " AND " + _fill(where, fill)
            q = f"SELECT {sel}\nFROM blindspot.{table}{scope}_{suffix}\nWHERE {w}"
            if group:
                q += f"\nGROUP BY {_fill(group, fill)}"
            parts.append(q)
    body = "\nUNION ALL\n".join(parts)
    return f"SELECT * FROM (\n{body}\n)" + (f"\nORDER BY {order}" if order else "")


def _fill(text: str, fill: dict[str, str]) -> str:
    # str.replace, not str.format: the SQL holds ${var:singlequote} braces
    for k, v in fill.items():
        text = text.replace("{" + k + "}", v)
    return text


def target(sql: str, fmt: int, ref: str = "A") -> dict[str, Any]:
    return {"datasource": DS, "editorType": "sql", "format": fmt, "queryType": "sql", "rawSql": sql,
            "refId": ref}


class Board:
    def __init__(self, uid: str, title: str, description: str, variables: list[dict[str, Any]]) -> None:
        self.uid, self.title, self.description, self.variables = uid, title, description, variables
        self.panels: list[dict[str, Any]] = []
        self._x = self._y = self._rowh = 0

    def panel(self, ptype: str, title: str, sql: str, fmt: int, *, w: int = 12, h: int = 8,
              unit: str | None = None, description: str = "", options: dict[str, Any] | None = None,
              field: dict[str, Any] | None = None) -> None:
        if self._x + w > 24:
            self._x, self._y = 0, self._y + self._rowh
            self._rowh = 0
        defaults: dict[str, Any] = dict(field or {})
        if unit:
            defaults["unit"] = unit
        self.panels.append({
            "id": len(self.panels) + 1, "type": ptype, "title": title, "description": description,
            "datasource": DS, "gridPos": {"x": self._x, "y": self._y, "w": w, "h": h},
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options or {},
            "targets": [target(sql, fmt)],
        })
        self._x += w
        self._rowh = max(self._rowh, h)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["blindspot"], "timezone": "utc", "editable": True, "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"}, "fiscalYearStartMonth": 0,
            "templating": {"list": self.variables}, "annotations": {"list": []}, "links": [
                {"type": "dashboards", "tags": ["blindspot"], "asDropdown": True, "title": "Blindspot"}],
            "panels": self.panels,
        }


def variable(name: str, label: str, sql: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS, "query": sql, "definition": sql,
        "refresh": 2, "multi": True, "includeAll": True, "sort": 1, "hide": 0, "regex": "",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [],
    }


def _distinct(col: str, table: str, where: str = "") -> str:
    w = f" AND {where}" if where else ""
    return (f"SELECT DISTINCT {col} FROM blindspot.{table}_1h "
            f"WHERE hour >= toStartOfHour($__fromTime) AND hour <= $__toTime{w} ORDER BY {col}")


def hist_columns(expr: str, labels: list[str]) -> str:
    return ", ".join(f'{expr}[{i}] AS "{lab}"' for i, lab in enumerate(labels, 1))


def pq(hist: str, q: float) -> str:
    return f"round(blindspot_hist_quantile(sumForEachMerge({hist}), {q}), 3)"


TS = {"custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "spanNulls": False}}
TABLE_OPTS = {"showHeader": True, "cellHeight": "sm"}
HEATMAP_OPTS = {"calculate": False, "yAxis": {"unit": "ms", "axisPlacement": "left"},
                "rowsFrame": {"layout": "le"}, "cellValues": {"unit": "short"},
                "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5, "steps": 64}}


# --- Connections --------------------------------------------------------------------------------
def connections() -> Board:
    svc_f = cond("service", "service")  # tiered() adds the host filter itself
    tcp_f = f"{cond('host', 'host')} AND {svc_f}"
    b = Board("blindspot-connections", "Blindspot / Connections",
              "Every TCP connection the agents saw, from the kernel: rates, handshakes, failures, talkers.",
              [variable("host", "Host", _distinct("host", "tcp_conn")),
               variable("service", "Service (process)", _distinct("service", "tcp_conn",
                                                                  cond("host", "host")))])
    b.panel("timeseries", "Connections opened and closed per second, by role", tiered(
        "role, sum(opened) / {step} AS opened, sum(closed) / {step} AS closed",
        "tcp_conn", svc_f, "time, role", "time"), 0, unit="cps", field=TS,
        description="opened counts at the connection's start, closed at its end (one row per connection).")
    b.panel("bargauge", "Open connections at the end of the range", (
        "SELECT comm AS service, role, count() AS open\nFROM blindspot.tcp_connections_open\n"
        f"WHERE $__timeFilter(snapshot_time) AND {tcp_f.replace('service IN', 'comm IN')}\n"
        "  AND (host, snapshot_time) IN (\n"
        "    SELECT host, max(snapshot_time) FROM blindspot.tcp_connections_open\n"
        f"    WHERE $__timeFilter(snapshot_time) AND snapshot_time >= $__toTime - INTERVAL 5 MINUTE"
        f" AND {cond('host', 'host')}\n    GROUP BY host)\n"
        "GROUP BY service, role ORDER BY open DESC LIMIT 50"), 1,
        options={"displayMode": "gradient", "orientation": "horizontal",
                 "reduceOptions": {"values": True, "calcs": [], "fields": "/^open$/"}},
        description="From each host's latest snapshot of still-open connections (taken every few seconds).")
    b.panel("timeseries", "TCP handshake latency (p50 / p90 / p99)", tiered(
        f"{pq('handshake_hist', 0.5)} AS p50, {pq('handshake_hist', 0.9)} AS p90, "
        f"{pq('handshake_hist', 0.99)} AS p99", "tcp_conn", svc_f, "time", "time"), 0, unit="ms", field=TS,
        description="SYN to ESTABLISHED, from fixed histogram buckets (interpolated within a bucket).")
    b.panel("barchart", "Connection duration distribution", (
        "SELECT bucket, sum(n) AS connections FROM (\n" + tiered(
            # indexed, not arrayZip: the empty tier merges to [] and must still line up
            "arrayJoin(arrayMap(i -> (" + json.dumps(DUR_BOUNDS).replace('"', "'")
            + "[i], sumForEachMerge(duration_hist)[i]), range(1, 10))) AS b, b.1 AS bucket, b.2 AS n",
            "tcp_conn", svc_f, "", step=False) + "\n)\nGROUP BY bucket ORDER BY indexOf("
        + json.dumps(DUR_BOUNDS).replace('"', "'") + ", bucket)"), 1,
        options={"orientation": "vertical", "xField": "bucket", "showValue": "auto"},
        description="Closed connections by lifetime (upper bound of each bucket).")
    b.panel("timeseries", "Failed connects, resets, retransmits per second", tiered(
        "sum(failed) / {step} AS failed_connects, sum(resets) / {step} AS resets, "
        "sum(retransmits) / {step} AS retransmits", "tcp_conn", svc_f, "time", "time"), 0,
        unit="ops", field=TS,
        description="failed: connect() never reached ESTABLISHED; resets: closed by an RST.")
    b.panel("table", "Top talkers by bytes", tiered(
        "host, service, role, replaceRegexpOne(IPv6NumToString(remote_addr), '^::ffff:', '') AS peer,\n"
        "       if(remote_port = 0, '', toString(remote_port)) AS port,\n"
        "       sum(connections) AS connection_count,\n"
        "       sum(bytes_sent) AS sent, sum(bytes_received) AS received, sent + received AS total",
        "tcp_peers", svc_f, "host, service, role, remote_addr, remote_port", "total DESC LIMIT 50",
        step=False, tiers=HOUR_DAY), 1,
        options=TABLE_OPTS, field={"unit": "decbytes"},
        description="Per peer, whole hours (whole days beyond 2 days). Server side groups all client "
                    "ports of a peer together.")
    b.panel("timeseries", "Packet drops per second, by reason", tiered(
        "reason, sum(drops) / {step} AS drops", "packet_drops", "", "time, reason", "time"), 0,
        unit="pps", field=TS,
        description="Every packet the kernel dropped on the selected hosts (skb:kfree_skb), by the "
                    "kernel's own reason: NETFILTER_DROP, NO_SOCKET, TCP_LISTEN_OVERFLOW, ... "
                    "NOT_SPECIFIED is a free the kernel gave no reason for; QUEUE_PURGE, what a socket "
                    "still held when destroyed. Not filtered by service: most drops belong to no process.")
    conn_cols = ("host, conn_id, comm AS service, pid, role,\n"
                 "         replaceRegexpOne(IPv6NumToString(local_addr), '^::ffff:', '') AS local, local_port,\n"
                 "         replaceRegexpOne(IPv6NumToString(remote_addr), '^::ffff:', '') AS remote, remote_port,\n"
                 "         drops, drop_reason")
    conn_f = tcp_f.replace("service IN", "comm IN")
    b.panel("table", "Connections with most packet drops", (
        "SELECT host, any(service) AS service, any(pid) AS pid, any(role) AS role, any(local) AS local,\n"
        "       any(local_port) AS local_port, any(remote) AS remote, any(remote_port) AS remote_port,\n"
        "       max(drops) AS packet_drops, argMax(drop_reason, drops) AS main_reason,\n"
        "       max(retransmits) AS retransmitted, if(min(open) = 1, 'open', 'closed') AS state\n"
        "FROM (\n"
        f"  SELECT {conn_cols}, retransmits, 0 AS open\n"
        "  FROM blindspot.tcp_connections\n"
        f"  WHERE $__timeFilter(end_time) AND drops > 0 AND {conn_f}\n"
        "  UNION ALL\n"
        f"  SELECT {conn_cols}, toUInt32(0) AS retransmits, 1 AS open\n"
        "  FROM blindspot.tcp_connections_open\n"
        f"  WHERE $__timeFilter(snapshot_time) AND drops > 0 AND {conn_f}\n"
        ")\nGROUP BY host, conn_id ORDER BY packet_drops DESC LIMIT 50"), 1, w=24, options=TABLE_OPTS,
        description="Closed connections and still-open ones (their latest snapshot) whose packets the kernel "
                    "dropped, with the reason of most of those drops. retransmitted: closed ones only.")
    b.panel("table", "Connections (latest 200 in the last hour of the range)", (
        "SELECT end_time, host, comm AS service, pid, role,\n"
        "       replaceRegexpOne(IPv6NumToString(local_addr), '^::ffff:', '') AS local, local_port,\n"
        "       replaceRegexpOne(IPv6NumToString(remote_addr), '^::ffff:', '') AS remote, remote_port,\n"
        "       round(duration_ns / 1e6, 3) AS duration_ms, round(handshake_ns / 1e6, 3) AS handshake_ms,\n"
        "       bytes_sent, bytes_received, retransmits, srtt_us, close_reason, started_before_agent\n"
        "FROM blindspot.tcp_connections\n"
        "WHERE $__timeFilter(end_time) AND end_time >= $__toTime - INTERVAL 1 HOUR\n"
        f"  AND {tcp_f.replace('service IN', 'comm IN')}\n"
        "ORDER BY end_time DESC LIMIT 200"), 1, w=24, h=10, options=TABLE_OPTS,
        description="Raw rows to drill into; narrow the range or pick a host to go further back.")
    return b


# --- Latency ------------------------------------------------------------------------------------
# The protocol of a rollup row; rows rolled up before 0055 carry '' and were all HTTP/1.
PROTOCOL = "if(protocol = '', 'http/1.1', protocol)"
HTTP_F = (f"{cond('service', 'service')} AND {cond('service_version', 'version')} AND "
          f"{cond(PROTOCOL, 'protocol')} AND {cond('route', 'route')}")
# HTTP status class, or the gRPC status code for gRPC rows (their HTTP status is 200 unless the transport failed)
STATUS = "if(grpc_status != '', concat('grpc ', grpc_status), status_class)"


def http_vars(route: bool = True, gray: bool = False) -> list[dict[str, Any]]:
    services = _distinct("service", "http")
    if gray:  # a gray release: services serving more than one version in the range
        services = ("SELECT service FROM blindspot.http_1h WHERE hour >= toStartOfHour($__fromTime) "
                    "AND hour <= $__toTime AND side = 'server' GROUP BY service "
                    "HAVING uniqExact(service_version) > 1 ORDER BY service")
    v = [variable("service", "Service", services),
         variable("host", "Host", _distinct("host", "http", cond("service", "service"))),
         variable("version", "Version", _distinct("service_version", "http", cond("service", "service"))),
         variable("protocol", "Protocol", _distinct(PROTOCOL, "http", cond("service", "service")))]
    if route:
        v.append(variable("route", "Route", _distinct("route", "http", cond("service", "service"))))
    return v


def latency() -> Board:
    f = "side = 'server' AND " + HTTP_F
    b = Board("blindspot-latency", "Blindspot / Latency",
              "Request latency as each Go service served it (server side), from the kernel: HTTP/1.1, "
              "HTTPS, HTTP/2 and gRPC (the protocol variable).",
              http_vars())
    b.panel("heatmap", "Request latency heatmap (ms)", _heatmap("http", "latency_hist", f), 0, w=24, h=9,
            options=HEATMAP_OPTS,
            description="Requests per fixed latency bucket (upper bound, ms) per interval.")
    b.panel("timeseries", "p50 / p90 / p99 per service and route", tiered(
        f"service, route, {pq('latency_hist', 0.5)} AS p50, {pq('latency_hist', 0.9)} AS p90, "
        f"{pq('latency_hist', 0.99)} AS p99", "http", f, "time, service, route", "time"), 0,
        unit="ms", field=TS)
    b.panel("timeseries", "Requests per second by status (HTTP class, gRPC code)", tiered(
        f"{STATUS} AS status, sum(requests) / {{step}} AS rps", "http", f, "time, status", "time"), 0,
        unit="reqps", field={"custom": {"drawStyle": "bars", "stacking": {"mode": "normal"},
                                        "fillOpacity": 80}},
        description="HTTP rows by status class (none: no response); gRPC rows by the grpc-status of their "
                    "trailers.")
    b.panel("table", "Slowest routes (p99 over the range)", tiered(
        f"service, route, sum(requests) AS request_count, {pq('latency_hist', 0.5)} AS p50_ms, "
        f"{pq('latency_hist', 0.99)} AS p99_ms, round(sum(errors) / sum(requests), 4) AS error_ratio",
        "http", f, "service, route", "p99_ms DESC LIMIT 20", step=False), 1, options=TABLE_OPTS)
    b.panel("heatmap", "TCP handshake latency heatmap (ms)",
            _heatmap("tcp_conn", "handshake_hist", ""), 0, w=24, h=9,
            options=HEATMAP_OPTS, description="SYN to ESTABLISHED for every connection on the hosts.")
    return b


def _heatmap(table: str, hist: str, where: str) -> str:
    inner = tiered(f"sumForEachMerge({hist}) AS h", table, where, "time")
    return f"SELECT time, {hist_columns('h', LAT_BOUNDS)}\nFROM ({inner})\nORDER BY time"


# --- Gray release -------------------------------------------------------------------------------
# The router does not forward X-Gray-Version: the header is on its inbound (server) row, the version
# on the upstream's own row. They are linked as issue 4's tracer links them (0010_http_requests.sql):
# inbound request_id = outbound parent_request_id (same host and pid), and the outbound request's
# connection is the upstream's inbound one (addresses and ports mirrored, times nested). Raw rows
# joined, so bounded to the last hour of the range.
_WIN = "time >= greatest($__fromTime, $__toTime - INTERVAL 1 HOUR) AND time <= $__toTime"
ROUTED = (
    "SELECT {select}\nFROM (\n"
    "  SELECT i.time AS t, if(i.x_gray_version = '', '(no header)', i.x_gray_version) AS header,\n"
    "         u.service_version AS served_by\n"
    "  FROM (SELECT host, pid, request_id, time, x_gray_version FROM blindspot.http_requests\n"
    f"        WHERE side = 'server' AND {_WIN}) AS i\n"
    "  INNER JOIN (SELECT host, pid, parent_request_id, time, end_time, local_addr, local_port, remote_port\n"
    "              FROM blindspot.http_requests\n"
    f"              WHERE side = 'client' AND parent_request_id != 0 AND {_WIN}) AS o\n"
    "    ON o.host = i.host AND o.pid = i.pid AND o.parent_request_id = i.request_id\n"
    "  INNER JOIN (SELECT service_version, time, end_time, remote_addr, remote_port, local_port\n"
    "              FROM blindspot.http_requests\n"
    f"              WHERE side = 'server' AND {_WIN} AND {cond('service', 'service')}\n"
    f"                AND {cond('service_version', 'version')}) AS u\n"
    "    ON u.remote_addr = o.local_addr AND u.remote_port = o.local_port AND u.local_port = o.remote_port\n"
    "  WHERE u.time >= o.time AND u.end_time <= o.end_time\n"
    ") AS routed\n{tail}"
)


def routed(select: str, tail: str) -> str:
    return _fill(ROUTED, {"select": select, "tail": tail})


ROUTED_HELP = ("Inbound requests of the router (the X-Gray-Version they arrived with) joined to the upstream "
               "request that served them (its version). Raw rows: the last hour of the range.")
# Every hop (issue 12): the parameterized views of 0045_gray_hops.sql, over the last hour of the range.
_HOPS_WINDOW = "t_from = greatest($__fromTime, $__toTime - INTERVAL 1 HOUR), t_to = $__toTime"
_HOPS_SERVICE = ("$__conditionalAll((callee_service IN (${service:singlequote}) OR caller_service IN "
                 "(${service:singlequote})), $service)")
HOPS_HELP = ("Every hop of every request, at any depth (blindspot.http_chains): who called whom, in which gray "
             "lane (the X-Gray-Version the request entered with, else the version of the first gray service it "
             "reached) and which version served it. Linked by parent request (Go uprobes) or a forwarded "
             "X-Request-ID, and the connection seen from both ends. Raw rows: the last hour of the range.")
LEAKS_HELP = ("Requests that reached another version of a gray service than their lane while that service runs "
              "the lane's version (entered as v2, reached v1 while a v2 runs, or the reverse): "
              "blindspot.gray_leaks. Examples: the entering request's X-Request-ID (else host:request_id) to "
              "drill into with SQL.")

# The verdict panel runs blindspot/commands/canary.py's statement itself; only what it compares (each service's
# versions against the one with most traffic in the window) and the window come from the dashboard.
_CANARY_FROM, _CANARY_TO = "greatest($__fromTime, $__toTime - INTERVAL 15 MINUTE)", "$__toTime"
CANARY_PAIRS = (
    "SELECT service, baseline, service_version AS canary, nan AS weight FROM (\n"
    "  SELECT service, service_version,\n"
    "         first_value(service_version) OVER (PARTITION BY service ORDER BY n DESC, service_version)"
    " AS baseline\n"
    "  FROM (SELECT service, service_version, count() AS n FROM blindspot.http_requests\n"
    f"        WHERE side = 'server' AND time >= {_CANARY_FROM} AND time <= {_CANARY_TO}\n"
    f"          AND {cond('service', 'service')}\n"
    "        GROUP BY service, service_version))\n"
    "WHERE service_version != baseline\n"
    "  AND $__conditionalAll((service_version IN (${version:singlequote}) OR baseline IN (${version:singlequote})),"
    " $version)")
CANARY_HELP = ("Each version of a service against the version with most traffic in the last 15 minutes of the "
               "range, by the statement and default rules of `blindspot canary` (docs/canary.md): errors "
               "(Fisher exact), latency (Mann-Whitney U and the p99 tail), gray leaks. With the range ending now, "
               "`blindspot canary --since 15m [--route R]` gives the same verdict (the route variable: one "
               "route, or every route with All).")


CANARY_ROUTE = cond("r.route", "route")


def canary_verdict() -> str:
    from blindspot.commands.canary import dashboard_sql

    stmt = dashboard_sql(CANARY_PAIRS, _CANARY_FROM, _CANARY_TO, route=CANARY_ROUTE)
    return ("SELECT service, canary, baseline, verdict, arrayStringConcat(reasons, ', ') AS why,\n"
            "       requests_baseline, requests_canary, round(error_rate_baseline, 4) AS error_rate_baseline,\n"
            "       round(error_rate_canary, 4) AS error_rate_canary, round(error_p, 4) AS error_p,\n"
            "       round(p50_baseline_ms, 3) AS p50_baseline_ms, round(p50_canary_ms, 3) AS p50_canary_ms,\n"
            "       round(p99_baseline_ms, 3) AS p99_baseline_ms, round(p99_canary_ms, 3) AS p99_canary_ms,\n"
            "       round(latency_p, 4) AS latency_p, round(tail_p, 4) AS tail_p,\n"
            "       round(canary_share, 4) AS canary_share, gray_leaks\n"
            f"FROM (\n{stmt}\n)")


def gray_release() -> Board:
    f = "side = 'server' AND " + HTTP_F
    b = Board("blindspot-gray-release", "Blindspot / Gray release",
              "Canary versions against the baseline: traffic share, errors, latency, and where the "
              "X-Gray-Version header actually sent requests.", http_vars(gray=True))
    b.panel("timeseries", "Traffic share per version", tiered(
        "service_version AS version, sum(requests) AS request_count", "http", f, "time, version",
        "time").replace("SELECT * FROM", "SELECT time, version, request_count / sum(request_count) OVER "
                        "(PARTITION BY time) AS share FROM", 1), 0, unit="percentunit",
        field={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 60}, "max": 1})
    b.panel("timeseries", "Error rate per version (5xx, no response, gRPC server errors)", tiered(
        "service_version AS version, sum(errors) / sum(requests) AS error_rate", "http", f,
        "time, version", "time"), 0, unit="percentunit", field=TS,
        description="Failed as `blindspot canary` counts failures (blindspot_request_failed, migration 0055): "
                    "no response, HTTP 5xx, or gRPC UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, "
                    "UNAVAILABLE, DATA_LOSS.")
    b.panel("timeseries", "p99 latency per version", tiered(
        f"service_version AS version, {pq('latency_hist', 0.99)} AS p99", "http", f, "time, version",
        "time"), 0, unit="ms", field=TS)
    b.panel("table", "Routing matrix, last hour of the range: X-Gray-Version -> version that served",
            routed(select="header, served_by, count() AS request_count",
                          tail="GROUP BY header, served_by ORDER BY header, served_by"), 1,
            options=TABLE_OPTS, description=ROUTED_HELP)
    b.panel("timeseries", "Requests routed against their header, last hour of the range", routed(
        select="toStartOfInterval(t, INTERVAL greatest($__interval_s, 60) second) AS time, "
               "header, count() / greatest($__interval_s, 60) AS misrouted",
        tail="WHERE header NOT IN ('(no header)', served_by) GROUP BY time, header ORDER BY time"), 0,
        unit="reqps", field=TS, description=ROUTED_HELP + " Only requests whose header named another version.")
    b.panel("table", "Every hop: caller -> callee, gray lane -> version that served, last hour of the range", (
        "SELECT caller_service, caller_version, callee_service, lane, lane_source, callee_version,\n"
        "       count() AS request_count, sum(leak) AS leaks\n"
        f"FROM blindspot.http_chains({_HOPS_WINDOW})\n"
        f"WHERE depth > 0 AND {_HOPS_SERVICE}\n"
        "GROUP BY ALL ORDER BY caller_service, callee_service, lane, callee_version, caller_version"), 1,
            options=TABLE_OPTS, description=HOPS_HELP)
    b.panel("table", "Gray leaks, last hour of the range: per service pair and lane, with examples", (
        "SELECT caller_service, caller_version, callee_service, callee_version, lane, lane_source,\n"
        "       count() AS leak_count, max(time) AS latest,\n"
        "       arrayStringConcat(groupUniqArray(5)(if(root_x_request_id != '', root_x_request_id,\n"
        "           concat(root_host, ':', toString(root_request_id)))), ' ') AS examples\n"
        f"FROM blindspot.gray_leaks({_HOPS_WINDOW})\n"
        f"WHERE {_HOPS_SERVICE}\n"
        "GROUP BY ALL ORDER BY leak_count DESC LIMIT 100"), 1, options=TABLE_OPTS,
            description=LEAKS_HELP)
    b.panel("table", "Canary verdict, last 15 minutes of the range (same rules as `blindspot canary`)",
            canary_verdict(), 1, w=24, options=TABLE_OPTS, description=CANARY_HELP)
    return b


# --- Overview -----------------------------------------------------------------------------------
def overview() -> Board:
    hf = cond("service", "service")  # tiered() adds the host filter
    b = Board("blindspot-overview", "Blindspot / Overview",
              "What the browser's Network tab never shows, and whether the data is complete.",
              [variable("host", "Host", _distinct("host", "tcp_conn")),
               variable("service", "Service", _distinct("service", "http")),
               variable("protocol", "Protocol", _distinct(PROTOCOL, "http", cond("service", "service")))])
    b.panel("bargauge", "Share of requests no browser made, per service", tiered(
        "service, sum(requests) AS request_count,"
        " sumIf(requests, browser = 0) / sum(requests) AS non_browser",
        "http", f"side = 'server' AND {hf} AND {cond(PROTOCOL, 'protocol')}", "service", "non_browser DESC",
        step=False), 1,
        unit="percentunit", options={"displayMode": "gradient", "orientation": "horizontal",
                                     "reduceOptions": {"values": True, "calcs": [],
                                                       "fields": "/^non_browser$/"}},
        field={"min": 0, "max": 1},
        description="Server-side requests whose User-Agent is not a browser's (no Mozilla/...).")
    b.panel("table", "Requests by User-Agent and peer (no browser)", tiered(
        "service, side, ua_product AS user_agent, peer, sum(requests) AS request_count", "http_peers",
        "browser = 0 AND " + hf, "service, side, user_agent, peer", "request_count DESC LIMIT 50",
        step=False, tiers=HOUR_DAY), 1, options=TABLE_OPTS,
        description="Client side: the upstream called; server side: the caller's address. Whole hours "
                    "(whole days beyond 2 days).")
    b.panel("timeseries", "Service-to-service connections: share made by our own services", tiered(
        "sumIf(opened, role = 'client') / greatest(sum(opened), 1) AS outbound_share",
        "tcp_conn", "", "time", "time"), 0, unit="percentunit", field=TS,
        description="Connections our hosts' processes opened (connect) against all they opened or "
                    "accepted: none of them came from a browser.")
    b.panel("table", "Pipeline completeness per host", tiered(
        "host, sumIf(value, counter = 'captured') AS captured,\n"
        "       sumIf(value, startsWith(counter, 'lost_')) AS lost_kernel,\n"
        "       sumIf(value, startsWith(counter, 'dropped')) AS dropped,\n"
        "       sumIf(value, counter = 'rejected') AS rejected,\n"
        "       sumIf(value, startsWith(counter, 'source_errors:')) AS source_errors,\n"
        "       sumIf(value, startsWith(counter, 'dead_letter')) AS dead_lettered,\n"
        "       sumIf(value, counter = 'expired') AS expired,\n"
        "       sumIf(value, counter = 'ingested') AS ingested,\n"
        "       round(captured / greatest(captured + lost_kernel, 1), 6) AS kernel_completeness",
        "pipeline_counters", "", "host", "kernel_completeness, host", step=False), 1,
        w=24, options=TABLE_OPTS,
        # counter names as agent/pipeline.py reports them: lost_ringbuf, lost_map_full (kernel),
        # dropped_queue_full, dropped_sink, dropped_write_error, rejected, source_errors:<source>:<what>
        # (agent); dead_letter*, expired, ingested (fleet ingest)
        description="Events lost in the kernel (ring buffer full), dropped by the agent (buffers full, "
                    "write errors), rejected by its decoders, failures its sources counted and went on "
                    "(source_errors), dead-lettered by ingest, or expired (older than the retention on "
                    "arrival, not stored); ingested: stored by fleet ingest. A gap here is missing data, "
                    "not a quiet service.")
    b.panel("timeseries", "Events lost per second, by component and counter", tiered(
        "concat(component, ':', counter) AS loss, sum(value) / {step} AS per_s", "pipeline_counters",
        "(startsWith(counter, 'lost_') OR startsWith(counter, 'dropped') OR startsWith(counter, 'dead_letter') "
        "OR counter IN ('expired', 'rejected') OR startsWith(counter, 'source_errors:'))",
        "time, loss", "time"), 0, unit="ops", w=24, field=TS)
    return b


BOARDS = {"connections": connections, "latency": latency, "gray-release": gray_release,
          "overview": overview}


def render() -> dict[str, str]:
    return {name: json.dumps(fn().json(), indent=2) + "\n" for name, fn in BOARDS.items()}


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / f"{name}.json").write_text(text)
        print(f"wrote {OUT / name}.json")
