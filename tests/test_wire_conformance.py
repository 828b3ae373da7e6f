"""docs/wire-format.md as a contract: messages are built from the document alone (its tables are
parsed here; nothing from contract.wire or contract.records builds them), then read by the worker's
own reading path and inserted into the real engine. What the document says is stored is stored; what
it says is refused is refused, with the reason it names."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pytest

DOC = (Path(__file__).resolve().parents[1] / "docs" / "wire-format.md").read_text()


def _doc_kinds() -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    heads = list(re.finditer(r"^### `(\w+)`: topic `([\w.]+)`, table `(\w+)`, `bs-schema: (\d+)`$", DOC, re.M))
    for i, h in enumerate(heads):
        body = DOC[h.end():heads[i + 1].start() if i + 1 < len(heads) else len(DOC)]
        cols = []
        for row in re.finditer(r"^\| `(\w+)` \| `([^`]+)` \| (\w+) \| ([^|]+) \| *(\d*) *\| `([^`]*)` \|$", body, re.M):
            name, arrow, mp, values, max_bytes, default = row.groups()
            bits = re.search(r"2\^(\d+)-1", values)
            cols.append({"name": name, "arrow": arrow, "msgpack": mp, "max_bytes": int(max_bytes or 0),
                         "max": 2 ** int(bits.group(1)) - 1 if bits and "int" in arrow else None,
                         "default": "" if default == '""' else default, "address": "address" in values})
        kinds[h.group(1)] = {"topic": h.group(2), "table": h.group(3), "schema": h.group(4), "columns": cols}
    return kinds


KINDS_DOC = _doc_kinds()
MAX_ROWS = int(re.search(r"records in one Arrow message \| \*\*([\d,]+)\*\*", DOC).group(1).replace(",", ""))
ARROW_TYPES = {"string": pa.string(), "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(),
               "uint64": pa.uint64(), "timestamp[ns, tz=UTC]": pa.timestamp("ns", tz="UTC")}


def _value(col: dict[str, Any], i: int, now: int) -> Any:
    """A value at the documented limit: the largest integer, the longest string."""
    if col["arrow"].startswith("timestamp"):
        return now - i
    if col["arrow"] == "string":
        if col["address"]:
            return "2001:db8::1" if i % 2 else "10.0.0.5"
        return "h" * col["max_bytes"]
    return col["max"]


def _rows(kind: str, n: int) -> list[dict[str, Any]]:
    now = time.time_ns()
    return [{c["name"]: _value(c, i, now) for c in KINDS_DOC[kind]["columns"]} for i in range(n)]


def _arrow(kind: str, rows: list[dict[str, Any]], compression: str | None = None) -> bytes:
    cols = KINDS_DOC[kind]["columns"]
    table = pa.table({c["name"]: pa.array([r[c["name"]] for r in rows], ARROW_TYPES[c["arrow"]]) for c in cols})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table)
    return sink.getvalue()


def _headers(kind: str, enc: str | None) -> list[tuple[str, bytes]]:
    h = [("bs-kind", kind.encode()), ("bs-schema", KINDS_DOC[kind]["schema"].encode())]
    return [*h, ("bs-enc", enc.encode())] if enc else h


class _Reader:
    """The worker's reading path and the engine, for messages built above."""

    def __init__(self, tmp_path: Path) -> None:
        from ingest.clickhouse_sink.service import open_service
        from ingest.schema import migrate

        self.svc = open_service(data_dir=tmp_path / "chdb")
        migrate(self.svc)

    def read(self, kind_name: str, value: bytes, headers: list[tuple[str, bytes]]) -> tuple[pa.Table, list[str]]:
        from contract import wire
        from contract.records import KINDS
        from ingest.validate import build_batch, check_table

        kind, enc = wire.message_kind(headers, KINDS[kind_name])
        if enc == "msgpack":
            table, rejected = build_batch(kind, [wire.decode(value)])
        else:
            table, rejected = check_table(kind, wire.decode_batch(value))
        return table, [r.reason for r in rejected]

    def store(self, kind_name: str, table: pa.Table) -> int:
        import json

        table_name = KINDS_DOC[kind_name]["table"]
        before = int(json.loads(self.svc.query_text(f"SELECT count() AS n FROM blindspot.{table_name}",
                                                    "JSONEachRow"))["n"])
        self.svc.insert_arrow("blindspot", table_name, table)
        after = int(json.loads(self.svc.query_text(f"SELECT count() AS n FROM blindspot.{table_name}",
                                                   "JSONEachRow"))["n"])
        return after - before


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> Any:
    r = _Reader(tmp_path_factory.mktemp("conformance"))
    yield r
    r.svc.close()


def test_the_document_describes_every_kind_the_worker_reads() -> None:
    from contract.records import KINDS
    from ingest.validate import default

    assert set(KINDS_DOC) == set(KINDS)
    for name, k in KINDS.items():
        doc = KINDS_DOC[name]
        assert (doc["topic"], doc["table"], doc["schema"]) == (k.topic, k.table, str(k.schema_version))
        assert [c["name"] for c in doc["columns"]] == k.column_names
        for c, col in zip(doc["columns"], k.columns, strict=True):
            assert ARROW_TYPES[c["arrow"]] == col.type, c["name"]
            assert c["max_bytes"] == (col.max_len or 0), c["name"]
            assert c["default"] == str(default(col)), c["name"]
    assert MAX_ROWS == 4000


@pytest.mark.parametrize("kind", sorted(KINDS_DOC))
def test_messages_at_the_documented_limits_are_stored(reader, kind) -> None:
    rows = _rows(kind, MAX_ROWS)
    table, rejected = reader.read(kind, _arrow(kind, rows), _headers(kind, "arrow"))
    assert rejected == [] and reader.store(kind, table) == MAX_ROWS
    table, rejected = reader.read(kind, msgpack.packb(rows[0]), _headers(kind, None))  # bs-enc absent: msgpack
    assert rejected == [] and reader.store(kind, table) == 1


@pytest.mark.parametrize("kind", sorted(KINDS_DOC))
def test_missing_fields_take_the_documented_defaults(reader, kind) -> None:
    cols = KINDS_DOC[kind]["columns"]
    time_col = next(c["name"] for c in cols if c["arrow"].startswith("timestamp"))
    sparse = {"host": "h1", time_col: time.time_ns()}
    if kind == "tcp_connection":
        sparse["end_time"] = time.time_ns()
    table, rejected = reader.read(kind, msgpack.packb(sparse), _headers(kind, "msgpack"))
    assert rejected == []
    got = table.to_pylist()[0]
    for c in cols:
        if c["name"] not in sparse:
            want = c["default"] if c["arrow"] == "string" else int(c["default"])
            value = got[c["name"]]
            assert (value.value if hasattr(value, "value") else value) == want, c["name"]
    assert reader.store(kind, table) == 1


def test_what_the_document_refuses_is_refused_with_its_reason(reader) -> None:
    from contract import wire

    kind = "tcp_connection"
    row = _rows(kind, 1)[0]
    cols = {c["name"]: c for c in KINDS_DOC[kind]["columns"]}
    cases = {
        "out_of_range": {**row, "local_port": cols["local_port"]["max"] + 1},
        "oversized_field": {**row, "comm": "c" * (cols["comm"]["max_bytes"] + 1)},
        "invalid_address": {**row, "remote_addr": "fe80::1%eth0"},
        "wrong_type": {**row, "pid": "1234"},
    }
    for reason, r in cases.items():
        _t, rejected = reader.read(kind, msgpack.packb(r), _headers(kind, "msgpack"))
        assert rejected == [reason], reason
    for reason, value in (("too_many_rows", _arrow(kind, _rows(kind, MAX_ROWS + 1))),
                          ("compressed_body", _arrow(kind, _rows(kind, 3), compression="zstd"))):
        with pytest.raises(wire.WireError) as e:
            reader.read(kind, value, _headers(kind, "arrow"))
        assert e.value.reason == reason
