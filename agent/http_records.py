"""The ``http_request`` record kind: columns of table http_requests (ingest/migrations/0010_*.sql)."""

from __future__ import annotations

import pyarrow as pa

from blindspot.records import TIME_NS, Column, RecordKind, register


def _s(name: str, max_len: int = 256) -> Column:
    return Column(name, pa.string(), max_len)


def _u(name: str, bits: int = 64) -> Column:
    return Column(name, {8: pa.uint8(), 16: pa.uint16(), 32: pa.uint32(), 64: pa.uint64()}[bits])


HTTP_REQUEST = register(RecordKind(
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
    ),
))
