"""Configuration of the ClickHouse sink: which database, and how long to back off between retries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClickHouseSinkConfig:
    database: str = "blindspot"
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
