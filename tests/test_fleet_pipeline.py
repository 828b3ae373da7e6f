"""Agent sink -> real Kafka broker -> ingest worker -> real engine (chDB), in this process.

Each test has its own topics (a prefix) and its own engine folder, opened and closed by the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import confluent_kafka
import msgpack
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.kafka_sink import KafkaSink, KafkaSinkConfig
from contract import wire
from contract.errors import PermanentError, SinkUnavailable
from contract.records import TCP_CONNECTION
from ingest.clickhouse_sink.service import ChdbService, open_service
from ingest.kafka_source import H_DETAIL, H_REASON, H_SRC, H_SRC_ROW, KafkaSourceConfig
from ingest.schema import migrate
from ingest.worker import Worker
from tests.kafka_fixture import consume_all, create_topics, kafka_sh, make_rows, prefix

__all__ = ["prefix"]  # fixtures used by name
pytestmark = pytest.mark.kafka


@pytest.fixture
def engine(tmp_path) -> Iterator[ChdbService]:
    svc = open_service(data_dir=tmp_path / "chdb")
    migrate(svc)
    try:
        yield svc  # type: ignore[misc]
    finally:
        svc.close()


class _Running:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(self.stop)
        except BaseException as e:
            self.error = e

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


def start_worker(bootstrap: str, prefix: str, svc: Any, **kw: Any) -> _Running:
    cfg = KafkaSourceConfig(bootstrap, group_id=prefix + "ingest", topic_prefix=prefix,
                            batch_max_age_s=0.3, retry_initial_s=0.1, retry_max_s=0.5, **kw)
    registry = CollectorRegistry()
    running = _Running(Worker(cfg, svc, registry=registry))
    running.registry = registry  # type: ignore[attr-defined]
    return running


def wait_for(cond: Callable[[], bool], timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def publish(bootstrap: str, prefix: str, rows: list[dict[str, Any]], single: int = 0) -> dict[str, int]:
    """As the agent does: pipeline batches of 500 (Arrow messages), every other one handed over as a
    table (as batch-decoding sources do); the last ``single`` rows one by one (msgpack messages), so
    both encodings travel."""
    sink = KafkaSink(KafkaSinkConfig(bootstrap, topic_prefix=prefix), registry=CollectorRegistry())
    batched = rows[:len(rows) - single]
    for i in range(0, len(batched), 500):
        batch = batched[i:i + 500]
        sink.write(TCP_CONNECTION, wire.to_table(TCP_CONNECTION, batch))
    for r in rows[len(rows) - single:]:
        sink.emit("tcp_connection", r)
    assert sink.close(30) == 0
    return sink.counts()


def stored(svc: Any, sql: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(x) for x in svc.query_text(sql, "JSONEachRow").splitlines() if x.strip()]


ROW_SQL = """
SELECT host, conn_id, toUnixTimestamp64Nano(start_time) AS start_time,
       toUnixTimestamp64Nano(end_time) AS end_time, duration_ns, handshake_ns, role, family,
       replaceOne(toString(local_addr), '::ffff:', '') AS local_addr, local_port,
       replaceOne(toString(remote_addr), '::ffff:', '') AS remote_addr, remote_port, pid, comm,
       bytes_sent, bytes_received, retransmits, srtt_us, close_reason, started_before_agent, owner_source
FROM blindspot.tcp_connections ORDER BY conn_id FORMAT JSONEachRow
SETTINGS output_format_json_quote_64bit_integers = 0
"""


def test_records_arrive_exactly_as_sent(kafka_bootstrap, prefix, engine) -> None:
    rows = make_rows(3000, hosts=("web-1", "web-2", "db-1"))
    create_topics(kafka_bootstrap, prefix)
    assert publish(kafka_bootstrap, prefix, rows, single=300) == {"delivered": 3000}
    w = start_worker(kafka_bootstrap, prefix, engine)
    wait_for(lambda: w.worker.stats.written >= 3000, what="3000 rows written")
    w.finish()
    got = stored(engine, ROW_SQL)
    assert got == rows
    counters = stored(engine, "SELECT host, sum(value) AS n FROM blindspot.pipeline_counters "
                      "WHERE component = 'ingest' AND counter = 'ingested' GROUP BY host ORDER BY host")
    assert counters == [{"host": "db-1", "n": 1000}, {"host": "web-1", "n": 1000},
                        {"host": "web-2", "n": 1000}]
    assert w.worker.stats.dead_lettered == 0
    metrics = generate_latest(w.registry).decode()
    assert 'blindspot_ingest_records_written_total{table="tcp_connections"} 3000.0' in metrics
    for name in ("blindspot_ingest_records_consumed_total", "blindspot_ingest_consumer_lag_messages",
                 "blindspot_ingest_batch_rows_bucket", "blindspot_ingest_batch_duration_seconds_bucket",
                 "blindspot_ingest_retries_total", "blindspot_ingest_records_dead_lettered_total"):
        assert name in metrics, name


def _bad_corpus() -> list[tuple[str, bytes | None, list[tuple[str, bytes]] | None]]:
    """(expected reason, value, headers) of messages a broken or hostile producer could send."""
    good_hdrs = wire.headers_for(TCP_CONNECTION)
    arrow_hdrs = wire.headers_for(TCP_CONNECTION, wire.ENC_ARROW)
    row = make_rows(1, start_id=10**9)[0]

    def with_(**kw: Any) -> bytes:
        return wire.encode({**row, **kw})

    return [
        ("undecodable", b"\xc1 definitely not msgpack", good_hdrs),
        ("undecodable", None, good_hdrs),
        ("invalid_utf8", b"\x81\xa4host\xa2\xff\xfe", good_hdrs),
        ("not_a_map", msgpack.packb([1, 2, 3]), good_hdrs),
        ("unknown_schema_version", with_(), [("bs-kind", b"tcp_connection"), ("bs-schema", b"99")]),
        ("missing_headers", with_(), None),
        ("unknown_kind", with_(), [("bs-kind", b"udp_flow"), ("bs-schema", b"1")]),
        ("wrong_type", with_(pid="1234"), good_hdrs),
        ("wrong_type", with_(bytes_sent=1.5), good_hdrs),
        ("out_of_range", with_(local_port=-1), good_hdrs),
        ("oversized_field", with_(comm="c" * 1000), good_hdrs),
        ("oversized_field", with_(host="h" * 300), good_hdrs),
        ("invalid_address", with_(remote_addr="999.1.1.1"), good_hdrs),
        ("undecodable", b"ARROW1 not really", arrow_hdrs),
        ("wrong_type", wire.ipc_bytes(pa.table({"conn_id": pa.array(["x"]), "host": pa.array(["h1"])})),
         arrow_hdrs),
    ]


def _arrow_with_bad_rows() -> tuple[bytes, list[str], list[int]]:
    """An Arrow batch of 6 records, 3 of them bad: the good 3 land, the bad go alone to the DLQ."""
    rows = make_rows(6, start_id=2 * 10**9)
    rows[1]["remote_addr"] = "nope"
    rows[3]["comm"] = "x" * 100
    table = wire.to_table(TCP_CONNECTION, rows)
    cols = {c: table.column(c) for c in table.column_names}
    cols["pid"] = pa.array([1, 2, 3, 4, -5, 6], pa.int64())
    return wire.ipc_bytes(pa.table(cols)), ["invalid_address", "oversized_field", "out_of_range"], [
        rows[i]["conn_id"] for i in (0, 2, 5)]


def test_bad_messages_go_to_the_dead_letter_topic_and_good_ones_flow(kafka_bootstrap, prefix, engine) -> None:
    create_topics(kafka_bootstrap, prefix, partitions=1)  # one partition: bad and good strictly interleaved
    topic = prefix + TCP_CONNECTION.topic
    corpus = _bad_corpus()
    good = make_rows(200, hosts=("h1",))
    p = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    expected_bad: list[str] = []
    for i, r in enumerate(good):
        p.produce(topic, wire.encode(r), b"h1", headers=wire.headers_for(TCP_CONNECTION))
        if i % 12 == 0 and i // 12 < len(corpus):
            reason, value, headers = corpus[i // 12]
            p.produce(topic, value, b"h1", headers=headers)
            expected_bad.append(reason)
    value, arrow_bad, arrow_good = _arrow_with_bad_rows()
    p.produce(topic, value, b"h1", headers=wire.headers_for(TCP_CONNECTION, wire.ENC_ARROW))
    expected_bad += arrow_bad
    assert p.flush(30) == 0
    assert len(expected_bad) == len(corpus) + 3

    w = start_worker(kafka_bootstrap, prefix, engine, batch_max_rows=50)
    wait_for(lambda: w.worker.stats.consumed >= len(good) + len(corpus) + 1, what="all consumed")
    wait_for(lambda: not any(b.msgs for b in w.worker._batches.values()), what="last batch flushed")
    w.finish()

    ids = [r["conn_id"] for r in stored(engine, "SELECT conn_id FROM blindspot.tcp_connections ORDER BY conn_id")]
    assert ids == [r["conn_id"] for r in good] + arrow_good
    dlq = consume_all(kafka_bootstrap, prefix + "blindspot.dlq.v1", len(expected_bad))
    reasons = [dict(m.headers())[H_REASON].decode() for m in dlq]
    assert sorted(reasons) == sorted(expected_bad)
    for m in dlq:
        h = dict(m.headers())
        assert h[H_SRC].decode().startswith(topic + ":0:")
        assert h[H_DETAIL] is not None
    rows_out = [wire.decode_batch(m.value()) for m in dlq if H_SRC_ROW in dict(m.headers())]
    assert sorted(t.num_rows for t in rows_out) == [1, 1, 1]  # each bad record alone, as sent
    assert w.worker.stats.dead_lettered == len(expected_bad)
    dl = stored(engine, "SELECT sum(value) AS n FROM blindspot.pipeline_counters WHERE counter = 'dead_lettered'")
    assert dl == [{"n": len(expected_bad)}]


class FlakyService:
    """The engine, unreachable while ``down`` is set (as a server that is restarting would be)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = threading.Event()
        self.refused = 0

    def insert_arrow(self, *a: Any, **kw: Any) -> None:
        if self.down.is_set():
            self.refused += 1
            raise SinkUnavailable("ClickHouse is restarting (test)")
        self.inner.insert_arrow(*a, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_clickhouse_away_for_a_while_ingest_waits_then_catches_up(kafka_bootstrap, prefix, engine) -> None:
    create_topics(kafka_bootstrap, prefix)
    flaky = FlakyService(engine)
    flaky.down.set()
    w = start_worker(kafka_bootstrap, prefix, flaky, batch_max_rows=500)
    rows = make_rows(5000, hosts=("a", "b", "c", "d"))
    publish(kafka_bootstrap, prefix, rows)
    wait_for(lambda: flaky.refused >= 3, what="inserts refused while down")
    time.sleep(2)
    assert w.worker.stats.written == 0
    flaky.down.clear()
    wait_for(lambda: w.worker.stats.written >= 5000, what="catch-up")
    w.finish()
    got = stored(engine, "SELECT count() AS n, uniqExact(conn_id) AS u FROM blindspot.tcp_connections")
    assert got == [{"n": 5000, "u": 5000}]
    assert w.worker.stats.retries >= 3


def test_broker_restart_while_the_agent_publishes_loses_nothing(kafka_bootstrap, prefix) -> None:
    create_topics(kafka_bootstrap, prefix)
    n = 30_000
    rows = make_rows(n, hosts=("a", "b", "c"))
    sink = KafkaSink(KafkaSinkConfig(kafka_bootstrap, topic_prefix=prefix), registry=CollectorRegistry())
    done = threading.Event()

    def produce() -> None:
        for i, r in enumerate(rows):
            sink.emit("tcp_connection", r)
            if i % 1000 == 0:
                time.sleep(0.15)  # a steady stream across the restart (~5 s)
        done.set()

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    time.sleep(1.0)
    kafka_sh("stop", timeout=60)
    time.sleep(1.0)
    kafka_sh("start", timeout=120)
    t.join(120)
    assert done.is_set()
    assert sink.close(120) == 0
    assert sink.counts() == {"delivered": n}
    msgs = consume_all(kafka_bootstrap, prefix + TCP_CONNECTION.topic, n, timeout_s=60)
    ids = sorted(wire.decode(m.value())["conn_id"] for m in msgs)
    assert ids == [r["conn_id"] for r in rows]  # each once: the idempotent producer did not duplicate


class PickyService(FlakyService):
    """The engine refusing one particular row (as a server-side constraint or a type it cannot parse)."""

    def __init__(self, inner: Any, poison: int) -> None:
        super().__init__(inner)
        self.poison = poison

    def insert_arrow(self, database: str, table: str, data: Any, **kw: Any) -> None:
        if table == TCP_CONNECTION.table and self.poison in data.column("conn_id").to_pylist():
            raise PermanentError("Code: 117. DB::Exception: refused (test)")
        self.inner.insert_arrow(database, table, data, **kw)


def test_a_row_the_engine_refuses_is_found_and_dead_lettered_alone(kafka_bootstrap, prefix, engine) -> None:
    create_topics(kafka_bootstrap, prefix, partitions=1)
    rows = make_rows(1000, hosts=("h1",))
    poison = rows[637]["conn_id"]
    w = start_worker(kafka_bootstrap, prefix, PickyService(engine, poison))
    publish(kafka_bootstrap, prefix, rows)
    wait_for(lambda: w.worker.stats.written >= 999, what="the other 999 rows")
    w.finish()
    ids = [r["conn_id"] for r in stored(engine, "SELECT conn_id FROM blindspot.tcp_connections ORDER BY conn_id")]
    assert ids == [r["conn_id"] for r in rows if r["conn_id"] != poison]
    dlq = consume_all(kafka_bootstrap, prefix + "blindspot.dlq.v1", 1)
    assert len(dlq) == 1
    h = dict(dlq[0].headers())
    assert h[H_REASON] == b"rejected_by_clickhouse"
    assert wire.decode_batch(dlq[0].value()).column("conn_id").to_pylist() == [poison]


class HangAfterInsert(FlakyService):
    """A worker that dies right after ClickHouse took its batch and before it committed the offsets:
    its first data insert goes through, then it hangs for good (as a killed process would, minus the
    goodbye to the group)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.hung = threading.Event()
        self.release = threading.Event()

    def insert_arrow(self, database: str, table: str, data: Any, **kw: Any) -> None:
        self.inner.insert_arrow(database, table, data, **kw)
        if table == TCP_CONNECTION.table and not self.hung.is_set():
            self.hung.set()
            self.release.wait(120)


def test_crash_between_insert_and_commit_the_next_owner_replays_the_range_once(kafka_bootstrap, prefix,
                                                                              engine) -> None:
    """The window kill -9 may or may not hit, made certain: the next owner of the partition cuts the
    same range from the recorded intent, and the engine drops the repeat, in a rollup behind a
    materialized view too."""
    engine.execute("CREATE TABLE blindspot.test_rollup (host LowCardinality(String), n UInt64) "
                   "ENGINE = SummingMergeTree ORDER BY host SETTINGS non_replicated_deduplication_window = 1000")
    engine.execute("CREATE MATERIALIZED VIEW blindspot.test_rollup_mv TO blindspot.test_rollup AS "
                   "SELECT host, count() AS n FROM blindspot.tcp_connections GROUP BY host")
    create_topics(kafka_bootstrap, prefix, partitions=1)
    rows = make_rows(5000, hosts=("a", "b"))
    publish(kafka_bootstrap, prefix, rows)
    hang = HangAfterInsert(engine)
    # A worker that stops polling is dropped from the group after max.poll.interval.ms (short here).
    short = {"max_poll_interval_ms": 7000, "extra": {"session.timeout.ms": "6000"}}
    a = start_worker(kafka_bootstrap, prefix, hang, **short)
    wait_for(hang.hung.is_set, what="the first batch inserted")
    assert stored(engine, "SELECT count() AS n FROM blindspot.tcp_connections")[0]["n"] > 0
    b = start_worker(kafka_bootstrap, prefix, engine, **short)
    count_sql = "SELECT count() AS n, uniqExact(conn_id) AS u FROM blindspot.tcp_connections"
    wait_for(lambda: stored(engine, count_sql) == [{"n": 5000, "u": 5000}] and b.worker.stats.replayed >= 1,
             timeout_s=90, what="the next owner replaying and catching up")
    hang.release.set()
    a.finish()
    b.finish()
    assert stored(engine, count_sql) == [{"n": 5000, "u": 5000}]
    assert stored(engine, "SELECT sum(n) AS n FROM blindspot.test_rollup") == [{"n": 5000}]
    ingested = stored(engine, "SELECT sum(value) AS n FROM blindspot.pipeline_counters WHERE counter = 'ingested'")
    assert ingested == [{"n": 5000}]
    assert b.worker.stats.replayed >= 1
