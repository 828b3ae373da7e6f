"""``blindspot query SQL``: ad-hoc SQL on the embedded data, through the socket of the process that owns
the data folder (``run``, or ``ingest --data-dir``), else by opening the folder directly."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from blindspot.commands import _common
from blindspot.query_server import FORMATS, QueryError, query_via_socket, socket_path
from contract.errors import IngestError
from ingest.clickhouse_sink import ChdbService

_PRIVATE = ("permission denied on {0} (the data folder is private to the user that runs `blindspot run`, "
            "usually root: query as that user)")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = sub.add_parser(
        "query", help="run SQL on the embedded data",
        description="Run SQL on the embedded data. While `blindspot run` owns the data folder the query "
        "goes through its socket (<data-dir>/query.sock); otherwise the folder is opened directly. "
        "Unqualified table names resolve in database `blindspot`.",
    )
    _common.add_common(q)
    q.add_argument("--format", choices=["table", "csv", "tsv", "json"], default="table")
    q.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="query parameter: --param port=443 fills {port:UInt16} in the SQL")
    q.add_argument("sql", help="the SQL statement ('-' reads it from standard input)")


def main(args: argparse.Namespace) -> int:
    cfg = _common.load(args, _common.COMMON_FLAGS)
    data_dir = Path(cfg.data_dir)
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    fmt = FORMATS[args.format]
    params = dict(p.split("=", 1) for p in args.param if "=" in p)
    try:
        out = query_via_socket(socket_path(data_dir), sql, fmt, params)
    except FileNotFoundError:
        direct = _query_directly(data_dir, sql, fmt, params)
        if direct is None:
            return 1
        out = direct
    except QueryError as e:
        print(f"blindspot query: {e}", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"blindspot query: {_PRIVATE.format(data_dir)}", file=sys.stderr)
        return 2
    except NotADirectoryError:
        print(f"blindspot query: data folder {data_dir} is not a folder", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"blindspot query: cannot reach {socket_path(data_dir)}: {e.strerror or e}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(out)
    return 0


def _query_directly(data_dir: Path, sql: str, fmt: str, params: dict[str, str]) -> bytes | None:
    os.umask(0o077)  # chDB may write in the folder (logs, temporary parts): private, as `run` keeps it
    try:
        has_data = (data_dir / "metadata").is_dir()
    except PermissionError:
        print(f"blindspot query: {_PRIVATE.format(data_dir)}", file=sys.stderr)
        return None
    if not has_data:
        print(f"blindspot query: no data in {data_dir} (run `blindspot run` first)", file=sys.stderr)
        return None
    try:
        service = ChdbService(data_dir)
        service.execute("USE blindspot")
        return service.query_text(sql, fmt, params)
    except IngestError as e:
        print(f"blindspot query: {e}", file=sys.stderr)
        return None
