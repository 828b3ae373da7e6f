"""Services: the two ways to reach the ClickHouse engine, behind one small interface.

``ChdbService`` runs the engine in this process (chDB) on a data folder; chDB locks that folder per
process, so exactly one process owns it (``blindspot run`` or ``blindspot ingest --data-dir``) and other
processes query through that owner (blindspot/query_server.py). ``ServerService`` talks to a
ClickHouse server over HTTP with clickhouse-connect; the password comes from the environment
(``BLINDSPOT_CLICKHOUSE_PASSWORD``) or a file, never from the URL; ``https://`` means verified TLS.

Both take SQL with server-side parameters (``{name:Type}``) so nothing from event data is ever
spliced into SQL text, and inserts pass every setting they rely on explicitly (chDB 26 defaults to
``async_insert=1``, which would acknowledge a batch before it is written).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from contract.errors import SinkUnavailable, classify_engine

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKEN = re.compile(r"^[A-Za-z0-9._:/\-]{1,200}$")

# Settings every insert relies on: synchronous, deduplicated when a token is given, also through
# materialized views feeding rollups.
INSERT_SETTINGS: dict[str, Any] = {
    "async_insert": 0,
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


def insert_settings(dedup_token: str | None) -> dict[str, Any]:
    """INSERT_SETTINGS, plus the token that makes a retried batch a no-op."""
    settings = dict(INSERT_SETTINGS)
    if dedup_token:
        settings["insert_deduplication_token"] = dedup_token
    return settings


def check_identifier(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


class ClickHouseService(Protocol):
    """What the sink and the CLI need from an engine."""

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None: ...

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table: ...

    def query_text(self, sql: str, fmt: str, params: dict[str, Any] | None = None) -> bytes: ...

    def insert_arrow(
        self, database: str, table: str, data: pa.Table, *, dedup_token: str | None = None
    ) -> None: ...

    def close(self) -> None: ...


def _settings_clause(settings: dict[str, Any]) -> str:
    parts = []
    for k, v in settings.items():
        check_identifier(k)
        if isinstance(v, int):
            parts.append(f"{k}={v}")
        elif isinstance(v, str) and _TOKEN.match(v):
            parts.append(f"{k}='{v}'")
        else:
            raise ValueError(f"unsupported setting value for {k}: {v!r}")
    return ", ".join(parts)


class ChdbService:
    """The engine in-process. One lock per process: chDB calls are serialized."""

    _lock = threading.RLock()

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        from chdb import session  # imported here: the server service must not need chDB loaded

        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._session = session.Session(str(self.data_dir))
        except Exception as e:  # chDB raises a bare RuntimeError for a locked folder
            hint = (
                "this process already serves another chDB folder (one per process)"
                if "already initialized" in str(e)
                else "another process owns it; query through that process (blindspot query)"
            )
            raise SinkUnavailable(f"cannot open chDB data folder {self.data_dir}: {hint}: {e}") from e

    def _run(self, sql: str, fmt: str = "CSV", params: dict[str, Any] | None = None) -> Any:
        with self._lock:
            try:
                return self._session.query(sql, fmt, params=params or None)
            except Exception as e:  # chdb.ChdbError (a RuntimeError) and whatever the binding raises
                raise classify_engine(f"{type(e).__name__}: {e}") from e

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._run(sql, "CSV", params)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        res = self._run(sql, "Arrow", params)
        data = res.bytes()
        if not data:
            return pa.table({})
        return pa.ipc.open_file(pa.BufferReader(data)).read_all()

    def query_text(self, sql: str, fmt: str, params: dict[str, Any] | None = None) -> bytes:
        return bytes(self._run(sql, fmt, params).bytes())

    def insert_arrow(
        self, database: str, table: str, data: pa.Table, *, dedup_token: str | None = None
    ) -> None:
        settings = insert_settings(dedup_token)
        cols = ", ".join(check_identifier(c) for c in data.column_names)
        target = f"{check_identifier(database)}.{check_identifier(table)}"
        batch = data  # noqa: F841 (chDB's Python() table function finds the batch by this name)
        self._run(
            f"INSERT INTO {target} ({cols}) SETTINGS {_settings_clause(settings)} "
            f"SELECT {cols} FROM Python(batch)"
        )

    def close(self) -> None:
        with self._lock:
            self._session.close()


class ServerService:
    """A ClickHouse server over HTTP(S) (clickhouse-connect). ``https://`` means TLS, verified; a
    password in the URL is refused: it comes from ``BLINDSPOT_CLICKHOUSE_PASSWORD`` (or the older
    ``CLICKHOUSE_PASSWORD``) or a file (``--clickhouse-password-file``)."""

    def __init__(self, url: str, *, password_file: str | None = None, timeout_s: float = 30.0) -> None:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import OperationalError

        self._operational_error = OperationalError
        self.params = server_params(url, password_file=password_file)
        try:
            self._client = clickhouse_connect.get_client(
                **self.params, autogenerate_session_id=False, connect_timeout=timeout_s,
                send_receive_timeout=timeout_s,
            )
        except OperationalError as e:
            raise SinkUnavailable(f"ClickHouse at {_redact(url)} unreachable: {e}") from e

    def _wrap(self, fn: Any, *a: Any, **kw: Any) -> Any:
        from clickhouse_connect.driver.exceptions import DatabaseError

        try:
            return fn(*a, **kw)
        except self._operational_error as e:
            raise SinkUnavailable(str(e)) from e
        except DatabaseError as e:  # an HTTP error answer: its ClickHouse code decides, if it has one
            raise classify_engine(str(e)) from e

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._wrap(self._client.command, sql, parameters=params)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self._wrap(self._client.query_arrow, sql, parameters=params)  # type: ignore[no-any-return]

    def query_text(self, sql: str, fmt: str, params: dict[str, Any] | None = None) -> bytes:
        return self._wrap(self._client.raw_query, sql, parameters=params, fmt=fmt)  # type: ignore[no-any-return]

    def insert_arrow(
        self, database: str, table: str, data: pa.Table, *, dedup_token: str | None = None
    ) -> None:
        settings = insert_settings(dedup_token)
        self._wrap(self._client.insert_arrow, table, data, database=database, settings=settings)

    def close(self) -> None:
        self._client.close()


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def server_params(url: str, *, password_file: str | None = None,
                  environ: dict[str, str] | None = None) -> dict[str, Any]:
    """clickhouse-connect's connection arguments for ``url`` (http[s]://user@host:port/database).
    Raises ValueError for a password in the URL or a scheme other than http/https."""
    from urllib.parse import unquote, urlsplit

    env = os.environ if environ is None else environ
    u = urlsplit(url)
    if u.scheme not in ("http", "https"):
        raise ValueError(f"ClickHouse URL must start with http:// or https://, not {_redact(url)!r}")
    if u.password is not None:
        raise ValueError("a password in the ClickHouse URL would show in process lists and logs: "
                         "set BLINDSPOT_CLICKHOUSE_PASSWORD or use --clickhouse-password-file")
    password = env.get("BLINDSPOT_CLICKHOUSE_PASSWORD", env.get("CLICKHOUSE_PASSWORD"))
    if password_file:
        password = Path(password_file).read_text().strip()
    secure = u.scheme == "https"
    params: dict[str, Any] = {
        "host": u.hostname or "localhost",
        "port": u.port or (8443 if secure else 8123),
        "username": unquote(u.username) if u.username else "default",
        "password": password or "",
        "interface": u.scheme,
        "secure": secure,
    }
    if secure:
        params["verify"] = True
    if u.path.strip("/"):
        params["database"] = u.path.strip("/")
    return params


def open_service(*, data_dir: str | os.PathLike[str] | None = None, url: str | None = None,
                 password_file: str | None = None) -> ClickHouseService:
    """The embedded engine on ``data_dir``, or the server at ``url`` (exactly one)."""
    if (data_dir is None) == (url is None):
        raise ValueError("give exactly one of data_dir (embedded chDB) or url (ClickHouse server)")
    if url is not None:
        return ServerService(url, password_file=password_file)
    return ChdbService(data_dir)  # type: ignore[arg-type]
