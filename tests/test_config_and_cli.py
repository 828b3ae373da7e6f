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


def test_values_are_typed_and_a_wrong_one_names_its_key_and_origin(tmp_path: Path) -> None:
    cfg = config.load(None, env={"BLINDSPOT_HTTP_PIDS": "123", "BLINDSPOT_HTTP_GO_UPROBES": "yes",
                                 "BLINDSPOT_HTTP_HEADERS": "X-Gray-Version, host"})
    assert (cfg.http.pids, cfg.http.go_uprobes, cfg.http.headers) == ((123,), True, ("X-Gray-Version", "host"))
    f = tmp_path / "b.toml"
    f.write_text('[tcp]\nmax_conns = "lots"\n')
    with pytest.raises(config.ConfigError, match=rf"config file {f}: \[tcp\] max_conns: .*'lots'"):
        config.load(str(f), env={})
    with pytest.raises(config.ConfigError, match=r"environment variable BLINDSPOT_PIPELINE_POLL_MS: .*'-1'"):
        config.load(None, env={"BLINDSPOT_PIPELINE_POLL_MS": "-1"})
    with pytest.raises(config.ConfigError, match=r"flag for ingest.expired: .*'sometimes'"):
        config.load(None, env={}, flags={"ingest": {"expired": "sometimes"}})
    with pytest.raises(config.ConfigError, match=r"BLINDSPOT_HTTP_GO_UPROBE: unknown key"):
        config.load(None, env={"BLINDSPOT_HTTP_GO_UPROBE": "1"})  # a typo is not silently ignored


def test_flags_over_environment_over_file_and_the_host_resolved_once(tmp_path: Path) -> None:
    import socket

    f = tmp_path / "b.toml"
    f.write_text('[kafka]\nbootstrap = "file:1"\ntopic_prefix = "f."\n[ingest]\nbatch_max_rows = 10\n')
    cfg = config.load(str(f), env={"BLINDSPOT_KAFKA_BOOTSTRAP": "env:1"}, flags={"kafka": {"topic_prefix": "x."}})
    assert (cfg.kafka.bootstrap, cfg.kafka.topic_prefix, cfg.ingest.batch_max_rows) == ("env:1", "x.", 10)
    assert cfg.host == socket.gethostname()
    # Secrets and librdkafka pass-through are not settings: they never reach (or break) the config.
    secret = "s3cr3t-value"
    cfg = config.load(None, env={"BLINDSPOT_KAFKA_AGENT_PASSWORD": secret, "BLINDSPOT_RDKAFKA_SASL_PASSWORD": secret,
                                 "BLINDSPOT_CLICKHOUSE_PASSWORD": secret, "BLINDSPOT_HOST": "h9"})
    assert cfg.host == "h9" and secret not in repr(cfg)


def test_ingest_reads_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`blindspot ingest` takes its settings from the same file as the other commands: a wrong value
    there stops it with the key named, before anything connects."""
    f = tmp_path / "b.toml"
    f.write_text('[kafka]\nbootstrap = "127.0.0.1:1"\n[ingest]\nbatch_max_rows = 0\n')
    assert cli.main(["ingest", "--config", str(f), "--data-dir", str(tmp_path / "d")]) == 2
    assert "[ingest] batch_max_rows" in capsys.readouterr().err
    f.write_text('[ingest]\nexpired = "drop"\n')
    assert cli.main(["ingest", "--config", str(f), "--data-dir", str(tmp_path / "d")]) == 2
    assert "no Kafka" in capsys.readouterr().err
