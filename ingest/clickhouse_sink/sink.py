"""The ClickHouse sink: writes one batch of one record kind, retrying what is worth retrying.

Synchronous on purpose: the caller decides what "accepted" means (the embedded pipeline moves on, the
Kafka ingest worker commits offsets) only after ``write`` returns.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import pyarrow as pa

from contract.records import RecordKind
from contract.retry import retry
from ingest.clickhouse_sink.config import ClickHouseSinkConfig
from ingest.clickhouse_sink.service import ClickHouseService

log = logging.getLogger(__name__)


@dataclass
class SinkCounters:
    rows_written: int = 0
    batches_written: int = 0
    retries: int = 0
    insert_seconds: float = 0.0
    by_table: dict[str, int] = field(default_factory=dict)


class ClickHouseSink:
    def __init__(
        self,
        service: ClickHouseService,
        config: ClickHouseSinkConfig | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.service = service
        self.config = config or ClickHouseSinkConfig()
        self.counters = SinkCounters()
        self._stop = stop or threading.Event()

    def write(
        self,
        kind: RecordKind,
        table: pa.Table,
        *,
        dedup_token: str | None = None,
        max_attempts: int | None = None,
    ) -> int:
        """Insert ``table`` (rows of ``kind``) into ``kind.table``; return how many rows were written.

        Infrastructure failures are retried (contract.retry) until ``max_attempts`` (None: until the
        sink is stopped, which raises Stopping). Failures of the rows themselves raise at once.
        """
        if table.num_rows == 0:
            return 0
        t0 = time.perf_counter()

        def counted(_op: str, _e: BaseException) -> None:
            self.counters.retries += 1

        retry(f"insert into {kind.table}",
              lambda: self.service.insert_arrow(self.config.database, kind.table, table, dedup_token=dedup_token),
              wait=self._stop.wait, initial_s=self.config.retry_initial_s, max_s=self.config.retry_max_s,
              on_retry=counted, max_attempts=max_attempts)
        self.counters.insert_seconds += time.perf_counter() - t0
        self.counters.rows_written += table.num_rows
        self.counters.batches_written += 1
        self.counters.by_table[kind.table] = self.counters.by_table.get(kind.table, 0) + table.num_rows
        return int(table.num_rows)
