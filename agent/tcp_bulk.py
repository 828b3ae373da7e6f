"""decode_closed_batch: a drain of kernel TCP records (struct tcp_event) -> one tcp_connections table.

One Python call per drain, not per connection (agent/tcp_source.py reads the ring in bulk with
agent/ringbuf.py): numeric columns are numpy arithmetic on the record fields; values that repeat
(addresses, comms, close reasons, drop reasons) are worked out once per distinct value with the very
functions agent/tcp_decode.py uses for one row. A record whose times are beyond 2^62 ns (146 years of
uptime: only corrupt bytes get there) takes that one-row path, which clamps them exactly as before.

Exact: tests/test_tcp_bulk.py checks every column against ``decode_closed`` for the fuzz corpus and
random records. Total: any array of records gives one row per closed record; records of another kind
(the kernel sends none) are counted by the caller, never guessed at.
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from agent import _tcp_event as ev
from agent.clock import Clock
from agent.drop_reasons import reason_name
from agent.tcp_decode import ROLE_NAMES, _boot_salt, address, close_reason, comm_text, decode_closed
from contract.records import TCP_CONNECTION


def _dtype() -> np.dtype:
    names: list[str] = []
    formats: list[Any] = []
    offsets: list[int] = []
    for name, ctype in ev.TcpEvent._fields_:  # type: ignore[misc]
        names.append(name)
        offsets.append(getattr(ev.TcpEvent, name).offset)
        length = getattr(ctype, "_length_", None)  # a C array (char arrays too): raw bytes
        formats.append((np.uint8, (length,)) if length is not None else np.dtype(ctype).newbyteorder("<"))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": C.sizeof(ev.TcpEvent)})


DTYPE = _dtype()  # struct tcp_event as numpy sees it: one element per 160-byte record
assert DTYPE.itemsize == ev.TCP_EVENT_SIZE

_TIME_LIMIT = np.uint64(1 << 62)  # below: mono + offset fits int64 for any offset the clock can have
_M64 = np.uint64
_CLOSE_FLAGS = ev.F_RST_RECEIVED | ev.F_RST_SENT | ev.F_ESTABLISHED  # close_reason's flags (and F_CLOSE_UNSEEN)
assert _CLOSE_FLAGS < 256
_ROLE_TEXT = pa.array([ROLE_NAMES.get(i, "unknown") for i in range(256)], pa.string())
_FAMILY = np.full(1 << 16, 6, np.uint8)
_FAMILY[2] = 4  # socket.AF_INET


def records(data: bytes | bytearray | memoryview) -> np.ndarray:
    """``data`` (whole records, as the ring hands them over) as an array of ``DTYPE``; a trailing
    partial record is left out (the ring reader never hands one over)."""
    n = len(data) // DTYPE.itemsize
    return np.frombuffer(data, DTYPE, count=n)


def _per_value(keys: np.ndarray, text: Callable[[Any], str]) -> pa.Array:
    """A string column: ``text`` of each distinct key (an int64, or a row of a 2-D uint8 array as
    bytes), computed once, then taken per row (hashing, not sorting: a drain holds few distinct)."""
    if keys.ndim > 1:
        keys = np.ascontiguousarray(keys, np.uint8)
        arr = pa.Array.from_buffers(pa.binary(keys.shape[1]), len(keys), [None, pa.py_buffer(keys)])
    else:
        arr = pa.array(keys, pa.int64())
    enc = arr.dictionary_encode()
    values = pa.array([text(k) for k in enc.dictionary.to_pylist()], pa.string())
    return values.take(enc.indices)


def _splitmix(sk: np.ndarray, start: np.ndarray, salt: int) -> np.ndarray:
    # agent/tcp_decode.conn_id, in uint64 arithmetic (which wraps exactly as its & _M64 does).
    x = (sk ^ _M64(salt)) * _M64(0x9E3779B97F4A7C15) + start
    x = (x ^ (x >> _M64(30))) * _M64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _M64(27))) * _M64(0x94D049BB133111EB)
    return x ^ (x >> _M64(31))


def _wall(mono: np.ndarray, clock: Clock) -> np.ndarray:
    return np.where(mono == 0, 0, mono.astype(np.int64) + clock.offsets_at(mono))


def decode_closed_batch(
    recs: np.ndarray, *, clock: Clock, host: str, boot_id: str, agent_start_ns: int, app_bytes: bool,
    drop_names: Mapping[int, str],
) -> pa.Table:
    """One ``tcp_connections`` row per record of ``recs`` (``DTYPE``), as ``decode_closed`` makes it,
    in one table of TCP_CONNECTION's schema. The caller keeps only closed records."""
    recs = np.ascontiguousarray(recs, DTYPE)
    odd = np.zeros(len(recs), bool)
    for f in ("start_ns", "end_ns"):
        odd |= (recs[f] >= _TIME_LIMIT) | (np.abs(clock.offsets_at(recs[f])) >= _TIME_LIMIT.astype(np.int64))
    odd |= recs["established_ns"] >= _TIME_LIMIT
    tables = []
    if odd.any():  # corrupt times: the one-row path, which clamps them as it always has
        rows = [decode_closed(ev.unpack(r.tobytes()), clock=clock, host=host, boot_id=boot_id,
                              agent_start_ns=agent_start_ns, app_bytes=app_bytes, drop_names=drop_names)
                for r in recs[odd]]
        tables.append(TCP_CONNECTION.to_arrow(rows))
        recs = recs[~odd]
    tables.insert(0, _decode(recs, clock, host, boot_id, agent_start_ns, app_bytes, drop_names))
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _decode(r: np.ndarray, clock: Clock, host: str, boot_id: str, agent_start_ns: int, app_bytes: bool,
            drop_names: Mapping[int, str]) -> pa.Table:
    n = len(r)
    flags = r["flags"]
    preexisting = (flags & ev.F_PREEXISTING) != 0
    start, est, end = r["start_ns"], r["established_ns"], r["end_ns"]  # all < 2^62 here
    s64, e64, x64 = start.astype(np.int64), est.astype(np.int64), end.astype(np.int64)
    has_start = start != 0
    duration = np.where(has_start, np.maximum(x64 - s64, 0), 0).astype(np.uint64)
    handshake = np.where(has_start & (est != 0), np.maximum(e64 - s64, 0), 0).astype(np.uint64)
    conn = _splitmix(r["sk"], np.where(has_start, start, _M64(agent_start_ns)), _boot_salt(boot_id))
    seq = preexisting | (not app_bytes)
    sent = np.where(seq, r["bytes_acked"], r["app_bytes_sent"])
    received = np.where(seq, r["bytes_received"], r["app_bytes_received"])
    family = r["family"]

    def addr(field: str) -> pa.Array:
        keys = np.empty((n, 18), np.uint8)
        keys[:, 0], keys[:, 1] = family & 0xFF, family >> 8
        keys[:, 2:] = r[field]
        return _per_value(keys, lambda k: address(int.from_bytes(k[:2], "little"), k[2:]))

    # old_state: bits 0-7, the flags close_reason reads: 8-15, sk_err: 16-47, close unseen: 48
    reason_key = ((r["sk_err"].astype(np.int64) & 0xFFFFFFFF) << 16) | ((flags & _CLOSE_FLAGS).astype(np.int64) << 8) \
        | r["old_state"].astype(np.int64) | ((flags & ev.F_CLOSE_UNSEEN) != 0).astype(np.int64) << 48

    def reason(v: int) -> str:
        err = (v >> 16) & 0xFFFFFFFF
        unseen = ev.F_CLOSE_UNSEEN if v >> 48 else 0
        return close_reason(v & 0xFF, (v >> 8) & 0xFF | unseen, err - (1 << 32) if err >> 31 else err)

    drops = r["drops"]
    drop_key = np.where(drops != 0, r["drop_reason"].astype(np.int64), -1)
    owner = np.where(flags & ev.F_OWNER_EXACT, 0, np.where(flags & ev.F_OWNER_LISTENER, 1, 2)).astype(np.int32)
    columns = {
        "host": pa.array([host], pa.string()).take(pa.array(np.zeros(n, np.int32))),
        "conn_id": conn,
        "start_time": pa.array(_wall(start, clock), TCP_CONNECTION.arrow_schema.field("start_time").type),
        "end_time": pa.array(_wall(end, clock), TCP_CONNECTION.arrow_schema.field("end_time").type),
        "duration_ns": duration,
        "handshake_ns": handshake,
        "role": _ROLE_TEXT.take(pa.array(r["role"].astype(np.int32))),
        "family": _FAMILY[family],
        "local_addr": addr("saddr"),
        "local_port": r["sport"],
        "remote_addr": addr("daddr"),
        "remote_port": r["dport"],
        "pid": r["pid"],
        "comm": _per_value(r["comm"], comm_text),
        "bytes_sent": sent,
        "bytes_received": received,
        "retransmits": r["retransmits"],
        "srtt_us": r["srtt_us"],
        "close_reason": _per_value(reason_key, reason),
        "started_before_agent": preexisting.astype(np.uint8),
        "owner_source": pa.array(["exact", "listener", "unknown"], pa.string()).take(pa.array(owner)),
        "drops": drops,
        "drop_reason": _per_value(drop_key, lambda k: "" if k == -1 else reason_name(drop_names, k)),  # type: ignore[arg-type,operator]
    }
    schema = TCP_CONNECTION.arrow_schema
    arrays = [c if isinstance(c, pa.Array) else pa.array(c, f.type) for f in schema for c in (columns[f.name],)]
    return pa.Table.from_arrays(arrays, schema=schema)
