"""Versioned migrations: ``ingest/migrations/NNNN_name.sql``, applied in order, once each.

The same DDL runs on the embedded engine and on a ClickHouse server. Files may use the placeholder
``{retention_days}``, filled from configuration (an int, validated here), and the rollup tier
placeholders of ``TIERS`` below. Applied versions are kept in ``blindspot.schema_migrations``.
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


# Rollup tiers: one text for the per-minute and the per-hour table of a rollup and for its view, so a
# column is added (or a SELECT changed) once. A run of consecutive statements that name ``{tier}`` is
# emitted once per tier, in this order, each with these placeholders filled; the minute tier is kept
# 3 days (dashboards read it for ranges within the last 2), the hour tier for the retention period.
# Why a template and not the hour tier fed from the minute table by a view of its own: the expanded
# text is, statement for statement, the DDL that servers migrated before the template existed ran
# (only versions are recorded, no checksum, and nothing is re-applied), so every deployment, old or
# fresh, has the same tables and views; the hour tier still reads the raw table, so it does not
# depend on the minute tier being complete, and a retried insert is deduplicated exactly as before
# (one view level, no chained blocks). tests/test_rollup_tiers.py checks that the hour tier equals
# the minute tier re-aggregated.
TIERS: tuple[dict[str, str], ...] = (
    {"tier": "1m", "bucket": "minute", "start_of_bucket": "toStartOfMinute", "bucket_ttl_days": "3"},
    {"tier": "1h", "bucket": "hour", "start_of_bucket": "toStartOfHour", "bucket_ttl_days": "{retention_days}"},
)


def _fill(statement: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        statement = statement.replace("{" + key + "}", value)
    return statement


def expand_tiers(statements: list[str]) -> list[str]:
    """Each run of consecutive statements naming ``{tier}``, once per tier of ``TIERS``."""
    out: list[str] = []
    run: list[str] = []
    for stmt in [*statements, ""]:
        if "{tier}" in stmt:
            run.append(stmt)
            continue
        out += [_fill(s, tier) for tier in TIERS for s in run]
        run = []
        if any("{" + key + "}" in stmt for key in TIERS[0]):
            raise SchemaError(f"a tier placeholder in a statement that names no {{tier}}: {stmt[:80]}")
        if stmt:
            out.append(stmt)
    return out


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def templates(self) -> list[str]:
        """The statements, tiers expanded, ``{retention_days}`` still in place."""
        text = re.sub(r"--[^\n]*", "", self.path.read_text())
        return expand_tiers([s.strip() for s in re.split(r";\s*(?:\n|$)", text) if s.strip()])

    def statements(self, retention_days: int) -> list[str]:
        return [s.replace("{retention_days}", str(retention_days)) for s in self.templates()]


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
        for stmt in m.templates():
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


def migrate(service: ClickHouseService, *, retention_days: int = 30, before: int | None = None) -> list[Migration]:
    """Apply pending migrations and the configured retention; return the migrations applied now.
    ``before``: only the versions below it, a store as an older release left it (upgrade tests, benches)."""
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
        if m.version in done or (before is not None and m.version >= before):
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
        for stmt in m.templates():
            found = _ANY_TTL.search(stmt)
            if found:
                days = retention_days if found.group(3) == "{retention_days}" else int(found.group(3))
                out[found.group(1)] = (found.group(2), days)
    return out
