"""Ingest workers as real processes (`python -m blindspot ingest`): killed with SIGKILL mid-stream, and two
of them sharing one topic. Every record must be stored exactly once, rollups included."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from prometheus_client import CollectorRegistry

from agent.kafka_sink import KafkaSink, KafkaSinkConfig
from blindspot.query_server import FORMATS, query_via_socket, socket_path
from contract.records import TCP_CONNECTION
from tests.kafka_fixture import REPO, create_topics, make_rows, prefix, query_dir
from tests.procs import spawn

__all__ = ["prefix"]
pytestmark = pytest.mark.kafka

_PREPARE = """
import sys
from ingest.clickhouse_sink.service import open_service
from ingest.schema import migrate
svc = open_service(data_dir=sys.argv[1])
migrate(svc)
# A rollup behind a materialized view: a replayed insert must not count twice here either.
svc.execute("CREATE TABLE IF NOT EXISTS blindspot.test_rollup (host LowCardinality(String), n UInt64) "
            "ENGINE = SummingMergeTree ORDER BY host SETTINGS non_replicated_deduplication_window = 10000")
svc.execute("CREATE MATERIALIZED VIEW IF NOT EXISTS blindspot.test_rollup_mv TO blindspot.test_rollup AS "
            "SELECT host, count() AS n FROM blindspot.tcp_connections GROUP BY host")
svc.close()
"""


def prepare(data_dir: Path) -> None:
    subprocess.run([sys.executable, "-c", _PREPARE, str(data_dir)], check=True, timeout=120, cwd=REPO,
                   capture_output=True)


# A killed worker stays in its group until its session times out (30 s by default): every worker started
# after it would wait that long for its partitions. The tests' broker allows sessions this short
# (scripts/kafka.sh group.min.session.timeout.ms).
SHORT_SESSION = {"BLINDSPOT_RDKAFKA_SESSION_TIMEOUT_MS": "3000", "BLINDSPOT_RDKAFKA_HEARTBEAT_INTERVAL_MS": "1000"}


class WorkerProc:
    def __init__(self, bootstrap: str, prefix: str, data_dir: Path, log: Path, group: str) -> None:
        self.log = log
        with log.open("ab") as f:
            self.proc = spawn(
                [sys.executable, "-m", "blindspot", "ingest", "--kafka", bootstrap, "--data-dir", str(data_dir),
                 "--topic-prefix", prefix, "--group", group, "--batch-rows", "300", "--batch-age", "0.2",
                 "--metrics-address", "off"],
                stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **SHORT_SESSION})

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def term(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


class Publisher(threading.Thread):
    """The agent's sink publishing ``rows`` as a steady stream over about ``seconds``."""

    def __init__(self, bootstrap: str, prefix: str, rows: list[dict[str, Any]], seconds: float) -> None:
        super().__init__(daemon=True)
        self.rows = rows
        self.pause = seconds / max(1, len(rows) // 500)
        self.sink = KafkaSink(KafkaSinkConfig(bootstrap, topic_prefix=prefix), registry=CollectorRegistry())

    def run(self) -> None:
        for i in range(0, len(self.rows), 500):  # the agent pipeline's batches
            self.sink.write(TCP_CONNECTION, TCP_CONNECTION.to_arrow(self.rows[i:i + 500]))
            time.sleep(self.pause)
        assert self.sink.close(60) == 0


def committed_everything(bootstrap: str, group: str, topic: str) -> bool:
    c = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [confluent_kafka.TopicPartition(topic, p) for p in parts]
        for tp in c.committed(tps, timeout=10):
            _lo, hi = c.get_watermark_offsets(tp, timeout=10)
            if hi > 0 and tp.offset < hi:
                return False
        return True
    finally:
        c.close()


def wait_committed(bootstrap: str, group: str, topic: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not committed_everything(bootstrap, group, topic):
        assert time.monotonic() < deadline, "the worker did not catch up"
        time.sleep(0.5)


def test_kill_9_repeatedly_every_record_stored_exactly_once(kafka_bootstrap, prefix, tmp_path) -> None:
    create_topics(kafka_bootstrap, prefix)
    data, log, group = tmp_path / "chdb", tmp_path / "worker.log", prefix + "ingest"
    prepare(data)
    n = 30_000
    rows = make_rows(n, hosts=("a", "b", "c", "d"))
    pub = Publisher(kafka_bootstrap, prefix, rows, seconds=12)
    pub.start()
    rnd = random.Random(int(os.environ.get("BLINDSPOT_TEST_SEED", "3")))
    kills = 0
    for _ in range(5):
        w = WorkerProc(kafka_bootstrap, prefix, data, log, group)
        time.sleep(rnd.uniform(2.5, 4.5))  # start-up is ~2 s: most kills land mid-batch
        w.kill9()
        kills += 1
    pub.join(120)
    w = WorkerProc(kafka_bootstrap, prefix, data, log, group)
    wait_committed(kafka_bootstrap, group, prefix + TCP_CONNECTION.topic)
    # While it runs, the worker owns the folder and answers queries through its socket.
    live = query_via_socket(socket_path(data), "SELECT count() AS n FROM tcp_connections", FORMATS["json"])
    assert json.loads(live) == {"n": n}
    assert w.term() == 0, log.read_text()[-3000:]

    got = query_dir(data, "SELECT count() AS n, uniqExact(conn_id) AS u, min(conn_id) AS lo, max(conn_id) AS hi "
                          "FROM blindspot.tcp_connections")
    assert got == [{"n": n, "u": n, "lo": 1, "hi": n}], log.read_text()[-3000:]
    rollup = query_dir(data, "SELECT sum(n) AS n FROM blindspot.test_rollup")
    assert rollup == [{"n": n}]
    ingested = query_dir(data, "SELECT sum(value) AS n FROM blindspot.pipeline_counters WHERE counter = 'ingested'")
    assert ingested == [{"n": n}]
    replays = log.read_text().count("replaying the range")
    print(f"{kills} kills, {replays} partition ranges replayed from intents")


def test_two_workers_on_one_topic_every_record_once(kafka_bootstrap, prefix, tmp_path) -> None:
    """Separate engine folders, so a record stored by both would show up twice in the union: this checks
    that partitions are handed over with their offsets committed (commit on revoke), not just deduped."""
    create_topics(kafka_bootstrap, prefix, partitions=6)
    group = prefix + "ingest"
    dirs = [tmp_path / "chdb-a", tmp_path / "chdb-b"]
    for d in dirs:
        prepare(d)
    n = 20_000
    rows = make_rows(n, hosts=tuple(f"host-{i}" for i in range(12)))
    pub = Publisher(kafka_bootstrap, prefix, rows, seconds=9)
    pub.start()
    a = WorkerProc(kafka_bootstrap, prefix, dirs[0], tmp_path / "a.log", group)
    time.sleep(3)
    b = WorkerProc(kafka_bootstrap, prefix, dirs[1], tmp_path / "b.log", group)  # rebalance: A gives up some
    time.sleep(4)
    assert a.term() == 0  # rebalance: B takes everything
    pub.join(120)
    wait_committed(kafka_bootstrap, group, prefix + TCP_CONNECTION.topic)
    assert b.term() == 0
    ids: list[int] = []
    per_dir = []
    for d in dirs:
        got = [r["conn_id"] for r in query_dir(d, "SELECT conn_id FROM blindspot.tcp_connections")]
        per_dir.append(len(got))
        ids += got
    assert sorted(ids) == list(range(1, n + 1)), f"per worker: {per_dir}"
    assert all(per_dir), f"both workers should have stored some: {per_dir}"
