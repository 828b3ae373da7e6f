"""Configuration of the ClickHouse sink: where the engine is and how batches are cut."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClickHouseSinkConfig:
    data_dir: str | None = None  # embedded chDB folder (exactly one of data_dir / url)
    url: str | None = None  # ClickHouse server, e.g. http://user@clickhouse:8123/ (password from env)
    database: str = "blindspot"
    retention_days: int = 30
    batch_max_rows: int = 50_000
    batch_max_age_s: float = 1.0
    max_buffered_rows: int = 1_000_000  # beyond this, new rows are dropped and counted
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
