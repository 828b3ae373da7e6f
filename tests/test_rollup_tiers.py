"""The minute and hour tiers of each rollup (one template, ``TIERS`` in ingest/schema.py) on the real
engine (chDB): the hour tier holds exactly the minute tier re-aggregated per hour, on seeded rows that
span several hours; a retried batch is counted once in both tiers; a tier placeholder outside a
``{tier}`` statement is refused."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from contract.records import TCP_CONNECTION
from ingest import ClickHouseSink, migrate, open_service
from ingest.clickhouse_sink.service import ChdbService
from ingest.schema import SchemaError, expand_tiers, migrations
from tests.grafana_seed import seed

S = 1_000_000_000
# {name}_1m and {name}_1h -> (a summed column, a filter, its total in the seed: tests/grafana_seed.py)
PAIRS: dict[str, tuple[str, str, int | None]] = {
    "tcp_conn": ("closed", "service != 'tier-dedup'", 3000),
    "tcp_conn_fleet": ("closed", "service != 'tier-dedup'", 3000),
    "http": ("requests", "1", 18000),
    "http_fleet": ("requests", "1", 18000),
    "pipeline_counters": ("value", "counter = 'captured'", 3 * 180 * 1000),  # 3 hosts, 180 minutes
    "packet_drops": ("drops", "1", None),  # None: random counts, the raw table's sum
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbService]:
    svc = open_service(data_dir=tmp_path_factory.mktemp("chdb"))
    assert isinstance(svc, ChdbService)
    migrate(svc, retention_days=30)
    seeded = seed(svc, time.time_ns(), hours=3)
    assert seeded["tcp"] == 3000 and seeded["http"] == 18000
    yield svc
    svc.close()  # chDB serves one folder per process: the next module opens its own


# Tables whose engine is a SummingMergeTree: their summed columns are plain numbers.
SUMMED = {"pipeline_counters": ("value",), "packet_drops": ("drops", "conn_drops")}


def columns(service: ChdbService, table: str) -> list[tuple[str, str]]:
    rows = service.query_arrow("SELECT name, type FROM system.columns WHERE database = 'blindspot' "
                               "AND table = {t:String} ORDER BY position", {"t": table}).to_pylist()
    return [(r["name"], r["type"]) for r in rows]


def hourly(cols: list[tuple[str, str]], table: str, hour: str) -> str:
    """SELECT of ``table`` per ``hour`` (an expression of its time column): keys grouped, sums summed,
    sumForEach states merged."""
    keys, values = [], []
    for name, typ in cols:
        if name in ("minute", "hour"):
            keys.append(f"{hour} AS hour")
        elif typ.startswith("SimpleAggregateFunction(sum,") or name in SUMMED.get(table.rsplit("_", 1)[0], ()):
            values.append(f"sum({name}) AS {name}")
        elif typ.startswith("AggregateFunction(sumForEach,"):
            values.append(f"sumForEachMerge({name}) AS {name}")
        else:
            assert "Aggregate" not in typ, (table, name, typ)
            keys.append(name)
    key_names = [k.split(" AS ")[-1] for k in keys]
    return (f"SELECT {', '.join(keys + values)} FROM blindspot.{table} "  # names from system.columns
            f"GROUP BY {', '.join(key_names)} ORDER BY {', '.join(key_names)}")


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_hour_tier_is_minute_tier_reaggregated(service: ChdbService, name: str) -> None:
    minute_cols, hour_cols = columns(service, f"{name}_1m"), columns(service, f"{name}_1h")
    assert minute_cols[0] == ("minute", "DateTime('UTC')") and hour_cols[0] == ("hour", "DateTime('UTC')")
    assert minute_cols[1:] == hour_cols[1:]
    from_minutes = service.query_arrow(hourly(minute_cols, f"{name}_1m", "toStartOfHour(minute)")).to_pylist()
    from_hours = service.query_arrow(hourly(hour_cols, f"{name}_1h", "hour")).to_pylist()  # as stored
    assert all(r["hour"] % 3600 == 0 for r in from_hours)  # DateTime arrives as epoch seconds
    assert len({r["hour"] for r in from_hours}) >= 3  # the seed spans 3 hours (4 buckets, as a rule)
    assert from_minutes == from_hours
    # and the minute tier is finer: more than one minute per hour
    per_hour = service.query_arrow(f"SELECT uniqExact(minute) AS m FROM blindspot.{name}_1m "
                                   "GROUP BY toStartOfHour(minute)").to_pylist()
    assert max(r["m"] for r in per_hour) > 1
    column, where, total = PAIRS[name]
    if total is None:
        raw = service.query_arrow(f"SELECT sum({column}) AS n FROM blindspot.{name} WHERE {where}").to_pylist()
        total = raw[0]["n"]
        assert total > 0
    for tier in ("1m", "1h"):
        got = service.query_arrow(f"SELECT sum({column}) AS n FROM blindspot.{name}_{tier} WHERE {where}")
        assert got.to_pylist() == [{"n": total}], tier


def test_retried_batch_counts_once_in_both_tiers(service: ChdbService) -> None:
    sink = ClickHouseSink(service)
    now = time.time_ns()
    rows = [{"host": "tier-dedup", "conn_id": i, "start_time": now - 7200 * S + i * 60 * S,
             "end_time": now - 7200 * S + i * 60 * S + S, "local_addr": "10.0.0.1", "remote_addr": "10.0.0.2",
             "comm": "tier-dedup"} for i in range(90)]
    for _ in range(2):  # the retry after a crash: same rows, same token
        sink.write(TCP_CONNECTION, TCP_CONNECTION.to_arrow(rows), dedup_token="blindspot.tcp.v1:7:0-89")
    for table in ("tcp_conn_1m", "tcp_conn_1h", "tcp_conn_fleet_1m", "tcp_conn_fleet_1h"):
        got = service.query_arrow(f"SELECT sum(opened) AS o, sum(closed) AS c FROM blindspot.{table} "
                                  "WHERE service = 'tier-dedup'").to_pylist()
        assert got == [{"o": 90, "c": 90}], table


def test_every_rollup_pair_is_one_template() -> None:
    text = "\n".join(m.path.read_text() for m in migrations())
    for name in PAIRS:  # a coarser tier's view may read the finer tier, by name; its table is the template's
        assert f"CREATE TABLE IF NOT EXISTS blindspot.{name}_{{tier}}\n" in text
        assert f"TABLE IF NOT EXISTS blindspot.{name}_1m" not in text
        assert f"TABLE IF NOT EXISTS blindspot.{name}_1h" not in text
    expanded = [s for m in migrations() for s in m.templates()]
    made = [s.split()[5] for s in expanded if s.startswith("CREATE TABLE")]
    for name in PAIRS:
        assert made.count(f"blindspot.{name}_1m") == 1 and made.count(f"blindspot.{name}_1h") == 1


def test_tier_placeholder_outside_a_tier_statement_is_refused() -> None:
    assert expand_tiers(["CREATE TABLE t_{tier} (b DateTime) TTL {bucket} + INTERVAL {bucket_ttl_days} DAY",
                         "SELECT 1"]) == [
        "CREATE TABLE t_1m (b DateTime) TTL minute + INTERVAL 3 DAY",
        "CREATE TABLE t_1h (b DateTime) TTL hour + INTERVAL {retention_days} DAY",
        "SELECT 1"]
    with pytest.raises(SchemaError):
        expand_tiers(["SELECT {start_of_bucket}(now())"])


def test_only_the_finest_rollups_read_raw_rows(service: ChdbService) -> None:
    """Every view over a raw table costs CPU per raw row on every insert (docs/tcp-cost.md): only the
    per-host minute tiers and the hourly peers read tcp_connections and http_requests; the other tiers
    read the rollup below them (0060)."""
    rows = service.query_arrow(
        "SELECT name, as_select AS q FROM system.tables WHERE database = 'blindspot' AND engine = 'MaterializedView' "
        "ORDER BY name").to_pylist()
    reads = {r["name"]: re.findall(r"FROM blindspot\.(\w+)", r["q"]) for r in rows}
    raw = {"tcp_connections", "http_requests"}
    assert sorted(v for v, src in reads.items() if raw & set(src)) == [
        "http_1m_mv", "http_peers_1h_mv", "tcp_conn_1m_mv", "tcp_peers_1h_mv"]
    assert {v: src for v, src in reads.items() if v.startswith(("tcp_", "http_")) and not raw & set(src)} == {
        "http_1h_mv": ["http_1m"], "http_fleet_1m_mv": ["http_1m"], "http_fleet_1h_mv": ["http_1h"],
        "http_peers_1d_mv": ["http_peers_1h"], "tcp_conn_1h_mv": ["tcp_conn_1m"],
        "tcp_conn_fleet_1m_mv": ["tcp_conn_1m"], "tcp_conn_fleet_1h_mv": ["tcp_conn_1h"],
        "tcp_peers_1d_mv": ["tcp_peers_1h"]}

