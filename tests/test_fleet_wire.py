"""Wire format, validation and Kafka client settings: no broker, no root."""

from __future__ import annotations

import msgpack
import pytest

from agent.kafka_sink.config import KafkaSinkConfig, client_settings, redacted
from blindspot import wire
from blindspot.records import KINDS, TCP_CONNECTION
from ingest.validate import build_batch
from tests.kafka_fixture import make_rows

HDRS = wire.headers_for(TCP_CONNECTION)


def test_round_trip_keeps_every_value() -> None:
    for row in make_rows(50):
        assert wire.decode(wire.encode(row)) == row
    assert wire.message_kind(HDRS, TCP_CONNECTION) is TCP_CONNECTION


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
        assert wire.message_kind(wire.headers_for(k), k) is k


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
