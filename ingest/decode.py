"""Where a Kafka message becomes rows. Every message of a batch goes through three steps:

    bytes ─ contract.wire ─► a record (msgpack) or an Arrow batch ─ ingest.validate ─► rows of the kind's table
                                                                                 └─► rejected rows (reason)

``decode_batch`` applies them to the messages of one batch and returns one table of good rows, with
where each row came from (``Seg``: the message, and which of its rows). It is total: a message that
fails in any way, expected or not, goes to ``reject`` (the worker dead-letters it with its reason and
the exception class) and the others go on; nothing here raises for a message's sake.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from contract import wire
from contract.records import RecordKind
from ingest._crash import crash_point
from ingest.validate import BadMessage, Rejected, build_batch, check_table

log = logging.getLogger(__name__)


class Reject(Protocol):
    """Dead-letter one message (``raw``/``row``: one row of an Arrow batch) with a reason."""

    def __call__(self, m: Any, reason: str, detail: str, *, raw: pa.Table | None = None, row: int | None = None,
                 error: str | None = None) -> None: ...


@dataclass
class Seg:
    """Where consecutive rows of an insert came from: a message, and which of its rows."""

    msg: Any
    rows: Sequence[int]
    raw: pa.Table | None  # the Arrow batch as received (None: a msgpack record)


def split(segs: list[Seg], n: int) -> tuple[list[Seg], list[Seg]]:
    """The first ``n`` rows' segments and the rest."""
    left: list[Seg] = []
    for i, seg in enumerate(segs):
        if n <= 0:
            return left, segs[i:]
        if len(seg.rows) <= n:
            left.append(seg)
            n -= len(seg.rows)
            continue
        return [*left, Seg(seg.msg, seg.rows[:n], seg.raw)], [Seg(seg.msg, seg.rows[n:], seg.raw), *segs[i + 1:]]
    return left, []


def reject_error(m: Any, e: Exception, reject: Reject) -> None:
    """A message whose decoding or checking raised: its own verdict, or ``decode_failed`` with the
    exception class for anything unexpected (the message goes, the worker stays)."""
    if isinstance(e, wire.WireError | BadMessage):
        reject(m, e.reason, e.detail, error=type(e).__name__)
    else:
        log.warning("message %s:%s:%s failed to decode (%s: %s); dead-lettered", m.topic(), m.partition(),
                    m.offset(), type(e).__name__, e)
        reject(m, "decode_failed", f"{type(e).__name__}: {e}"[:300], error=type(e).__name__)


def decode_batch(topic: str, kind: RecordKind | None, msgs: list[Any], reject: Reject,
                 guard: Callable[[int], None] | None = None, crashed_at: int | None = None
                 ) -> tuple[pa.Table | None, list[Seg]]:
    """Every message of a batch -> the good rows as one table in ``kind``'s schema, and where each row
    came from. ``guard(offset)`` is called before each message is decoded (the worker records the offset
    in its intent); the message at ``crashed_at`` (a previous owner died decoding it) is rejected
    undecoded."""
    rows: list[dict[str, Any]] = []  # msgpack: one record a message
    row_msgs: list[Any] = []
    parts: list[pa.Table] = []  # arrow batches in a foreign schema: checked one by one
    part_segs: list[Seg] = []
    fast: list[tuple[Any, pa.Table]] = []  # arrow batches in exactly our schema: checked together
    for m in msgs:
        if m.offset() == crashed_at:
            reject(m, "crashed_worker", "a worker died decoding this message")
            continue
        if guard is not None:
            guard(m.offset())
        crash_point("decode", (m.value() or b"").startswith(b"CRASH"))
        try:
            if kind is None:
                raise wire.WireError("unknown_kind", f"no record kind reads topic {topic}")
            _kind, enc = wire.message_kind(m.headers(), kind)
            if enc == wire.ENC_MSGPACK:
                row = wire.decode(m.value())
                if guard is None:
                    rows.append(row)
                    row_msgs.append(m)
                    continue
                # Under guard every check of a message happens here, while its offset is recorded.
                good, bad = build_batch(kind, [row])
                for r in bad:
                    reject(m, r.reason, r.detail)
                if good.num_rows:
                    parts.append(good)
                    part_segs.append(Seg(m, range(1), None))
                continue
            raw = wire.decode_batch(m.value())
            if raw.schema.equals(kind.arrow_schema) and guard is None:
                fast.append((m, raw))
                continue
            _check_alone(kind, m, raw, reject, parts, part_segs)
        except Exception as e:
            reject_error(m, e, reject)
    if fast:
        assert kind is not None
        try:
            good, fast_segs = _check_together(kind, fast, reject)
        except Exception:  # one of them is bad in a way the checks did not expect: one by one
            log.exception("checking %d Arrow messages together failed; checking them one by one", len(fast))
            good, fast_segs = None, []
            for m, raw in fast:
                _check_alone(kind, m, raw, reject, parts, part_segs)
        if good is not None and good.num_rows:
            parts.insert(0, good)
            part_segs[:0] = [sg for sg in fast_segs if sg.rows]
    # Single msgpack records first, then the Arrow rows: a fixed order, so a replay is identical.
    segs: list[Seg] = []
    if kind is not None and rows:
        try:
            table, rejected = build_batch(kind, rows)
        except Exception:
            log.exception("checking %d records together failed; checking them one by one", len(rows))
            table, rejected = _build_one_by_one(kind, rows)
        gone = {r.index for r in rejected}
        for r in rejected:
            reject(row_msgs[r.index], r.reason, r.detail, error=r.error)
        segs = [Seg(m, range(1), None) for i, m in enumerate(row_msgs) if i not in gone]
        if table.num_rows:
            parts.insert(0, table)
    segs += part_segs
    if not parts:
        return None, segs
    return (parts[0] if len(parts) == 1 else pa.concat_tables(parts)), segs


def _check_alone(kind: RecordKind, m: Any, raw: pa.Table, reject: Reject, parts: list[pa.Table],
                 part_segs: list[Seg]) -> None:
    """One Arrow message checked on its own: its good rows (and where they came from) appended; a
    message the checks fail on in a way they did not expect is rejected with the exception."""
    try:
        good, rejected = check_table(kind, raw)
        seg = _seg_after_rejects(m, raw, rejected, reject)
    except Exception as e:
        reject_error(m, e, reject)
        return
    if good.num_rows:
        parts.append(good)
        part_segs.append(seg)


def _check_together(kind: RecordKind, fast: list[tuple[Any, pa.Table]], reject: Reject) -> tuple[pa.Table, list[Seg]]:
    """One check over Arrow messages in exactly our schema: per-column work once per batch."""
    whole = pa.concat_tables([raw for _, raw in fast])
    good, rejected = check_table(kind, whole)
    starts = list(itertools.accumulate((raw.num_rows for _, raw in fast), initial=0))
    by_msg: dict[int, list[Rejected]] = {}
    for r in rejected:
        j = bisect.bisect_right(starts, r.index) - 1
        by_msg.setdefault(j, []).append(Rejected(r.index - starts[j], r.reason, r.detail))
    return good, [_seg_after_rejects(m, raw, by_msg.get(j, []), reject) for j, (m, raw) in enumerate(fast)]


def _seg_after_rejects(m: Any, raw: pa.Table, rejected: list[Rejected], reject: Reject) -> Seg:
    """Reject the bad rows of one Arrow message; the segment of the rows that stay."""
    if not rejected:
        return Seg(m, range(raw.num_rows), raw)
    for r in rejected:
        reject(m, r.reason, r.detail, raw=raw, row=r.index)
    gone = {r.index for r in rejected}
    return Seg(m, [i for i in range(raw.num_rows) if i not in gone], raw)


def _build_one_by_one(kind: RecordKind, rows: list[dict[str, Any]]) -> tuple[pa.Table, list[Rejected]]:
    tables, rejected = [], []
    for i, r in enumerate(rows):
        try:
            t, bad = build_batch(kind, [r])
        except Exception as e:
            rejected.append(Rejected(i, "decode_failed", f"{type(e).__name__}: {e}"[:200], type(e).__name__))
            continue
        if bad:
            rejected.append(Rejected(i, bad[0].reason, bad[0].detail))
        else:
            tables.append(t)
    return (pa.concat_tables(tables) if tables else kind.to_arrow([])), rejected
