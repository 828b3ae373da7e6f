"""Packet drops through the fleet path: agent sink -> real Kafka broker -> ingest worker -> engine.
``packet_drop`` records (Arrow batches and single msgpack records, as the agent sends them) land in
``packet_drops`` and its rollups exactly, and a connection's drops travel on its ``tcp_connection`` row."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.kafka_sink import KafkaSink, KafkaSinkConfig
from contract import wire
from contract.records import PACKET_DROP, TCP_CONNECTION
from ingest.clickhouse_sink.service import ChdbService
from tests.kafka_fixture import create_topics, make_rows, prefix
from tests.test_fleet_pipeline import engine, start_worker, stored, wait_for

__all__ = ["engine", "prefix"]  # fixtures used by name
pytestmark = pytest.mark.kafka


def drop_rows(n: int) -> list[dict[str, Any]]:
    now = time.time_ns()
    reasons = ["NO_SOCKET", "NETFILTER_DROP", "TCP_LISTEN_OVERFLOW"]
    return [{"time": now - i * 1_000_000, "host": f"h{i % 2}", "netns": 4026531840 + i % 3,
             "reason": reasons[i % 3], "drops": 10 + i, "conn_drops": i % 5} for i in range(n)]


def test_drops_arrive_exactly_as_sent(kafka_bootstrap: str, prefix: str, engine: ChdbService) -> None:
    drops = drop_rows(60)
    conns = make_rows(40, start_id=7_000)
    for i, r in enumerate(conns):
        r["drops"], r["drop_reason"] = (i, "NETFILTER_DROP") if i % 4 else (0, "")
    create_topics(kafka_bootstrap, prefix)
    sink = KafkaSink(KafkaSinkConfig(kafka_bootstrap, topic_prefix=prefix), registry=CollectorRegistry())
    sink.write(PACKET_DROP, wire.to_table(PACKET_DROP, drops[:40]))  # Arrow, as the agent's batches
    for r in drops[40:]:
        sink.emit(PACKET_DROP.name, r)  # msgpack, one record a message
    sink.write(TCP_CONNECTION, TCP_CONNECTION.to_arrow(conns))
    assert sink.close(30) == 0
    assert sink.counts() == {"delivered": 100}

    w = start_worker(kafka_bootstrap, prefix, engine)
    wait_for(lambda: w.worker.stats.written >= 100, what="100 rows written")
    w.finish()
    assert w.worker.stats.dead_lettered == 0
    got = stored(engine, "SELECT toUnixTimestamp64Nano(time) AS time, host, netns, reason, drops, conn_drops "
                         "FROM blindspot.packet_drops ORDER BY drops "
                         "SETTINGS output_format_json_quote_64bit_integers = 0")
    assert got == sorted(drops, key=lambda r: r["drops"])
    by_reason = stored(engine, "SELECT reason, toUInt32(sum(drops)) AS d, toUInt32(sum(conn_drops)) AS c "
                               "FROM blindspot.packet_drops_1m GROUP BY reason ORDER BY reason")
    want: dict[str, list[int]] = {}
    for r in drops:
        acc = want.setdefault(r["reason"], [0, 0])
        acc[0] += r["drops"]
        acc[1] += r["conn_drops"]
    assert by_reason == [{"reason": k, "d": d, "c": c} for k, (d, c) in sorted(want.items())]
    on_conns = stored(engine, "SELECT conn_id, drops, drop_reason FROM blindspot.tcp_connections ORDER BY conn_id "
                              "SETTINGS output_format_json_quote_64bit_integers = 0")
    assert on_conns == [{"conn_id": r["conn_id"], "drops": r["drops"], "drop_reason": r["drop_reason"]}
                        for r in conns]
