"""Processes a test starts never outlive it, whether it passes or fails.

Every long-running child of the suite goes through :func:`spawn` (``subprocess.Popen``'s signature).
Three nets catch it:
- conftest's autouse fixtures kill what a test started when that test ends, and whatever is left when
  the session ends (module fixtures stop their own processes first);
- the child asks the kernel for SIGKILL when the thread that started it dies (``PR_SET_PDEATHSIG``),
  so even a pytest killed with SIGKILL leaves nothing behind. Hence: spawn from the main thread only.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
from typing import Any

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_started: list[subprocess.Popen[Any]] = []


def _die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv: Any, **kw: Any) -> subprocess.Popen[Any]:
    p: subprocess.Popen[Any] = subprocess.Popen(argv, preexec_fn=_die_with_parent, **kw)
    _started.append(p)
    return p


def mark() -> int:
    return len(_started)


def reap(since: int = 0) -> list[str]:
    """Kill every process started since ``mark() == since`` that still runs; their command lines."""
    left = []
    for p in _started[since:]:
        if p.poll() is None:
            left.append(str(p.args))
            p.kill()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            left.append(f"{p.args} (did not die)")
    del _started[since:]
    return left
