"""What Grafana sends to ClickHouse for a dashboard panel: variables interpolated, macros expanded.

There is no Grafana server on our machines, so tests and bench/ use this to turn each panel's
``rawSql`` into the exact SQL the ClickHouse data source plugin would run, then run it on the engine.
It reproduces, in order:

1. ``$__conditionalAll(phrase, $var)`` (browser side): grafana/clickhouse-datasource
   ``src/data/CHDatasource.ts``, ``applyConditionalAll`` + ``getMacroArgs``: the last occurrence is
   replaced first; the phrase stays as written unless the variable's current value is ``""`` or
   ``$__all``, then it becomes ``1=1``.
2. Template variables (browser side, Grafana's ``templateSrv.replace`` with the data source's
   ``format`` callback from the same file): ``$var``, ``${var}``, ``[[var]]`` with the plugin's format
   (a multi-value list becomes ``'a','b'``, a single value is inserted bare), and ``${var:singlequote}``
   with Grafana's ``singlequote`` format (each value quoted, ``'`` escaped as ``\\'``). "All" without a
   custom all value becomes every option's value.
3. Backend macros: grafana/clickhouse-datasource ``pkg/macros/macros.go`` (``TimeFilter``,
   ``FromTimeFilter``, ``ToTimeFilter``, ``DateFilter``, ``TimeInterval``, ``IntervalSeconds``, at
   commit 1d04063): macropro expands nested macros inside arguments first and trims arguments;
   unknown macros stay as they are.

Only the macros our dashboards use are implemented; any other ``$__name`` is an error here, so a
dashboard cannot silently depend on one we never checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

ALL = "$__all"


@dataclass
class QueryContext:
    """A panel's query request: time range and interval as Grafana computes them."""

    time_from: datetime
    time_to: datetime
    interval_ms: int
    # variable name -> current value: a string, a list of strings, or ALL
    variables: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    # variable name -> every option's value (what "All" expands to)
    options: Mapping[str, Sequence[str]] = field(default_factory=dict)


# Grafana's rangeutil.roundInterval: the interval for a range and a number of data points is
# rounded to one of these steps (upper bound of the raw interval in ms -> rounded interval in ms).
_ROUND_STEPS = [
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000),
    (3_500, 2_000), (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000),
    (45_000, 30_000), (90_000, 60_000), (210_000, 120_000), (450_000, 300_000),
    (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000), (2_700_000, 1_800_000),
    (5_400_000, 3_600_000), (9_000_000, 7_200_000), (16_200_000, 10_800_000),
    (27_000_000, 21_600_000), (86_400_000, 43_200_000), (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000), (3_628_800_000, 2_592_000_000),
]


def grafana_interval_ms(time_from: datetime, time_to: datetime, max_data_points: int = 1000) -> int:
    raw = (time_to - time_from).total_seconds() * 1000 / max_data_points
    for bound, step in _ROUND_STEPS:
        if raw <= bound:
            return step
    return 31_536_000_000


def context_for(
    range_s: int, *, now: datetime | None = None, max_data_points: int = 1000, **kw: object
) -> QueryContext:
    """The request Grafana makes for "last ``range_s`` seconds" at ``now``."""
    to = (now or datetime.now(UTC)).replace(microsecond=0)
    frm = datetime.fromtimestamp(to.timestamp() - range_s, UTC)
    return QueryContext(frm, to, grafana_interval_ms(frm, to, max_data_points), **kw)  # type: ignore[arg-type]


# --- 1. $__conditionalAll (CHDatasource.ts applyConditionalAll / getMacroArgs) -------------------

_COND = "$__conditionalAll("
_VAR_IN_PARAM = re.compile(r"(?<=\$\{)[\w\d]+(?=\})|(?<=\$)[\w\d]+")


def _macro_args(query: str, args_index: int) -> list[str]:
    # getMacroArgs: split at commas of bracket depth 1, stop at the matching ")".
    args: list[str] = []
    depth, last = 0, 1
    sub = query[args_index:]
    for m in re.finditer(r"\(|\)|,", sub):
        tok = m.group(0)
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        if tok == "," and depth == 1:
            args.append(sub[last : m.end() - 1])
            last = m.end()
        if depth == 0:
            args.append(sub[last : m.end() - 1])
            return args
    return []


def _current_str(value: str | Sequence[str] | None) -> str | None:
    # JavaScript's Array.prototype.toString joins with ",".
    if value is None:
        return None
    return value if isinstance(value, str) else ",".join(value)


def apply_conditional_all(sql: str, variables: Mapping[str, str | Sequence[str]]) -> str:
    idx = sql.rfind(_COND)
    while idx != -1:
        params = _macro_args(sql, idx + len(_COND) - 1)
        if len(params) != 2:
            return sql
        phrase = params[0]
        m = _VAR_IN_PARAM.search(params[1].strip())
        if m and _current_str(variables.get(m.group(0))) in ("", ALL):
            phrase = "1=1"
        # String.prototype.replace with a string pattern: first occurrence only.
        sql = sql.replace(f"{_COND}{params[0]},{params[1]})", phrase, 1)
        idx = sql.rfind(_COND)
    return sql


# --- 2. template variables (templateSrv.replace) ------------------------------------------------

_VAR = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")


def _format(value: str | Sequence[str], fmt: str | None) -> str:
    if fmt == "singlequote":
        vals = [value] if isinstance(value, str) else list(value)
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in vals)
    if fmt is not None:
        raise ValueError(f"variable format {fmt!r} not modelled here")
    # CHDatasource.format: arrays become 'a','b' (no escaping), a scalar goes in as is
    if isinstance(value, str):
        return value
    return "'" + "','".join(value) + "'"


def replace_variables(
    sql: str, variables: Mapping[str, str | Sequence[str]], options: Mapping[str, Sequence[str]]
) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name not in variables:
            return m.group(0)  # not a variable (e.g. a $__macro): left for the backend
        value = variables[name]
        if value == ALL or value == [ALL]:
            value = list(options[name])
        return _format(value, fmt)

    return _VAR.sub(sub, sql)


# --- 3. backend macros (pkg/macros/macros.go) ----------------------------------------------------

_MACRO = re.compile(r"\$__(\w+)")


def _unix(t: datetime) -> int:
    return int(t.timestamp())


def _expand_macros(sql: str, ctx: QueryContext) -> str:
    out: list[str] = []
    pos = 0
    while True:
        m = _MACRO.search(sql, pos)
        if not m:
            out.append(sql[pos:])
            return "".join(out)
        out.append(sql[pos : m.start()])
        name, end = m.group(1), m.end()
        args: list[str] = []
        if end < len(sql) and sql[end] == "(":
            depth, i, start = 0, end, end + 1
            while i < len(sql):
                c = sql[i]
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                elif c == "," and depth == 1:
                    args.append(sql[start:i])
                    start = i + 1
                i += 1
            args.append(sql[start:i])
            end = i + 1
            # nested macros in arguments first, arguments trimmed (macros_test.go: "with empty spaces")
            args = [_expand_macros(a, ctx).strip() for a in args]
            if args == [""]:
                args = []
        out.append(_macro(name, args, ctx))
        pos = end


def _macro(name: str, args: list[str], ctx: QueryContext) -> str:
    frm, to = f"toDateTime({_unix(ctx.time_from)})", f"toDateTime({_unix(ctx.time_to)})"
    seconds = max(ctx.interval_ms // 1000, 1)

    def one() -> str:
        if len(args) != 1:
            raise ValueError(f"$__{name} expected 1 argument(s), received {len(args)}")
        return args[0]

    if name == "timeFilter":  # TimeFilter
        col = one()
        return f"{col} >= {frm} AND {col} <= {to}"
    if name == "fromTime":  # FromTimeFilter
        return frm
    if name == "toTime":  # ToTimeFilter
        return to
    if name == "dateFilter":  # DateFilter
        col = one()
        d0, d1 = ctx.time_from.strftime("%Y-%m-%d"), ctx.time_to.strftime("%Y-%m-%d")
        return f"{col} >= toDate('{d0}') AND {col} <= toDate('{d1}')"
    if name == "timeInterval":  # TimeInterval
        return f"toStartOfInterval(toDateTime({one()}), INTERVAL {seconds} second)"
    if name == "interval_s":  # IntervalSeconds
        return str(seconds)
    raise ValueError(f"macro $__{name} is not modelled (grafana_sql.py)")


def expand(sql: str, ctx: QueryContext) -> str:
    """The SQL the plugin runs for ``sql`` under ``ctx``."""
    sql = apply_conditional_all(sql, ctx.variables)
    sql = replace_variables(sql, ctx.variables, ctx.options)
    return _expand_macros(sql, ctx)


def macros_used(sql: str) -> set[str]:
    return set(_MACRO.findall(sql))


def variables_used(sql: str) -> set[str]:
    names = set()
    for m in _VAR.finditer(sql):
        name = m.group(1) or m.group(2) or m.group(4)
        if not name.startswith("__"):
            names.add(name)
    return names
