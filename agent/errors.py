"""Counted, logged-once failures of one source: what a poll loop or a ring-buffer callback does with an
exception instead of raising it (an exception inside a ctypes callback is printed and lost; one out
of ``poll`` stops the agent). Reported as ``source_errors:<source>:<what>`` counters, which the
pipeline writes to pipeline_counters and Prometheus like its own."""

from __future__ import annotations

import logging
from collections import Counter

PREFIX = "source_errors"
# C0 controls, DEL and C1 controls (0x9b is a one-byte CSI on some terminals): shown escaped, never sent.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(value: object, limit: int = 512) -> str:
    """Text that others chose (process names, paths, parser messages about their files) as it may reach
    a terminal or a log: control characters as visible escapes (ESC as \\x1b), undecodable bytes as
    U+FFFD, at most ``limit`` characters."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.translate(_CONTROL)


class SourceErrors:
    def __init__(self, source: str, logger: logging.Logger) -> None:
        self.source = source
        self._log = logger
        self.counts: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()

    def record(self, what: str, exc: BaseException | None = None, context: str = "", n: int = 1) -> None:
        """Count ``n`` failures of kind ``what``; log the first of each (what, exception type) with its
        context (and traceback, for an exception)."""
        self.counts[what] += n
        key = (what, type(exc).__name__ if exc is not None else "")
        if key in self._logged:
            return
        self._logged.add(key)
        msg = "%s source: %s%s (counted as %s:%s:%s; further ones counted, not logged)"
        args = (self.source, what, f" ({printable(context)})" if context else "", PREFIX, self.source, what)
        if exc is not None:
            self._log.error(msg + ": %s", *args, printable(f"{type(exc).__name__}: {exc}"),
                            exc_info=exc if not isinstance(exc, OSError) else None)
        else:
            self._log.warning(msg, *args)

    def counters(self) -> dict[str, int]:
        return {f"{PREFIX}:{self.source}:{k}": v for k, v in self.counts.items()}
