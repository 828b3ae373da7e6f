"""Kernel time (CLOCK_MONOTONIC ns, what bpf_ktime_get_ns returns) to wall-clock ns since the epoch."""

from __future__ import annotations

import bisect
import ctypes as C
import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

_I64_MAX = (1 << 63) - 1
STEP_NS = 100_000  # a change of wall - monotonic above this is a step of the wall clock, below it read jitter
HISTORY = 256  # steps remembered: a record decoded late (an idle keep-alive exchange, a long connection)


def _offset_sample() -> tuple[int, int] | None:
    """(monotonic ns, wall - monotonic) from reads not split by a preemption: a thread descheduled
    between its two clock reads (a busy host) would otherwise look like a wall-clock step of ms."""
    for _ in range(5):
        m1 = time.monotonic_ns()
        w = time.time_ns()
        m2 = time.monotonic_ns()
        if 0 <= m2 - m1 < 20_000:
            mono = (m1 + m2) // 2
            return mono, w - mono
    return None


class Clock:
    """Converts kernel times to wall-clock times with the offset in effect when the event happened.

    The wall clock is stepped (NTP, a VM's time sync after a pause) while monotonic time is not. A
    record is decoded up to seconds after its event (an idle keep-alive exchange after ``quiet_s``, a
    connection's start at its close), so converting it with the offset of the moment it is decoded
    would move it by every step in between, and two rows of one exchange decoded on either side of a
    step would disagree (a call ending after its caller). ``refresh`` records each step with the
    monotonic time it was first seen, ``watch_steps`` sees it as it happens; ``wall``/``offsets_at``
    convert by that history. The read jitter of two clocks (~100s of ns) is never taken for a step:
    rows converted in one run order as the kernel saw them, to the nanosecond, unless the wall clock
    itself went back.
    """

    def __init__(self, offset_ns: int | None = None,
                 sample: Callable[[], tuple[int, int] | None] = _offset_sample) -> None:
        self._sample = sample
        if offset_ns is None:
            first = sample()
            offset_ns = first[1] if first is not None else time.time_ns() - time.monotonic_ns()
        # (monotonic ns from which each offset holds, the offsets): replaced whole, so a reader on
        # another thread never sees the two halves of different lengths
        self._history: tuple[tuple[int, ...], tuple[int, ...]] = ((0,), (offset_ns,))
        self._lock = threading.Lock()  # the poll and the step watcher both refresh
        self._watcher: threading.Thread | None = None

    @property
    def offset_ns(self) -> int:
        """The offset in effect now."""
        return self._history[1][-1]

    @property
    def steps(self) -> int:
        """Wall-clock steps seen since this clock was made (those still remembered)."""
        return len(self._history[1]) - 1

    def refresh(self) -> None:
        """Take one sample; a step since the last one applies from the sample's time on."""
        with self._lock:
            s = self._sample()
            if s is None:
                return
            mono, offset = s
            since, offsets = self._history
            if abs(offset - offsets[-1]) <= STEP_NS or mono <= since[-1]:
                return
            since, offsets = (*since, mono), (*offsets, offset)
            if len(offsets) > HISTORY:  # the oldest kept offset then holds for everything before it
                since, offsets = (0, *since[2:]), offsets[1:]
            self._history = (since, offsets)

    def watch_steps(self) -> None:
        """Refresh the moment the wall clock is set, from a thread blocked on a timerfd that the kernel
        cancels on every discontinuous change of CLOCK_REALTIME (clock_settime, settimeofday, adjtimex
        steps, a hypervisor's time sync): without it a step is seen only at the next poll, and what
        happened in between is converted with the old offset. Idempotent; no-op where timerfd is not."""
        if self._watcher is not None:
            return
        fd = _cancel_on_set_timerfd()
        if fd is None:
            return
        self._watcher = threading.Thread(target=self._watch, args=(fd,), name="blindspot-clock-steps", daemon=True)
        self._watcher.start()

    def _watch(self, fd: int) -> None:
        try:
            while True:
                try:
                    os.read(fd, 8)  # blocks until the far-off expiry, or fails with ECANCELED on a set
                except OSError as e:
                    if e.errno != errno.ECANCELED:
                        raise
                self.refresh()
                if not _arm(fd):
                    return
        except Exception:  # never fatal: the poll's refresh still follows steps, only later
            log.exception("wall-clock step watcher stopped; steps are seen at the next poll only")
        finally:
            os.close(fd)

    def offset_at(self, mono_ns: int) -> int:
        since, offsets = self._history
        return offsets[bisect.bisect_right(since, mono_ns) - 1]

    def offsets_at(self, mono_ns: np.ndarray) -> np.ndarray:
        """``offset_at`` of each element (int64)."""
        since, offsets = self._history
        if len(offsets) == 1:
            return np.full(len(mono_ns), offsets[0], np.int64)
        idx = np.searchsorted(np.asarray(since, np.uint64), mono_ns.astype(np.uint64), side="right") - 1
        return np.asarray(offsets, np.int64)[idx]

    def wall(self, mono_ns: int) -> int:
        # Clamped to int64 (timestamp[ns]): only a corrupt record gets near it, and it must not fail the batch.
        return min(mono_ns + self.offset_at(mono_ns), _I64_MAX) if mono_ns else 0


@functools.cache
def system_clock() -> Clock:
    """The process's clock, shared by every source, with its step watcher running."""
    clock = Clock()
    clock.watch_steps()
    return clock


# --- timerfd (timerfd_create(2)): os.timerfd_* arrive only in Python 3.13 ---------------------------
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME, _TFD_TIMER_CANCEL_ON_SET = 1, 2
_CLOCK_REALTIME = 0
_FAR_S = 100 * 365 * 86_400  # an expiry that never comes: the timer is there to be cancelled


class _Timespec(C.Structure):
    _fields_ = [("tv_sec", C.c_long), ("tv_nsec", C.c_long)]


class _Itimerspec(C.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


@functools.cache
def _libc() -> C.CDLL:
    return C.CDLL(None, use_errno=True)


def _arm(fd: int) -> bool:
    spec = _Itimerspec(_Timespec(0, 0), _Timespec(int(time.time()) + _FAR_S, 0))
    return _libc().timerfd_settime(fd, _TFD_TIMER_ABSTIME | _TFD_TIMER_CANCEL_ON_SET, C.byref(spec), None) == 0


def _cancel_on_set_timerfd() -> int | None:
    try:
        fd = _libc().timerfd_create(_CLOCK_REALTIME, _TFD_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if not _arm(fd):
        os.close(fd)
        return None
    return fd
