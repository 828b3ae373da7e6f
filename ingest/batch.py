"""batch: accumulate records per kind and cut batches by row count and age.

A batch is a list of records, or an Arrow table of the kind's schema when a source hands on whole
tables (agent/http_source.py); records added to the same batch are converted and appended then.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeAlias

import pyarrow as pa

from blindspot.records import KINDS

Batch: TypeAlias = list[dict[str, Any]] | pa.Table


def batch_len(batch: Batch) -> int:
    return batch.num_rows if isinstance(batch, pa.Table) else len(batch)


class Batcher:
    def __init__(self, max_rows: int, max_age_s: float) -> None:
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._tables: dict[str, list[pa.Table]] = {}
        self._count: dict[str, int] = {}
        self._since: dict[str, float] = {}

    def add(self, kind: str, row: dict[str, Any]) -> Batch | None:
        """Add a row; return a full batch of ``kind`` when one is cut."""
        self._start(kind)
        self._rows.setdefault(kind, []).append(row)
        return self._counted(kind, 1)

    def add_table(self, kind: str, table: pa.Table) -> Batch | None:
        """Add a table of ``kind``'s rows; return a full batch of ``kind`` when one is cut."""
        if not table.num_rows:
            return None
        self._start(kind)
        self._tables.setdefault(kind, []).append(table)
        return self._counted(kind, table.num_rows)

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

    def _start(self, kind: str) -> None:
        if kind not in self._since:
            self._since[kind] = time.monotonic()

    def _counted(self, kind: str, n: int) -> Batch | None:
        self._count[kind] = self._count.get(kind, 0) + n
        return self._take(kind) if self._count[kind] >= self.max_rows else None

    def _take(self, kind: str) -> Batch:
        self._since.pop(kind, None)
        self._count.pop(kind, None)
        rows = self._rows.pop(kind, [])
        tables = self._tables.pop(kind, [])
        if not tables:
            return rows
        if rows:
            tables.append(KINDS[kind].to_arrow(rows))
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
