"""Versioned migrations: ``ingest/migrations/NNNN_name.sql``, applied in order, once each.

The same DDL runs on the embedded engine and on a ClickHouse server. Files may use one placeholder,
``{retention_days}``, filled from configuration (an int, validated here). Applied versions are kept in
``blindspot.schema_migrations``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ingest._errors import SchemaError
from ingest.clickhouse_sink.service import ClickHouseService

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
DATABASE = "blindspot"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def statements(self, retention_days: int) -> list[str]:
        text = self.path.read_text().replace("{retention_days}", str(retention_days))
        text = re.sub(r"--[^\n]*", "", text)
        return [s.strip() for s in re.split(r";\s*(?:\n|$)", text) if s.strip()]


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for p in sorted(directory.glob("*.sql")):
        m = _FILE.match(p.name)
        if not m:
            raise SchemaError(f"migration file name must be NNNN_name.sql: {p.name}")
        found.append(Migration(int(m.group(1)), m.group(2), p))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise SchemaError(f"duplicate migration versions in {directory}")
    return found


def migrate(service: ClickHouseService, *, retention_days: int = 30) -> list[Migration]:
    """Apply pending migrations; return the ones applied now."""
    if not isinstance(retention_days, int) or not 1 <= retention_days <= 36500:
        raise ValueError(f"retention_days must be an int in 1..36500, not {retention_days!r}")
    service.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    service.execute(
        f"CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version"
    )
    done = set(service.query_arrow(f"SELECT version FROM {DATABASE}.schema_migrations").to_pydict().get("version", []))
    applied = []
    for m in migrations():
        if m.version in done:
            continue
        log.info("applying migration %04d_%s", m.version, m.name)
        for stmt in m.statements(retention_days):
            service.execute(stmt)
        service.execute(
            f"INSERT INTO {DATABASE}.schema_migrations (version, name) SETTINGS async_insert=0 "
            "VALUES ({v:UInt32}, {n:String})",
            {"v": m.version, "n": m.name},
        )
        applied.append(m)
    return applied
