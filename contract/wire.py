"""The fleet wire format (docs/wire-format.md has the measurements behind it and the evolution rule).

    key      the records' ``host`` (UTF-8): one host's records land in one partition, in order
    value    ``bs-enc: arrow``   an Arrow IPC stream with one record batch: many records of one kind
                                 and one host, columns named as the kind's columns (what agents send)
             ``bs-enc: msgpack`` one record as a MessagePack map {column: value} (simple producers)
    headers  bs-kind    record kind name, e.g. ``tcp_connection``
             bs-schema  the kind's schema version (decimal text); bumped only by breaking changes
             bs-enc     ``arrow`` or ``msgpack`` (absent: ``msgpack``)

Times are int nanoseconds since the epoch (Arrow: timestamp[ns, UTC]), addresses text.

Evolution: adding a field is not a breaking change. A newer agent may send fields (columns) an older
ingest worker does not know: the worker ignores them; a field an older agent does not send takes its
column's default. Removing, renaming or retyping a field bumps ``schema_version`` (and the topic's
``.vN`` suffix); a worker dead-letters versions it does not know.

Public API: ``encode``, ``encode_batch``, ``decode``, ``decode_batch``, ``headers_for``,
``message_kind``, ``WireError``, ``ENC_ARROW``, ``ENC_MSGPACK``.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import pyarrow as pa

from contract.errors import BlindspotError
from contract.records import KINDS, RecordKind

__all__ = ["ENC_ARROW", "ENC_MSGPACK", "H_ENC", "H_KIND", "H_SCHEMA", "WireError", "batch_rows", "decode",
           "decode_batch", "encode", "encode_batch", "headers_for", "ipc_bytes", "message_kind"]

ENC_ARROW = "arrow"
ENC_MSGPACK = "msgpack"
H_KIND = "bs-kind"
H_SCHEMA = "bs-schema"
H_ENC = "bs-enc"
# librdkafka refuses messages over message.max.bytes (1 MB by default, before compression).
MAX_MESSAGE_BYTES = 900_000
# Records in one Arrow message: agents cut at this, ingest workers refuse more (``too_many_rows``).
MAX_BATCH_ROWS = 4_000

_packer = msgpack.Packer(use_bin_type=True)
_header_cache: dict[tuple[str, str], list[tuple[str, bytes]]] = {}


class WireError(BlindspotError, ValueError):
    """A message that cannot be read. ``reason`` is a short machine-readable word for the DLQ header:
    ``undecodable``, ``invalid_utf8``, ``not_a_map``, ``unknown_kind``, ``unknown_schema_version``,
    ``unknown_encoding``, ``kind_mismatch``, ``missing_headers``, ``compressed_body``,
    ``duplicate_column``, ``invalid_arrow``, ``too_many_rows``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def headers_for(kind: RecordKind, enc: str = ENC_MSGPACK) -> list[tuple[str, bytes]]:
    """Headers of every message of ``kind`` in encoding ``enc`` (built once)."""
    h = _header_cache.get((kind.name, enc))
    if h is None:
        h = [(H_KIND, kind.name.encode()), (H_SCHEMA, str(kind.schema_version).encode()), (H_ENC, enc.encode())]
        _header_cache[(kind.name, enc)] = h
    return h


# -- one record, MessagePack ---------------------------------------------------------------------
def encode(row: Mapping[str, Any]) -> bytes:
    """The message value of one record (``bs-enc: msgpack``)."""
    return _packer.pack(row)


def decode(value: bytes | None) -> dict[str, Any]:
    """The record in one ``msgpack`` message value (raises WireError). Unknown fields are kept here and
    ignored later by column selection."""
    if value is None:
        raise WireError("undecodable", "empty message")
    try:
        row = msgpack.unpackb(value, raw=False, strict_map_key=True, use_list=False)
    except UnicodeDecodeError as e:
        raise WireError("invalid_utf8", str(e)[:200]) from None
    except Exception as e:  # msgpack raises several unrelated types for truncated or extra bytes
        raise WireError("undecodable", f"{type(e).__name__}: {e}"[:200]) from None
    if not isinstance(row, dict):
        raise WireError("not_a_map", type(row).__name__)
    return row


# -- many records, Arrow IPC ---------------------------------------------------------------------
def ipc_bytes(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC stream (the ``arrow`` message value)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def to_table(kind: RecordKind, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Columnar copy of ``rows`` (a missing field takes its column's default). Raises on a value of the
    wrong type: a bug in a source, never silently coerced."""
    names = kind.column_names
    getter = operator.itemgetter(*names)
    defaults = {c.name: c.default for c in kind.columns}
    try:
        tuples = [getter(r) for r in rows]
    except KeyError:
        tuples = [tuple(r.get(n, defaults[n]) for n in names) for r in rows]
    if len(names) == 1:
        tuples = [(t,) for t in tuples]
    cols = list(zip(*tuples, strict=True)) if tuples else [() for _ in names]
    arrays = [pa.array(v, type=c.type) for c, v in zip(kind.columns, cols, strict=True)]
    return pa.Table.from_arrays(arrays, schema=kind.arrow_schema)


def encode_batch(kind: RecordKind, rows: Sequence[Mapping[str, Any]] | pa.Table) -> list[tuple[bytes, int]]:
    """Message values (``bs-enc: arrow``) for ``rows`` (records, or a table of ``kind``'s schema)
    with their record counts, each under MAX_BATCH_ROWS and MAX_MESSAGE_BYTES. All rows should share
    one host (the message key)."""
    out: list[tuple[bytes, int]] = []
    for i in range(0, len(rows), MAX_BATCH_ROWS):
        if isinstance(rows, pa.Table):
            table = rows.slice(i, MAX_BATCH_ROWS)
        else:
            table = to_table(kind, rows[i:i + MAX_BATCH_ROWS])
        pending = [table]
        while pending:
            t = pending.pop()
            blob = ipc_bytes(t)
            if len(blob) > MAX_MESSAGE_BYTES and t.num_rows > 1:
                half = t.num_rows // 2
                pending += [t.slice(half), t.slice(0, half)]
            else:
                out.append((blob, t.num_rows))
    return out


def _fb_field(b: bytes, table: int, i: int) -> int | None:
    """Position of field ``i`` of the flatbuffer table at ``table`` (None: absent)."""
    vtable = table - struct.unpack_from("<i", b, table)[0]
    vsize = struct.unpack_from("<H", b, vtable)[0]
    if 4 + 2 * i + 2 > vsize:
        return None
    off = struct.unpack_from("<H", b, vtable + 4 + 2 * i)[0]
    return table + off if off else None


def _check_ipc_messages(value: bytes) -> None:
    """Refuse what our agents never send, before anything is decoded: dictionary batches and compressed
    bodies (a 1 MB compressed message could expand to tens of GiB). Reads each IPC message's
    flatbuffer header only: Message{version, header_type, header, ...}, RecordBatch{length, nodes,
    buffers, compression}; header_type 1 schema, 2 dictionary batch, 3 record batch."""
    for msg in pa.ipc.MessageReader.open_stream(value):
        b = bytes(msg.metadata)
        root = struct.unpack_from("<I", b, 0)[0]
        ht = _fb_field(b, root, 1)
        htype = b[ht] if ht is not None else 0
        if htype == 2:
            raise WireError("undecodable", "dictionary batches are not part of the wire format")
        if htype == 3:
            hp = _fb_field(b, root, 2)
            if hp is None:
                raise WireError("undecodable", "record batch message without a header")
            header = hp + struct.unpack_from("<I", b, hp)[0]
            if _fb_field(b, header, 3) is not None:
                raise WireError("compressed_body", "compressed Arrow bodies are refused (send them uncompressed; "
                                "Kafka compresses the whole message)")


def batch_rows(value: bytes) -> int:
    """Records in an ``arrow`` message value, read from the IPC message headers alone: no body is read
    or decompressed (RecordBatch.length is field 0 of the flatbuffer). 1 for anything unreadable (it is
    dead-lettered when decoded)."""
    try:
        n = 0
        for msg in pa.ipc.MessageReader.open_stream(value):
            b = bytes(msg.metadata)
            root = struct.unpack_from("<I", b, 0)[0]
            ht = _fb_field(b, root, 1)
            if ht is None or b[ht] != 3:
                continue
            hp = _fb_field(b, root, 2)
            if hp is None:
                return 1
            header = hp + struct.unpack_from("<I", b, hp)[0]
            length = _fb_field(b, header, 0)
            n += struct.unpack_from("<q", b, length)[0] if length is not None else 0
        return max(1, n)
    except Exception:
        return 1


def decode_batch(value: bytes | None) -> pa.Table:
    """The records in one ``arrow`` message value, as sent (columns not yet checked; raises WireError).

    Total: every malformed input raises WireError, never anything else. Before any column is
    touched: no compressed bodies or dictionary batches, no duplicate column names, and every array
    passes Arrow's full validation (offsets monotonic and in bounds; strings checked for UTF-8 later,
    row by row, by ingest/validate.py)."""
    if not value:
        raise WireError("undecodable", "empty message")
    try:
        _check_ipc_messages(value)
        table = pa.ipc.open_stream(value).read_all()
        names = table.schema.names  # UnicodeDecodeError for a name that is not UTF-8
    except WireError:
        raise
    except Exception as e:  # Arrow raises several types (and struct.error) for bad bytes
        raise WireError("undecodable", f"not an Arrow IPC stream: {type(e).__name__}: {e}"[:200]) from None
    if table.num_rows > MAX_BATCH_ROWS:
        raise WireError("too_many_rows", f"{table.num_rows} records, at most {MAX_BATCH_ROWS} a message")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise WireError("duplicate_column", ", ".join(dup)[:200])
    for name, col in zip(names, table.columns, strict=True):
        for chunk in col.chunks:
            try:
                # Strings as binary: offsets and bounds here; invalid UTF-8 is a per-row verdict later.
                if pa.types.is_string(chunk.type):
                    chunk = chunk.view(pa.binary())
                elif pa.types.is_large_string(chunk.type):
                    chunk = chunk.view(pa.large_binary())
                chunk.validate(full=True)
            except Exception as e:
                raise WireError("invalid_arrow", f"{name}: {type(e).__name__}: {e}"[:200]) from None
    return table


# -- headers -------------------------------------------------------------------------------------
def message_kind(headers: Sequence[tuple[str, bytes | None]] | None, topic_kind: RecordKind | None = None
                 ) -> tuple[RecordKind, str]:
    """The kind and encoding a message claims, checked against what this worker can read (raises
    WireError)."""
    if topic_kind is not None:
        # The common case, exactly what our agents send: one list comparison.
        if headers == headers_for(topic_kind, ENC_ARROW):
            return topic_kind, ENC_ARROW
        if headers == headers_for(topic_kind, ENC_MSGPACK):
            return topic_kind, ENC_MSGPACK
    if not headers:
        raise WireError("missing_headers")
    h = {k: v for k, v in headers}
    kind_name, version, enc_b = h.get(H_KIND), h.get(H_SCHEMA), h.get(H_ENC, ENC_MSGPACK.encode())
    if kind_name is None or version is None:
        raise WireError("missing_headers", f"need {H_KIND} and {H_SCHEMA}")
    kind = KINDS.get(kind_name.decode("utf-8", "replace"))
    if kind is None:
        raise WireError("unknown_kind", kind_name.decode("utf-8", "replace")[:64])
    if topic_kind is not None and kind is not topic_kind:
        raise WireError("kind_mismatch", f"{kind.name} on the topic of {topic_kind.name}")
    enc = (enc_b or b"").decode("utf-8", "replace")
    if enc not in (ENC_ARROW, ENC_MSGPACK):
        raise WireError("unknown_encoding", enc[:32])
    try:
        v = int(version)
    except ValueError:
        raise WireError("unknown_schema_version", version.decode("utf-8", "replace")[:32]) from None
    if v != kind.schema_version:
        # Newer: this worker is too old to know what changed. Older: no upgrade path is defined yet.
        raise WireError("unknown_schema_version", f"{kind.name} v{v}, this worker reads v{kind.schema_version}")
    return kind, enc
