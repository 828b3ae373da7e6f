"""The producer's lifecycle: one confluent-kafka Producer and the thread that serves its callbacks.

Delivery reports and errors only arrive while someone calls ``poll``; a small thread does that so
``produce`` stays cheap on the hot path and callbacks run even when no record is being emitted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import confluent_kafka

from contract.kafka import redacted

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[Any, Any], None]


class ProducerService:
    def __init__(self, conf: dict[str, Any], on_error: Callable[[Any], None] | None = None) -> None:
        self._on_error = on_error
        conf = dict(conf)
        conf["error_cb"] = self._error
        log.info("kafka producer: %s", redacted({k: v for k, v in conf.items() if not callable(v)}))
        self._producer = confluent_kafka.Producer(conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="kafka-producer-poll", daemon=True)
        self._thread.start()

    def _error(self, err: Any) -> None:
        # Broker down, auth failed...: librdkafka keeps retrying by itself; we only report.
        log.warning("kafka: %s", err)
        if self._on_error:
            self._on_error(err)

    def _poll_loop(self) -> None:
        failed: set[type] = set()
        while not self._stop.is_set():
            try:
                self._producer.poll(0.1)
            except Exception as e:  # raised by one of our callbacks: this thread must serve the next ones
                if type(e) not in failed:
                    failed.add(type(e))
                    log.exception("kafka: a delivery or error callback failed (further ones not logged)")

    def produce(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]],
                on_delivery: DeliveryCallback) -> None:
        """Queue one message; raises BufferError when the bounded queue is full."""
        self._producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)  # type: ignore[arg-type]

    def queued(self) -> int:
        """Messages not yet acknowledged by the broker (queued or in flight)."""
        return len(self._producer)

    def flush(self, timeout_s: float) -> int:
        """Wait for every queued message to be acknowledged or fail; returns how many are left."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float) -> int:
        left = self.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout=2)
        if left:
            # Purge so their delivery callbacks fire (as failures) and get counted, not lost silently.
            self._producer.purge()
            self._producer.poll(0)
        # Release librdkafka's threads and sockets now: the producer and its error callback (a method of
        # this object) form a cycle the collector does not break, so it would otherwise go on
        # reconnecting to an absent broker until the process ends.
        self._producer.close()
        return left
