"""Upgrading a store to the cascaded rollups (0060) on the real engine (chDB): what was rolled up before
stays, what is inserted after reaches every tier through the cascade, nothing is counted twice."""

from __future__ import annotations

import time
from pathlib import Path

from contract.records import TCP_CONNECTION
from ingest import ClickHouseSink, migrate, open_service

S = 1_000_000_000


def test_upgrade_to_cascaded_rollups_keeps_every_count(tmp_path: Path) -> None:
    """A store from before 0060 (every tier fed by the raw rows): rows rolled up then stay, rows inserted
    after the upgrade reach every tier through the cascade, none counted twice."""
    svc = open_service(data_dir=tmp_path / "chdb")
    try:
        migrate(svc, before=60)
        now = time.time_ns()
        rows = [{"host": "up", "conn_id": i, "start_time": now - 60 * S, "end_time": now - 59 * S, "comm": "up",
                 "local_addr": "10.0.0.1", "remote_addr": "10.0.0.2", "remote_port": 80, "bytes_sent": 10}
                for i in range(20)]
        sink = ClickHouseSink(svc)
        sink.write(TCP_CONNECTION, TCP_CONNECTION.to_arrow(rows[:12]), dedup_token="before")
        assert [m.version for m in migrate(svc)] == [60]
        sink.write(TCP_CONNECTION, TCP_CONNECTION.to_arrow(rows[12:]), dedup_token="after")
        for table in ("tcp_conn_1m", "tcp_conn_1h", "tcp_conn_fleet_1m", "tcp_conn_fleet_1h"):
            got = svc.query_arrow(f"SELECT sum(closed) AS c, sum(bytes_sent) AS b FROM blindspot.{table}").to_pylist()
            assert got == [{"c": 20, "b": 200}], table
        for table in ("tcp_peers_1h", "tcp_peers_1d"):
            got = svc.query_arrow(f"SELECT sum(connections) AS c FROM blindspot.{table}").to_pylist()
            assert got == [{"c": 20}], table
    finally:
        svc.close()
