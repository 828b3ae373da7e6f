"""The fleet wire format: one Kafka message per record (docs/wire-format.md says why and how it evolves).

    key      the record's ``host`` (UTF-8): one host's records land in one partition, in order
    value    a MessagePack map {column name: value}; times are int nanoseconds, addresses text
    headers  bs-kind    record kind name, e.g. ``tcp_connection``
             bs-schema  the kind's schema version (decimal text); bumped only by breaking changes
             bs-enc     ``msgpack`` (room for another encoding later without guessing from bytes)

Evolution: adding a field is not a breaking change. A newer agent may send fields an older ingest
worker does not know: the worker ignores them; a field an older agent does not send takes its
column's default. Removing, renaming or retyping a field bumps ``schema_version`` (and the topic's
``.vN`` suffix); a worker dead-letters versions newer than it knows.

Public API: ``encode``, ``decode``, ``headers_for``, ``message_kind``, ``WireError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from blindspot.records import KINDS, RecordKind

__all__ = ["ENCODING", "H_ENC", "H_KIND", "H_SCHEMA", "WireError", "decode", "encode", "headers_for",
           "message_kind"]

ENCODING = "msgpack"
H_KIND = "bs-kind"
H_SCHEMA = "bs-schema"
H_ENC = "bs-enc"

_packer = msgpack.Packer(use_bin_type=True)
_header_cache: dict[str, list[tuple[str, bytes]]] = {}


class WireError(ValueError):
    """A message that cannot be read. ``reason`` is a short machine-readable word for the DLQ header:
    ``undecodable``, ``invalid_utf8``, ``not_a_map``, ``unknown_kind``, ``unknown_schema_version``,
    ``unknown_encoding``, ``kind_mismatch``, ``missing_headers``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def headers_for(kind: RecordKind) -> list[tuple[str, bytes]]:
    """Headers of every message of ``kind`` (built once per kind)."""
    h = _header_cache.get(kind.name)
    if h is None:
        h = [(H_KIND, kind.name.encode()), (H_SCHEMA, str(kind.schema_version).encode()),
             (H_ENC, ENCODING.encode())]
        _header_cache[kind.name] = h
    return h


def encode(row: Mapping[str, Any]) -> bytes:
    """The message value of one record."""
    return _packer.pack(row)


def message_kind(headers: Sequence[tuple[str, bytes | None]] | None, topic_kind: RecordKind | None = None
                 ) -> RecordKind:
    """The kind a message claims, checked against what this worker can read (raises WireError)."""
    if topic_kind is not None and headers == headers_for(topic_kind):
        return topic_kind  # the common case, exactly what our agents send: one list comparison
    if not headers:
        raise WireError("missing_headers")
    h = {k: v for k, v in headers}
    kind_name, version, enc = h.get(H_KIND), h.get(H_SCHEMA), h.get(H_ENC, ENCODING.encode())
    if kind_name is None or version is None:
        raise WireError("missing_headers", f"need {H_KIND} and {H_SCHEMA}")
    kind = KINDS.get(kind_name.decode("utf-8", "replace"))
    if kind is None:
        raise WireError("unknown_kind", kind_name.decode("utf-8", "replace")[:64])
    if topic_kind is not None and kind is not topic_kind:
        raise WireError("kind_mismatch", f"{kind.name} on the topic of {topic_kind.name}")
    if enc != ENCODING.encode():
        raise WireError("unknown_encoding", (enc or b"").decode("utf-8", "replace")[:32])
    try:
        v = int(version)
    except ValueError:
        raise WireError("unknown_schema_version", version.decode("utf-8", "replace")[:32]) from None
    if v != kind.schema_version:
        # Newer: this worker is too old to know what changed. Older: no upgrade path is defined yet.
        raise WireError("unknown_schema_version", f"{kind.name} v{v}, this worker reads v{kind.schema_version}")
    return kind


def decode(value: bytes | None) -> dict[str, Any]:
    """The record in one message value (raises WireError). Unknown fields are kept here and ignored
    later by column selection."""
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
