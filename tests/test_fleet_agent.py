"""Fleet mode end to end on the real kernel: traffic this test makes -> `blindspot agent --kafka` (eBPF ->
Kafka) -> ingest worker -> engine, rows checked exactly as in the embedded tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.embedded_agent import BLINDSPOT, REPO
from tests.kafka_fixture import create_topics, prefix
from tests.procs import spawn
from tests.test_fleet_pipeline import engine, start_worker, stored
from tests.test_tcp_lifecycle import run_client, start_server
from tests.traffic import CLIENT_COMM, SERVER_COMM, reply_size

__all__ = ["engine", "prefix"]
pytestmark = [pytest.mark.root, pytest.mark.kafka]

ROWS = """
SELECT role, family, local_ip, local_port, remote_ip, remote_port, pid, comm, bytes_sent, bytes_received,
       close_reason, toUnixTimestamp64Nano(start_time) AS start_ns, toUnixTimestamp64Nano(end_time) AS end_ns,
       duration_ns, conn_id
FROM blindspot.tcp_connections WHERE local_port = {p} OR remote_port = {p}
SETTINGS output_format_json_quote_64bit_integers = 0
"""


@pytest.fixture
def fleet_agent(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path / "agent.log"
    env = {**os.environ, "BLINDSPOT_PIPELINE_COUNTERS_INTERVAL_S": "2", "BLINDSPOT_PIPELINE_BATCH_MAX_AGE_S": "0.2"}
    with log.open("wb") as f:
        proc = spawn([str(BLINDSPOT), "agent", "--kafka", kafka_bootstrap, "--topic-prefix", prefix,
                                 "--metrics-address", "off", "--snapshot-interval", "1", "-v"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    proc.log = log  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _rows(svc: Any, port: int) -> list[dict[str, Any]]:
    return stored(svc, ROWS.format(p=int(port)))


def test_agent_to_kafka_to_clickhouse_rows_exact(kafka_bootstrap, prefix, engine, fleet_agent) -> None:
    create_topics(kafka_bootstrap, prefix)
    w = start_worker(kafka_bootstrap, prefix, engine)
    try:
        # Ready once a canary connection made now has come all the way through.
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        canary = srv.getsockname()[1]
        deadline = time.monotonic() + 120
        while not _rows(engine, canary):
            assert fleet_agent.poll() is None, fleet_agent.log.read_text()[-3000:]
            assert time.monotonic() < deadline, fleet_agent.log.read_text()[-3000:]
            c = socket.create_connection(("127.0.0.1", canary))
            s, _ = srv.accept()
            c.close()
            s.close()
            time.sleep(0.5)
        srv.close()

        n = 12
        sizes = [2000 + 101 * i for i in range(n)]
        server, info = start_server("--count", str(n))
        t0 = time.time_ns()
        client = run_client(info["port"], "--sizes", ",".join(map(str, sizes)))
        t1 = time.time_ns()
        server.wait(timeout=30)
        deadline = time.monotonic() + 30
        while len(rows := _rows(engine, info["port"])) < 2 * n and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # anything more would be a duplicate
        rows = _rows(engine, info["port"])
        assert len(rows) == 2 * n, rows
        clients = {r["local_port"]: r for r in rows if r["role"] == "client"}
        servers = {r["remote_port"]: r for r in rows if r["role"] == "server"}
        for conn in client["conns"]:
            c, s = clients[conn["local_port"]], servers[conn["local_port"]]
            sent, answered = conn["sent"], reply_size(conn["sent"])
            assert (c["bytes_sent"], c["bytes_received"]) == (sent, answered)
            assert (s["bytes_sent"], s["bytes_received"]) == (answered, sent)
            assert (c["pid"], c["comm"]) == (client["pid"], CLIENT_COMM)
            assert (s["pid"], s["comm"]) == (info["pid"], SERVER_COMM)
            for r in (c, s):
                assert r["family"] == 4 and r["local_ip"] == r["remote_ip"] == "127.0.0.1"
                assert r["close_reason"] == "closed"
                assert t0 <= r["start_ns"] < r["end_ns"] <= t1 + 10**9
                assert r["duration_ns"] == r["end_ns"] - r["start_ns"]
        assert len({r["conn_id"] for r in rows}) == 2 * n

        # SIGTERM: the agent flushes to Kafka and exits cleanly; its counters came through Kafka too.
        fleet_agent.send_signal(signal.SIGTERM)
        assert fleet_agent.wait(60) == 0, fleet_agent.log.read_text()[-3000:]
        deadline = time.monotonic() + 20
        sql = ("SELECT counter, sum(value) AS v FROM blindspot.pipeline_counters WHERE component = 'agent' "
               "GROUP BY counter ORDER BY counter")
        while not (counters := {r["counter"]: int(r["v"]) for r in stored(engine, sql)}).get("captured"):
            assert time.monotonic() < deadline, counters
            time.sleep(0.3)
        assert counters["captured"] >= 2 * n
        assert counters.get("dropped_sink", 0) == 0
        assert json.dumps(counters)  # printed on failure
    finally:
        w.finish()
