"""The DDL on the real engine (chDB): migrations apply once, tables match the record kinds, a retried
batch with the same token is stored once, and event data never becomes SQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.records import KINDS, TCP_CONNECTION
from ingest import ClickHouseSink, migrate, open_service
from ingest.clickhouse_sink.service import ChdbService
from ingest.schema import apply_retention, migrations, retention_tables

ARROW_TO_CH = {"string": "String", "uint8": "UInt8", "uint16": "UInt16", "uint32": "UInt32", "uint64": "UInt64",
               "timestamp[ns, tz=UTC]": "DateTime64(9, 'UTC')"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbService]:
    svc = open_service(data_dir=tmp_path_factory.mktemp("chdb"))
    assert isinstance(svc, ChdbService)
    yield svc
    svc.close()  # chDB serves one folder per process: the next module opens its own


def test_migrations_apply_once(service: ChdbService) -> None:
    first = migrate(service, retention_days=7)
    assert [m.version for m in first] == [m.version for m in migrations()]
    assert migrate(service, retention_days=7) == []
    ttl = service.query_text("SELECT create_table_query FROM system.tables WHERE database='blindspot' "
                             "AND name='tcp_connections'", "TSVRaw").decode()
    assert "toIntervalDay(7)" in ttl


def test_retention_can_be_changed_later(service: ChdbService) -> None:
    svc = service  # chDB serves one data folder per process at a time
    migrate(svc, retention_days=30)
    assert set(retention_tables()) >= {"tcp_connections", "pipeline_counters"}
    assert "tcp_connections_open" not in retention_tables()  # a fixed 2-day TTL of its own
    migrate(svc, retention_days=90)

    def ttl(table: str) -> str:
        return svc.query_text("SELECT create_table_query FROM system.tables WHERE database='blindspot' "
                              "AND name={t:String}", "TSVRaw", {"t": table}).decode()

    assert "toIntervalDay(90)" in ttl("tcp_connections") and "toIntervalDay(90)" in ttl("pipeline_counters")
    assert "toIntervalDay(2)" in ttl("tcp_connections_open")
    assert apply_retention(svc, 90) == []
    migrate(svc, retention_days=30)
    assert "toIntervalDay(30)" in ttl("tcp_connections")


@pytest.mark.parametrize("kind_name", sorted(KINDS))
def test_tables_match_record_kinds(service: ChdbService, kind_name: str) -> None:
    migrate(service)
    kind = KINDS[kind_name]
    desc = service.query_arrow(
        "SELECT name, type FROM system.columns WHERE database = 'blindspot' AND table = {t:String} "
        "AND default_kind != 'ALIAS' ORDER BY position", {"t": kind.table}).to_pylist()
    assert [d["name"] for d in desc] == kind.column_names
    for d, col in zip(desc, kind.columns, strict=True):
        ch = d["type"].removeprefix("LowCardinality(").rstrip(")") if "LowCardinality" in d["type"] else d["type"]
        want = ARROW_TO_CH[str(col.type)]
        assert ch == want or (ch == "IPv6" and want == "String"), (col.name, d["type"], want)


def test_retried_batch_is_stored_once(service: ChdbService) -> None:
    migrate(service)
    sink = ClickHouseSink(service)
    now = time.time_ns()
    rows = [{"host": "dedup-host", "conn_id": i, "start_time": now, "end_time": now + i,
             "local_addr": "10.0.0.1", "remote_addr": "10.0.0.2"} for i in range(100)]
    table = TCP_CONNECTION.to_arrow(rows)
    sink.write(TCP_CONNECTION, table, dedup_token="blindspot.tcp.v1:0:0-99")
    sink.write(TCP_CONNECTION, table, dedup_token="blindspot.tcp.v1:0:0-99")  # the retry after a crash
    got = service.query_arrow("SELECT count() AS n FROM blindspot.tcp_connections WHERE host = {h:String}",
                              {"h": "dedup-host"}).to_pylist()
    assert got == [{"n": 100}]


def test_hostile_values_are_data(service: ChdbService) -> None:
    migrate(service)
    evil = "x'); DROP TABLE blindspot.tcp_connections; --\u00e9\u4e2d"
    now = time.time_ns()  # a 1970 end_time would be expired by the TTL at once
    rows = [{"host": "evil", "comm": evil, "local_addr": "::1", "remote_addr": "::1", "end_time": now}]
    ClickHouseSink(service).write(TCP_CONNECTION, TCP_CONNECTION.to_arrow(rows))
    got = service.query_arrow("SELECT comm FROM blindspot.tcp_connections WHERE host = 'evil'").to_pylist()
    assert got == [{"comm": evil}]


def test_migration_names_are_checked(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("SELECT 1")
    from contract.errors import SchemaError
    with pytest.raises(SchemaError):
        migrations(tmp_path)
