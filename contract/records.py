"""Record kinds: what a record is called on each edge (table, Kafka topic) and which columns it has.

Records travel as Arrow tables of the kind's schema (``to_arrow`` / ``to_rows`` convert from and to
dicts keyed by column name, for tests and single records). Times are ``int`` nanoseconds since the Unix
epoch (UTC), addresses are text (IPv4 as ``1.2.3.4``, stored as IPv4-mapped IPv6). The column list is
the contract between the agent, the wire format and the tables in ``ingest/migrations``;
tests/test_schema.py checks it against the DDL on the real engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

TIME_NS = pa.timestamp("ns", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    max_len: int | None = None  # bound for strings, enforced by validation (bytes of UTF-8)

    @property
    def default(self) -> Any:
        if pa.types.is_string(self.type):
            return ""
        return 0


@dataclass(frozen=True)
class RecordKind:
    name: str  # "tcp_connection"
    table: str  # in database ``blindspot``
    topic: str  # Kafka topic in fleet mode
    schema_version: int
    columns: tuple[Column, ...]
    _by_name: dict[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {c.name: c for c in self.columns})

    def column(self, name: str) -> Column:
        return self._by_name[name]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=False) for c in self.columns])

    def to_arrow(self, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
        """Columnar batch of ``rows``; a missing field takes its column's default (forward compatible)."""
        rows = list(rows)
        arrays = []
        for c in self.columns:
            name, default = c.name, c.default
            arrays.append(pa.array([r.get(name, default) for r in rows], type=c.type))
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)


    def to_rows(self, table: pa.Table) -> list[dict[str, Any]]:
        """``table``'s rows as records (the inverse of to_arrow: times back to int nanoseconds)."""
        cols = {}
        for c in self.columns:
            col = table.column(c.name)
            cols[c.name] = (col.cast(pa.int64()) if pa.types.is_timestamp(c.type) else col).to_pylist()
        names = list(cols)
        return [dict(zip(names, values, strict=True)) for values in zip(*cols.values(), strict=True)]


def _s(name: str, max_len: int = 256) -> Column:
    return Column(name, pa.string(), max_len)


def _u(name: str, bits: int = 64) -> Column:
    return Column(name, {8: pa.uint8(), 16: pa.uint16(), 32: pa.uint32(), 64: pa.uint64()}[bits])


# Who talked to whom: shared by closed and open connections so the two join column for column.
_CONNECTION_ENDS = (
    _s("role", 16),
    _u("family", 8),
    _s("local_addr", 64),
    _u("local_port", 16),
    _s("remote_addr", 64),
    _u("remote_port", 16),
    _u("pid", 32),
    _s("comm", 16),
)

# Packets of the connection the kernel dropped, and the reason of most of them (agent/packet_drops.py).
_DROPS = (
    _u("drops", 32),
    _s("drop_reason", 32),
)

TCP_CONNECTION = RecordKind(
    name="tcp_connection",
    table="tcp_connections",
    topic="blindspot.tcp.v1",
    schema_version=1,
    columns=(
        _s("host"),
        _u("conn_id"),
        Column("start_time", TIME_NS),
        Column("end_time", TIME_NS),
        _u("duration_ns"),
        _u("handshake_ns"),
        *_CONNECTION_ENDS,
        _u("bytes_sent"),
        _u("bytes_received"),
        _u("retransmits", 32),
        _u("srtt_us", 32),
        _s("close_reason", 32),
        _u("started_before_agent", 8),
        _s("owner_source", 16),
        *_DROPS,
    ),
)

TCP_OPEN_CONNECTION = RecordKind(
    name="tcp_open_connection",
    table="tcp_connections_open",
    topic="blindspot.tcp_open.v1",
    schema_version=1,
    columns=(
        Column("snapshot_time", TIME_NS),
        _s("host"),
        _u("conn_id"),
        Column("start_time", TIME_NS),
        *_CONNECTION_ENDS,
        _u("bytes_sent"),
        _u("bytes_received"),
        _u("started_before_agent", 8),
        *_DROPS,
    ),
)

PIPELINE_COUNTER = RecordKind(
    name="pipeline_counter",
    table="pipeline_counters",
    topic="blindspot.pipeline.v1",
    schema_version=1,
    columns=(
        Column("time", TIME_NS),
        _s("host"),
        _s("component", 32),  # agent, ingest, embedded
        _s("counter", 64),  # captured, lost_kernel, dropped, dead_lettered, ...
        _u("value"),  # delta over the interval ending at ``time``
    ),
)

# Packet drops per host, network namespace and reason, as deltas per interval (agent/packet_drops.py).
PACKET_DROP = RecordKind(
    name="packet_drop",
    table="packet_drops",
    topic="blindspot.drops.v1",
    schema_version=1,
    columns=(
        Column("time", TIME_NS),
        _s("host"),
        _u("netns", 32),  # network namespace inode number; 0 when unknown
        _s("reason", 64),  # the kernel's skb_drop_reason name: NO_SOCKET, NETFILTER_DROP, ...
        _u("drops"),  # packets dropped in the interval ending at ``time``
        _u("conn_drops"),  # of those, packets of a tracked TCP connection (also on its row)
    ),
)

# One Go net/http request, served (side 'server') or made (side 'client'): agent/http_source.py.
HTTP_REQUEST = RecordKind(
    name="http_request",
    table="http_requests",
    topic="blindspot.http.v1",
    schema_version=1,
    columns=(
        Column("time", TIME_NS),
        Column("end_time", TIME_NS),
        _u("duration_ns"),
        _s("host"),
        _s("service", 128),
        _s("service_version", 128),
        _s("go_version", 32),
        _u("pid", 32),
        _u("tid", 32),
        _s("comm", 16),
        _s("side", 8),
        _s("method", 16),
        _s("path", 1024),
        _s("route", 1024),
        _s("route_source", 16),
        _u("status", 16),
        _u("request_bytes"),
        _u("response_bytes"),
        _u("family", 8),
        _s("local_addr", 64),
        _u("local_port", 16),
        _s("remote_addr", 64),
        _u("remote_port", 16),
        _s("upstream_host", 1024),
        _s("x_gray_version", 1024),
        _s("x_request_id", 1024),
        _s("traceparent", 1024),
        _s("user_agent", 1024),
        _s("host_header", 1024),
        _s("extra_headers", 8192),
        _u("head_truncated", 8),
        _s("end_reason", 16),
        _u("request_id"),
        _u("parent_request_id"),
        _s("protocol", 16),  # http/1.1, h2, h2c, grpc ('' from agents before it existed)
        _u("encrypted", 8),  # 1: read from the plaintext of a TLS connection (agent/go_tls_source.py)
        _s("grpc_status", 4),  # gRPC status code from the trailers ("0".."16"), '' when none was seen
    ),
)

KINDS: dict[str, RecordKind] = {
    k.name: k for k in (TCP_CONNECTION, TCP_OPEN_CONNECTION, PIPELINE_COUNTER, HTTP_REQUEST, PACKET_DROP)
}


def register(kind: RecordKind) -> RecordKind:
    """Add a record kind (e.g. from another source module); names are unique."""
    if kind.name in KINDS and KINDS[kind.name] != kind:
        raise ValueError(f"record kind {kind.name!r} already registered differently")
    KINDS[kind.name] = kind
    return kind
