"""Wire format, validation and Kafka client settings: no broker, no root."""

from __future__ import annotations

import msgpack
import pyarrow as pa
import pytest

from agent.kafka_sink.config import KafkaSinkConfig
from contract import wire
from contract.kafka import client_settings, redacted
from contract.records import KINDS, TCP_CONNECTION
from ingest.validate import BadMessage, build_batch, check_table
from tests.kafka_fixture import make_rows

HDRS = wire.headers_for(TCP_CONNECTION)


def test_round_trip_keeps_every_value() -> None:
    for row in make_rows(50):
        assert wire.decode(wire.encode(row)) == row
    assert wire.message_kind(HDRS, TCP_CONNECTION) == (TCP_CONNECTION, "msgpack")


def test_arrow_batches_round_trip_and_split_under_the_message_limit() -> None:
    rows = make_rows(9000, hosts=("h1",))
    msgs = wire.encode_batch(TCP_CONNECTION, rows)
    assert [n for _, n in msgs] == [4000, 4000, 1000]
    assert all(len(v) <= wire.MAX_MESSAGE_BYTES for v, _ in msgs)
    back = [r for v, _ in msgs for r in wire.decode_batch(v).to_pylist()]
    assert [r["conn_id"] for r in back] == [r["conn_id"] for r in rows]
    hdrs = wire.headers_for(TCP_CONNECTION, wire.ENC_ARROW)
    assert wire.message_kind(hdrs, TCP_CONNECTION) == (TCP_CONNECTION, "arrow")
    table, rejected = check_table(TCP_CONNECTION, wire.decode_batch(msgs[2][0]))
    assert rejected == [] and table.num_rows == 1000
    with pytest.raises(wire.WireError) as e:
        wire.decode_batch(b"garbage that is not arrow")
    assert e.value.reason == "undecodable"


def test_arrow_batch_from_a_newer_or_foreign_producer() -> None:
    rows = make_rows(5)
    cols = {c: wire.to_table(TCP_CONNECTION, rows).column(c) for c in TCP_CONNECTION.column_names}
    cols["local_port"] = pa.array([1, 2, 70000, 4, 5], pa.int64())  # other width: fine where it fits
    cols["comm"] = pa.array(["a", None, "c", "d", "e"])
    cols["close_reason"] = pa.array([b"fin", b"fin", b"fin", b"\xff", b"fin"]).cast(pa.string(), safe=False)
    cols["tls_version"] = pa.array(["1.3"] * 5)  # newer agent: ignored
    del cols["srtt_us"]  # older agent: default
    table, rejected = check_table(TCP_CONNECTION, pa.table(cols))
    assert [(r.index, r.reason) for r in rejected] == [(1, "wrong_type"), (2, "out_of_range"), (3, "invalid_utf8")]
    assert table.column("conn_id").to_pylist() == [rows[0]["conn_id"], rows[4]["conn_id"]]
    assert table.column("srtt_us").to_pylist() == [0, 0]
    assert table.schema == TCP_CONNECTION.arrow_schema
    cols["pid"] = pa.array(["x"] * 5)
    with pytest.raises(BadMessage) as e:
        check_table(TCP_CONNECTION, pa.table(cols))
    assert e.value.reason == "wrong_type"


def test_newer_agent_adds_a_field_older_ingest_ignores_it() -> None:
    rows = make_rows(3)
    rows[0]["tls_version"] = "1.3"  # a field this worker does not know
    del rows[1]["srtt_us"]  # a field an older agent does not send
    decoded = [wire.decode(wire.encode(r)) for r in rows]
    table, rejected = build_batch(TCP_CONNECTION, decoded)
    assert rejected == []
    assert table.column_names == TCP_CONNECTION.column_names
    assert table.column("srtt_us").to_pylist() == [rows[0]["srtt_us"], 0, rows[2]["srtt_us"]]


@pytest.mark.parametrize(("headers", "reason"), [
    (None, "missing_headers"),
    ([("bs-kind", b"tcp_connection")], "missing_headers"),
    ([("bs-kind", b"nope"), ("bs-schema", b"1")], "unknown_kind"),
    ([("bs-kind", b"tcp_connection"), ("bs-schema", b"2")], "unknown_schema_version"),
    ([("bs-kind", b"tcp_connection"), ("bs-schema", b"x")], "unknown_schema_version"),
    ([("bs-kind", b"tcp_connection"), ("bs-schema", b"1"), ("bs-enc", b"avro")], "unknown_encoding"),
    ([("bs-kind", b"pipeline_counter"), ("bs-schema", b"1")], "kind_mismatch"),
])
def test_headers_that_cannot_be_read(headers, reason) -> None:
    with pytest.raises(wire.WireError) as e:
        wire.message_kind(headers, TCP_CONNECTION)
    assert e.value.reason == reason


@pytest.mark.parametrize(("value", "reason"), [
    (None, "undecodable"),
    (b"\xc1\xc1\xc1", "undecodable"),
    (b"\x81\xa4host", "undecodable"),  # truncated
    (b"\x81\xa4host\xa2\xff\xfe", "invalid_utf8"),
    (msgpack.packb([1, 2, 3]), "not_a_map"),
])
def test_values_that_cannot_be_decoded(value, reason) -> None:
    with pytest.raises(wire.WireError) as e:
        wire.decode(value)
    assert e.value.reason == reason


def test_validation_names_each_bad_record_and_keeps_the_good() -> None:
    rows = make_rows(10)
    rows[1]["pid"] = -1
    rows[2]["comm"] = "x" * 17
    rows[3]["remote_addr"] = "not-an-ip"
    rows[4]["bytes_sent"] = True
    rows[5]["role"] = None
    rows[6]["srtt_us"] = 1.5
    rows[7]["local_port"] = 70000
    rows[8]["host"] = b"bytes"
    rows[9]["local_addr"] = "::ffff:10.0.0.1"  # good: IPv6 text
    table, rejected = build_batch(TCP_CONNECTION, rows)
    assert [(r.index, r.reason) for r in rejected] == [
        (1, "out_of_range"), (2, "oversized_field"), (3, "invalid_address"), (4, "wrong_type"),
        (5, "wrong_type"), (6, "wrong_type"), (7, "out_of_range"), (8, "wrong_type")]
    assert table.column("conn_id").to_pylist() == [rows[0]["conn_id"], rows[9]["conn_id"]]


def test_every_kind_has_a_topic_and_headers() -> None:
    topics = [k.topic for k in KINDS.values()]
    assert len(set(topics)) == len(topics)
    for k in KINDS.values():
        for enc in (wire.ENC_ARROW, wire.ENC_MSGPACK):
            assert wire.message_kind(wire.headers_for(k, enc), k) == (k, enc)


def test_security_settings_pass_through_from_file_and_env_and_never_show(tmp_path) -> None:
    props = tmp_path / "kafka.properties"
    props.write_text("# TLS + SASL\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
                     "sasl.username=agent\nssl.ca.location=/etc/ca.pem\n")
    env = {"BLINDSPOT_RDKAFKA_SASL_PASSWORD": "s3cret", "PATH": "/bin"}
    extra = client_settings(str(props), environ=env)
    assert extra == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                     "sasl.username": "agent", "ssl.ca.location": "/etc/ca.pem", "sasl.password": "s3cret"}
    conf = KafkaSinkConfig("b:9092", extra=extra).librdkafka()
    assert conf["sasl.password"] == "s3cret" and conf["enable.idempotence"] is True and conf["acks"] == "all"
    assert "s3cret" not in repr(redacted(conf))


def test_broker_away_the_agent_buffers_within_its_bound_and_counts_every_drop() -> None:
    """No broker at all (a closed port): 50 messages fit the queue, the other 150 are dropped at once
    (queue_full); the 50 time out after message_timeout_ms (delivery_failed). Nothing is silent."""
    import time

    from prometheus_client import CollectorRegistry, generate_latest

    from agent.kafka_sink import KafkaSink

    reg = CollectorRegistry()
    cfg = KafkaSinkConfig("127.0.0.1:1", queue_max_messages=50, message_timeout_ms=1500, flush_timeout_s=5)
    sink = KafkaSink(cfg, host="h1", registry=reg)
    for r in make_rows(200):
        sink.emit("tcp_connection", r)
    assert sink.counts() == {"dropped": 150, "dropped:queue_full": 150}
    time.sleep(2.5)
    assert sink.close() == 0
    assert sink.counts() == {"dropped": 200, "dropped:queue_full": 150, "dropped:delivery_failed": 50}
    text = generate_latest(reg).decode()
    assert 'blindspot_agent_records_dropped_total{reason="queue_full"} 150.0' in text
    assert 'blindspot_agent_records_dropped_total{reason="delivery_failed"} 50.0' in text
    assert 'blindspot_agent_records_published_total{kind="tcp_connection"} 50.0' in text


def test_a_row_that_cannot_be_columnar_is_isolated_at_the_source() -> None:
    """Sources hand on Arrow tables: a row whose value does not fit its column (a bug in a decoder) is
    counted and logged at the source, and the rows beside it go on."""
    import logging

    from agent.errors import SourceErrors
    from agent.tcp_source import rows_table

    rows = make_rows(3)
    rows[1]["pid"] = -1  # does not fit uint32
    errors = SourceErrors("tcp", logging.getLogger("test"))
    table = rows_table(TCP_CONNECTION, rows, errors)
    assert table.column("pid").to_pylist() == [rows[0]["pid"], rows[2]["pid"]]
    assert errors.counters() == {"source_errors:tcp:encode": 1}
