"""Clocks with wall-clock steps at known kernel times, for decoders' tests; and the host's own wall
clock stepped for a while, for the tests of the real thing."""

from __future__ import annotations

import contextlib
import ctypes as C
import errno
import os
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


class _Timex(C.Structure):
    """struct timex (x86-64), as clock_adjtime(2) takes it."""
    _fields_ = [("modes", C.c_uint), ("offset", C.c_long), ("freq", C.c_long), ("maxerror", C.c_long),
                ("esterror", C.c_long), ("status", C.c_int), ("constant", C.c_long), ("precision", C.c_long),
                ("tolerance", C.c_long), ("tv_sec", C.c_long), ("tv_nsec", C.c_long), ("tick", C.c_long),
                ("ppsfreq", C.c_long), ("jitter", C.c_long), ("shift", C.c_int), ("stabil", C.c_long),
                ("jitcnt", C.c_long), ("calcnt", C.c_long), ("errcnt", C.c_long), ("stbcnt", C.c_long),
                ("tai", C.c_int), ("_reserved", C.c_int * 11)]


_ADJ_SETOFFSET, _ADJ_NANO = 0x0100, 0x2000


def _step_wall_clock(step_ns: int) -> None:
    """Add ``step_ns`` to CLOCK_REALTIME in the kernel, in one call (ADJ_SETOFFSET): reading the time
    and setting it back (clock_settime) is off by however long the process was preempted between."""
    sec, nsec = divmod(step_ns, 1_000_000_000)  # tv_nsec must be in [0, 1e9): floor division does it
    tx = _Timex(modes=_ADJ_SETOFFSET | _ADJ_NANO, tv_sec=sec, tv_nsec=nsec)
    libc = C.CDLL(None, use_errno=True)
    if libc.clock_adjtime(time.CLOCK_REALTIME, C.byref(tx)) < 0:
        err = C.get_errno()
        raise PermissionError(err, os.strerror(err)) if err == errno.EPERM else OSError(err, os.strerror(err))


@contextlib.contextmanager
def wall_clock_stepped(step_ns: int) -> Iterator[None]:
    """CLOCK_REALTIME moved by ``step_ns`` for the block, then moved back by exactly as much (monotonic
    time is not touched). Skips the test, saying why, where root lacks CAP_SYS_TIME (a container)."""
    try:
        _step_wall_clock(step_ns)
    except PermissionError:
        pytest.skip("setting the wall clock needs CAP_SYS_TIME")
    try:
        yield
    finally:
        _step_wall_clock(-step_ns)
