"""Dashboards: the JSON is what Grafana needs, and every panel's SQL, expanded as the ClickHouse data
source plugin expands it, runs on the engine against seeded traffic and returns the shape its panel
type needs. Rollups stay exact when a batch is retried."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest.clickhouse_sink import open_service
from ingest.schema import migrate
from tests import grafana_sql as gs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "grafana"))

import build_dashboards  # noqa: E402

from tests.grafana_seed import blank_http_row, http_table, seed  # noqa: E402

DASH_DIR = ROOT / "grafana" / "dashboards"
DS_UID = "blindspot-clickhouse"
# What each panel type needs of a query (plugin formats: 0 time series, 1 table)
PANEL_FORMAT = {"timeseries": 0, "heatmap": 0, "table": 1, "bargauge": 1, "barchart": 1, "stat": 1}


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASH_DIR.glob("*.json"))}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    svc = open_service(data_dir=tmp_path_factory.mktemp("chdb"))
    migrate(svc)
    seed(svc, time.time_ns())
    yield svc
    svc.close()


# --- the JSON -------------------------------------------------------------------------------


def test_committed_json_is_what_the_builder_writes() -> None:
    built = build_dashboards.render()
    assert sorted(built) == sorted(dashboards()), "run: python grafana/build_dashboards.py"
    for name, text in built.items():
        assert (DASH_DIR / f"{name}.json").read_text() == text, f"{name}.json is stale"


def test_dashboards_have_what_grafana_requires() -> None:
    boards = dashboards()
    assert set(boards) == {"connections", "latency", "gray-release", "overview"}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, b in boards.items():
        assert isinstance(b["schemaVersion"], int) and b["schemaVersion"] >= 36, name
        assert 0 < len(b["uid"]) <= 40 and b["title"]
        names = [v["name"] for v in b["templating"]["list"]]
        assert len(set(names)) == len(names)
        for v in b["templating"]["list"]:
            assert v["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": DS_UID}
            assert v["type"] == "query" and v["query"] == v["definition"]
            assert v["current"]["value"] == ["$__all"] and v["includeAll"] and v["multi"]
            assert gs.variables_used(v["query"]) <= set(names)
        ids = [p["id"] for p in b["panels"]]
        assert len(set(ids)) == len(ids)
        for p in b["panels"]:
            assert p["datasource"]["uid"] == DS_UID, p["title"]
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24 and g["h"] > 0
            for t in p["targets"]:
                assert t["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": DS_UID}
                assert t["editorType"] == "sql" and t["refId"]
                assert t["format"] == PANEL_FORMAT[p["type"]], (name, p["title"])
                sql = t["rawSql"]
                missing = gs.variables_used(sql) - set(names)
                assert not missing, f"{name}/{p['title']}: undefined variables {missing}"
                assert gs.macros_used(sql) & {"fromTime", "toTime", "timeFilter", "dateFilter"}, p["title"]
                assert "--" not in sql  # the plugin strips comments before expanding; keep none


def test_provisioning_files() -> None:
    import yaml

    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/clickhouse.yaml").read_text())
    assert ds["apiVersion"] == 1
    (d,) = ds["datasources"]
    assert d["uid"] == DS_UID and d["type"] == "grafana-clickhouse-datasource"
    assert d["jsonData"]["defaultDatabase"] == "blindspot"  # the backend ignores "database"
    assert d["jsonData"]["protocol"] in ("native", "http") and isinstance(d["jsonData"]["port"], int)
    pw = d["secureJsonData"]["password"]
    assert pw.startswith("$") and "{" in pw, "password must come from the environment"
    dash = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/blindspot.yaml").read_text())
    assert dash["apiVersion"] == 1
    (prov,) = dash["providers"]
    assert prov["type"] == "file" and prov["folder"] and prov["options"]["path"]


# --- the macros, as the plugin writes them --------------------------------------------------


def test_expander_matches_plugin_examples() -> None:
    # pkg/macros/macros_test.go: from 1415792726, to 1447328726
    ctx = gs.QueryContext(datetime.fromtimestamp(1415792726, UTC), datetime.fromtimestamp(1447328726, UTC),
                          interval_ms=30_000)
    assert gs.expand("select * from foo where $__timeFilter(cast(sth as timestamp) )", ctx) == (
        "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) "
        "AND cast(sth as timestamp) <= toDateTime(1447328726)")
    assert gs.expand("( date >= $__fromTime and date <= $__toTime )", ctx) == (
        "( date >= toDateTime(1415792726) and date <= toDateTime(1447328726) )")
    assert gs.expand("$__timeInterval(t) $__interval_s", ctx) == (
        "toStartOfInterval(toDateTime(t), INTERVAL 30 second) 30")
    assert gs.expand("$__timeFilter(coalesce(c, $__toTime))", ctx).startswith(
        "coalesce(c, toDateTime(1447328726)) >= toDateTime(1415792726)")
    # browser side: conditionalAll and the singlequote format
    sql = "WHERE $__conditionalAll(host IN (${host:singlequote}), $host) AND x"
    assert gs.expand(sql, gs.QueryContext(ctx.time_from, ctx.time_to, 1000, {"host": ["$__all"]},
                                          {"host": ["a", "b"]})) == "WHERE 1=1 AND x"
    assert gs.expand(sql, gs.QueryContext(ctx.time_from, ctx.time_to, 1000, {"host": ["a", "o'b"]})) == (
        "WHERE host IN ('a','o\\'b') AND x")
    jan = datetime(2026, 1, 1, tzinfo=UTC)
    assert gs.grafana_interval_ms(jan, jan.replace(day=31)) == 1_800_000  # 30 days: 30m


# --- every panel on the engine --------------------------------------------------------------


def _variables(engine: Any, board: dict[str, Any], base: gs.QueryContext, pick_first: bool
               ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Each variable's options, in dashboard order (later queries see earlier choices, as in Grafana),
    and its current value: All, or the first option."""
    current: dict[str, Any] = {}
    opts: dict[str, list[str]] = {}
    for v in board["templating"]["list"]:
        ctx = gs.QueryContext(base.time_from, base.time_to, base.interval_ms, current, opts)
        col = engine.query_arrow(gs.expand(v["query"], ctx)).column(0).to_pylist()
        opts[v["name"]] = [str(x) for x in col]
        assert opts[v["name"]], f"variable {v['name']} has no options"
        current[v["name"]] = opts[v["name"]][:1] if pick_first else gs.ALL
    return current, opts


def _ch_kind(t: str) -> str:
    # How the plugin sees a ClickHouse column: time (DateTime*), number, or string.
    t = re.sub(r"^(Nullable|LowCardinality)\((.*)\)$", r"\2", t)
    t = re.sub(r"^(Nullable|LowCardinality)\((.*)\)$", r"\2", t)
    if t.startswith("DateTime"):
        return "time"
    if re.match(r"^(U?Int\d+|Float\d+)$", t):
        return "number"
    if t.startswith(("String", "FixedString", "Enum")):
        return "string"
    return t


def run_panel(engine: Any, sql: str) -> tuple[list[str], list[list[Any]]]:
    """Column kinds (from the engine's own type names) and rows."""
    res = json.loads(engine.query_text(sql, "JSONCompact"))
    return [_ch_kind(m["type"]) for m in res["meta"]], res["data"]


def _check_shape(ptype: str, fmt: int, kinds: list[str], rows: list[list[Any]], where: str) -> None:
    assert rows, f"{where}: no rows"
    if fmt == 0:
        # a time series frame starts with a time field; long frames (with string columns) must be
        # sorted by time for the plugin's long-to-wide conversion
        assert kinds[0] == "time", f"{where}: first column {kinds[0]} is not a time"
        assert "number" in kinds[1:], f"{where}: no value column"
        assert set(kinds[1:]) <= {"number", "string"}, f"{where}: {kinds}"
        times = [r[0] for r in rows]
        assert times == sorted(times), f"{where}: not sorted by time"
        if ptype == "heatmap":
            assert kinds[1:] == ["number"] * 18, f"{where}: heatmap needs one column per bucket"
    else:
        assert "number" in kinds, f"{where}: no numeric column"
        if ptype == "barchart":
            assert kinds[0] == "string", f"{where}: bar chart needs a string x field"


SCENARIOS = {  # range, pick the first option of every variable (else All)
    "last 6h, all": (6 * 3600, False),
    "last 30d, all": (30 * 86400, False),
    "last 6h, one of each": (6 * 3600, True),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("board_name", ["connections", "latency", "gray-release", "overview"])
def test_every_panel_runs(engine: Any, board_name: str, scenario: str) -> None:
    board = dashboards()[board_name]
    range_s, pick_first = SCENARIOS[scenario]
    base = gs.context_for(range_s)
    current, opts = _variables(engine, board, base, pick_first)
    ctx = gs.QueryContext(base.time_from, base.time_to, base.interval_ms, current, opts)
    for p in board["panels"]:
        for t in p["targets"]:
            sql = gs.expand(t["rawSql"], ctx)
            assert "$" not in sql, sql
            where = f"{board_name}/{p['title']} ({scenario})"
            try:
                kinds, rows = run_panel(engine, sql)
            except Exception as e:  # show the expanded SQL
                raise AssertionError(f"{where}: {e}\n{sql}") from e
            _check_shape(p["type"], t["format"], kinds, rows, where)


# --- rollups stay exact on retry ------------------------------------------------------------


def test_retried_batch_does_not_double_rollups(engine: Any) -> None:
    from contract.records import PACKET_DROP, PIPELINE_COUNTER, TCP_CONNECTION
    from ingest.clickhouse_sink import ClickHouseSink

    def totals() -> dict[str, int]:
        q = {
            "tcp_conn_1m": "SELECT sum(closed) FROM blindspot.tcp_conn_1m",
            "tcp_conn_1h": "SELECT sum(closed) FROM blindspot.tcp_conn_1h",
            "tcp_peers_1h": "SELECT sum(connections) FROM blindspot.tcp_peers_1h",
            "hist_1h": "SELECT arraySum(sumForEachMerge(duration_hist)) FROM blindspot.tcp_conn_1h",
            "pipe_1m": "SELECT sum(value) FROM blindspot.pipeline_counters_1m",
            "pipe_1h": "SELECT sum(value) FROM blindspot.pipeline_counters_1h",
            "http_1m": "SELECT sum(requests) FROM blindspot.http_1m",
            "http_peers_1h": "SELECT sum(requests) FROM blindspot.http_peers_1h",
            "tcp_fleet_1h": "SELECT sum(closed) FROM blindspot.tcp_conn_fleet_1h",
            "tcp_peers_1d": "SELECT sum(connections) FROM blindspot.tcp_peers_1d",
            "http_fleet_1m": "SELECT sum(requests) FROM blindspot.http_fleet_1m",
            "http_peers_1d": "SELECT sum(requests) FROM blindspot.http_peers_1d",
            "drops_1m": "SELECT sum(drops) FROM blindspot.packet_drops_1m",
            "drops_1h": "SELECT sum(conn_drops) FROM blindspot.packet_drops_1h",
        }
        return {k: int(engine.query_arrow(s).column(0)[0].as_py() or 0) for k, s in q.items()}

    now = time.time_ns()
    tcp = [{"host": "retry", "conn_id": i, "start_time": now - 10**9, "end_time": now, "duration_ns": 10**9,
            "role": "client", "comm": "x", "local_addr": "10.9.9.9", "remote_addr": "10.9.9.8"}
           for i in range(50)]
    ctr = [{"time": now, "host": "retry", "component": "agent", "counter": "captured", "value": 7}]
    drops = [{"time": now, "host": "retry", "netns": 1, "reason": "NO_SOCKET", "drops": 9, "conn_drops": 4}]
    http = [blank_http_row() | {"time": now, "end_time": now, "service": "retry", "side": "server"}]
    sink = ClickHouseSink(engine)
    before = totals()
    for _ in range(2):  # the second is a retry of the same batch, same token
        sink.write(TCP_CONNECTION, TCP_CONNECTION.to_arrow(tcp), dedup_token="retry-tcp-1")
        sink.write(PIPELINE_COUNTER, PIPELINE_COUNTER.to_arrow(ctr), dedup_token="retry-ctr-1")
        sink.write(PACKET_DROP, PACKET_DROP.to_arrow(drops), dedup_token="retry-drops-1")
        engine.insert_arrow("blindspot", "http_requests", http_table(http), dedup_token="retry-http-1")
    after = totals()
    assert {k: after[k] - before[k] for k in after} == {
        "tcp_conn_1m": 50, "tcp_conn_1h": 50, "tcp_peers_1h": 50, "hist_1h": 50,
        "pipe_1m": 7, "pipe_1h": 7, "http_1m": 1, "http_peers_1h": 1,
        "tcp_fleet_1h": 50, "tcp_peers_1d": 50, "http_fleet_1m": 1, "http_peers_1d": 1,
        "drops_1m": 9, "drops_1h": 4}


def test_routing_matrix_follows_the_links(engine: Any) -> None:
    """The router does not forward X-Gray-Version: the matrix joins inbound, outbound and upstream rows
    (seed: 90 % of requests with a header go to that version)."""
    board = dashboards()["gray-release"]
    (panel,) = [p for p in board["panels"] if p["title"].startswith("Routing matrix")]
    base = gs.context_for(6 * 3600)
    ctx = gs.QueryContext(base.time_from, base.time_to, base.interval_ms,
                          {"service": ["shop"], "host": gs.ALL, "version": gs.ALL}, {"host": [], "version": []})
    _, rows = run_panel(engine, gs.expand(panel["targets"][0]["rawSql"], ctx))
    n = {(h, v): int(c) for h, v, c in rows}
    assert {h for h, _ in n} == {"(no header)", "v1", "v2"}
    for v, other in (("v1", "v2"), ("v2", "v1")):
        assert n[(v, v)] > 5 * n.get((v, other), 0) > 0


def test_hop_and_leak_panels_agree_with_the_routing_matrix(engine: Any) -> None:
    """The seed's router does not forward X-Gray-Version: a request that entered with a header and was
    routed to the other version of shop is a gray leak (both versions run). The leak panel counts what
    the one-hop routing matrix shows as routed against the header, and the per-hop panel has every
    routed request, in its lane."""
    board = dashboards()["gray-release"]
    by_title = {p["title"]: p["targets"][0]["rawSql"] for p in board["panels"]}
    base = gs.context_for(6 * 3600)
    ctx = gs.QueryContext(base.time_from, base.time_to, base.interval_ms,
                          {"service": ["shop"], "host": gs.ALL, "version": gs.ALL}, {"host": [], "version": []})
    _, matrix = run_panel(engine, gs.expand(next(v for k, v in by_title.items() if k.startswith("Routing matrix")),
                                            ctx))
    _, hops = run_panel(engine, gs.expand(next(v for k, v in by_title.items() if k.startswith("Every hop")), ctx))
    _, leaks = run_panel(engine, gs.expand(next(v for k, v in by_title.items() if k.startswith("Gray leaks, ")), ctx))
    against = {(h, v): int(c) for h, v, c in matrix if h != "(no header)" and h != v}
    assert against and all(n > 0 for n in against.values())
    # leaks: caller, caller version, callee, callee version, lane, lane source, count, latest, examples
    assert {(lane, v): int(n) for _, _, callee, v, lane, src, n, _, ex in leaks
            if callee == "shop" and src == "header" and ex} == against
    # hops: caller, caller version, callee, lane, lane source, callee version, count, leaks
    routed = {(h, v): int(c) for h, v, c in matrix}
    per_hop = {(lane if src == "header" else "(no header)", v): int(n) for c, _, callee, lane, src, v, n, _ in hops
               if c == "router" and callee == "shop"}
    assert per_hop == routed
    assert sum(int(lk) for *_, lk in hops) == sum(against.values())
