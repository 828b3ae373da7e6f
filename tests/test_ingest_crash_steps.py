"""A worker killed at every step of the insert sequence (BLINDSPOT_TEST_CRASH_AT, ingest/worker.py), then
a replay by the next worker: raw rows, every rollup and the counters end exact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import confluent_kafka
import pytest

from contract import wire
from contract.records import TCP_CONNECTION
from ingest._crash import STEPS as CRASH_STEPS
from ingest.clickhouse_sink.service import open_service
from ingest.schema import migrate
from tests.kafka_fixture import REPO, consume_all, create_topics, make_rows, prefix, query_dir
from tests.test_fleet_crash import SHORT_SESSION, committed_everything, prepare, wait_committed
from tests.test_fleet_pipeline import publish

__all__ = ["prefix"]

ROLLUPS = {  # rollup table -> SQL giving the number of closed connections it holds
    "test_rollup": "SELECT sum(n) AS n FROM blindspot.test_rollup",
    "tcp_conn_1m": "SELECT sum(closed) AS n FROM blindspot.tcp_conn_1m",
    "tcp_conn_1h": "SELECT sum(closed) AS n FROM blindspot.tcp_conn_1h",
    "tcp_conn_fleet_1h": "SELECT sum(closed) AS n FROM blindspot.tcp_conn_fleet_1h",
}


def _worker(bootstrap: str, prefix: str, data: Path, log: Path, crash_at: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "BLINDSPOT_TEST_CRASH_AT"}
    env.update(SHORT_SESSION)  # the crashed member leaves the group sooner
    if crash_at:
        env["BLINDSPOT_TEST_CRASH_AT"] = crash_at
    with log.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "blindspot", "ingest", "--kafka", bootstrap, "--data-dir", str(data),
             "--topic-prefix", prefix, "--group", prefix + "ingest", "--batch-rows", "100000",
             "--batch-age", "1.0", "--metrics-address", "off"],
            stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)


@pytest.mark.kafka
@pytest.mark.parametrize("step", CRASH_STEPS)
def test_killed_at_each_step_the_replay_is_exact(kafka_bootstrap, prefix, tmp_path, step) -> None:
    create_topics(kafka_bootstrap, prefix, partitions=1)
    data, log = tmp_path / "chdb", tmp_path / "worker.log"
    prepare(data)
    n = 3000
    rows = make_rows(n, hosts=("a", "b", "c"))
    publish(kafka_bootstrap, prefix, rows)
    # One bad message in the range: its dead letter is part of what the replay must get right.
    p = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap})
    p.produce(prefix + TCP_CONNECTION.topic, b"\xc1 bad", b"a", headers=wire.headers_for(TCP_CONNECTION))
    assert p.flush(30) == 0

    crashing = _worker(kafka_bootstrap, prefix, data, log, step)
    assert crashing.wait(120) == 137, log.read_text()[-3000:]
    assert f"BLINDSPOT_TEST_CRASH_AT={step}" in log.read_text()
    replay = _worker(kafka_bootstrap, prefix, data, log, None)
    try:
        wait_committed(kafka_bootstrap, prefix + "ingest", prefix + TCP_CONNECTION.topic)
    finally:
        replay.terminate()
        assert replay.wait(60) == 0, log.read_text()[-3000:]
    if step != "after_intent":
        assert "replaying the range" in log.read_text()

    got = query_dir(data, "SELECT count() AS n, uniqExact(conn_id) AS u FROM blindspot.tcp_connections")
    assert got == [{"n": n, "u": n}]
    for name, sql in ROLLUPS.items():
        assert query_dir(data, sql) == [{"n": n}], name
    counters = query_dir(data, "SELECT counter, sum(value) AS n FROM blindspot.pipeline_counters "
                               "WHERE component = 'ingest' GROUP BY counter ORDER BY counter")
    assert counters == [{"counter": "dead_lettered", "n": 1}, {"counter": "ingested", "n": n}]
    # Dead letters are at least once: the crashed worker may have sent one already.
    assert 1 <= len(consume_all(kafka_bootstrap, prefix + "blindspot.dlq.v1", 1, timeout_s=10)) <= 2


def test_a_crash_between_the_table_and_its_views_is_completed_by_the_replay(tmp_path) -> None:
    """Within one INSERT the engine writes the table, then each view. A crash in between is made
    certain here by detaching the views for the first attempt; the replay (same token) must fill every
    rollup once and leave the table alone."""
    svc = open_service(data_dir=tmp_path / "chdb")
    try:
        migrate(svc)
        views = ["tcp_conn_1m_mv", "tcp_conn_1h_mv", "tcp_conn_fleet_1h_mv"]
        table = wire.to_table(TCP_CONNECTION, make_rows(500, hosts=("a", "b")))
        for v in views:
            svc.execute(f"DETACH TABLE blindspot.{v}")
        svc.insert_arrow("blindspot", "tcp_connections", table, dedup_token="t:0:0-9")
        for v in views:
            svc.execute(f"ATTACH TABLE blindspot.{v}")
        for _ in range(2):  # the replay, and one more for good measure
            svc.insert_arrow("blindspot", "tcp_connections", table, dedup_token="t:0:0-9")
        import json

        def one(sql: str) -> int:
            return int(json.loads(svc.query_text(sql, "JSONEachRow"))["n"])

        assert one("SELECT count() AS n FROM blindspot.tcp_connections") == 500
        for r in ("tcp_conn_1m", "tcp_conn_1h", "tcp_conn_fleet_1h"):
            assert one(f"SELECT sum(closed) AS n FROM blindspot.{r}") == 500, r
    finally:
        svc.close()


@pytest.mark.kafka
def test_a_message_that_kills_every_worker_is_dead_lettered_after_a_few_attempts(kafka_bootstrap, prefix,
                                                                                  tmp_path) -> None:
    """A message that crashes the process while it is decoded (as a native crash would) is replayed
    GUARD_AFTER_ATTEMPTS times; then the range is decoded under guard, the next crash names the
    message, and the owner after that dead-letters it (crashed_worker) and stores everything else."""
    from ingest.checkpoint import GUARD_AFTER_ATTEMPTS
    from ingest.kafka_source import H_REASON

    create_topics(kafka_bootstrap, prefix, partitions=1)
    data, log = tmp_path / "chdb", tmp_path / "worker.log"
    prepare(data)
    rows = make_rows(30, hosts=("a",))
    topic = prefix + TCP_CONNECTION.topic
    p = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap})
    for i, r in enumerate(rows):
        p.produce(topic, wire.encode(r), b"a", headers=wire.headers_for(TCP_CONNECTION))
        if i == 14:
            p.produce(topic, b"CRASH" + wire.encode(r), b"a", headers=wire.headers_for(TCP_CONNECTION))
    assert p.flush(30) == 0
    crashes = 0
    for _ in range(GUARD_AFTER_ATTEMPTS + 3):
        w = _worker(kafka_bootstrap, prefix, data, log, "decode")
        deadline = time.monotonic() + 90
        while w.poll() is None and time.monotonic() < deadline:
            if committed_everything(kafka_bootstrap, prefix + "ingest", topic):
                break
            time.sleep(0.5)
        if w.poll() is None:
            w.terminate()
            assert w.wait(60) == 0, log.read_text()[-3000:]
            break
        assert w.returncode == 137
        crashes += 1
    assert crashes == GUARD_AFTER_ATTEMPTS + 1, log.read_text()[-3000:]
    wait_committed(kafka_bootstrap, prefix + "ingest", topic)
    got = query_dir(data, "SELECT count() AS n, uniqExact(conn_id) AS u FROM blindspot.tcp_connections")
    assert got == [{"n": 30, "u": 30}]
    dlq = consume_all(kafka_bootstrap, prefix + "blindspot.dlq.v1", 1, timeout_s=10)
    assert [dict(m.headers())[H_REASON] for m in dlq] == [b"crashed_worker"]
