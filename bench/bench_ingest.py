"""Fleet throughput on this machine, as ratios against baselines measured in the same run:

    agent publish   records/s through the agent's KafkaSink (encode, produce, acknowledged)
    (a) raw consume records/s a bare consumer reads the same topic (no decoding)
    (b) raw insert  records/s the engine (chDB) inserts the same rows, already columnar, same batch size,
                    into the same table (materialized-view rollups included)
    ingest          records/s Kafka -> ingest worker -> engine, committed (fetch, decode, validate, dedup
                    token, intent and offset commits included), from assignment to the last commit

Target: ingest > 0.5 x min(a, b). Starts a broker of its own (scripts/kafka.sh, free ports, fresh state)
and stops it at the end, unless --kafka names a running one.

    .venv/bin/python -m bench.bench_ingest [--records N] [--kafka 127.0.0.1:19092]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import confluent_kafka
from prometheus_client import CollectorRegistry

from agent.kafka_sink import KafkaSink, KafkaSinkConfig
from contract.records import TCP_CONNECTION
from ingest.clickhouse_sink.service import open_service
from ingest.kafka_source import KafkaSourceConfig, ensure_topics
from ingest.schema import migrate
from ingest.worker import Worker
from tests.kafka_fixture import free_ports, make_rows


def _count(value: bytes) -> int:
    import pyarrow as pa

    return sum(b.num_rows for b in pa.ipc.open_stream(value))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--kafka", default="", help="a running broker (default: start one of our own, stopped at the end)")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=50_000, help="ingest batch (rows)")
    ap.add_argument("--agent-batch", type=int, default=2_000, help="rows per agent pipeline batch")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.kafka:
        run(args)
        return
    with own_broker() as args.kafka:
        run(args)


@contextlib.contextmanager
def own_broker() -> Iterator[str]:
    """A broker of this run's own (free ports, fresh state), stopped when the bench ends however it
    ends; scripts/kafka.sh also stops it if this process dies first (KAFKA_WATCH_PID)."""
    ports = free_ports(2)
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as state:
        env = {**os.environ, "KAFKA_PORT": str(ports[0]), "KAFKA_CONTROLLER_PORT": str(ports[1]),
               "KAFKA_STATE": state, "KAFKA_WATCH_PID": str(os.getpid())}
        script = str(Path(__file__).resolve().parents[1] / "scripts" / "kafka.sh")
        try:
            subprocess.run(["bash", script, "start"], check=True, env=env)
            yield f"127.0.0.1:{ports[0]}"
        finally:
            subprocess.run(["bash", script, "stop"], check=False, env=env)


def run(args: argparse.Namespace) -> None:
    n, prefix = args.records, f"bench{uuid.uuid4().hex[:6]}."
    topic = prefix + TCP_CONNECTION.topic
    ensure_topics(KafkaSourceConfig(args.kafka, topic_prefix=prefix, partitions=args.partitions))
    rows = make_rows(n, hosts=tuple(f"host-{i:03d}" for i in range(64)))

    # Agent publish rate: 64 hosts' pipelines, each handing the sink batches of --agent-batch rows.
    by_host: dict[str, list[dict]] = {}
    for r in rows:
        by_host.setdefault(r["host"], []).append(r)
    batches = [hr[i:i + args.agent_batch] for hr in by_host.values() for i in range(0, len(hr), args.agent_batch)]
    sink = KafkaSink(KafkaSinkConfig(args.kafka, topic_prefix=prefix), registry=CollectorRegistry())
    t = time.perf_counter()
    for b in batches:
        sink.write(TCP_CONNECTION, TCP_CONNECTION.to_arrow(b))
    assert sink.close(120) == 0
    publish = n / (time.perf_counter() - t)

    # (a) raw consume of the same topic.
    # Assigned (no group join to wait for); the clock starts before the first fetch, since librdkafka
    # prefetches in the background and timing from the first message would hide the transfer.
    c = confluent_kafka.Consumer({"bootstrap.servers": args.kafka, "group.id": prefix + "raw",
                                  "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024 * 1024})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in parts])
    got, t0 = 0, time.perf_counter()
    while got < n:
        msgs = c.consume(10_000, timeout=1.0)
        for m in msgs:
            if m.error() is None:
                # Records per message, read from the Arrow stream's batch header (no column decoding).
                got += _count(m.value())
    raw_consume = n / (time.perf_counter() - t0)
    c.close()

    data = tempfile.mkdtemp(prefix="bs-bench-")
    svc = open_service(data_dir=data)
    try:
        migrate(svc)
        tables = [TCP_CONNECTION.to_arrow(rows[i:i + args.batch_rows]) for i in range(0, n, args.batch_rows)]
        # (b) raw engine insert of the same rows, columnar, same batch size, same settings and tokens,
        # into the same table the pipeline writes, so its materialized-view rollups run too.
        t = time.perf_counter()
        for i, tb in enumerate(tables):
            svc.insert_arrow("blindspot", "tcp_connections", tb, dedup_token=f"bench:{i}")
        raw_insert = n / (time.perf_counter() - t)
        # For reference: the same into a bare copy of the table (no rollups behind it).
        svc.execute("CREATE TABLE blindspot.bench_raw AS blindspot.tcp_connections")
        t = time.perf_counter()
        for i, tb in enumerate(tables):
            svc.insert_arrow("blindspot", "bench_raw", tb, dedup_token=f"bench:{i}")
        bare_insert = n / (time.perf_counter() - t)
        # The pipeline starts from empty tables.
        for name in svc.query_arrow(
            "SELECT name FROM system.tables WHERE database = 'blindspot' AND engine LIKE '%MergeTree' "
            "AND name != 'schema_migrations'"
        ).to_pydict()["name"]:
            svc.execute(f"TRUNCATE TABLE blindspot.{name}")

        # The pipeline: one ingest worker, from its partition assignment to the last row committed.
        cfg = KafkaSourceConfig(args.kafka, group_id=prefix + "ingest", topic_prefix=prefix,
                                batch_max_rows=args.batch_rows)
        w = Worker(cfg, svc, registry=CollectorRegistry())
        stop = threading.Event()
        th = threading.Thread(target=w.run, args=(stop,), daemon=True)
        th.start()
        # Timed from the assignment (when fetching starts), like (a); the group join before it is not
        # throughput.
        while not w._batches:
            time.sleep(0.001)
        t = time.perf_counter()
        while w.stats.written < n:
            time.sleep(0.005)
        ingest = n / (time.perf_counter() - t)
        stop.set()
        th.join(60)
        stored = svc.query_text("SELECT count() FROM blindspot.tcp_connections", "CSV").strip()
        assert int(stored) == n, stored
    finally:
        svc.close()
        shutil.rmtree(data, ignore_errors=True)

    slower = min(raw_consume, raw_insert)
    print(f"records: {n} tcp_connection from 64 hosts, {args.partitions} partitions, agent batches of "
          f"{args.agent_batch}, ingest batches of {args.batch_rows}")
    print(f"agent publish      {publish:>10,.0f} records/s")
    print(f"(a) raw consume    {raw_consume:>10,.0f} records/s")
    print(f"(b) raw insert     {raw_insert:>10,.0f} records/s  (into tcp_connections, its rollups included)")
    print(f"    bare insert    {bare_insert:>10,.0f} records/s  (a copy of the table without rollups)")
    print(f"ingest pipeline    {ingest:>10,.0f} records/s")
    print(f"ratio ingest/(a)   {ingest / raw_consume:.2f}")
    print(f"ratio ingest/(b)   {ingest / raw_insert:.2f}")
    print(f"ratio ingest/min   {ingest / slower:.2f}  (target > 0.5)")


if __name__ == "__main__":
    main()
