"""The server path (clickhouse-connect over HTTP) against a local endpoint that fails on purpose
(tests/clickhouse_fake.py): every store-side failure is an infrastructure fault the worker retries,
a row the server cannot parse is the message's; https:// really means TLS; no password in URLs."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from contract import wire
from contract.errors import Fault, SinkUnavailable, classify
from contract.records import TCP_CONNECTION
from contract.retry import retry
from ingest.clickhouse_sink.service import ServerService, server_params
from ingest.schema import migrate
from tests.clickhouse_fake import FakeClickHouse
from tests.kafka_fixture import consume_all, create_topics, make_rows, prefix
from tests.test_fleet_pipeline import publish, start_worker, wait_for

__all__ = ["prefix"]


@pytest.fixture
def fake():
    f = FakeClickHouse()
    try:
        yield f
    finally:
        f.close()


@pytest.mark.parametrize(("mode", "expected"), [
    ("disk_full", Fault.INFRASTRUCTURE), ("too_many_parts", Fault.INFRASTRUCTURE),
    ("unavailable", Fault.INFRASTRUCTURE), ("bad_gateway", Fault.INFRASTRUCTURE),
    ("hang", Fault.INFRASTRUCTURE), ("bad_row", Fault.MESSAGE),
])
def test_server_failures_are_classified(fake, mode, expected) -> None:
    svc = ServerService(f"http://default@127.0.0.1:{fake.port}/", timeout_s=1)
    fake.mode, fake.hang_s = mode, 2
    with pytest.raises(Exception) as e:
        svc.insert_arrow("blindspot", "tcp_connections", wire.to_table(TCP_CONNECTION, make_rows(3)),
                         dedup_token="t:0:0-2")
    assert classify(e.value) is expected, e.value
    svc.close()


def test_a_server_that_refuses_connections_is_infrastructure(fake) -> None:
    svc = ServerService(f"http://default@127.0.0.1:{fake.port}/", timeout_s=1)
    fake.close()
    with pytest.raises(SinkUnavailable) as e:
        svc.insert_arrow("blindspot", "tcp_connections", wire.to_table(TCP_CONNECTION, make_rows(1)))
    assert classify(e.value) is Fault.INFRASTRUCTURE
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SinkUnavailable):
        ServerService(f"http://default@127.0.0.1:{port}/", timeout_s=1)
    fake.close = lambda: None  # type: ignore[method-assign]


def test_a_timeout_mid_insert_is_retried_with_the_same_token(fake) -> None:
    """The server took the rows but answered too late: the retry carries the same token, so a real
    server drops the repeat (tables have non_replicated_deduplication_window)."""
    svc = ServerService(f"http://default@127.0.0.1:{fake.port}/", timeout_s=1)
    fake.mode, fake.hang_s = "hang", 1.5
    threading.Timer(1.5, lambda: setattr(fake, "mode", "ok")).start()
    table = wire.to_table(TCP_CONNECTION, make_rows(10))
    retry("insert", lambda: svc.insert_arrow("blindspot", "tcp_connections", table, dedup_token="t:0:5-9"),
          wait=lambda d: time.sleep(d) is not None, initial_s=0.2)
    assert set(fake.tokens) == {"t:0:5-9"} and len(fake.tokens) >= 2
    svc.close()


@pytest.mark.kafka
def test_worker_on_a_failing_server_waits_and_stores_everything_once(kafka_bootstrap, prefix, fake) -> None:
    svc = ServerService(f"http://default@127.0.0.1:{fake.port}/", timeout_s=2)
    migrate(svc)  # DDL answered by the engine behind the fake
    create_topics(kafka_bootstrap, prefix)
    fake.mode = "disk_full"
    w = start_worker(kafka_bootstrap, prefix, svc, batch_max_rows=500)
    n = 2000
    publish(kafka_bootstrap, prefix, make_rows(n, hosts=("a", "b")))
    wait_for(lambda: w.worker.stats.retries >= 3, what="inserts refused")
    for mode in ("unavailable", "bad_gateway"):
        fake.mode = mode
        time.sleep(1.0)
    assert w.worker.stats.written == 0 and w.worker.stats.dead_lettered == 0
    fake.mode = "ok"
    wait_for(lambda: w.worker.stats.written >= n, what="catch-up")
    w.finish()
    assert fake.rows_by_table.get("blindspot.tcp_connections") == n
    assert consume_all(kafka_bootstrap, prefix + "blindspot.dlq.v1", 0, timeout_s=2) == []
    svc.close()


# -- TLS and secrets -------------------------------------------------------------------------------
def test_https_means_tls_and_passwords_never_come_from_the_url(tmp_path) -> None:
    p = server_params("https://reader@ch.example:8443/blindspot", environ={})
    assert p["interface"] == "https" and p["secure"] is True and p["verify"] is True
    assert (p["host"], p["port"], p["username"], p["database"]) == ("ch.example", 8443, "reader", "blindspot")
    assert server_params("https://ch.example/", environ={})["port"] == 8443
    assert server_params("http://ch.example/", environ={})["secure"] is False
    with pytest.raises(ValueError, match="BLINDSPOT_CLICKHOUSE_PASSWORD"):
        server_params("https://reader:s3cret@ch.example/", environ={})
    with pytest.raises(ValueError):
        server_params("ftp://ch.example/", environ={})
    assert server_params("https://r@h/", environ={"BLINDSPOT_CLICKHOUSE_PASSWORD": "pw"})["password"] == "pw"
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    assert server_params("https://r@h/", password_file=str(f), environ={})["password"] == "from-file"


def test_https_really_speaks_tls(fake) -> None:
    """The plain-HTTP endpoint cannot answer a TLS handshake: an https:// URL fails on TLS, which
    shows the client did not fall back to plain HTTP (and never sent the password in clear)."""
    with pytest.raises(SinkUnavailable) as e:
        ServerService(f"https://default@127.0.0.1:{fake.port}/", timeout_s=2)
    assert "SSL" in str(e.value) or "ssl" in str(e.value), e.value
