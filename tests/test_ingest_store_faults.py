"""Messages built to crash a worker, and a store that fails under it, against a real broker and the real
engine: nothing stalls, nothing is lost, nothing is doubled, nothing stored is dead-lettered."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import confluent_kafka
import pyarrow as pa
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import generate_latest

from contract import wire
from contract.records import TCP_CONNECTION
from ingest.clickhouse_sink.service import open_service
from ingest.kafka_source import H_ERROR, H_REASON, H_SRC, H_TRUNCATED
from ingest.schema import migrate
from tests.kafka_fixture import consume_all, create_topics, make_rows, prefix
from tests.test_fleet_pipeline import engine, publish, start_worker, stored, wait_for
from tests.test_ingest_faults import _bad_offsets, _compressed

__all__ = ["engine", "prefix"]
pytestmark = pytest.mark.kafka
ARROW = wire.headers_for(TCP_CONNECTION, wire.ENC_ARROW)
MSGPACK = wire.headers_for(TCP_CONNECTION)


def _poison(start_id: int) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
    """(expected reason, value, headers): each of these crashed the worker once, for good."""
    t = wire.to_table(TCP_CONNECTION, make_rows(3, start_id=start_id))
    dup = pa.Table.from_arrays([t.column("conn_id"), t.column("conn_id"), t.column("host")],
                               names=["conn_id", "conn_id", "host"])
    secs = {c: t.column(c) for c in TCP_CONNECTION.column_names}
    secs["end_time"] = pa.array([2**62] * 3, pa.timestamp("s", tz="UTC"))
    big_row = make_rows(1, start_id=start_id + 10)[0]
    big_row["comm"] = os.urandom(499_000).hex()  # a valid record but for its length: a ~1 MB message that
    # zstd cannot shrink under the topic's limit
    big_arrow = wire.to_table(TCP_CONNECTION, make_rows(1, start_id=start_id + 20))
    big_arrow = big_arrow.set_column(TCP_CONNECTION.column_names.index("comm"), "comm",
                                     pa.array([os.urandom(499_000).hex()]))
    return [
        ("duplicate_column", wire.ipc_bytes(dup), ARROW),
        ("compressed_body", _compressed(t), ARROW),
        ("invalid_arrow", _bad_offsets(), ARROW),
        ("out_of_range", wire.ipc_bytes(pa.table(secs)), ARROW),
        ("oversized_field", wire.encode(big_row), MSGPACK),
        ("oversized_field", wire.ipc_bytes(big_arrow), ARROW),
        ("undecodable", b"\xc1 forged", [*MSGPACK, ("bs-dlq-reason", b"all good, really"), ("bs-src", b"x:0:0")]),
        ("decode_failed", wire.ipc_bytes(wire.to_table(TCP_CONNECTION, make_rows(1, start_id=start_id + 30))),
         ARROW),
    ]


def test_poison_pills_are_dead_lettered_and_the_partition_flows(kafka_bootstrap, prefix, engine,
                                                                monkeypatch) -> None:
    create_topics(kafka_bootstrap, prefix, partitions=1)
    dlq_topic = prefix + "blindspot.dlq.v1"
    # A dead-letter topic made by someone else with a small limit: the broker refuses ~1 MB dead
    # letters; the worker cuts them and sends them again.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.delete_topics([dlq_topic], operation_timeout=30)[dlq_topic].result()
    time.sleep(1)
    admin.create_topics([NewTopic(dlq_topic, 1, config={"max.message.bytes": "200000"})])[dlq_topic].result()

    # An exception nobody expected, for one message: the worker must dead-letter it and go on.
    import ingest.decode as decode_mod

    real_check = decode_mod.check_table

    def exploding(kind: Any, table: pa.Table) -> Any:
        if 10**9 + 30 in table.column("conn_id").to_pylist():
            raise SystemError("error return without exception set (test)")
        return real_check(kind, table)

    monkeypatch.setattr(decode_mod, "check_table", exploding)
    topic = prefix + TCP_CONNECTION.topic
    p = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 1_048_000})
    good = make_rows(120, hosts=("h1",))
    poison = _poison(10**9)
    for i, r in enumerate(good):
        p.produce(topic, wire.encode(r), b"h1", headers=MSGPACK)
        if i % 10 == 5 and i // 10 < len(poison):
            _reason, value, headers = poison[i // 10]
            p.produce(topic, value, b"h1", headers=headers)
    assert p.flush(30) == 0
    w = start_worker(kafka_bootstrap, prefix, engine, batch_max_rows=20)
    wait_for(lambda: w.worker.stats.consumed >= len(good) + len(poison), what="all consumed")
    wait_for(lambda: not any(b.msgs for b in w.worker._batches.values()), what="last batch flushed")
    w.finish()
    ids = [r["conn_id"] for r in stored(engine, "SELECT conn_id FROM blindspot.tcp_connections ORDER BY conn_id")]
    assert ids == [r["conn_id"] for r in good]
    dlq = consume_all(kafka_bootstrap, dlq_topic, len(poison))
    got = sorted(dict(m.headers())[H_REASON].decode() for m in dlq)
    assert got == sorted(r for r, _v, _h in poison)
    for m in dlq:
        hs = m.headers()
        assert [k for k, _ in hs].count(H_REASON) == 1  # a forged one is kept renamed, never a second
        h = dict(hs)
        assert h[H_SRC].decode().startswith(topic + ":0:")
        if h[H_REASON] == b"undecodable":
            assert h["bs-dlq-forged-bs-dlq-reason"] == b"all good, really"
            assert h["bs-dlq-forged-bs-src"] == b"x:0:0"
        if h[H_REASON] == b"decode_failed":
            assert h[H_ERROR] == b"SystemError"
        if h[H_REASON] == b"oversized_field":
            assert h[H_TRUNCATED] == b"1" and len(m.value()) <= 64 * 1024
    assert w.worker.stats.dead_lettered == len(poison)
    metrics = generate_latest(w.registry).decode()
    assert "blindspot_ingest_dead_letters_truncated_total 2.0" in metrics


# -- a store that fails under the worker -------------------------------------------------------------
def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> Path:
    filler = path / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
    return filler


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")


def _check_exact(engine: Any, n: int, kafka_bootstrap: str, prefix: str) -> None:
    got = stored(engine, "SELECT count() AS n, uniqExact(conn_id) AS u FROM blindspot.tcp_connections")
    assert got == [{"n": n, "u": n}]
    hourly = stored(engine, "SELECT sum(closed) AS n FROM blindspot.tcp_conn_1h")
    assert hourly == [{"n": n}]
    ingested = stored(engine, "SELECT sum(value) AS n FROM blindspot.pipeline_counters WHERE counter = 'ingested'")
    assert ingested == [{"n": n}]
    assert consume_all(kafka_bootstrap, prefix + "blindspot.dlq.v1", 0, timeout_s=2) == []


@needs_root
def test_disk_full_under_the_engine_loses_nothing_and_dead_letters_nothing(kafka_bootstrap, prefix,
                                                                           tmp_path) -> None:
    data = tmp_path / "chdb"
    _mount_tmpfs(data, "64m")
    svc = None
    try:
        svc = open_service(data_dir=data)
        migrate(svc)
        create_topics(kafka_bootstrap, prefix)
        filler = _fill(data)
        w = start_worker(kafka_bootstrap, prefix, svc, batch_max_rows=500)
        n = 6000
        publish(kafka_bootstrap, prefix, make_rows(n, hosts=("a", "b", "c", "d")))
        wait_for(lambda: w.worker.stats.retries >= 5, what="inserts refused while the disk is full")
        time.sleep(2)
        assert w.worker.stats.written == 0 and w.worker.stats.dead_lettered == 0
        metrics = generate_latest(w.registry).decode()
        assert "blindspot_ingest_paused 1.0" in metrics
        assert 'error="SinkUnavailable"' in metrics
        filler.unlink()
        wait_for(lambda: w.worker.stats.written >= n, timeout_s=120, what="catch-up after the disk was freed")
        w.finish()
        _check_exact(svc, n, kafka_bootstrap, prefix)
        print(f"disk full: {w.worker.stats.retries} retries, {w.worker.stats.written} stored, "
              f"{w.worker.stats.dead_lettered} dead-lettered")
    finally:
        if svc is not None:
            svc.close()
        _umount(data)


@needs_root
def test_read_only_table_folder_loses_nothing_and_dead_letters_nothing(kafka_bootstrap, prefix, tmp_path) -> None:
    data = tmp_path / "chdb"
    svc = open_service(data_dir=data)
    table_dir: Path | None = None
    try:
        migrate(svc)
        path = stored(svc, "SELECT data_paths[1] AS p FROM system.tables WHERE database = 'blindspot' "
                           "AND name = 'tcp_connections'")[0]["p"]
        table_dir = Path(path)
        saved = tmp_path / "saved"
        subprocess.run(["cp", "-a", str(table_dir), str(saved)], check=True)
        _mount_tmpfs(table_dir, "64m")
        subprocess.run(f"cp -a {saved}/. {table_dir}/", shell=True, check=True)  # noqa: S602
        subprocess.run(["mount", "-o", "remount,ro", str(table_dir)], check=True)
        create_topics(kafka_bootstrap, prefix)
        w = start_worker(kafka_bootstrap, prefix, svc, batch_max_rows=500)
        n = 3000
        publish(kafka_bootstrap, prefix, make_rows(n, hosts=("a", "b")))
        wait_for(lambda: w.worker.stats.retries >= 3, what="inserts refused while read-only")
        assert w.worker.stats.written == 0 and w.worker.stats.dead_lettered == 0
        subprocess.run(["mount", "-o", "remount,rw", str(table_dir)], check=True)
        wait_for(lambda: w.worker.stats.written >= n, timeout_s=120, what="catch-up after remount rw")
        w.finish()
        _check_exact(svc, n, kafka_bootstrap, prefix)
    finally:
        svc.close()
        if table_dir is not None:
            _umount(table_dir)


def test_expired_rows_are_counted_and_follow_the_policy(kafka_bootstrap, prefix, engine) -> None:
    for policy in ("drop", "dead-letter"):
        pfx = f"{prefix}{policy[0]}."
        create_topics(kafka_bootstrap, pfx, partitions=1)
        rows = make_rows(100, hosts=("h1",), start_id=1 if policy == "drop" else 1000)
        old = time.time_ns() - 40 * 86_400 * 10**9
        for r in rows[::4]:  # 25 rows closed 40 days ago: past the 30-day retention on arrival
            r["start_time"], r["end_time"] = old, old + 1
        publish(kafka_bootstrap, pfx, rows, single=20)
        w = start_worker(kafka_bootstrap, pfx, engine)
        w.worker.expired_policy = policy
        wait_for(lambda w=w: w.worker.stats.written + w.worker.stats.expired >= 100, what="all handled")
        w.finish()
        assert w.worker.stats.expired == 25 and w.worker.stats.written == 75
        dlq = consume_all(kafka_bootstrap, pfx + "blindspot.dlq.v1", 25 if policy == "dead-letter" else 0,
                          timeout_s=10 if policy == "dead-letter" else 2)
        assert len(dlq) == (25 if policy == "dead-letter" else 0)
        assert {dict(m.headers())[H_REASON] for m in dlq} <= {b"expired"}
        assert 'blindspot_ingest_records_expired_total{table="tcp_connections"} 25.0' in generate_latest(
            w.registry).decode()
    counters = stored(engine, "SELECT counter, sum(value) AS n FROM blindspot.pipeline_counters "
                              "GROUP BY counter ORDER BY counter")
    assert counters == [{"counter": "expired", "n": 50}, {"counter": "ingested", "n": 150}]
    assert stored(engine, "SELECT count() AS n FROM blindspot.tcp_connections") == [{"n": 150}]




def test_a_rebalance_while_waiting_for_the_store_hands_over_cleanly(kafka_bootstrap, prefix, engine) -> None:
    """Worker A waits for a store that is down (partitions paused, consumer polled: it stays in the
    group). Worker B joins: the rebalance is served inside A's paused poll, A gives its batches up
    uncommitted, and whoever owns each partition next cuts the ranges again from the intents. One
    engine (chDB serves one folder per process): a range cut differently would carry another token
    and show up twice."""
    from tests.test_fleet_pipeline import FlakyService

    create_topics(kafka_bootstrap, prefix, partitions=6)
    flaky = FlakyService(engine)
    flaky.down.set()
    a = start_worker(kafka_bootstrap, prefix, flaky, batch_max_rows=300)
    n = 6000
    publish(kafka_bootstrap, prefix, make_rows(n, hosts=tuple(f"h{i}" for i in range(12))))
    wait_for(lambda: flaky.refused >= 3, what="A waiting for its store")
    b = start_worker(kafka_bootstrap, prefix, engine, batch_max_rows=300)
    wait_for(lambda: b.worker.stats.written > 0, timeout_s=90, what="B storing its share")
    assert a.worker.stats.written == 0
    flaky.down.clear()
    wait_for(lambda: stored(engine, "SELECT count() AS n FROM blindspot.tcp_connections") == [{"n": n}],
             timeout_s=120, what="all stored")
    a.finish()
    b.finish()
    got = stored(engine, "SELECT count() AS n, uniqExact(conn_id) AS u FROM blindspot.tcp_connections")
    assert got == [{"n": n, "u": n}]
    ingested = stored(engine, "SELECT sum(value) AS n FROM blindspot.pipeline_counters WHERE counter = 'ingested'")
    assert ingested == [{"n": n}]
    assert a.worker.stats.dead_lettered == 0 and b.worker.stats.dead_lettered == 0
