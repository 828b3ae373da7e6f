"""Fuzz target: the fleet wire decoder, the way ingest/worker.py turns one Kafka message into rows
(wire.message_kind -> wire.decode / wire.decode_batch -> validate.build_batch / check_table). Any
value and headers end as rows in the kind's exact schema plus named rejections, or as WireError /
BadMessage (a dead letter); nothing else is raised. Good batches round-trip exactly."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract import wire
from contract.records import HTTP_REQUEST, KINDS, TCP_CONNECTION, RecordKind
from ingest.validate import BadMessage, build_batch, check_table
from tests.fuzz.corpus import seeds


def message_rows(headers: list[tuple[str, bytes | None]] | None, value: bytes | None, topic_kind: RecordKind
                 ) -> tuple[pa.Table, list] | None:
    """Rows of one message as ingest/worker.py's _flush gets them; None for a dead letter."""
    try:
        kind, enc = wire.message_kind(headers, topic_kind)
        if enc == wire.ENC_MSGPACK:
            table, rejected = build_batch(kind, [wire.decode(value)])
        else:
            table, rejected = check_table(kind, wire.decode_batch(value))
    except (wire.WireError, BadMessage):
        return None
    assert table.schema.equals(kind.arrow_schema)
    assert all(0 <= r.index for r in rejected)
    return table, rejected


def _headers(kind_name: str, enc: str) -> list[tuple[str, bytes | None]]:
    return wire.headers_for(KINDS[kind_name], enc)


@pytest.mark.parametrize(("name", "data"), seeds("wire"))
def test_corpus_wire(name: str, data: bytes) -> None:
    kind_name, enc, _ = name.split(".", 2)
    kind = KINDS[kind_name]
    out = message_rows(_headers(kind_name, enc), data, kind)
    if ".good." in name:
        assert out is not None and out[1] == [] and out[0].num_rows >= 1
    for mutated in _mutations(data, random.Random(name)):
        message_rows(_headers(kind_name, enc), mutated, kind)


def _mutations(data: bytes, rng: random.Random, k: int = 20) -> list[bytes]:
    out = []
    for _ in range(k if data else 0):
        b = bytearray(data)
        i = rng.randrange(len(b))
        op = rng.randrange(3)
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[i : i + rng.randrange(1, 9)]
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        out.append(bytes(b))
    return out


_kind = st.sampled_from([TCP_CONNECTION, HTTP_REQUEST])
_header_value = st.one_of(st.none(), st.binary(max_size=20), st.sampled_from([b"arrow", b"msgpack", b"1", b"99",
                                                                               b"tcp_connection", b"http_request"]))
_hdrs = st.one_of(
    st.none(),
    st.builds(_headers, st.sampled_from(["tcp_connection", "http_request"]), st.sampled_from(["arrow", "msgpack"])),
    st.lists(st.tuples(st.sampled_from([wire.H_KIND, wire.H_SCHEMA, wire.H_ENC, "x"]), _header_value), max_size=4),
)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),  # what msgpack can carry
                    st.floats(), st.text(max_size=30),
                    st.binary(max_size=10))


@given(kind=_kind, headers=_hdrs, value=st.one_of(st.none(), st.binary(max_size=400)))
def test_any_message(kind: RecordKind, headers: list | None, value: bytes | None) -> None:
    message_rows(headers, value, kind)


@given(kind=_kind, fields=st.dictionaries(st.one_of(st.sampled_from(list(HTTP_REQUEST.column_names)),
                                                    st.text(max_size=8)), _scalar, max_size=12))
def test_msgpack_records(kind: RecordKind, fields: dict) -> None:
    message_rows(wire.headers_for(kind, wire.ENC_MSGPACK), wire.encode(fields), kind)


@st.composite
def _tcp_rows(draw: st.DrawFn) -> list[dict]:
    n = draw(st.integers(1, 4))
    base = {c.name: c.default for c in TCP_CONNECTION.columns}
    rows = []
    for _ in range(n):
        rows.append(base | {"host": draw(st.text(max_size=20)), "conn_id": draw(st.integers(0, 2**64 - 1)),
                            "start_time": draw(st.integers(0, 2**63 - 1)),
                            "local_addr": draw(st.sampled_from(["127.0.0.1", "::1", "10.0.0.1"])),
                            "remote_addr": "::", "bytes_sent": draw(st.integers(0, 2**64 - 1)),
                            "comm": draw(st.text(st.characters(max_codepoint=0x7F), max_size=15))})
    return rows


@given(rows=_tcp_rows(), seed=st.integers(0, 2**32))
def test_arrow_batches_round_trip_and_mutate(rows: list[dict], seed: int) -> None:
    [(value, n)] = wire.encode_batch(TCP_CONNECTION, rows)
    out = message_rows(wire.headers_for(TCP_CONNECTION, wire.ENC_ARROW), value, TCP_CONNECTION)
    assert out is not None and out[1] == [] and n == len(rows)
    assert TCP_CONNECTION.to_rows(out[0]) == rows
    for mutated in _mutations(value, random.Random(seed), k=3):
        message_rows(wire.headers_for(TCP_CONNECTION, wire.ENC_ARROW), mutated, TCP_CONNECTION)
