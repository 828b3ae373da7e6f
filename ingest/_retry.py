"""The one retry helper of ``ingest``: every infrastructure retry (inserts, commits, dead letters,
opening the engine) goes through ``retry``. Failures are classified first (ingest._errors.classify):
only INFRASTRUCTURE is retried; MESSAGE and GONE are raised to the caller at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from ingest._errors import Fault, TransientError, classify

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stopping(TransientError):
    """Raised inside a retry when the caller is asked to stop: leave without committing (a
    TransientError, so callers that stop on one, like the embedded pipeline, count it as shutdown)."""


def retry(operation: str, fn: Callable[[], T], *, wait: Callable[[float], bool], initial_s: float = 0.2,
          max_s: float = 10.0, on_retry: Callable[[str, BaseException], None] | None = None,
          max_attempts: int | None = None) -> T:
    """``fn()`` until it succeeds, with capped exponential backoff between infrastructure failures.

    ``wait(delay)`` sleeps (the worker polls its paused consumer meanwhile) and returns True when the
    caller must stop, which raises Stopping. ``max_attempts`` None: retry until stopped."""
    delay, attempt = initial_s, 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:
            last = max_attempts is not None and attempt >= max_attempts
            if isinstance(e, Stopping) or classify(e) is not Fault.INFRASTRUCTURE or last:
                raise
            if on_retry is not None:
                on_retry(operation, e)
            log.warning("%s failed (%s: %s); retry %d in %.1fs", operation, type(e).__name__, str(e)[:300],
                        attempt, delay)
            if wait(delay):
                raise Stopping(operation) from e
            delay = min(delay * 2, max_s)
