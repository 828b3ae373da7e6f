"""Blindspot's one exception tree, and the one classifier that decides who a failure belongs to.

    BlindspotError
    ├── ConfigError               a config file, environment variable or flag that cannot be used
    ├── WireError (contract.wire) a Kafka message that is not a record of ours (reason, detail)
    └── IngestError               writing to a store (ClickHouse, Kafka) failed
        ├── TransientError        worth retrying with backoff: the system may come back
        │   ├── SinkUnavailable   ClickHouse unreachable, timed out, overloaded, disk full, read-only
        │   └── Stopping          (contract.retry) asked to stop while retrying
        └── PermanentError        retrying cannot help: the batch or the schema is wrong
            ├── SchemaError       DDL/migration failed, or a table lacks a column we write
            └── BadRecord         one record is invalid (type, size, encoding, version)

``classify(exc)`` maps any exception (ours, chDB's, clickhouse-connect's, librdkafka's) to one of

    MESSAGE         the message's fault: dead-letter it (with the reason and the exception class)
    INFRASTRUCTURE  the store's or the broker's fault: retry with backoff, count it, never skip
    GONE            the partition is someone else's now (rebalance): drop the batch, keep the intent

Engine errors are INFRASTRUCTURE unless their code is one a row can cause (``ENGINE_ROW_CODES``):
an unknown code stalls a partition (visible in ``blindspot_ingest_retries_total``) rather than
dead-letter good records. A schema error is INFRASTRUCTURE too: an operator fixes the tables and the
worker resumes where it was.
"""

from __future__ import annotations

import enum
import re

import confluent_kafka

__all__ = ["ENGINE_ROW_CODES", "BadRecord", "BlindspotError", "ConfigError", "Fault", "IngestError", "PermanentError",
           "SchemaError", "SinkUnavailable", "TransientError", "classify", "engine_code"]


class BlindspotError(Exception):
    """Base of every error Blindspot raises on purpose."""


class ConfigError(BlindspotError, ValueError):
    """A config file, environment value or flag that cannot be used (a message for the user)."""


class IngestError(BlindspotError):
    """Writing to a store failed."""


class TransientError(IngestError):
    """Retry later: the failure is expected to pass."""


class SinkUnavailable(TransientError):
    """ClickHouse could not be reached, did not answer in time, or cannot write (disk full, read-only)."""


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


class Fault(enum.Enum):
    MESSAGE = "message"
    INFRASTRUCTURE = "infrastructure"
    GONE = "gone"


# ClickHouse error codes a row's value can cause (parse, conversion, range, size). Everything else the
# engine says is about the engine (disk 243, read-only 1001 "Read-only file system", memory 241,
# too many parts 252, timeouts 159/209/210, table read-only 242, ...), and so is a column type the
# engine cannot take (43 ILLEGAL_TYPE_OF_ARGUMENT: the table is not what the worker writes).
ENGINE_ROW_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    675,  # CANNOT_PARSE_IPV4
    676,  # CANNOT_PARSE_IPV6
})
# 16 no such column, 47 unknown identifier, 60 unknown table, 81 unknown database
ENGINE_SCHEMA_CODES = frozenset({16, 47, 60, 81})

# librdkafka errors that belong to one message (the producer refuses *this* message).
_KAFKA_MESSAGE = frozenset({
    confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE, confluent_kafka.KafkaError.INVALID_MSG_SIZE,
    confluent_kafka.KafkaError.INVALID_MSG, confluent_kafka.KafkaError.INVALID_RECORD,
    confluent_kafka.KafkaError.RECORD_LIST_TOO_LARGE, confluent_kafka.KafkaError._INVALID_ARG,
    confluent_kafka.KafkaError._BAD_MSG,
})
# Commit errors that mean "not yours any more", not "try again".
KAFKA_GONE = frozenset({
    confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS, confluent_kafka.KafkaError.ILLEGAL_GENERATION,
    confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID, confluent_kafka.KafkaError.FENCED_INSTANCE_ID,
    confluent_kafka.KafkaError._ASSIGNMENT_LOST, confluent_kafka.KafkaError._STATE,
})
_CODE = re.compile(r"Code: (\d+)")


def engine_code(text: str) -> int:
    """The ClickHouse error code in an exception text (0 when there is none)."""
    m = _CODE.search(text)
    return int(m.group(1)) if m else 0


def classify_engine(text: str) -> IngestError:
    """An engine error text (chDB or server) -> SchemaError, PermanentError (a row) or SinkUnavailable."""
    code = engine_code(text)
    if code in ENGINE_SCHEMA_CODES:
        return SchemaError(text)
    if code in ENGINE_ROW_CODES:
        return PermanentError(text)
    return SinkUnavailable(text)


def kafka_code(e: BaseException) -> int | None:
    err = e.args[0] if isinstance(e, confluent_kafka.KafkaException) and e.args else e
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def classify(e: BaseException) -> Fault:
    """Who a failure belongs to. Table-tested in tests/test_ingest_faults.py."""
    if isinstance(e, SchemaError | TransientError | BufferError | MemoryError | OSError):
        return Fault.INFRASTRUCTURE
    if isinstance(e, PermanentError):
        return Fault.MESSAGE
    if isinstance(e, confluent_kafka.KafkaException | confluent_kafka.KafkaError):
        code = kafka_code(e)
        if code in KAFKA_GONE:
            return Fault.GONE
        if code in _KAFKA_MESSAGE:
            return Fault.MESSAGE
        return Fault.INFRASTRUCTURE  # transport, timeouts, queue full, all brokers down, authorization
    if type(e).__name__ == "ChdbError" or (isinstance(e, RuntimeError) and engine_code(str(e))):
        return classify(classify_engine(str(e)))
    # Anything else raised while handling one message (decode, validate): the message's.
    return Fault.MESSAGE
