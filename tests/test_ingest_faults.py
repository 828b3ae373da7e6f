"""Who a failure belongs to (contract.errors.classify), and messages built to crash a worker: no broker,
no root. The same failures against a real broker and a real engine are in tests/test_ingest_store_faults.py."""

from __future__ import annotations

import random
import time
from typing import Any

import confluent_kafka
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from contract import wire
from contract.errors import (
    BadRecord,
    Fault,
    PermanentError,
    SchemaError,
    SinkUnavailable,
    TransientError,
    classify,
    classify_engine,
)
from contract.records import TCP_CONNECTION
from contract.retry import Stopping, retry
from ingest.clickhouse_sink.service import ChdbService
from ingest.validate import BadMessage, check_table
from tests.kafka_fixture import make_rows

KE = confluent_kafka.KafkaError


def _kafka(code: int) -> confluent_kafka.KafkaException:
    return confluent_kafka.KafkaException(KE(code))


# (what, exception, expected): engine texts exactly as chDB / a server word them.
CASES: list[tuple[str, BaseException, Fault]] = [
    ("disk full", classify_engine("Code: 243. DB::Exception: Cannot reserve 1.99 MiB, not enough space. "
                                  "(NOT_ENOUGH_SPACE)"), Fault.INFRASTRUCTURE),
    ("read-only filesystem", classify_engine(
        "Code: 1001. DB::Exception: std::__1::filesystem::filesystem_error: filesystem error: in "
        "create_directories: Read-only file system [\"/d/store/x/tmp_insert_all_3_3_0\"]. (STD_EXCEPTION)"),
     Fault.INFRASTRUCTURE),
    ("too many parts", classify_engine("Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)"),
     Fault.INFRASTRUCTURE),
    ("memory limit", classify_engine("Code: 241. DB::Exception: Memory limit exceeded. (MEMORY_LIMIT_EXCEEDED)"),
     Fault.INFRASTRUCTURE),
    ("table read-only", classify_engine("Code: 242. DB::Exception: Table is in readonly mode. (TABLE_IS_READ_ONLY)"),
     Fault.INFRASTRUCTURE),
    ("timeout", classify_engine("Code: 159. DB::Exception: Timeout exceeded. (TIMEOUT_EXCEEDED)"),
     Fault.INFRASTRUCTURE),
    ("unknown table", classify_engine("Code: 60. DB::Exception: Unknown table. (UNKNOWN_TABLE)"),
     Fault.INFRASTRUCTURE),
    ("no code at all (HTTP 502 from a proxy)", classify_engine("HTTPDriver received 502 Bad Gateway"),
     Fault.INFRASTRUCTURE),
    ("type mismatch", classify_engine("Code: 53. DB::Exception: Type mismatch. (TYPE_MISMATCH)"), Fault.MESSAGE),
    ("cannot parse", classify_engine("Code: 27. DB::Exception: Cannot parse input. "
                                     "(CANNOT_PARSE_INPUT_ASSERTION_FAILED)"), Fault.MESSAGE),
    ("bad IPv6", classify_engine("Code: 676. DB::Exception: Invalid IPv6 value. (CANNOT_PARSE_IPV6)"),
     Fault.MESSAGE),
    ("incorrect data", classify_engine("Code: 117. DB::Exception: refused (INCORRECT_DATA)"), Fault.MESSAGE),
    ("our own: sink unavailable", SinkUnavailable("x"), Fault.INFRASTRUCTURE),
    ("our own: transient", TransientError("x"), Fault.INFRASTRUCTURE),
    ("our own: schema", SchemaError("x"), Fault.INFRASTRUCTURE),
    ("our own: bad record", BadRecord("wrong_type"), Fault.MESSAGE),
    ("our own: permanent", PermanentError("x"), Fault.MESSAGE),
    ("librdkafka MSG_SIZE_TOO_LARGE", _kafka(KE.MSG_SIZE_TOO_LARGE), Fault.MESSAGE),
    ("librdkafka INVALID_RECORD", _kafka(KE.INVALID_RECORD), Fault.MESSAGE),
    ("librdkafka _QUEUE_FULL", _kafka(KE._QUEUE_FULL), Fault.INFRASTRUCTURE),
    ("producer queue full (BufferError)", BufferError("Local: Queue full"), Fault.INFRASTRUCTURE),
    ("librdkafka _MSG_TIMED_OUT", _kafka(KE._MSG_TIMED_OUT), Fault.INFRASTRUCTURE),
    ("librdkafka _TRANSPORT", _kafka(KE._TRANSPORT), Fault.INFRASTRUCTURE),
    ("librdkafka _ALL_BROKERS_DOWN", _kafka(KE._ALL_BROKERS_DOWN), Fault.INFRASTRUCTURE),
    ("librdkafka _TIMED_OUT", _kafka(KE._TIMED_OUT), Fault.INFRASTRUCTURE),
    ("librdkafka TOPIC_AUTHORIZATION_FAILED", _kafka(KE.TOPIC_AUTHORIZATION_FAILED), Fault.INFRASTRUCTURE),
    ("librdkafka REBALANCE_IN_PROGRESS", _kafka(KE.REBALANCE_IN_PROGRESS), Fault.GONE),
    ("librdkafka _ASSIGNMENT_LOST", _kafka(KE._ASSIGNMENT_LOST), Fault.GONE),
    ("librdkafka ILLEGAL_GENERATION", _kafka(KE.ILLEGAL_GENERATION), Fault.GONE),
    ("Arrow KeyError (duplicate column)", KeyError('Field "conn_id" exists 2 times in schema'), Fault.MESSAGE),
    ("ArrowInvalid", pa.ArrowInvalid("Casting from timestamp[s] to timestamp[ns] would result in out of bounds"),
     Fault.MESSAGE),
    ("SystemError from a bad buffer", SystemError("error return without exception set"), Fault.MESSAGE),
    ("disk error outside the engine (OSError)", OSError(28, "No space left on device"), Fault.INFRASTRUCTURE),
    ("MemoryError", MemoryError(), Fault.INFRASTRUCTURE),
]


@pytest.mark.parametrize(("what", "exc", "expected"), CASES, ids=[c[0] for c in CASES])
def test_classifier_table(what: str, exc: BaseException, expected: Fault) -> None:
    assert classify(exc) is expected, what


def test_real_engine_errors_are_classified(tmp_path) -> None:
    """Provoked on the embedded engine: a value it cannot parse is the row's; a missing table is not."""
    svc = ChdbService(tmp_path / "chdb")
    try:
        svc.execute("CREATE DATABASE d")
        svc.execute("CREATE TABLE d.t (n UInt64, a IPv6) ENGINE = MergeTree ORDER BY n")
        got = {}
        for what, sql in [("parse", "INSERT INTO d.t SETTINGS async_insert=0 SELECT 'abc', '::1'"),
                          ("ipv6 zone", "INSERT INTO d.t SETTINGS async_insert=0 SELECT 1, 'fe80::1%eth0'"),
                          ("type", "INSERT INTO d.t SETTINGS async_insert=0 SELECT [1], '::1'"),
                          ("unknown table", "INSERT INTO d.nope SETTINGS async_insert=0 SELECT 1, '::1'")]:
            with pytest.raises(Exception) as e:
                svc.execute(sql)
            got[what] = classify(e.value)
        # A column of a type the table cannot take is the table's matter (ILLEGAL_TYPE_OF_ARGUMENT, 43).
        assert got == {"parse": Fault.MESSAGE, "ipv6 zone": Fault.MESSAGE, "type": Fault.INFRASTRUCTURE,
                       "unknown table": Fault.INFRASTRUCTURE}, got
    finally:
        svc.close()


def test_real_librdkafka_errors_are_classified() -> None:
    """Provoked on librdkafka without a broker: a message over message.max.bytes, a full local
    queue, a delivery that times out."""
    p = confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": 10_000,
                                  "queue.buffering.max.messages": 1, "message.timeout.ms": 300,
                                  "log_level": 0})
    with pytest.raises(confluent_kafka.KafkaException) as e:
        p.produce("t", b"x" * 20_000)
    assert classify(e.value) is Fault.MESSAGE
    errors: list[Any] = []
    p.produce("t", b"x", on_delivery=lambda err, _m: errors.append(err))
    with pytest.raises(BufferError) as full:
        p.produce("t", b"y")
    assert classify(full.value) is Fault.INFRASTRUCTURE
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        p.poll(0.1)
    assert errors and errors[0].code() == KE._MSG_TIMED_OUT
    assert classify(confluent_kafka.KafkaException(errors[0])) is Fault.INFRASTRUCTURE


def test_retry_retries_only_infrastructure_and_stops_when_asked() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise SinkUnavailable("Code: 243. NOT_ENOUGH_SPACE")
        return "ok"

    seen: list[str] = []
    assert retry("op", flaky, wait=lambda _d: False, initial_s=0, on_retry=lambda op, e: seen.append(op)) == "ok"
    assert len(calls) == 3 and seen == ["op", "op"]
    with pytest.raises(PermanentError):
        retry("op", lambda: (_ for _ in ()).throw(PermanentError("Code: 53")), wait=lambda _d: False)
    with pytest.raises(Stopping):
        retry("op", lambda: (_ for _ in ()).throw(SinkUnavailable("down")), wait=lambda _d: True)


# -- poison pills ----------------------------------------------------------------------------------
def _table(n: int = 3) -> pa.Table:
    return wire.to_table(TCP_CONNECTION, make_rows(n))


def _compressed(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, t.schema, options=ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(t)
    return bytes(sink.getvalue().to_pybytes())


def _bad_offsets() -> bytes:
    a = pa.array(["curl", "wget", "nc"])
    offsets = np.frombuffer(a.buffers()[1], dtype=np.int32).copy()
    offsets[1], offsets[2] = 9, 2  # not monotonic
    bad = pa.Array.from_buffers(pa.string(), 3, [None, pa.py_buffer(offsets.tobytes()), a.buffers()[2]])
    cols = {c: _table().column(c) for c in TCP_CONNECTION.column_names}
    cols["comm"] = bad
    return wire.ipc_bytes(pa.table(cols))


def test_poison_pills_are_verdicts_not_crashes() -> None:
    t = _table()
    dup = pa.Table.from_arrays([t.column("conn_id"), t.column("conn_id"), t.column("host")],
                               names=["conn_id", "conn_id", "host"])
    secs = {c: t.column(c) for c in TCP_CONNECTION.column_names}
    secs["start_time"] = pa.array([2**62, 1, 2], pa.timestamp("s", tz="UTC"))  # far beyond ns range
    huge = t.slice(0, 1).set_column(TCP_CONNECTION.column_names.index("comm"), "comm",
                                    pa.array(["c" * 1_000_000]))
    cases = {
        "duplicate_column": wire.ipc_bytes(dup),
        "compressed_body": _compressed(t),
        "invalid_arrow": _bad_offsets(),
    }
    for reason, value in cases.items():
        with pytest.raises(wire.WireError) as e:
            wire.decode_batch(value)
        assert e.value.reason == reason
    with pytest.raises(BadMessage) as bm:
        check_table(TCP_CONNECTION, wire.decode_batch(wire.ipc_bytes(pa.table(secs))))
    assert bm.value.reason == "out_of_range"
    good, rejected = check_table(TCP_CONNECTION, wire.decode_batch(wire.ipc_bytes(huge)))
    assert good.num_rows == 0 and [r.reason for r in rejected] == ["oversized_field"]


def test_mutated_arrow_messages_only_ever_give_verdicts() -> None:
    """2,000 random byte flips and cuts of a valid message: decode + check end in a table, a WireError
    or a BadMessage; nothing else escapes (no SystemError, no KeyError, no crash)."""
    base = wire.ipc_bytes(_table(20))
    rnd = random.Random(10)
    outcomes: dict[str, int] = {}
    for _ in range(2000):
        b = bytearray(base)
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        if rnd.random() < 0.1:
            b = b[:rnd.randrange(len(b))]
        try:
            check_table(TCP_CONNECTION, wire.decode_batch(bytes(b)))
            outcome = "ok"
        except wire.WireError as e:
            outcome = e.reason
        except BadMessage as e:
            outcome = e.reason
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(outcomes)
    assert sum(outcomes.values()) == 2000


def test_overview_completeness_panel_shows_expired_rows() -> None:
    import json
    from pathlib import Path

    board = json.loads((Path(__file__).resolve().parents[1] / "grafana/dashboards/overview.json").read_text())
    panels = {p["title"]: p for p in board["panels"]}
    sql = panels["Pipeline completeness per host"]["targets"][0]["rawSql"]
    assert "counter = 'expired'" in sql and "counter = 'ingested'" in sql


class _Msg:
    def __init__(self, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self._v, self._h = value, headers

    def value(self) -> bytes:
        return self._v

    def key(self) -> bytes:
        return b"h1"

    def headers(self) -> list[tuple[str, bytes]]:
        return self._h

    def topic(self) -> str:
        return "blindspot.tcp.v1"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 77


def test_a_dead_letter_always_fits_and_owns_its_headers() -> None:
    from ingest.kafka_source import DLQ_MAX_BYTES, DeadLetters, KafkaSourceConfig

    dlq = DeadLetters(KafkaSourceConfig("127.0.0.1:1"))
    sent: list[dict[str, Any]] = []
    dlq._producer = type("P", (), {"produce": lambda self, topic, value, key, headers, on_delivery: sent.append(
        {"value": value, "headers": headers}), "flush": lambda self, t: 0, "__len__": lambda self: 0})()
    huge = _Msg(b"v" * (5 * 1024 * 1024), [("bs-kind", b"tcp_connection"), ("bs-dlq-reason", b"forged"),
                                           ("big", b"x" * 4_500_000)])
    dlq.send(huge, "oversized_field", "comm: too long")
    letter = sent[-1]
    h = letter["headers"]
    size = len(letter["value"]) + sum(len(k) + len(v) for k, v in h)
    assert size < DLQ_MAX_BYTES
    hd = dict(h)
    assert hd["bs-dlq-truncated"] == b"1" and hd["bs-dlq-original-bytes"] == str(5 * 1024 * 1024).encode()
    assert hd["bs-src"] == b"blindspot.tcp.v1:2:77" and hd["bs-dlq-reason"] == b"oversized_field"
    assert [k for k, _ in h].count("bs-dlq-reason") == 1 and hd["bs-dlq-forged-bs-dlq-reason"] == b"forged"
    assert "big" not in hd and len(letter["value"]) == 64 * 1024
    dlq.send(_Msg(b"small", [("bs-src-row", b"9")]), "undecodable", "x", error="WireError")
    hd = dict(sent[-1]["headers"])
    assert sent[-1]["value"] == b"small" and "bs-dlq-truncated" not in hd
    assert hd["bs-dlq-forged-bs-src-row"] == b"9" and hd["bs-dlq-error"] == b"WireError"


def test_a_compressed_bomb_is_refused_without_being_expanded() -> None:
    """32 MiB of zeros in a few kB: counting its records (the worker's batch bound) and decoding it
    read headers only; nothing close to the expanded size is ever allocated."""
    bomb_table = pa.table({"conn_id": pa.array(np.zeros(4_000_000, dtype=np.uint64))})
    bomb = _compressed(bomb_table)
    del bomb_table
    assert len(bomb) < 100_000
    before = pa.total_allocated_bytes()
    assert wire.batch_rows(bomb) == 4_000_000
    with pytest.raises(wire.WireError) as e:
        wire.decode_batch(bomb)
    assert e.value.reason == "compressed_body"
    assert pa.total_allocated_bytes() - before < 1_000_000
