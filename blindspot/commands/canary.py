"""``blindspot canary``: a verdict on a canary version against its baseline, for a deploy pipeline.

One SQL statement (:func:`verdict_sql`) computes every number and the verdict. The CLI runs it with
server-side parameters (``{service:String}`` ...), on the embedded engine (through the running agent's
query socket, or the data folder itself) or on a ClickHouse server; the Gray release dashboard's
verdict panel (grafana/build_dashboards.py) runs the same statement with the window and the pairs
to compare filled from the dashboard instead. Only those slots differ, never the rules: the panel
uses the same rules by construction. The statistics and why they were chosen: docs/canary.md.

Checks, each one-sided ("is the canary worse?") at level ``alpha``, and each also needing an effect
larger than a practical margin (a huge sample makes a harmless difference significant):

* errors (no response, 5xx, or a gRPC server-error status: ``blindspot_request_failed``, migration
  0055, the rule the rollups' error counts use too): Fisher's exact test, or ``proportionsZTest`` past
  10,000 errors;
* latency, whole distribution: Mann-Whitney U (``mannWhitneyUTest``), with the median's increase;
* latency, tail: the share of canary requests slower than the baseline's p99 (Fisher), with the
  p99's increase;
* traffic share against ``--weight`` (two-sided binomial z test), when a weight is given;
* gray leaks involving the service (blindspot.gray_leaks, migration 0045).

Verdict: ``not-enough-data`` (exit 2) while either version has fewer than ``min_requests`` requests in
the window, else ``fail`` (exit 1) if any check fails, else ``pass`` (exit 0). Exit 3: no answer (the
store could not be read).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

EXIT = {"pass": 0, "fail": 1, "not-enough-data": 2}
EXIT_ERROR = 3
FISHER_MAX_ERRORS = 10_000  # past this many errors in both versions together: the z test (exact enough)


@dataclass(frozen=True)
class Rules:
    """Thresholds of the verdict (flags of the same names; docs/canary.md says why these defaults)."""

    alpha: float = 0.01
    min_requests: int = 100
    max_error_increase: float = 0.002  # absolute: 0.2 percentage points
    max_p50_increase: float = 0.10  # relative: canary median at most 10 % above the baseline's ...
    max_p50_increase_ms: float = 1.0  # ... or 1 ms, whichever is larger (scheduling noise of a host)
    max_p99_increase: float = 0.25  # relative
    max_p99_increase_ms: float = 5.0
    max_share_deviation: float = 0.05  # absolute, against --weight
    max_leaks: int = 0


RULE_TYPES = {"alpha": "Float64", "min_requests": "UInt64", "max_error_increase": "Float64",
              "max_p50_increase": "Float64", "max_p50_increase_ms": "Float64",
              "max_p99_increase": "Float64", "max_p99_increase_ms": "Float64",
              "max_share_deviation": "Float64", "max_leaks": "UInt64"}

# The statement. <<name>> slots are filled by cli_sql() / dashboard_sql() with fixed SQL text (a
# parameter placeholder, a macro, a literal of our own rules): never with data.
#   <<pairs>>    a query of (service, baseline, canary, weight) rows: what to compare
#   <<t_from>>, <<t_to>>  the window; <<route>> a condition on r.route; <<rule>> each threshold
TEMPLATE = """\
WITH
    (a, b) -> lgamma(a + 1) - lgamma(b + 1) - lgamma(a - b + 1) AS bs_lchoose,
    (k, n, kk, nn) -> if(kk > <<fisher_max>>, nan, least(1., arraySum(arrayMap(
        x -> exp(bs_lchoose(kk, x) + bs_lchoose(nn - kk, n - x) - bs_lchoose(nn, n)),
        range(toUInt64(k), toUInt64(least(kk, n) + 1)))))) AS bs_fisher_greater,
    (kc, nc, kb, nb) -> if(kc + kb <= <<fisher_max>>, bs_fisher_greater(kc, nc, kc + kb, nc + nb),
        if(proportionsZTest(kc, kb, nc, nb, 0.95, 'pooled').1 > 0,
           proportionsZTest(kc, kb, nc, nb, 0.95, 'pooled').2 / 2,
           1 - proportionsZTest(kc, kb, nc, nb, 0.95, 'pooled').2 / 2)) AS bs_p_greater,
    pairs AS (<<pairs>>),
    obs AS (
        SELECT p.service AS service, p.baseline AS baseline, p.canary AS canary, p.weight AS weight,
               r.service_version = p.canary AS is_canary, r.duration_ns / 1e6 AS ms,
               blindspot_request_failed(r.status, r.grpc_status) AS err
        FROM (SELECT service, service_version, route, duration_ns, status, grpc_status FROM blindspot.http_requests
              WHERE side = 'server' AND time >= <<t_from>> AND time <= <<t_to>>) AS r
        INNER JOIN pairs AS p ON r.service = p.service
        WHERE (r.service_version = p.baseline OR r.service_version = p.canary) AND <<route>>
    ),
    agg AS (
        SELECT service, baseline, canary, any(weight) AS weight,
               countIf(NOT is_canary) AS n_b, countIf(is_canary) AS n_c,
               countIf(NOT is_canary AND err) AS e_b, countIf(is_canary AND err) AS e_c,
               quantilesExactIf(0.5, 0.99)(ms, NOT is_canary) AS q_b,
               quantilesExactIf(0.5, 0.99)(ms, is_canary) AS q_c
        FROM obs GROUP BY service, baseline, canary
    ),
    tests AS (
        SELECT o.service AS service, o.baseline AS baseline, o.canary AS canary,
               mannWhitneyUTest('greater')(o.ms, toUInt8(NOT o.is_canary)) AS mw,
               countIf(NOT o.is_canary AND o.ms > a.q_b[2]) AS slow_b,
               countIf(o.is_canary AND o.ms > a.q_b[2]) AS slow_c
        FROM obs AS o INNER JOIN agg AS a ON a.service = o.service AND a.baseline = o.baseline AND a.canary = o.canary
        WHERE a.n_b > 0 AND a.n_c > 0
        GROUP BY o.service, o.baseline, o.canary
    ),
    leaks AS (<<leaks>>)
SELECT a.service AS service, a.baseline AS baseline, a.canary AS canary,
       toString(<<t_from>>) AS window_from, toString(<<t_to>>) AS window_to,
       n_b AS requests_baseline, n_c AS requests_canary,
       e_b AS errors_baseline, e_c AS errors_canary,
       if(n_b = 0, nan, e_b / n_b) AS error_rate_baseline, if(n_c = 0, nan, e_c / n_c) AS error_rate_canary,
       bs_p_greater(e_c, n_c, e_b, n_b) AS error_p,
       if(n_b = 0, nan, q_b[1]) AS p50_baseline_ms, if(n_c = 0, nan, q_c[1]) AS p50_canary_ms,
       if(n_b = 0, nan, q_b[2]) AS p99_baseline_ms, if(n_c = 0, nan, q_c[2]) AS p99_canary_ms,
       if(n_b > 0 AND n_c > 0, t.mw.1, nan) AS latency_u, if(n_b > 0 AND n_c > 0, t.mw.2, nan) AS latency_p,
       t.slow_b AS slower_than_p99_baseline, t.slow_c AS slower_than_p99_canary,
       if(n_b > 0 AND n_c > 0, bs_p_greater(t.slow_c, n_c, t.slow_b, n_b), nan) AS tail_p,
       if(n_b + n_c = 0, nan, n_c / (n_b + n_c)) AS canary_share, weight AS intended_weight,
       if(isNaN(weight) OR weight <= 0 OR weight >= 1 OR n_b + n_c = 0, nan,
          erfc(abs(canary_share - weight) / sqrt(weight * (1 - weight) / (n_b + n_c)) / sqrt(2))) AS share_p,
       toUInt64(ifNull(l.leaks, 0)) AS gray_leaks,
       error_p < <<alpha>> AND error_rate_canary > error_rate_baseline + <<max_error_increase>> AS error_worse,
       latency_p < <<alpha>> AND p50_canary_ms - p50_baseline_ms
           > greatest(p50_baseline_ms * <<max_p50_increase>>, <<max_p50_increase_ms>>) AS latency_worse,
       tail_p < <<alpha>> AND p99_canary_ms - p99_baseline_ms
           > greatest(p99_baseline_ms * <<max_p99_increase>>, <<max_p99_increase_ms>>) AS tail_worse,
       share_p < <<alpha>> AND abs(canary_share - weight) > <<max_share_deviation>> AS share_off,
       gray_leaks > <<max_leaks>> AS leaking,
       arrayFilter(x -> x != '', [
           if(n_b < <<min_requests>>, 'baseline has fewer than the minimum requests', ''),
           if(n_c < <<min_requests>>, 'canary has fewer than the minimum requests', ''),
           if(error_worse, 'error rate higher', ''), if(latency_worse, 'latency higher (median)', ''),
           if(tail_worse, 'latency higher (tail)', ''), if(share_off, 'traffic share off its weight', ''),
           if(leaking, 'gray leaks', '')]) AS reasons,
       multiIf(n_b < <<min_requests>> OR n_c < <<min_requests>>, 'not-enough-data',
               error_worse OR latency_worse OR tail_worse OR share_off OR leaking, 'fail', 'pass') AS verdict
FROM agg AS a
LEFT JOIN tests AS t ON t.service = a.service AND t.baseline = a.baseline AND t.canary = a.canary
LEFT JOIN leaks AS l ON l.service = a.service AND l.baseline = a.baseline AND l.canary = a.canary
ORDER BY a.service, a.canary"""

# Leaks involving the service: a request of the window that reached a version of it other than its
# gray lane, or left it for the wrong version of another service (blindspot.gray_leaks, 0045).
LEAKS = """\
SELECT p.service AS service, p.baseline AS baseline, p.canary AS canary, count() AS leaks
        FROM pairs AS p
        INNER JOIN (SELECT caller_service, callee_service
                    FROM blindspot.gray_leaks(t_from = <<t_from>>, t_to = <<t_to>>)) AS g
          ON g.callee_service = p.service OR g.caller_service = p.service
        GROUP BY p.service, p.baseline, p.canary"""

CLI_PAIRS = ("SELECT {service:String} AS service, {baseline:String} AS baseline, "
             "{canary:String} AS canary, {weight:Float64} AS weight")
CLI_ROUTE = "({route:String} = '' OR r.route = {route:String})"
CLI_FROM, CLI_TO = "(now64(9) - toIntervalMillisecond({since_ms:UInt64}))", "now64(9)"


def _fill(template: str, slots: dict[str, str], partial: bool = False) -> str:
    for k, v in slots.items():
        template = template.replace(f"<<{k}>>", v)
    left = [] if partial else re.findall(r"<<\w+>>", template)
    if left:
        raise ValueError(f"unfilled slots {left}")
    return template


def verdict_sql(pairs: str, t_from: str, t_to: str, route: str, rules: dict[str, str]) -> str:
    """The statement with its slots filled; every caller goes through here."""
    slots = {"leaks": LEAKS, "pairs": pairs, "t_from": t_from, "t_to": t_to, "route": route,
             "fisher_max": str(FISHER_MAX_ERRORS), **rules}
    return _fill(_fill(TEMPLATE, {"leaks": LEAKS}, partial=True), slots)


def cli_sql() -> str:
    """The CLI's statement: everything it is given arrives as a server-side parameter."""
    return verdict_sql(CLI_PAIRS, CLI_FROM, CLI_TO, CLI_ROUTE,
                       {k: f"{{{k}:{t}}}" for k, t in RULE_TYPES.items()})


def dashboard_sql(pairs: str, t_from: str, t_to: str, rules: Rules = Rules(), route: str = "1") -> str:
    """The dashboard's statement: the default rules as literals; ``route`` a condition on ``r.route``
    (the dashboard's route variable), every route by default."""
    lit = {k: repr(float(v)) if RULE_TYPES[k] == "Float64" else str(int(v)) for k, v in asdict(rules).items()}
    return verdict_sql(pairs, t_from, t_to, route, lit)


def cli_params(service: str, baseline: str, canary: str, since_s: float, route: str = "",
               weight: float | None = None, rules: Rules = Rules()) -> dict[str, Any]:
    return {"service": service, "baseline": baseline, "canary": canary, "route": route,
            "weight": "nan" if weight is None else repr(float(weight)),
            "since_ms": int(since_s * 1000), **{k: str(v) for k, v in asdict(rules).items()}}


# --- running it ------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$")


def parse_since(text: str) -> float:
    """'90s', '15m', '2h', '1d' or bare seconds -> seconds."""
    m = _DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 15m, 2h, 900)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[m.group(2)]


def _number(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def run_query(args: argparse.Namespace, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (JSONEachRow) of ``sql`` on the store the flags name; raises RuntimeError with a message."""
    fmt = "JSONEachRow"
    if args.clickhouse:
        from ingest.clickhouse_sink.service import ServerService

        try:
            svc = ServerService(args.clickhouse, password_file=args.clickhouse_password_file)
            try:
                out = svc.query_text(sql, fmt, params)
            finally:
                svc.close()
        except Exception as e:  # the store's errors, a bad URL, an unreadable password file: no answer
            raise RuntimeError(str(e)) from e
    else:
        out = _embedded(Path(args.data_dir), sql, fmt, params)
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def _embedded(data_dir: Path, sql: str, fmt: str, params: dict[str, Any]) -> bytes:
    from blindspot.query_server import QueryError, query_via_socket, socket_path

    try:
        return query_via_socket(socket_path(data_dir), sql, fmt, params)
    except FileNotFoundError:
        pass  # no agent owns the folder: open it here
    except (QueryError, OSError) as e:
        raise RuntimeError(str(e)) from e
    from ingest.clickhouse_sink import ChdbService

    os.umask(0o077)
    if not (data_dir / "metadata").is_dir():
        raise RuntimeError(f"no data in {data_dir} (run `blindspot run` first)")
    try:
        svc = ChdbService(data_dir)
        try:
            return svc.query_text(sql, fmt, params)
        finally:
            svc.close()
    except Exception as e:  # the engine's errors (a locked folder, bad SQL): no answer
        raise RuntimeError(str(e)) from e


def result(row: dict[str, Any] | None, args: argparse.Namespace, rules: Rules) -> dict[str, Any]:
    """The verdict as the CLI reports it (also for --format json)."""
    base = {"service": args.service, "baseline": args.baseline, "canary": args.canary,
            "since_s": args.since, "route": args.route or None, "intended_weight": args.weight,
            "rules": asdict(rules)}
    if row is None:  # neither version served a request in the window
        return base | {"verdict": "not-enough-data", "exit_code": EXIT["not-enough-data"],
                       "reasons": ["no requests of either version in the window"], "numbers": {}}
    numbers = {k: (_number(v) if k not in ("window_from", "window_to") else v) for k, v in row.items()
               if k not in ("service", "baseline", "canary", "reasons", "verdict")}
    for k in ("requests_baseline", "requests_canary", "errors_baseline", "errors_canary", "gray_leaks",
              "slower_than_p99_baseline", "slower_than_p99_canary"):
        numbers[k] = int(numbers[k] or 0)
    for k in ("error_worse", "latency_worse", "tail_worse", "share_off", "leaking"):
        numbers[k] = bool(numbers[k])
    numbers["window_from"], numbers["window_to"] = row["window_from"], row["window_to"]
    return base | {"verdict": row["verdict"], "exit_code": EXIT[row["verdict"]], "reasons": row["reasons"],
                   "numbers": numbers}


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_text(res: dict[str, Any]) -> str:
    n = res["numbers"]
    head = (f"canary {res['service']} {res['canary']} against {res['baseline']}"
            f"{' route ' + res['route'] if res['route'] else ''}, last {res['since_s']:g} s: "
            f"{res['verdict'].upper()}")
    lines = [head]
    if res["reasons"]:
        lines.append("  why: " + "; ".join(res["reasons"]))
    if not n:
        return "\n".join(lines) + "\n"
    a = res["rules"]["alpha"]
    lines += [
        f"  window      {n['window_from']} .. {n['window_to']} UTC",
        f"  requests    baseline {n['requests_baseline']}   canary {n['requests_canary']}"
        f"   (minimum {res['rules']['min_requests']} each)",
        f"  errors      baseline {n['errors_baseline']} ({_f(n['error_rate_baseline'], '.3%')})"
        f"   canary {n['errors_canary']} ({_f(n['error_rate_canary'], '.3%')})"
        f"   p = {_f(n['error_p'], '.3g')} (one-sided; fail if < {a:g} and +{res['rules']['max_error_increase']:.2%})"
        f"{'   WORSE' if n['error_worse'] else ''}",
        f"  latency p50 baseline {_f(n['p50_baseline_ms'], '.3f')} ms   canary {_f(n['p50_canary_ms'], '.3f')} ms"
        f"   Mann-Whitney U p = {_f(n['latency_p'], '.3g')}{'   WORSE' if n['latency_worse'] else ''}",
        f"  latency p99 baseline {_f(n['p99_baseline_ms'], '.3f')} ms   canary {_f(n['p99_canary_ms'], '.3f')} ms"
        f"   slower than baseline p99: {n['slower_than_p99_baseline']} vs {n['slower_than_p99_canary']}"
        f"   p = {_f(n['tail_p'], '.3g')}{'   WORSE' if n['tail_worse'] else ''}",
        f"  traffic     canary share {_f(n['canary_share'], '.1%')}"
        + (f"   intended {n['intended_weight']:.1%}   p = {_f(n['share_p'], '.3g')}"
           if n["intended_weight"] is not None else "   (no --weight given)")
        + ("   OFF" if n["share_off"] else ""),
        f"  gray leaks  {n['gray_leaks']}{'   LEAKING' if n['leaking'] else ''}",
    ]
    return "\n".join(lines) + "\n"


def add_parser(sub: Any) -> None:
    """``blindspot canary``: the subcommand, in the shape of the command modules (``add_parser`` and
    ``main``)."""
    c = sub.add_parser("canary", help="verdict on a canary version against its baseline (exit 0/1/2)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(c)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--service", required=True, help="service name (http_requests.service)")
    p.add_argument("--baseline", required=True, metavar="VERSION", help="the stable version")
    p.add_argument("--canary", required=True, metavar="VERSION", help="the version under test")
    p.add_argument("--since", type=parse_since, default=900.0, metavar="DURATION",
                   help="window ending now: 15m (default), 90s, 2h, ...")
    p.add_argument("--route", default="", help="compare only this route (as stored in http_requests.route)")
    p.add_argument("--weight", type=float, metavar="SHARE",
                   help="intended canary share of the two versions' traffic, 0..1 (checked when given)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", metavar="DIR", help="embedded data folder (default /var/lib/blindspot)")
    where.add_argument("--clickhouse", metavar="URL", help="ClickHouse server, http:// or https://; password "
                       "from $BLINDSPOT_CLICKHOUSE_PASSWORD or --clickhouse-password-file")
    p.add_argument("--clickhouse-password-file", metavar="FILE")
    p.add_argument("--config", metavar="FILE", help="TOML config file (for the default data folder)")
    for k, v in asdict(Rules()).items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v, metavar="N",
                       help=f"verdict rule (default {v}; docs/canary.md)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")

    def usage_error(message: str) -> NoReturn:  # argparse would exit 2, which means "not enough data" here
        p.print_usage(sys.stderr)
        p.exit(EXIT_ERROR, f"{p.prog}: error: {message}\n")

    p.error = usage_error  # type: ignore[method-assign]


def main(args: argparse.Namespace) -> int:
    if args.baseline == args.canary:
        print("blindspot canary: --baseline and --canary must name two different versions", file=sys.stderr)
        return EXIT_ERROR
    if args.weight is not None and not 0 < args.weight < 1:
        print("blindspot canary: --weight is the canary's share, strictly between 0 and 1", file=sys.stderr)
        return EXIT_ERROR
    if not args.clickhouse and not args.data_dir:
        from blindspot import config as config_mod

        try:
            args.data_dir = config_mod.load(args.config).data_dir
        except ValueError as e:  # ConfigError
            print(f"blindspot canary: {e}", file=sys.stderr)
            return EXIT_ERROR
    rules = Rules(**{k: getattr(args, k) for k in asdict(Rules())})
    params = cli_params(args.service, args.baseline, args.canary, args.since, args.route, args.weight, rules)
    try:
        rows = run_query(args, cli_sql(), params)
    except RuntimeError as e:
        print(f"blindspot canary: {e}", file=sys.stderr)
        return EXIT_ERROR
    res = result(rows[0] if rows else None, args, rules)
    if args.format == "json":
        sys.stdout.write(json.dumps(res, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(res))
    return int(res["exit_code"])
