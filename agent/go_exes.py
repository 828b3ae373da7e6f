"""Go executables the HTTP source traces, one entry per file (inode), shared by all its processes.

A uprobe belongs to a file, not to a process: every process of one executable hits the probes attached
to it, and attaching them again for a second process of that file fails. So the probes are attached
once per file, through a descriptor the agent holds on it (``/proc/self/fd/N``: still valid when the
process it was found through has exited), and stay attached while any process runs the file. The
kernel's ``exes`` map gets the file's offsets only once its probes are in place: from then on, a new
process of that file is traced from its exec by the kernel itself (bpf/http_trace.c), with no round
trip through user space; a new build at the same path is a new inode, read and attached on its first
exec.

When the last process of a file exits, its probes are detached and the kernel forgets the file: a file
nobody runs can be rewritten in place (same inode, new code), and a probe left at an old offset would
put a breakpoint in the middle of the new program's instructions. A restart is then traced from exec
(syscalls) and fully traced once user space has re-attached the probes from its cached reading of the
file (one poll); the gap is measured and counted like any other.

Also here: how long a process took from its exec to fully traced (handed to the pipeline, which feeds
the Prometheus histogram ``blindspot_http_exec_to_traced_seconds``; the last values kept for a bench),
and the requests a process made or served before that moment (counted per process, never silently
unlinked).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.go_binary import GoBinary

log = logging.getLogger(__name__)

RECENT = 4096  # exec-to-traced figures kept for a bench


def _locked(fn: Callable[..., Any]) -> Callable[..., Any]:
    def inner(self: ExeRegistry, *a: Any, **k: Any) -> Any:
        with self.lock:
            return fn(self, *a, **k)
    inner.__doc__ = fn.__doc__
    return inner


def kernel_dev(st_dev: int) -> int:
    """A stat() st_dev in the kernel's own dev_t encoding (super_block s_dev: major << 20 | minor)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


@dataclass
class Exe:
    inode: tuple[int, int]  # (st_dev, st_ino) as stat() names it
    binary: GoBinary
    fd: int  # held open: the path uprobes attach through, and st_nlink (deleted or replaced?)
    kernel_keys: set[tuple[int, int]] = field(default_factory=set)  # (s_dev, ino) as the kernel names it
    uprobes: dict[int, bytes] = field(default_factory=dict)  # file offset -> uprobe event name
    ready: bool = False  # every probe wanted is attached (or none is wanted)
    users: set[int] = field(default_factory=set)

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.fd}"


class ExeRegistry:
    """``attach(path, offset, prog) -> event name`` and ``detach(event name)`` are the BPF object's;
    ``set_kernel(key, leaf|None)`` writes or deletes the kernel's ``exes`` entry."""

    def __init__(self, attach: Callable[[str, int, str], bytes], detach: Callable[[bytes], None],
                 set_kernel: Callable[[tuple[int, int], Any], None], record_error: Callable[..., None]) -> None:
        self._attach = attach
        self._detach = detach
        self._set_kernel = set_kernel
        self._error = record_error
        # The source's poll thread and its inspector thread (which makes a file's first processes fully
        # traced as soon as it is read) both attach and publish.
        self.lock = threading.RLock()
        self.exes: dict[tuple[int, int], Exe] = {}
        self.recent: deque[float] = deque(maxlen=RECENT)  # exec-to-traced seconds, newest last
        self._new: list[float] = []  # the same, not yet taken by the pipeline (Prometheus)
        self.traced_at: dict[int, int] = {}  # pid -> CLOCK_MONOTONIC ns it was fully traced
        self.before: dict[int, int] = {}  # pid -> exchanges that started before that
        self.c = {"exes_attached": 0, "exes_detached": 0, "procs_traced_at_exec": 0, "requests_before_traced": 0}

    def get(self, inode: tuple[int, int]) -> Exe | None:
        return self.exes.get(inode)

    @_locked
    def by_kernel_key(self, key: tuple[int, int]) -> Exe | None:
        return next((e for e in self.exes.values() if key in e.kernel_keys), None)

    @_locked
    def add(self, pid: int, inode: tuple[int, int], binary: GoBinary,
            probes: list[tuple[int, str]]) -> Exe | None:
        """The file of ``pid``, its ``probes`` ((file offset, program)) attached once; None when the file
        cannot be opened (the process is gone)."""
        exe = self.exes.get(inode)
        if exe is None:
            try:
                fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                self._error("exe_open_failed", e, f"pid {pid}")
                return None
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != inode:  # the pid exec'd another file meanwhile
                os.close(fd)
                return None
            exe = Exe(inode, binary, fd)
            exe.kernel_keys.add((kernel_dev(st.st_dev), st.st_ino))
            self.exes[inode] = exe
            self.c["exes_attached"] += 1
        if not exe.ready:
            ok = True
            for off, prog in probes:
                if off in exe.uprobes:
                    continue
                try:
                    exe.uprobes[off] = self._attach(exe.path, off, prog)
                except Exception as e:  # traced without this probe for now: a later process retries
                    ok = False
                    self._error("uprobe_attach_failed", e, f"pid {pid} {prog}")
            exe.ready = ok
        exe.users.add(pid)
        return exe

    @_locked
    def publish(self, exe: Exe, leaf: object, key: tuple[int, int] | None = None) -> None:
        """Let the kernel trace new processes of ``exe`` from their exec: only once its probes are in."""
        if key is not None:
            exe.kernel_keys.add(key)
        if not exe.ready:
            return
        for k in exe.kernel_keys:
            try:
                self._set_kernel(k, leaf)
            except Exception as e:  # LRU map: only a failure of the map itself lands here
                self._error("exes_map_update", e, f"{k}")

    def traced(self, pid: int, exec_ns: int, at_exec: bool, at_ns: int = 0) -> None:
        """``pid`` is fully traced now, or since ``at_ns``, or from its exec (``at_exec``); ``exec_ns``
        0: found by the start-up scan, no exec to measure from."""
        now = at_ns or time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if at_exec and exec_ns:
            self.traced_at[pid] = exec_ns
            self.c["procs_traced_at_exec"] += 1
            delay = 0.0
        else:
            self.traced_at[pid] = now
            delay = max(0, now - exec_ns) / 1e9 if exec_ns else -1.0
        if delay >= 0:
            self.recent.append(delay)
            if len(self._new) < RECENT:
                self._new.append(delay)

    def take(self) -> list[float]:
        """Exec-to-traced figures since the last call (the pipeline observes them)."""
        out, self._new = self._new, []
        return out

    def count_before(self, pid: int, n: int) -> None:
        if n:
            self.before[pid] = self.before.get(pid, 0) + n
            self.c["requests_before_traced"] += n

    @_locked
    def gone(self, pid: int, inode: tuple[int, int] | None, comm: str = "") -> None:
        """``pid`` exited (its ``traced_at`` stays until its last records are decoded)."""
        n = self.before.get(pid, 0)
        if n:
            log.info("pid %d (%s): %d HTTP exchanges before it was fully traced (no route pattern, no link)",
                     pid, comm, n)
        exe = self.exes.get(inode) if inode else None
        if exe is not None:
            exe.users.discard(pid)
            if not exe.users:
                self.drop(exe)

    def forget(self, pid: int) -> None:
        self.traced_at.pop(pid, None)
        self.before.pop(pid, None)

    @_locked
    def reap(self, alive: Callable[[int], bool]) -> None:
        """Forget users that no longer run (their exit event was lost); drop files nobody runs."""
        for exe in list(self.exes.values()):
            exe.users = {p for p in exe.users if alive(p)}
            if not exe.users:
                self.drop(exe)

    @_locked
    def drop(self, exe: Exe) -> None:
        for k in exe.kernel_keys:
            with contextlib.suppress(Exception):
                self._set_kernel(k, None)
        for ev in exe.uprobes.values():
            with contextlib.suppress(Exception):
                self._detach(ev)
        with contextlib.suppress(OSError):
            os.close(exe.fd)
        self.exes.pop(exe.inode, None)
        self.c["exes_detached"] += 1

    @_locked
    def close(self) -> None:
        for exe in list(self.exes.values()):
            self.drop(exe)
