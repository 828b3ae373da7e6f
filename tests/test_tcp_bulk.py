"""The bulk TCP decoder (agent/tcp_bulk.py) gives exactly the rows the one-row decoder gives: every
column, every record of the fuzz corpus, random records, and drains mixing normal and corrupt ones."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import _tcp_event as ev
from agent.clock import Clock
from agent.tcp_bulk import DTYPE, decode_closed_batch, records
from agent.tcp_decode import decode_closed
from contract.records import TCP_CONNECTION
from ingest.validate import build_batch
from tests.clocks import stepped
from tests.fuzz.corpus import seeds, tcp_record

NAMES = {2: "NO_SOCKET", 5: "NETFILTER_DROP"}


def _rows_one_by_one(data: bytes, clock: Clock, app_bytes: bool, names: dict[int, str]) -> list[dict]:
    out = []
    for i in range(0, len(data) - len(data) % ev.TCP_EVENT_SIZE, ev.TCP_EVENT_SIZE):
        e = ev.unpack(data[i : i + ev.TCP_EVENT_SIZE])
        out.append(decode_closed(e, clock=clock, host="h", boot_id="b", agent_start_ns=5, app_bytes=app_bytes,
                                 drop_names=names))
    return out


def _key(row: dict) -> tuple:
    return tuple(sorted(row.items()))


def check_same(data: bytes, offset: int = 1_700_000_000 * 10**9, clock: Clock | None = None) -> None:
    clock = clock or Clock(offset_ns=offset)
    for app_bytes in (True, False):
        want = _rows_one_by_one(data, clock, app_bytes, NAMES)
        table = decode_closed_batch(records(data), clock=clock, host="h", boot_id="b", agent_start_ns=5,
                                    app_bytes=app_bytes, drop_names=NAMES)
        assert table.schema == TCP_CONNECTION.arrow_schema
        got = TCP_CONNECTION.to_rows(table)
        # Rows with corrupt times come after the others: compare as multisets, exactly.
        assert sorted(map(_key, got)) == sorted(map(_key, want))
        _, rejected = build_batch(TCP_CONNECTION, got)
        assert rejected == []


@pytest.mark.parametrize(("name", "data"), seeds("tcp_event"))
def test_corpus_record_alone_and_in_a_drain(name: str, data: bytes) -> None:
    check_same(data)
    check_same(b"".join(s for _, s in seeds("tcp_event") if len(s) % ev.TCP_EVENT_SIZE == 0))


def test_known_row_values() -> None:
    data = tcp_record(start_ns=1_000, established_ns=1_500, end_ns=9_000, app_bytes_sent=100, app_bytes_received=50,
                      flags=ev.F_ESTABLISHED | ev.F_OWNER_EXACT | ev.F_CLOSED, pid=42, kind=ev.KIND_CLOSED,
                      drops=3, drop_reason=5)
    [row] = TCP_CONNECTION.to_rows(decode_closed_batch(records(data), clock=Clock(offset_ns=10**18), host="h",
                                                       boot_id="b", agent_start_ns=0, app_bytes=True,
                                                       drop_names=NAMES))
    assert row["start_time"] == 10**18 + 1_000 and row["end_time"] == 10**18 + 9_000
    assert (row["duration_ns"], row["handshake_ns"]) == (8_000, 500)
    assert (row["local_addr"], row["local_port"], row["remote_addr"], row["remote_port"]) == (
        "127.0.0.1", 40000, "127.0.0.2", 80)
    assert (row["bytes_sent"], row["bytes_received"], row["pid"], row["comm"]) == (100, 50, 42, "curl")
    assert (row["owner_source"], row["close_reason"], row["drops"], row["drop_reason"]) == (
        "exact", "closed", 3, "NETFILTER_DROP")


def test_start_and_end_by_the_wall_clock_of_their_moment() -> None:
    """A connection open across a step of the wall clock: its start keeps the offset it had, its end
    has the new one; both decoders agree on the corpus under many steps."""
    clock = stepped(10**18, (5_000, -3_000_000))
    data = tcp_record(start_ns=1_000, established_ns=1_500, end_ns=9_000, flags=ev.F_ESTABLISHED | ev.F_CLOSED,
                      kind=ev.KIND_CLOSED)
    [row] = TCP_CONNECTION.to_rows(decode_closed_batch(records(data), clock=clock, host="h", boot_id="b",
                                                       agent_start_ns=0, app_bytes=True, drop_names=NAMES))
    assert (row["start_time"], row["end_time"], row["duration_ns"]) == (10**18 + 1_000, 10**18 - 2_991_000, 8_000)
    many = stepped(1_700_000_000 * 10**9, *[(t, (-1) ** t * 1_000_000) for t in (1, 10**3, 10**6, 10**9, 10**12)])
    check_same(b"".join(s for _, s in seeds("tcp_event") if len(s) % ev.TCP_EVENT_SIZE == 0), clock=many)


def test_empty_drain() -> None:
    table = decode_closed_batch(np.empty(0, DTYPE), clock=Clock(offset_ns=0), host="h", boot_id="b",
                                agent_start_ns=0, app_bytes=True, drop_names={})
    assert table.num_rows == 0 and table.schema == TCP_CONNECTION.arrow_schema


def test_random_drains_with_odd_clock_offsets() -> None:
    rnd = random.Random(13)
    for offset in (0, -(10**15), 1_700_000_000 * 10**9, 1 << 62, -(1 << 63)):
        blob = bytes(rnd.getrandbits(8) for _ in range(ev.TCP_EVENT_SIZE * 64))
        check_same(blob, offset)


_u64 = st.one_of(st.integers(0, 10**13), st.integers(0, 2**64 - 1))


@st.composite
def drains(draw: st.DrawFn) -> bytes:
    out = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            out.append(draw(st.binary(min_size=ev.TCP_EVENT_SIZE, max_size=ev.TCP_EVENT_SIZE)))
            continue
        e = ev.TcpEvent()
        for f in ("sk", "start_ns", "established_ns", "end_ns", "bytes_acked", "bytes_received", "app_bytes_sent",
                  "app_bytes_received"):
            setattr(e, f, draw(_u64))
        for f in ("pid", "srtt_us", "retransmits", "flags", "drops", "drop_reason"):
            setattr(e, f, draw(st.sampled_from([0, 1, 2, 5, 2**32 - 1]) | st.integers(0, 2**32 - 1)))
        e.sk_err = draw(st.sampled_from([0, 110, 111, -1]) | st.integers(-(2**31), 2**31 - 1))
        e.family = draw(st.sampled_from([2, 10, 0, 0xFFFF]))
        e.role, e.old_state, e.kind = (draw(st.integers(0, 255)) for _ in range(3))
        e.comm = draw(st.binary(max_size=16))
        out.append(bytes(e))
    return b"".join(out)


@settings(max_examples=200, deadline=None)
@given(data=drains())
def test_bulk_equals_one_by_one(data: bytes) -> None:
    check_same(data)
