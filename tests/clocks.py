"""Clocks with wall-clock steps at known kernel times, for decoders' tests."""

from __future__ import annotations

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
