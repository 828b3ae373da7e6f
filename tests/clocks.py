"""Clocks with wall-clock steps at known kernel times, for decoders' tests; and the host's own wall
clock stepped for a while, for the tests of the real thing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from agent.clock import HISTORY, Clock


def stepped(offset_ns: int, *steps: tuple[int, int]) -> Clock:
    """A clock whose offset is ``offset_ns`` and then, from each ``(mono_ns, delta_ns)`` of ``steps``
    (in order), moved by ``delta_ns``: as ``refresh`` leaves it after seeing each step at ``mono_ns``."""
    samples, offset = [], offset_ns
    for mono, delta in steps:
        offset += delta
        samples.append((mono, offset))
    it = iter(samples)
    clock = Clock(offset_ns, sample=lambda: next(it, None))
    for _ in samples:
        clock.refresh()
    assert clock.steps == min(len(steps), HISTORY - 1)
    return clock


@contextlib.contextmanager
def wall_clock_stepped(step_ns: int) -> Iterator[None]:
    """CLOCK_REALTIME moved by ``step_ns`` for the block, then moved back (monotonic time is not
    touched). Skips the test, saying why, where root lacks CAP_SYS_TIME (a container)."""
    try:
        time.clock_settime_ns(time.CLOCK_REALTIME, time.time_ns() + step_ns)
    except PermissionError:
        pytest.skip("setting the wall clock needs CAP_SYS_TIME")
    try:
        yield
    finally:
        time.clock_settime_ns(time.CLOCK_REALTIME, time.time_ns() - step_ns)
