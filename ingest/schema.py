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

from contract.errors import SchemaError
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


_RETENTION_TTL = re.compile(
    r"CREATE TABLE IF NOT EXISTS\s+" + DATABASE + r"\.(\w+)[\s\S]*?"
    r"\bTTL\s+(.+?)\s*\+\s*INTERVAL\s+\{retention_days\}\s+DAY"
)
_CURRENT_TTL = re.compile(r"\bTTL\s+.+?\+\s*toIntervalDay\((\d+)\)")


def retention_tables(directory: Path = MIGRATIONS_DIR) -> dict[str, str]:
    """Tables whose TTL follows ``retention_days``: table -> the TTL's time expression."""
    out: dict[str, str] = {}
    for m in migrations(directory):
        for stmt in re.split(r";\s*(?:\n|$)", re.sub(r"--[^\n]*", "", m.path.read_text())):
            found = _RETENTION_TTL.search(stmt)
            if found:
                out[found.group(1)] = found.group(2)
    return out


def apply_retention(service: ClickHouseService, retention_days: int) -> list[str]:
    """Set the TTL of every retention-bound table to ``retention_days`` where it differs; return
    the tables changed. Rows older than the new retention are dropped by the engine."""
    changed = []
    for table, expr in retention_tables().items():
        ddl = service.query_arrow(
            "SELECT create_table_query AS q FROM system.tables WHERE database = {d:String} AND name = {t:String}",
            {"d": DATABASE, "t": table},
        ).to_pylist()
        current = _CURRENT_TTL.search(ddl[0]["q"]) if ddl else None
        if current is None or int(current.group(1)) == retention_days:
            continue
        log.info("retention of %s: %s -> %d days", table, current.group(1), retention_days)
        service.execute(f"ALTER TABLE {DATABASE}.{table} MODIFY TTL {expr} + INTERVAL {int(retention_days)} DAY")
        changed.append(table)
    return changed


def migrate(service: ClickHouseService, *, retention_days: int = 30) -> list[Migration]:
    """Apply pending migrations and the configured retention; return the migrations applied now."""
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
    apply_retention(service, retention_days)
    return applied


_ANY_TTL = re.compile(
    r"CREATE TABLE IF NOT EXISTS\s+" + DATABASE + r"\.(\w+)[\s\S]*?"
    r"\bTTL\s+toDateTime\((\w+)\)\s*\+\s*INTERVAL\s+(\{retention_days\}|\d+)\s+DAY"
)


def expiry(retention_days: int, directory: Path = MIGRATIONS_DIR) -> dict[str, tuple[str, int]]:
    """Raw tables whose rows the engine drops by age: table -> (time column, days kept). A row older
    than that on arrival would be dropped at insert (ingest/worker.py counts it as ``expired``)."""
    out: dict[str, tuple[str, int]] = {}
    for m in migrations(directory):
        for stmt in re.split(r";\s*(?:\n|$)", re.sub(r"--[^\n]*", "", m.path.read_text())):
            found = _ANY_TTL.search(stmt)
            if found:
                days = retention_days if found.group(3) == "{retention_days}" else int(found.group(3))
                out[found.group(1)] = (found.group(2), days)
    return out
