"""Decoded records -> one columnar batch, with every bad record named and set aside.

Checks whole columns at C speed and looks at single values only when a column fails: a batch of good
records costs one ``type`` per value plus one Arrow conversion per column. A record is bad when a
field has the wrong type (``bool`` is not an int, a float is not an int, ``None`` is not a value), is
out of range for its column, is longer than the column's ``max_len`` (bytes of UTF-8), or is not an
address where the table stores IPv6 (``*_addr`` columns). Unknown fields are ignored and missing
fields take the column's default (docs/wire-format.md).

Public API: ``build_batch`` and ``Rejected``.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from blindspot.records import Column, RecordKind

__all__ = ["Rejected", "build_batch"]


@dataclass(frozen=True)
class Rejected:
    index: int  # position in the input
    reason: str  # wrong_type, out_of_range, oversized_field, invalid_address
    detail: str


def _allowed(col: Column) -> type:
    return str if pa.types.is_string(col.type) else int


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4 = rf"^{_OCTET}(\.{_OCTET}){{3}}$"
# Loose for IPv6 on purpose: anything it lets through that the engine still refuses is caught when
# the insert is split (ingest/worker.py); full IPv6 grammar as a regex costs more than it saves.
_V6 = r"^[0-9A-Fa-f:]{2,39}$|^[0-9A-Fa-f:]{2,29}:[0-9.]{7,15}$"
_addr_ok: dict[str, bool] = {}


def _is_address(v: str) -> bool:
    ok = _addr_ok.get(v)
    if ok is None:
        try:
            ipaddress.ip_address(v)
            ok = True
        except ValueError:
            ok = False
        if len(_addr_ok) > 100_000:  # a bounded cache: addresses repeat a lot within a fleet
            _addr_ok.clear()
        _addr_ok[v] = ok
    return ok


def _check_value(col: Column, v: Any) -> Rejected | None:
    want = _allowed(col)
    if type(v) is not want:
        return Rejected(-1, "wrong_type", f"{col.name}: {type(v).__name__}, want {want.__name__}")
    try:
        pa.array([v], type=col.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
        return Rejected(-1, "out_of_range", f"{col.name}: {e}"[:200])
    return None


def build_batch(kind: RecordKind, rows: Sequence[dict[str, Any]]) -> tuple[pa.Table, list[Rejected]]:
    """The good rows of ``rows`` as an Arrow table in ``kind``'s column order, and the rejected ones."""
    bad: dict[int, Rejected] = {}
    # Transpose with itemgetter + zip (C loops); a row lacking a field (an older agent) takes defaults.
    names = kind.column_names
    one = len(names) == 1
    getter = operator.itemgetter(*names)
    defaults = {c.name: c.default for c in kind.columns}
    tuples = []
    for r in rows:
        try:
            tuples.append((getter(r),) if one else getter(r))
        except KeyError:
            tuples.append(tuple(r.get(n, defaults[n]) for n in names))
    columns: list[list[Any]] = [list(c) for c in zip(*tuples, strict=True)] if rows else [[] for _ in names]
    for col, vals in zip(kind.columns, columns, strict=True):
        want = _allowed(col)
        if set(map(type, vals)) - {want}:
            for i, v in enumerate(vals):
                if type(v) is not want and i not in bad:
                    found = _check_value(col, v)
                    assert found is not None
                    bad[i] = Rejected(i, found.reason, found.detail)

    arrays: list[pa.Array] = []
    for col, vals in zip(kind.columns, columns, strict=True):
        if bad:  # placeholders keep positions; the rows are filtered out below
            vals = [col.default if i in bad else v for i, v in enumerate(vals)]
        try:
            arr = pa.array(vals, type=col.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            for i, v in enumerate(vals):
                if i not in bad and (found := _check_value(col, v)) is not None:
                    bad[i] = Rejected(i, found.reason, found.detail)
            vals = [col.default if i in bad else v for i, v in enumerate(vals)]
            arr = pa.array(vals, type=col.type)
        if col.max_len is not None:
            over = pc.greater(pc.binary_length(arr), col.max_len)
            if pc.any(over).as_py():
                for i in pc.indices_nonzero(over).to_pylist():
                    if i not in bad:
                        n = len(vals[i].encode())
                        bad[i] = Rejected(i, "oversized_field", f"{col.name}: {n} bytes > {col.max_len}")
        if col.name.endswith("_addr"):
            # A regex over the column first; only values it does not vouch for go to ipaddress.
            looks_ok = pc.or_(pc.match_substring_regex(arr, _V4), pc.match_substring_regex(arr, _V6))
            if not pc.all(looks_ok).as_py():
                for i in pc.indices_nonzero(pc.invert(looks_ok)).to_pylist():
                    if i not in bad and not _is_address(vals[i]):
                        bad[i] = Rejected(i, "invalid_address", f"{col.name}: {vals[i][:64]!r}")
        arrays.append(arr)

    table = pa.Table.from_arrays(arrays, schema=kind.arrow_schema)
    if bad:
        keep = pa.array([i not in bad for i in range(len(rows))])
        table = table.filter(keep)
    return table, sorted(bad.values(), key=lambda r: r.index)
