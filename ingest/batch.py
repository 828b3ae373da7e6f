"""batch: accumulate records per kind and cut batches by row count and age."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any


class Batcher:
    def __init__(self, max_rows: int, max_age_s: float) -> None:
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._since: dict[str, float] = {}

    def add(self, kind: str, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Add a row; return a full batch of ``kind`` when one is cut."""
        rows = self._rows.get(kind)
        if rows is None:
            rows = self._rows[kind] = []
            self._since[kind] = time.monotonic()
        rows.append(row)
        if len(rows) >= self.max_rows:
            return self._take(kind)
        return None

    def due(self, now: float | None = None) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Batches older than ``max_age_s``."""
        now = time.monotonic() if now is None else now
        for kind in [k for k, t in self._since.items() if now - t >= self.max_age_s]:
            yield kind, self._take(kind)

    def drain(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        for kind in list(self._rows):
            yield kind, self._take(kind)

    def pending(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def _take(self, kind: str) -> list[dict[str, Any]]:
        self._since.pop(kind, None)
        return self._rows.pop(kind, [])
