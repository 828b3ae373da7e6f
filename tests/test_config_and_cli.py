"""Configuration precedence and the query socket, without root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blindspot import cli, config
from blindspot.query_server import FORMATS, QueryError, QueryServer, query_via_socket
from ingest import migrate
from ingest.clickhouse_sink import ChdbService


def test_file_then_env(tmp_path: Path) -> None:
    f = tmp_path / "b.toml"
    f.write_text('retention_days = 90\n[pipeline]\nsnapshot_interval_s = 5\n[tcp]\nmax_conns = 1000\n')
    cfg = config.load(str(f), env={"BLINDSPOT_PIPELINE_SNAPSHOT_INTERVAL_S": "2.5", "BLINDSPOT_HOST": "h1"})
    assert (cfg.retention_days, cfg.pipeline.snapshot_interval_s, cfg.tcp.max_conns, cfg.host) == (90, 2.5, 1000, "h1")


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "b.toml"
    f.write_text("no_such_key = 1\n")
    with pytest.raises(config.ConfigError, match="no_such_key"):
        config.load(str(f), env={})
    with pytest.raises(config.ConfigError, match="BLINDSPOT_RETENTION_DAYS"):
        config.load(None, env={"BLINDSPOT_RETENTION_DAYS": "lots"})


def test_help_reads_well(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "blindspot run" in out and "blindspot query" in out


def test_query_socket_roundtrip(tmp_path: Path) -> None:
    svc = ChdbService(tmp_path / "data")
    migrate(svc)
    server = QueryServer(tmp_path / "data", svc).start()
    try:
        assert (server.path.stat().st_mode & 0o777) == 0o600
        out = query_via_socket(server.path, "SELECT {n:UInt8} + 1 AS x", FORMATS["json"], {"n": 41})
        assert json.loads(out) == {"x": 42}
        with pytest.raises(QueryError, match=r"UNKNOWN_TABLE|Unknown table"):
            query_via_socket(server.path, "SELECT * FROM no_such_table", FORMATS["csv"])
    finally:
        server.close()
        svc.close()
