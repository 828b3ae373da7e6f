"""Dashboard panel latency over a synthetic fleet: every panel's SQL, expanded as Grafana's ClickHouse
plugin would, timed over the last 24 hours and the last 30 days.

    .venv/bin/python bench/bench_dashboards.py [--hosts 1000] [--tcp-rows 100_000_000] [--data-dir DIR]

The fleet is generated inside the engine (numbers() + hashes, no Python rows) into the RAW tables, so
the materialized views fill the rollups exactly as ingest does. The data folder lives outside the work
tree (default: $TMPDIR/blindspot-bench-dashboards) and is reused when it already holds the same fleet
(pass --fresh to rebuild). Target: every panel under 300 ms over 30 days on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "grafana"), str(ROOT / "tests")]

from ingest.clickhouse_sink import open_service  # noqa: E402
from ingest.clickhouse_sink.service import INSERT_SETTINGS, _settings_clause  # noqa: E402
from ingest.schema import migrate  # noqa: E402
from tests import grafana_sql as gs  # noqa: E402

DAY = 86400
INSERT = f"SETTINGS {_settings_clause(INSERT_SETTINGS)}"

# One row per connection, spread evenly over 30 days; each host runs 3 of 6 services and talks to
# 5 peers. h = a per-row hash, the source of every "random" choice (deterministic).
TCP_SQL = """
INSERT INTO blindspot.tcp_connections {settings}
SELECT
    concat('host-', leftPad(toString(number % {hosts}), 4, '0')) AS host,
    number AS conn_id,
    fromUnixTimestamp64Nano(toInt64({t0} + number * {step_ns})) AS end_time,
    end_time - toIntervalNanosecond(duration_ns) AS start_time,
    toUInt64(randLogNormal(20, 2)) AS duration_ns,
    if(h % 50 = 0 AND role = 'client', 0, toUInt64(randLogNormal(12, 1))) AS handshake_ns,
    if(h % 2 = 0, 'client', 'server') AS role,
    2 AS family,
    toIPv6(concat('10.0.', toString(intDiv(number % {hosts}, 256)), '.', toString(number % 256)))
        AS local_addr,
    if(role = 'server', 8080, 30000 + h % 30000) AS local_port,
    toIPv6(concat('10.1.', toString((number % {hosts} + h % 5) % 256), '.', toString(h % 5))) AS remote_addr,
    if(role = 'client', 5432, 30000 + h % 30000) AS remote_port,
    toUInt32(1000 + h % 3) AS pid,
    ['nginx', 'shop', 'postgres', 'redis', 'router', 'auth'][(number % {hosts} + intDiv(h, 7) % 3) % 6 + 1]
        AS comm,
    h % 100000 AS bytes_sent,
    h % 1000000 AS bytes_received,
    toUInt32(h % 97 = 0) AS retransmits,
    toUInt32(100 + h % 5000) AS srtt_us,
    multiIf(handshake_ns = 0, 'refused', h % 101 = 0, 'reset_received', 'fin') AS close_reason,
    0 AS started_before_agent,
    'exact' AS owner_source,
    toUInt32(if(h % 499 = 0, 1 + h % 40, 0)) AS drops,
    if(drops > 0, ['NETFILTER_DROP', 'TCP_OFO_DROP', 'QDISC_DROP'][h % 3 + 1], '') AS drop_reason
FROM (SELECT number, cityHash64(number) AS h FROM numbers({offset}, {count}))
"""

# HTTP on the web tier (the first {web} hosts), as issue 4's tracer writes it: requests come in
# threes (k = number / 3): the router's inbound row (with X-Gray-Version on 1 in 10), its outbound row
# (parent_request_id -> the inbound), and the upstream's row on the mirrored connection, nested in
# time. 3 services x two versions, 5 routes, skewed status and User-Agent mixes.
HTTP_SQL = """
INSERT INTO blindspot.http_requests {settings}
SELECT
    fromUnixTimestamp64Nano(toInt64({t0} + k * 3 * {step_ns} + r * 1000)) AS time,
    time + toIntervalNanosecond(duration_ns) AS end_time,
    toUInt64(intDiv(h, 7) % 40000000 * if(version = 'v2', 1.6, 1)) + (2 - r) * 2000 AS duration_ns,
    concat('host-', leftPad(toString(k % {web}), 4, '0')) AS host,
    if(r = 2, ['shop', 'cart', 'auth'][k % 3 + 1], 'router') AS service,
    if(r = 2, version, 'r1') AS service_version,
    'go1.26.0' AS go_version, toUInt32(if(r = 2, 1002, 1000)) AS pid, toUInt32(1) AS tid, service AS comm,
    if(r = 1, 'client', 'server') AS side, 'GET' AS method,
    concat('/api/', toString(h % 5)) AS path, path AS route, 'pattern' AS route_source,
    toUInt16(multiIf(h % 100 = 0, 500, h % 50 = 0, 404, 200)) AS status,
    toUInt64(200) AS request_bytes, h % 20000 AS response_bytes, toUInt8(4) AS family,
    toIPv6(if(r = 2, '10.0.0.2', '10.0.0.1')) AS local_addr,
    toUInt16(if(r = 1, 30000 + k % 30000, 8080)) AS local_port,
    toIPv6(multiIf(r = 0, concat('10.2.0.', toString(h % 10)), r = 1, '10.0.0.2', '10.0.0.1')) AS remote_addr,
    toUInt16(multiIf(r = 0, 40000, r = 1, 8080, 30000 + k % 30000)) AS remote_port,
    if(r = 1, concat('upstream-', version, ':8080'), '') AS upstream_host,
    if(r = 0 AND h % 10 = 0, version, '') AS x_gray_version,
    '' AS x_request_id, '' AS traceparent,
    if(r = 0 AND h % 3 = 0, 'Mozilla/5.0', 'Go-http-client/1.1') AS user_agent,
    '' AS host_header, '' AS extra_headers, toUInt8(0) AS head_truncated, 'complete' AS end_reason,
    number + 1 AS request_id, if(r = 1, number, 0) AS parent_request_id,
    'http/1.1' AS protocol, toUInt8(0) AS encrypted, '' AS grpc_status
FROM (SELECT number, intDiv(number, 3) AS k, number % 3 AS r, cityHash64(k) AS h,
             if(h % 5 = 0, 'v2', 'v1') AS version
      FROM numbers({offset}, {count}))
"""

COUNTERS_SQL = """
INSERT INTO blindspot.pipeline_counters {settings}
SELECT
    fromUnixTimestamp64Nano(toInt64({t0} + intDiv(number, {hosts} * 4) * 600 * 1000000000)) AS time,
    concat('host-', leftPad(toString(number % {hosts}), 4, '0')) AS host,
    if(c = 'dead_lettered', 'ingest', 'agent') AS component,
    ['captured', 'lost_ringbuf', 'dropped_queue_full', 'dead_lettered'][intDiv(number, {hosts}) % 4 + 1] AS c,
    if(c = 'captured', 1000, toUInt64(cityHash64(number) % 1000 = 0)) AS value
FROM numbers({offset}, {count})
"""

OPEN_SQL = """
INSERT INTO blindspot.tcp_connections_open {settings}
SELECT now64(9) - toIntervalSecond(intDiv(number, {hosts} * 50) * 5) AS snapshot_time,
       concat('host-', leftPad(toString(number % {hosts}), 4, '0')) AS host, number AS conn_id,
       snapshot_time - toIntervalSecond(600) AS start_time, 'server' AS role, 2 AS family,
       toIPv6('10.0.0.1') AS local_addr, 8080 AS local_port, toIPv6('10.1.0.1') AS remote_addr,
       toUInt16(number % 60000) AS remote_port, 1000 AS pid, 'shop' AS comm, 100 AS bytes_sent,
       100 AS bytes_received, 0 AS started_before_agent,
       toUInt32(number % 97 = 0) AS drops, if(drops > 0, 'TCP_OFO_DROP', '') AS drop_reason
FROM numbers({count})
"""

# Host-level drops: every host reports 4 reasons every 10 minutes (the agent writes a row only for a
# reason whose count moved, at most every snapshot interval; as dense as the counters above).
DROPS_SQL = """
INSERT INTO blindspot.packet_drops {settings}
SELECT
    fromUnixTimestamp64Nano(toInt64({t0} + intDiv(number, {hosts} * 4) * 600 * 1000000000)) AS time,
    concat('host-', leftPad(toString(number % {hosts}), 4, '0')) AS host,
    toUInt32(4026531840) AS netns,
    ['NO_SOCKET', 'NETFILTER_DROP', 'TCP_LISTEN_OVERFLOW', 'QUEUE_PURGE'][intDiv(number, {hosts}) % 4 + 1] AS reason,
    cityHash64(number) % 50 AS drops,
    drops % 7 AS conn_drops
FROM numbers({offset}, {count})
"""


def load(svc: Any, hosts: int, tcp_rows: int, http_rows: int, web: int) -> dict[str, int]:
    now = int(time.time()) // 3600 * 3600 + 3600
    t0 = (now - 30 * DAY) * 10**9
    span = 30 * DAY * 10**9
    chunk = 9_999_999  # a multiple of 3: HTTP triples stay whole
    counts: dict[str, int] = {}
    for name, sql, n in (("tcp_connections", TCP_SQL, tcp_rows), ("http_requests", HTTP_SQL, http_rows)):
        for off in range(0, n, chunk):  # chunks of whole triples for http_requests
            t = time.perf_counter()
            svc.execute(sql.format(settings=INSERT, hosts=hosts, web=web, t0=t0, step_ns=span // n,
                                   offset=off, count=min(chunk, n - off)))
            print(f"  {name}: {off + min(chunk, n - off):>12,} rows ({time.perf_counter() - t:.1f} s)",
                  flush=True)
        counts[name] = n
    n_ctr = hosts * 4 * (30 * DAY // 600)
    svc.execute(COUNTERS_SQL.format(settings=INSERT, hosts=hosts, t0=t0, offset=0, count=n_ctr))
    counts["pipeline_counters"] = n_ctr
    n_open = hosts * 50 * 3
    svc.execute(OPEN_SQL.format(settings=INSERT, hosts=hosts, count=n_open))
    counts["tcp_connections_open"] = n_open
    n_drops = hosts * 4 * (30 * DAY // 600)
    for off in range(0, n_drops, chunk):
        svc.execute(DROPS_SQL.format(settings=INSERT, hosts=hosts, t0=t0, offset=off, count=min(chunk, n_drops - off)))
    counts["packet_drops"] = n_drops
    return counts


def settle(svc: Any) -> None:
    """Merge the rollups as background merges eventually would (one part per partition)."""
    rows = svc.query_arrow(
        "SELECT name FROM system.tables WHERE database = 'blindspot' AND engine LIKE '%MergeTree' "
        "AND match(name, '_1[mhd]$')").column(0).to_pylist()
    for name in rows:
        svc.execute(f"OPTIMIZE TABLE blindspot.{name} FINAL")


def time_query(svc: Any, sql: str, repeat: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        out = json.loads(svc.query_text(sql, "JSONCompact"))
        times.append((time.perf_counter() - t) * 1000)
        n = out["rows"]
    return statistics.median(times), n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--web-hosts", type=int, default=50, help="hosts that serve HTTP (the web tier)")
    ap.add_argument("--tcp-rows", type=int, default=100_000_000)
    ap.add_argument("--http-rows", type=int, default=20_000_000)
    ap.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "blindspot-bench-dashboards"))
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    data = Path(args.data_dir).resolve()
    if ROOT in data.parents:
        ap.error("keep the bench data folder outside the work tree")
    marker = data / "fleet.json"
    fleet = {"hosts": args.hosts, "web": args.web_hosts, "tcp": args.tcp_rows, "http": args.http_rows,
             "drops": 1}  # a folder from before packet drops (0040) is rebuilt
    if args.fresh or not marker.exists() or json.loads(marker.read_text()).get("fleet") != fleet:
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
    svc = open_service(data_dir=data / "chdb")
    if not marker.exists():
        migrate(svc)
        print(f"loading a synthetic fleet into {data} ...", flush=True)
        t = time.perf_counter()
        counts = load(svc, args.hosts, args.tcp_rows, args.http_rows, args.web_hosts)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        settle(svc)
        marker.write_text(json.dumps({"fleet": fleet, "counts": counts, "load_s": load_s,
                                      "settle_s": time.perf_counter() - t}))
    info = json.loads(marker.read_text())
    print(f"fleet: {info['counts']}  (load {info['load_s']:.0f} s, settle {info['settle_s']:.0f} s)")
    sizes = svc.query_text(
        "SELECT table, sum(rows) FROM system.parts WHERE database = 'blindspot' AND active "
        "GROUP BY table ORDER BY table", "TSV").decode()
    print("rows per table:\n" + "".join(f"  {line}\n" for line in sizes.splitlines()))

    boards = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "grafana/dashboards").glob("*.json"))}
    print(f"{'dashboard':<13} {'panel':<62} {'24h ms':>7} {'30d ms':>7} {'30d 1 host':>10} {'rows':>6}")
    worst = 0.0
    for bname, board in boards.items():
        names = [v["name"] for v in board["templating"]["list"]]
        res: dict[str, dict[str, tuple[float, int]]] = {}
        # all variables All; then 30 days with one host picked (the per-host rollups, host-filtered)
        for label, rng, host in (("24h", DAY, None), ("30d", 30 * DAY, None), ("30d1", 30 * DAY, "host-0007")):
            base = gs.context_for(rng)
            current: dict[str, Any] = dict.fromkeys(names, gs.ALL)
            if host and "host" in current:
                current["host"] = [host]
            ctx = gs.QueryContext(base.time_from, base.time_to, base.interval_ms, current,
                                  dict.fromkeys(names, ()))
            for p in board["panels"]:
                ms, rows = time_query(svc, gs.expand(p["targets"][0]["rawSql"], ctx), args.repeat)
                res.setdefault(p["title"], {})[label] = (ms, rows)
            for v in board["templating"]["list"]:
                ms, rows = time_query(svc, gs.expand(v["query"], ctx), args.repeat)
                res.setdefault(f"(variable ${v['name']})", {})[label] = (ms, rows)
        for title, r in res.items():
            worst = max(worst, r["30d"][0], r["30d1"][0])
            print(f"{bname:<13} {title[:62]:<62} {r['24h'][0]:>7.1f} {r['30d'][0]:>7.1f} {r['30d1'][0]:>10.1f}"
                  f" {r['30d'][1]:>6}")
    print(f"slowest panel over 30 days: {worst:.0f} ms (target 300 ms)")
    svc.close()
    return 0 if worst < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
