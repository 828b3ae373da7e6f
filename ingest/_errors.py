"""Errors of the ClickHouse side, classified before anyone retries.

    IngestError
    ├── TransientError        worth retrying with backoff: the system may come back
    │   └── SinkUnavailable   ClickHouse unreachable, timed out, overloaded
    └── PermanentError        retrying cannot help: the batch or the schema is wrong
        ├── SchemaError       DDL/migration failed, or a table lacks a column we write
        └── BadRecord         one record is invalid (type, size, encoding, version)

Callers catch ``TransientError`` to retry and ``PermanentError`` to dead-letter or drop-and-count.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error raised by ``ingest``."""


class TransientError(IngestError):
    """Retry later: the failure is expected to pass."""


class SinkUnavailable(TransientError):
    """ClickHouse could not be reached or did not answer in time."""


class PermanentError(IngestError):
    """Do not retry: the same input will fail the same way."""


class SchemaError(PermanentError):
    """The tables are not what the writer expects."""


class BadRecord(PermanentError):
    """A record failed validation; ``reason`` is short and machine-readable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
