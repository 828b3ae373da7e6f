"""The one way Blindspot retries: every infrastructure retry (inserts, commits, dead letters, opening
the engine) goes through ``retry``, built on tenacity. Failures are classified first
(contract.errors.classify): only INFRASTRUCTURE is retried; MESSAGE and GONE are raised to the caller
at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import tenacity

from contract.errors import Fault, TransientError, classify

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stopping(TransientError):
    """Raised inside a retry when the caller is asked to stop: leave without committing (a
    TransientError, so callers that stop on one, like the embedded pipeline, count it as shutdown)."""


def _retryable(e: BaseException) -> bool:
    return not isinstance(e, Stopping) and classify(e) is Fault.INFRASTRUCTURE


def retry(operation: str, fn: Callable[[], T], *, wait: Callable[[float], bool], initial_s: float = 0.2,
          max_s: float = 10.0, on_retry: Callable[[str, BaseException], None] | None = None,
          max_attempts: int | None = None) -> T:
    """``fn()`` until it succeeds, with capped exponential backoff between infrastructure failures.

    ``wait(delay)`` sleeps (the worker polls its paused consumer meanwhile) and returns True when the
    caller must stop, which raises Stopping. ``max_attempts`` None: retry until stopped."""
    last: list[BaseException] = []

    def before_sleep(state: tenacity.RetryCallState) -> None:
        e = state.outcome.exception() if state.outcome is not None else None
        assert e is not None
        last[:] = [e]
        if on_retry is not None:
            on_retry(operation, e)
        delay = state.upcoming_sleep
        log.warning("%s failed (%s: %s); retry %d in %.1fs", operation, type(e).__name__, str(e)[:300],
                    state.attempt_number, delay)

    def sleep(delay: float) -> None:
        if wait(delay):
            raise Stopping(operation) from (last[0] if last else None)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_retryable),
        wait=tenacity.wait_exponential(multiplier=initial_s, exp_base=2, max=max_s),
        stop=tenacity.stop_never if max_attempts is None else tenacity.stop_after_attempt(max_attempts),
        sleep=sleep, before_sleep=before_sleep, reraise=True)
    return retrying(fn)
