"""Kafka-side helpers of the ingest worker: topics, the consumer, and the dead-letter producer.

A dead letter keeps the original key, value and headers, and adds why and where from:

    bs-dlq-reason   short word (undecodable, invalid_utf8, unknown_schema_version, wrong_type, ...)
    bs-dlq-detail   one line of detail (at most 500 bytes)
    bs-src          topic:partition:offset of the original message
    bs-src-row      for one bad record out of an Arrow batch: its index there (the value is then
                    that record alone, as a one-row Arrow batch)
    bs-dlq-error    the exception class behind the verdict, when there was one (e.g. ArrowInvalid)
    bs-dlq-truncated  ``1`` when the original did not fit the dead-letter topic: the value is then a
                    prefix of at most DLQ_PREFIX_BYTES (``bs-dlq-original-bytes`` has the full size),
                    and original headers that did not fit are left out

The worker owns ``bs-dlq-*``, ``bs-src`` and ``bs-src-row``: a producer's own headers of those names
are kept renamed as ``bs-dlq-forged-<name>``, so a dead letter never carries two reasons.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic

from contract.errors import KAFKA_GONE, Fault, SinkUnavailable, classify, kafka_code
from ingest.kafka_source.config import DLQ_MAX_BYTES, KafkaSourceConfig

log = logging.getLogger(__name__)

H_REASON = "bs-dlq-reason"
H_DETAIL = "bs-dlq-detail"
H_SRC = "bs-src"
H_SRC_ROW = "bs-src-row"
H_ERROR = "bs-dlq-error"
H_TRUNCATED = "bs-dlq-truncated"
H_ORIGINAL_BYTES = "bs-dlq-original-bytes"
FORGED_PREFIX = "bs-dlq-forged-"
DLQ_PREFIX_BYTES = 64 * 1024  # what a cut dead letter keeps of the original value
_HEADROOM = 64 * 1024  # librdkafka's per-message overhead and our own headers, with room to spare


def ensure_topics(config: KafkaSourceConfig, topics: list[str] | None = None, timeout_s: float = 30) -> None:
    """Create missing topics (the record topics and the dead-letter topic); existing ones are kept."""
    conf: dict[str, Any] = {"bootstrap.servers": config.bootstrap_servers, **config.extra}
    admin = AdminClient(conf)
    want = topics if topics is not None else [*config.topics, config.dlq_topic]
    have = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in want if t not in have]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=config.partitions,
                  config={"max.message.bytes": str(DLQ_MAX_BYTES)} if t == config.dlq_topic else {})
         for t in missing],
        operation_timeout=timeout_s)
    for topic, fut in futures.items():
        try:
            fut.result()
            log.info("created topic %s (%d partitions)", topic, config.partitions)
        except confluent_kafka.KafkaException as e:
            if e.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def _owned(key: str) -> bool:
    return key.startswith("bs-dlq-") or key in (H_SRC, H_SRC_ROW)


class _Letter:
    """One dead letter, kept until the broker acknowledges it (it may have to be cut and sent again)."""

    def __init__(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                 own: list[tuple[str, bytes]]) -> None:
        self.topic, self.key, self.value, self.headers, self.own = topic, key, value, headers, own
        self.truncated = False

    def size(self) -> int:
        return (len(self.key or b"") + len(self.value or b"")
                + sum(len(k) + len(v or b"") for k, v in [*self.headers, *self.own]))

    def cut(self, limit: int) -> None:
        """Fit under ``limit`` bytes: a bounded prefix of the value, the original headers while they fit."""
        if self.truncated:  # cut once already and still refused: coordinates and verdict only
            if not self.value and not self.headers:
                raise SinkUnavailable("the dead-letter topic refuses even a dead letter without a value "
                                      "(check its max.message.bytes)")
            self.value, self.headers = b"", []
            return
        self.truncated = True
        original = len(self.value or b"")
        self.value = (self.value or b"")[:DLQ_PREFIX_BYTES]
        kept, room = [], max(0, limit - DLQ_PREFIX_BYTES - len(self.key or b"") - 4096)
        for k, v in self.headers:
            n = len(k) + len(v or b"")
            if n <= room:
                kept.append((k, v))
                room -= n
        self.headers = kept
        self.own += [(H_TRUNCATED, b"1"), (H_ORIGINAL_BYTES, str(original).encode())]
        if len(self.key or b"") > 4096:
            self.key = self.key[:4096] if self.key else self.key


class DeadLetters:
    """Produces dead letters; ``flush`` returns True once the broker has every one of them. A dead
    letter always fits: one too large for the topic is cut (bs-dlq-truncated), one the broker refuses
    as a message (size, record errors) is cut and sent again; infrastructure failures are retried."""

    def __init__(self, config: KafkaSourceConfig, max_bytes: int = DLQ_MAX_BYTES) -> None:
        self.topic = config.dlq_topic
        self._producer = confluent_kafka.Producer(config.dlq_producer_conf())
        self._limit = max_bytes - _HEADROOM
        self._redo: list[_Letter] = []
        self.truncated = 0

    def _on_delivery(self, letter: _Letter, err: Any, _msg: Any) -> None:
        if err is not None:
            log.error("dead letter not delivered (%s); sending it again", err)
            if classify(confluent_kafka.KafkaException(err)) is Fault.MESSAGE:
                letter.cut(self._limit)
                self.truncated += 1
            self._redo.append(letter)

    def send(self, msg: Any, reason: str, detail: str, *, value: bytes | None = None, row: int | None = None,
             error: str | None = None) -> None:
        headers = [(FORGED_PREFIX + k if _owned(k) else k, v) for k, v in (msg.headers() or ())]
        own = [(H_REASON, reason.encode()), (H_DETAIL, detail.encode("utf-8", "replace")[:500]),
               (H_SRC, f"{msg.topic()}:{msg.partition()}:{msg.offset()}".encode())]
        if row is not None:
            own.append((H_SRC_ROW, str(row).encode()))
        if error:
            own.append((H_ERROR, error.encode()[:200]))
        letter = _Letter(self.topic, msg.key(), msg.value() if value is None else value, headers, own)
        if letter.size() > self._limit:
            letter.cut(self._limit)
            self.truncated += 1
        self._produce(letter)

    def _produce(self, letter: _Letter) -> None:
        while True:
            try:
                self._producer.produce(letter.topic, letter.value, letter.key, headers=[*letter.headers, *letter.own],
                                       on_delivery=functools.partial(self._on_delivery, letter))
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)
            except confluent_kafka.KafkaException as e:
                if kafka_code(e) in KAFKA_GONE or classify(e) is not Fault.MESSAGE:
                    raise SinkUnavailable(f"dead-letter producer: {e}") from e
                log.warning("dead letter refused by the producer (%s); cutting it", e)
                letter.cut(self._limit)
                self.truncated += 1
            except (TypeError, ValueError, UnicodeError) as e:  # a header or key the client cannot take
                log.warning("dead letter refused by the client (%s: %s); cutting it", type(e).__name__, e)
                letter.cut(self._limit)
                self.truncated += 1

    def flush(self, timeout_s: float = 5.0) -> bool:
        """True when every dead letter so far is acknowledged. False: some are still on their way or
        being sent again; call again (the worker retries with backoff, polling its paused consumer)."""
        redo, self._redo = self._redo, []
        for letter in redo:
            self._produce(letter)
        self._producer.flush(timeout_s)
        return len(self._producer) == 0 and not self._redo

    def close(self) -> None:
        self._producer.flush(10.0)
        self._producer.close()  # its threads and sockets now, not at the process's end
