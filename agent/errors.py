"""Counted, logged-once failures of one source: what a poll loop or a ring-buffer callback does with an
exception instead of raising it (an exception inside a ctypes callback is printed and lost; one out
of ``poll`` stops the agent). Reported as ``source_errors:<source>:<what>`` counters, which the
pipeline writes to pipeline_counters and Prometheus like its own."""

from __future__ import annotations

import logging
from collections import Counter

PREFIX = "source_errors"


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
        args = (self.source, what, f" ({context})" if context else "", PREFIX, self.source, what)
        if exc is not None:
            self._log.error(msg, *args, exc_info=exc)
        else:
            self._log.warning(msg, *args)

    def counters(self) -> dict[str, int]:
        return {f"{PREFIX}:{self.source}:{k}": v for k, v in self.counts.items()}
