"""Batches into the embedded store wait longer (each insert costs the engine its rollup views), and a
query flushes them first: agent/pipeline.py ``flush_pending`` on a sink that records when each batch
arrives, and `blindspot run` with its default batch age answering one query with rows captured a moment
before."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from agent.pipeline import COMPONENT_DEFAULTS, FORCED_FLUSH_MIN_INTERVAL_S, Pipeline, PipelineConfig
from contract.batch import Batch
from contract.records import PIPELINE_COUNTER, RecordKind
from tests.embedded_agent import running_agent


class Timed:
    def __init__(self) -> None:
        self.batches: list[tuple[float, int]] = []  # (monotonic time written, rows)

    def write(self, kind: RecordKind, rows: Batch) -> None:
        if kind is not PIPELINE_COUNTER or rows.column("counter")[0].as_py() == "probe":
            self.batches.append((time.monotonic(), rows.num_rows))


def _rows(n: int) -> object:
    return PIPELINE_COUNTER.to_arrow([{"time": 1_800_000_000_000_000_000 + i, "host": "h", "component": "t",
                                       "counter": "probe", "value": 1} for i in range(n)])


def test_batch_age_by_component_and_a_query_flushes_first() -> None:
    sink = Timed()
    embedded = Pipeline([], sink, PipelineConfig(poll_ms=10, counters_interval_s=3600), host="h",
                        component="embedded")
    assert (embedded.batcher.max_age_s, embedded.batcher.max_rows, embedded.handoff.maxsize) == (5.0, 100_000, 16)
    assert COMPONENT_DEFAULTS["embedded"]["batch_max_age_s"] == 5.0
    agent = Pipeline([], sink, PipelineConfig(), host="h", component="agent")
    assert (agent.batcher.max_age_s, agent.batcher.max_rows, agent.handoff.maxsize) == (1.0, 20_000, 64)
    configured = Pipeline([], sink, PipelineConfig(batch_max_age_s=0.3, batch_max_rows=7, queue_batches=3), host="h",
                          component="embedded")  # a configured value wins
    assert (configured.batcher.max_age_s, configured.batcher.max_rows, configured.handoff.maxsize) == (0.3, 7, 3)

    stop = threading.Event()
    runner = threading.Thread(target=embedded.run, args=(stop,))
    runner.start()
    try:
        embedded.emit(PIPELINE_COUNTER.name, _rows(3))  # type: ignore[arg-type]
        time.sleep(0.5)
        assert sink.batches == []  # held: younger than 5 s
        t0 = time.monotonic()
        assert embedded.flush_pending(timeout_s=5)
        assert [n for _, n in sink.batches] == [3]  # written before flush_pending returned
        assert sink.batches[0][0] - t0 < 0.5
        # A second query right after, with rows batched, waits for the next turn (a bounded insert rate)
        embedded.emit(PIPELINE_COUNTER.name, _rows(2))  # type: ignore[arg-type]
        assert embedded.flush_pending(timeout_s=5)
        assert [n for _, n in sink.batches] == [3, 2]
        assert sink.batches[1][0] - sink.batches[0][0] >= FORCED_FLUSH_MIN_INTERVAL_S - 0.05
        # Nothing pending: no insert, and no turn to wait for
        t1 = time.monotonic()
        assert embedded.flush_pending(timeout_s=5)
        assert len(sink.batches) == 2 and time.monotonic() - t1 < 0.2
    finally:
        stop.set()
        runner.join()
    assert embedded.flush_pending(timeout_s=0.1)  # stopped: at once, everything is written


@pytest.mark.root
def test_blindspot_run_default_age_one_query_sees_a_connection(tmp_path: Path) -> None:
    """`blindspot run` as installed (batches unset: 5 s, 100,000 rows): one query, 1.5 s after a connection closed
    (the TCP source decodes every second), has both its rows."""
    with running_agent(tmp_path / "data", BLINDSPOT_PIPELINE_BATCH_MAX_AGE_S=None) as agent:
        since = time.time_ns()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = srv.accept()
        c.sendall(b"x" * 123)
        assert s.recv(200) == b"x" * 123
        c.close()
        s.close()
        srv.close()
        time.sleep(1.5)
        rows = agent.rows("SELECT role, toUInt64(bytes_sent) AS sent FROM blindspot.tcp_connections "
                          "WHERE (local_port = {p:UInt16} OR remote_port = {p:UInt16}) "
                          "AND end_time >= fromUnixTimestamp64Nano({since:Int64}) ORDER BY role", p=port, since=since)
        assert rows == [{"role": "client", "sent": 123}, {"role": "server", "sent": 0}]
