"""Decoded records -> one columnar batch, with every bad record named and set aside.

Checks whole columns at C speed and looks at single values only when a column fails: a batch of good
records costs one ``type`` per value plus one Arrow conversion per column. A record is bad when a
field has the wrong type (``bool`` is not an int, a float is not an int, ``None`` is not a value), is
out of range for its column, is longer than the column's ``max_len`` (bytes of UTF-8), or is not an
address where the table stores IPv6 (``*_addr`` columns). Unknown fields are ignored and missing
fields take the column's default (docs/wire-format.md).

Two entry points: ``build_batch`` for decoded single records (msgpack), ``check_table`` for Arrow batches
(the agents' encoding), whose types are mostly checked by column. Public API: ``build_batch``,
``check_table``, ``Rejected``, ``BadMessage``.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from contract.errors import BlindspotError
from contract.records import Column, RecordKind

__all__ = ["BadMessage", "Rejected", "build_batch", "check_table"]


@dataclass(frozen=True)
class Rejected:
    index: int  # position in the input
    reason: str  # wrong_type, out_of_range, oversized_field, invalid_address
    detail: str
    error: str | None = None  # the exception class, when an exception led to the verdict


def default(col: Column) -> Any:
    """A missing field's value: the column's default, and ``::`` (the unspecified address) for an
    address column, whose IPv6 type cannot store ``""`` (docs/wire-format.md)."""
    return "::" if col.name.endswith("_addr") else col.default


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
            ok = "%" not in v  # a zone id (fe80::1%eth0): the IPv6 column cannot store it
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
    defaults = {c.name: default(c) for c in kind.columns}
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
            vals = [default(col) if i in bad else v for i, v in enumerate(vals)]
        try:
            arr = pa.array(vals, type=col.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            for i, v in enumerate(vals):
                if i not in bad and (found := _check_value(col, v)) is not None:
                    bad[i] = Rejected(i, found.reason, found.detail)
            vals = [default(col) if i in bad else v for i, v in enumerate(vals)]
            arr = pa.array(vals, type=col.type)
        _value_checks(col, arr, bad)
        arrays.append(arr)
    return _keep_good(kind, arrays, len(rows), bad)


def _value_checks(col: Column, arr: pa.Array, bad: dict[int, Rejected]) -> None:
    """Checks on values of the right type: length bound, address syntax."""
    if col.max_len is not None:
        over = pc.greater(pc.binary_length(arr), col.max_len)
        if pc.any(over).as_py():
            for i in pc.indices_nonzero(over).to_pylist():
                if i not in bad:
                    n = len(arr[i].as_py().encode())
                    bad[i] = Rejected(i, "oversized_field", f"{col.name}: {n} bytes > {col.max_len}")
    if col.name.endswith("_addr"):
        # Addresses repeat a lot: a regex over the distinct values first; only values it does not
        # vouch for go to ipaddress, and only then are their rows looked up.
        distinct = pc.unique(arr)
        looks_ok = pc.or_(pc.match_substring_regex(distinct, _V4), pc.match_substring_regex(distinct, _V6))
        if not pc.all(looks_ok).as_py():
            wrong = [v for v in pc.filter(distinct, pc.invert(looks_ok)).to_pylist() if not _is_address(v)]
            if wrong:
                for i in pc.indices_nonzero(pc.is_in(arr, value_set=pa.array(wrong, pa.string()))).to_pylist():
                    if i not in bad:
                        v = arr[i].as_py()
                        bad[i] = Rejected(i, "invalid_address", f"{col.name}: {v[:64]!r}")


def _keep_good(kind: RecordKind, arrays: list[pa.Array], n: int, bad: dict[int, Rejected]
               ) -> tuple[pa.Table, list[Rejected]]:
    table = pa.Table.from_arrays(arrays, schema=kind.arrow_schema)
    if bad:
        keep = pa.array([i not in bad for i in range(n)])
        table = table.filter(keep)
    return table, sorted(bad.values(), key=lambda r: r.index)


class BadMessage(BlindspotError, ValueError):
    """A whole batch message is unusable (a column of the wrong type); ``reason`` as for Rejected.
    (A leaf of contract.errors' tree, beside WireError.)"""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_table(kind: RecordKind, table: pa.Table) -> tuple[pa.Table, list[Rejected]]:
    """An Arrow batch as received -> its good rows in ``kind``'s exact schema, and the rejected rows.
    Raises BadMessage when a column cannot be read as its type at all. Integer columns of another
    width are accepted when every value fits; strings must be strings and times timestamps."""
    n = table.num_rows
    bad: dict[int, Rejected] = {}
    arrays: list[pa.Array] = []
    present = set(table.column_names)
    for col in kind.columns:
        if col.name not in present:  # an older agent: the column's default
            arrays.append(pa.array([default(col)] * n, type=col.type))
            continue
        arr = table.column(col.name).combine_chunks()
        if arr.type != col.type:
            arr = _convert(col, arr, bad)
        if arr.null_count:
            for i in pc.indices_nonzero(arr.is_null()).to_pylist():
                bad.setdefault(i, Rejected(i, "wrong_type", f"{col.name}: null"))
            arr = pc.fill_null(arr, pa.scalar(default(col), type=col.type))
        if pa.types.is_string(col.type):
            try:
                arr.validate(full=True)
            except pa.ArrowInvalid:
                arr = _utf8_rows(col, arr, bad)
        _value_checks(col, arr, bad)
        arrays.append(arr)
    return _keep_good(kind, arrays, n, bad)


def _convert(col: Column, arr: pa.Array, bad: dict[int, Rejected]) -> pa.Array:
    want = col.type
    if pa.types.is_integer(want) and pa.types.is_integer(arr.type):
        try:
            return pc.cast(arr, want, safe=True)
        except pa.ArrowInvalid:
            pass
        # Some values do not fit: find them (rare path, so plain Python), keep the rest.
        bits = want.bit_width
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if pa.types.is_signed_integer(want) else (0, 2**bits - 1)
        vals = arr.to_pylist()
        for i, v in enumerate(vals):
            if v is not None and not lo <= v <= hi:
                bad.setdefault(i, Rejected(i, "out_of_range", f"{col.name}: {v} does not fit {want}"))
                vals[i] = 0
        return pa.array(vals, type=want)
    if pa.types.is_string(want) and pa.types.is_large_string(arr.type):
        return pc.cast(arr, want)
    if pa.types.is_timestamp(want) and pa.types.is_timestamp(arr.type):
        try:
            return pc.cast(arr, want, safe=True)
        except (pa.ArrowInvalid, OverflowError) as e:  # seconds far out of nanosecond range
            raise BadMessage("out_of_range", f"{col.name}: {e}"[:200]) from None
    raise BadMessage("wrong_type", f"{col.name}: {arr.type}, want {want}")


def _utf8_rows(col: Column, arr: pa.Array, bad: dict[int, Rejected]) -> pa.Array:
    raw = arr.cast(pa.binary()).to_pylist()
    fixed = []
    for i, v in enumerate(raw):
        try:
            fixed.append(v.decode("utf-8") if v is not None else None)
        except UnicodeDecodeError as e:
            bad.setdefault(i, Rejected(i, "invalid_utf8", f"{col.name}: {e}"[:200]))
            fixed.append("")
    return pa.array(fixed, type=pa.string())
