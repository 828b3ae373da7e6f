"""Fuzz target: the TCP record decoder (agent/_tcp_event.unpack + agent/tcp_decode). Any 160 bytes
the ring buffer or the conns map hands over become a row every column accepts (or, for decode_open,
None); a buffer of another size is refused with struct.error (records are fixed-size)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import _tcp_event as ev
from agent.clock import Clock
from agent.tcp_bulk import decode_closed_batch, records
from agent.tcp_decode import decode_closed, decode_open
from contract.records import TCP_CONNECTION, TCP_OPEN_CONNECTION
from ingest.validate import build_batch
from tests.fuzz.corpus import seeds

CLOCK = Clock(offset_ns=1_700_000_000 * 10**9)


def _check(data: bytes) -> None:
    e = ev.unpack(data)
    for app_bytes in (True, False):
        row = decode_closed(e, clock=CLOCK, host="h", boot_id="b", agent_start_ns=5, app_bytes=app_bytes)
        table, rejected = build_batch(TCP_CONNECTION, [row])
        assert rejected == [] and table.num_rows == 1, rejected
    row = decode_open(e, clock=CLOCK, host="h", boot_id="b", agent_start_ns=5, snapshot_ns=7)
    if row is not None:
        table, rejected = build_batch(TCP_OPEN_CONNECTION, [row])
        assert rejected == [] and table.num_rows == 1, rejected


@pytest.mark.parametrize(("name", "data"), seeds("tcp_event"))
def test_corpus_tcp(name: str, data: bytes) -> None:
    _check(data)


_u64 = st.one_of(st.integers(0, 10**13), st.integers(0, 2**64 - 1))


@st.composite
def tcp_records(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(min_size=ev.TCP_EVENT_SIZE, max_size=ev.TCP_EVENT_SIZE))
    e = ev.TcpEvent()
    for f in ("sk", "start_ns", "established_ns", "end_ns", "bytes_acked", "bytes_received", "app_bytes_sent",
              "app_bytes_received"):
        setattr(e, f, draw(_u64))
    for f in ("pid", "srtt_us", "retransmits", "flags"):
        setattr(e, f, draw(st.integers(0, 2**32 - 1)))
    e.sk_err = draw(st.integers(-(2**31), 2**31 - 1))
    e.family = draw(st.sampled_from([2, 10, 0, 0xFFFF]))
    e.role, e.old_state, e.kind = (draw(st.integers(0, 255)) for _ in range(3))
    e.comm = draw(st.binary(max_size=16))
    return bytes(e)


@given(data=tcp_records())
def test_tcp_decode_total(data: bytes) -> None:
    _check(data)


@given(data=st.binary(max_size=ev.TCP_EVENT_SIZE - 1))
def test_short_record_is_refused(data: bytes) -> None:
    with pytest.raises(struct.error):
        ev.unpack(data)


def _check_drain(data: bytes) -> None:
    """Any bytes, read as a drain of whole records (agent/tcp_bulk.py): one row per closed record,
    every one accepted by the columns."""
    recs = records(data)
    closed = recs[recs["kind"] == ev.KIND_CLOSED]
    for app_bytes in (True, False):
        table = decode_closed_batch(closed, clock=CLOCK, host="h", boot_id="b", agent_start_ns=5,
                                    app_bytes=app_bytes, drop_names={})
        assert table.num_rows == len(closed)
        _, rejected = build_batch(TCP_CONNECTION, TCP_CONNECTION.to_rows(table))
        assert rejected == [], rejected


@pytest.mark.parametrize(("name", "data"), seeds("tcp_event"))
def test_corpus_tcp_drain(name: str, data: bytes) -> None:
    _check_drain(data)


@given(data=st.binary(max_size=ev.TCP_EVENT_SIZE * 8))
def test_tcp_bulk_decode_total(data: bytes) -> None:
    _check_drain(data)
