"""The ``blindspot`` command: the parser, and dispatch to one module per command (blindspot/commands/)."""

from __future__ import annotations

import argparse
import logging
import sys

from blindspot import __version__
from blindspot.commands import agent, canary, grafana, ingest, query, run
from blindspot.metrics import MetricsAddressError
from contract.errors import ConfigError

DESCRIPTION = """\
Blindspot records what services do on the wire, from the kernel: every TCP connection and every
Go net/http request, kept in ClickHouse tables you query with SQL.

  blindspot run                     trace this host into the embedded engine (chDB), live view
  blindspot query "SELECT ..."      ad-hoc SQL on the embedded data, also while `run` is running
  blindspot agent --kafka HOST:PORT fleet mode: trace this host, publish to Kafka
  blindspot ingest --kafka HOST:PORT (--clickhouse URL | --data-dir DIR)
                                    fleet mode: Kafka -> ClickHouse, each record once
  blindspot canary --service S --baseline V1 --canary V2
                                    gate a deploy: the canary against its baseline (exit 0/1/2)
  blindspot grafana provision --url URL
                                    data source and dashboards into an existing Grafana
"""

EPILOG = """\
examples:
  sudo blindspot run --duration 60
  blindspot query "SELECT comm, count() FROM tcp_connections GROUP BY comm ORDER BY 2 DESC"
  blindspot query --format csv "SELECT * FROM open_connections"

Configuration: --config FILE, $BLINDSPOT_CONFIG or /etc/blindspot/blindspot.toml, overridden by
BLINDSPOT_* environment variables and then by flags (blindspot/config.py lists every key).
Tables live in database `blindspot`.
"""

COMMANDS = {"run": run, "query": query, "agent": agent, "ingest": ingest, "canary": canary, "grafana": grafana}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindspot", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"blindspot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(COMMANDS[args.command].main(args))
    except (ConfigError, MetricsAddressError) as e:
        print(f"blindspot {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
