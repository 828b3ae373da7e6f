"""The ``blindspot`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from blindspot import __version__
from blindspot import config as config_mod

DESCRIPTION = """\
Blindspot records what services do on the wire, from the kernel: every TCP connection and every
Go net/http request, kept in ClickHouse tables you query with SQL.

  blindspot run                     trace this host into the embedded engine (chDB), live view
  blindspot query "SELECT ..."      ad-hoc SQL on the embedded data, also while `run` is running
  blindspot agent --kafka HOST:PORT fleet mode: trace this host, publish to Kafka
  blindspot ingest --kafka HOST:PORT (--clickhouse URL | --data-dir DIR)
                                    fleet mode: Kafka -> ClickHouse, each record once
  blindspot grafana provision --url URL
                                    data source and dashboards into an existing Grafana
  blindspot canary --service S --baseline V1 --canary V2
                                    pass / fail / not enough data for a canary (exit 0 / 1 / 2)
"""

EPILOG = """\
examples:
  sudo blindspot run --duration 60
  blindspot query "SELECT comm, count() FROM tcp_connections GROUP BY comm ORDER BY 2 DESC"
  blindspot query --format csv "SELECT * FROM open_connections"

Configuration: --config FILE, $BLINDSPOT_CONFIG or /etc/blindspot/blindspot.toml, overridden by
BLINDSPOT_* environment variables and then by flags. Tables live in database `blindspot`.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument("--data-dir", metavar="DIR", help="embedded data folder (default /var/lib/blindspot)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")


def _add_tracing_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every command that traces this host (`run`, `agent`)."""
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop by itself after this long")
    p.add_argument("--snapshot-interval", type=float, metavar="SECONDS",
                   help="how often open connections are written to tcp_connections_open (default 10)")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="Prometheus /metrics address (default 127.0.0.1:9435; 'off' to disable)")
    p.add_argument("--no-http", action="store_true", help="trace TCP only, not Go net/http requests")
    p.add_argument("--go-uprobes", action="store_true",
                   help="also route patterns and outbound->inbound links via Go uprobes (costly: ~19 us/hit)")
    p.add_argument("--http-headers", metavar="NAMES",
                   help="request headers to capture, comma-separated (default: x-gray-version, "
                   "x-request-id, traceparent, user-agent, host; never Authorization/Cookie unless named)")
    p.add_argument("--keep-raw-paths", action="store_true",
                   help="store request paths as sent, without redacting token-like segments and ;matrix "
                   "parameters (userinfo and query strings are never stored; routes stay templated)")


def _apply_tracing_flags(cfg: config_mod.Config, args: argparse.Namespace, command: str) -> bool:
    """Apply the flags over the config; False (after saying why) if this process cannot trace."""
    if args.metrics_address:
        cfg.metrics_address = args.metrics_address
    if cfg.metrics_address not in ("", "off"):
        config_mod.parse_address(cfg.metrics_address)
    if args.snapshot_interval:
        cfg.pipeline.snapshot_interval_s = args.snapshot_interval
    if args.no_http:
        cfg.http_enabled = False
    if args.go_uprobes:
        cfg.http.go_uprobes = True
    if args.http_headers:
        cfg.http.headers = tuple(h.strip().lower() for h in args.http_headers.split(",") if h.strip())
    if args.keep_raw_paths:
        cfg.http.redact_paths = False
    if os.geteuid() != 0:
        print(f"blindspot {command}: needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN): see README, "
              "Privileges", file=sys.stderr)
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindspot", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"blindspot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="trace this host into the embedded engine (needs root)",
        description="Trace this host's TCP connections and Go HTTP requests with eBPF and write them into "
        "the embedded ClickHouse engine (chDB) in --data-dir. Shows live counters and the latest closed "
        "connections. Ctrl-C (or --duration) stops it after flushing everything.",
    )
    _add_common(run)
    _add_tracing_flags(run)
    run.add_argument("--retention-days", type=int, metavar="N", help="TTL of new tables (default 30)")
    run.add_argument("--no-live", action="store_true", help="log counters instead of the live view")

    q = sub.add_parser(
        "query", help="run SQL on the embedded data",
        description="Run SQL on the embedded data. While `blindspot run` owns the data folder the query "
        "goes through its socket (<data-dir>/query.sock); otherwise the folder is opened directly. "
        "Unqualified table names resolve in database `blindspot`.",
    )
    _add_common(q)
    q.add_argument("--format", choices=["table", "csv", "tsv", "json"], default="table")
    q.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="query parameter: --param port=443 fills {port:UInt16} in the SQL")
    q.add_argument("sql", help="the SQL statement ('-' reads it from standard input)")
    _add_fleet_commands(sub)
    _add_grafana(sub)
    _add_canary(sub)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_run(args: argparse.Namespace) -> int:
    from blindspot import embedded

    cfg = config_mod.load(args.config)
    if args.data_dir:
        cfg.data_dir = args.data_dir
    if args.retention_days:
        cfg.retention_days = args.retention_days
    if not _apply_tracing_flags(cfg, args, "run"):
        return 2
    embedded.run(cfg, duration_s=args.duration, show_live=not args.no_live)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from blindspot.query_server import FORMATS, QueryError, query_via_socket, socket_path

    cfg = config_mod.load(args.config)
    data_dir = Path(args.data_dir or cfg.data_dir)
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
        print(f"blindspot query: permission denied on {data_dir} (the data folder is private to the user "
              "that runs `blindspot run`, usually root: query as that user)", file=sys.stderr)
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
    from ingest._errors import IngestError
    from ingest.clickhouse_sink import ChdbService

    os.umask(0o077)  # chDB may write in the folder (logs, temporary parts): private, as `run` keeps it

    try:
        has_data = (data_dir / "metadata").is_dir()
    except PermissionError:
        print(f"blindspot query: permission denied on {data_dir} (the data folder is private to the user "
              "that runs `blindspot run`, usually root: query as that user)", file=sys.stderr)
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


# --- fleet mode: agent -> Kafka -> ingest -> ClickHouse (agent/fleet.py, ingest/worker.py) -------------
def _add_fleet_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ingest.worker import add_arguments

    a = sub.add_parser(
        "agent", help="trace this host and publish to Kafka (needs root)",
        description="Trace this host's TCP connections and Go HTTP requests and publish every record to "
        "Kafka, one topic per "
        "record kind, keyed by host. TLS/SASL settings: --kafka-config FILE (librdkafka properties) or "
        "BLINDSPOT_RDKAFKA_* environment variables. SIGTERM flushes before exiting.",
    )
    _add_common(a)
    a.add_argument("--kafka", required=True, metavar="BOOTSTRAP", help="Kafka bootstrap servers")
    a.add_argument("--kafka-config", metavar="FILE", help="librdkafka properties file (TLS, SASL, ...)")
    a.add_argument("--topic-prefix", default="", help="prefix of every topic name (same on ingest)")
    _add_tracing_flags(a)

    i = sub.add_parser(
        "ingest", help="consume Kafka and write into ClickHouse, each record once",
        description="An ingest worker: consumer group on the record topics, batches into ClickHouse (a "
        "server with --clickhouse, or the embedded engine in --data-dir), offsets committed only after "
        "ClickHouse accepted a batch. Bad messages go to the dead-letter topic. Run several for more "
        "throughput; SIGTERM flushes and commits.",
    )
    i.add_argument("-v", "--verbose", action="count", default=0)
    add_arguments(i)


def cmd_agent(args: argparse.Namespace) -> int:
    from agent import fleet
    from agent.kafka_sink import KafkaSinkConfig, client_settings

    cfg = config_mod.load(args.config)
    if not _apply_tracing_flags(cfg, args, "agent"):
        return 2
    kafka = KafkaSinkConfig(args.kafka, topic_prefix=args.topic_prefix,
                            extra=client_settings(args.kafka_config))
    fleet.run(cfg, kafka, duration_s=args.duration)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest import worker

    os.umask(0o077)  # with --data-dir, the embedded engine's files are as private as `run` makes them
    if getattr(args, "data_dir", None):
        config_mod.secure_data_dir(args.data_dir)

    return worker.main(args)


# --- grafana (issue 5): `blindspot grafana provision --url URL` ------------------------------------
def _add_grafana(sub: Any) -> None:
    from blindspot import grafana_provision

    g = sub.add_parser("grafana", help="Grafana: provision our data source and dashboards",
                       description="Grafana dashboards for Blindspot data (see docs/grafana.md).")
    actions = g.add_subparsers(dest="grafana_action", required=True, metavar="ACTION")
    prov = actions.add_parser(
        "provision", help="create or update the data source, folder and dashboards in a Grafana",
        description=grafana_provision.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grafana_provision.add_arguments(prov)
    prov.add_argument("-v", "--verbose", action="count", default=0, help="more logging")


def cmd_grafana(args: argparse.Namespace) -> int:
    from blindspot import grafana_provision

    return grafana_provision.main(args)
# --- end grafana -------------------------------------------------------------------------------------


# --- canary (issue 12): `blindspot canary --service S --baseline V1 --canary V2` -------------------------
def _add_canary(sub: Any) -> None:
    from blindspot import canary

    canary.add_parser(sub)


def cmd_canary(args: argparse.Namespace) -> int:
    from blindspot import canary

    return canary.main(args)
# --- end canary --------------------------------------------------------------------------------------


COMMANDS = {"run": cmd_run, "query": cmd_query, "agent": cmd_agent, "ingest": cmd_ingest, "grafana": cmd_grafana,
            "canary": cmd_canary}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from blindspot.metrics import MetricsAddressError

    try:
        return COMMANDS[args.command](args)
    except (config_mod.ConfigError, MetricsAddressError) as e:
        print(f"blindspot {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
