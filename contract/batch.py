"""batch: accumulate a record kind's rows (Arrow tables of its schema) and cut batches by row count and age.

Every part of the agent hands on Arrow tables, one per poll or decode: the batcher only concatenates.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TypeAlias

import pyarrow as pa

Batch: TypeAlias = pa.Table


class Batcher:
    def __init__(self, max_rows: int, max_age_s: float) -> None:
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._tables: dict[str, list[pa.Table]] = {}
        self._count: dict[str, int] = {}
        self._since: dict[str, float] = {}

    def add(self, kind: str, table: pa.Table) -> Batch | None:
        """Add a table of ``kind``'s rows; return a full batch of ``kind`` when one is cut."""
        if not table.num_rows:
            return None
        if kind not in self._since:
            self._since[kind] = time.monotonic()
        self._tables.setdefault(kind, []).append(table)
        self._count[kind] = self._count.get(kind, 0) + table.num_rows
        return self._take(kind) if self._count[kind] >= self.max_rows else None

    def due(self, now: float | None = None) -> Iterator[tuple[str, Batch]]:
        """Batches older than ``max_age_s``."""
        now = time.monotonic() if now is None else now
        for kind in [k for k, t in self._since.items() if now - t >= self.max_age_s]:
            yield kind, self._take(kind)

    def drain(self) -> Iterator[tuple[str, Batch]]:
        for kind in list(self._since):
            yield kind, self._take(kind)

    def pending(self) -> int:
        return sum(self._count.values())

    def _take(self, kind: str) -> Batch:
        self._since.pop(kind, None)
        self._count.pop(kind, None)
        tables = self._tables.pop(kind)
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
