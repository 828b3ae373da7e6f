"""agent/clock.py: kernel times converted with the wall-clock offset of the moment they were taken."""

from __future__ import annotations

import time

import numpy as np
import pytest

from agent import clock as clock_mod
from agent.clock import HISTORY, STEP_NS, Clock
from tests.clocks import stepped, wall_clock_stepped


def test_read_jitter_is_never_a_step() -> None:
    c = Clock()
    first = c.offset_ns
    for _ in range(10_000):
        c.refresh()
    assert (c.offset_ns, c.steps) == (first, 0)  # two reads jitter by ~100s of ns: never a step


def test_a_real_step_is_followed() -> None:
    c = Clock(time.time_ns() - time.monotonic_ns() - 5_000_000)  # as if the wall clock had moved 5 ms since
    c.refresh()
    assert c.steps == 1 and abs(c.offset_ns - (time.time_ns() - time.monotonic_ns())) < 100_000


def test_a_preempted_read_is_not_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread descheduled between its two clock reads (a busy host) must not look like a step."""
    c = Clock()
    first = c.offset_ns
    real_mono = time.monotonic_ns
    calls = iter(range(10**6))

    def late_mono() -> int:  # reads alternate 5 ms apart: each pair is split as by a preemption
        return real_mono() - (5_000_000 if next(calls) % 2 == 0 else 0)

    monkeypatch.setattr(clock_mod.time, "monotonic_ns", late_mono)
    c.refresh()
    assert (c.offset_ns, c.steps) == (first, 0)


def test_each_time_converted_with_the_offset_of_its_moment() -> None:
    """The CI failure this fixes: a VM's time sync stepped the wall clock +4.94 ms while exchanges were
    waiting to be decoded; converted with the offset of their decoding they moved by the step, and a
    call ended after its caller."""
    c = stepped(1_000, (500, 5_000_000), (900, -2_000_000))
    assert [c.wall(t) for t in (1, 499, 500, 899, 900, 10**12)] == [
        1_001, 1_499, 500 + 5_001_000, 899 + 5_001_000, 900 + 3_001_000, 10**12 + 3_001_000]
    assert c.wall(0) == 0  # no time stays no time
    times = np.array([0, 1, 499, 500, 899, 900, 2**63 + 5], np.uint64)
    assert c.offsets_at(times).tolist() == [c.offset_at(int(t)) for t in times]
    assert c.offset_ns == 3_001_000


def test_history_is_bounded() -> None:
    c = stepped(0, *[(1_000 * (i + 1), 1_000_000) for i in range(HISTORY + 10)])
    assert c.steps == HISTORY - 1
    assert c.offset_at(0) == c.offset_at(1_000 * 11) == 11_000_000  # the oldest kept holds before it
    assert c.offset_at(1_000 * (HISTORY + 10)) == c.offset_ns == (HISTORY + 10) * 1_000_000


@pytest.mark.root
def test_a_step_is_seen_as_it_happens() -> None:
    """The watcher (a timerfd the kernel cancels when the wall clock is set) records a step within a few
    ms of it, with no poll calling refresh: only events in those ms could take the old offset. Tried
    up to three times: a step of the host's own (a VM's time sync) in the window is not ours to judge."""
    for _ in range(3):
        c = Clock()
        c.watch_steps()
        first, step = c.offset_ns, 20_000_000
        with wall_clock_stepped(step):
            stepped_at = time.monotonic_ns()
            deadline = time.monotonic() + 5
            while c.steps < 1 and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while c.steps < 2 and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(0.01)
        if c.steps != 2:  # someone else stepped the clock meanwhile (or the watcher saw nothing: fails)
            continue
        assert c.offset_at(stepped_at - 1_000_000) == first
        assert abs(c.offset_at(stepped_at + 5_000_000) - first - step) < STEP_NS
        assert abs(c.offset_ns - first) < STEP_NS
        return
    pytest.fail(f"the watcher did not see exactly our two steps in three tries (last: {c.steps})")
