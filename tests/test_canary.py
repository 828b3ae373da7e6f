"""`blindspot canary` on the real engine: canaries seeded as http_requests rows, worse in errors only, in
latency only, equal, with too little traffic, off their intended weight, leaking, and on one route only.
Each verdict and exit code is checked, and the numbers against what the test seeded (counts exactly;
quantiles, Fisher and Mann-Whitney p-values recomputed here in Python). The CLI runs as a user runs it:
a separate process, on the data folder, and on a ClickHouse server (tests/clickhouse_fake.py: the
engine behind a real HTTP endpoint). The Gray release dashboard's verdict panel gives the same verdicts.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc
import pytest

from blindspot.commands import canary

try:  # issue 11 moves it into tests/
    from tests import grafana_sql as gs  # type: ignore[attr-defined,unused-ignore]
except ImportError:
    from blindspot import grafana_sql as gs  # type: ignore[no-redef,unused-ignore]
from ingest.clickhouse_sink import ServerService, open_service
from ingest.schema import migrate
from tests.clickhouse_fake import FakeClickHouse
from tests.grafana_seed import blank_http_row, http_table

BLINDSPOT = Path(sys.executable).with_name("blindspot")
S = 1_000_000_000


def _row(service: str, version: str, t: int, dur_ns: int, status: int, route: str = "/api/items/{id}",
         **kw: Any) -> dict[str, Any]:
    row = blank_http_row()
    return row | {"time": t, "end_time": t + dur_ns, "duration_ns": dur_ns, "host": "node-a", "service": service,
                  "service_version": version, "side": "server", "method": "GET", "route": route, "path": route,
                  "status": status, "family": 4, "local_addr": "::ffff:10.0.0.1", "remote_addr": "::ffff:10.0.0.2",
                  "local_port": 8080, "remote_port": 40000, "end_reason": "complete"} | kw


def _version(rng: random.Random, service: str, version: str, n: int, err_rate: float, scale: float,
             now: int, grpc_error: str = "", **kw: Any) -> list[dict[str, Any]]:
    """n requests over the last 10 minutes: latency lognormal around 5 ms times ``scale``, exactly
    round(n * err_rate) of them 503 (at random places), or, with ``grpc_error``, gRPC calls (HTTP
    status 200) of which that many ended with that grpc-status and the rest with 0 (OK)."""
    errors = set(rng.sample(range(n), round(n * err_rate)))
    rows = []
    for i in range(n):
        dur = int(rng.lognormvariate(math.log(5e6), 0.5) * scale)
        if grpc_error:
            grpc = {"protocol": "grpc", "grpc_status": grpc_error if i in errors else "0", "method": "POST"}
            rows.append(_row(service, version, now - rng.randrange(10, 600) * S + i, dur, 200, **grpc, **kw))
        else:
            rows.append(_row(service, version, now - rng.randrange(10, 600) * S + i, dur,
                             503 if i in errors else 200, **kw))
    return rows


# gRPC codes that are the server's failure (as 5xx), and one that is the caller's (as 4xx).
GRPC_FAILED, GRPC_CALLERS = "14", "5"  # UNAVAILABLE, NOT_FOUND


def seeded_rows(now: int) -> list[dict[str, Any]]:
    rng = random.Random(12)
    rows: list[dict[str, Any]] = []
    # (service, baseline n, canary n, baseline error rate, canary error rate, canary latency scale)
    for svc, nb, nc, eb, ec, scale in (
        ("errors-only", 1000, 500, 0.01, 0.06, 1.0),
        ("latency-only", 1000, 500, 0.01, 0.01, 1.5),
        ("equal", 1000, 500, 0.01, 0.01, 1.0),
        ("little", 1000, 40, 0.01, 0.01, 1.0),
    ):
        rows += _version(rng, svc, "v1", nb, eb, 1.0, now)
        rows += _version(rng, svc, "v2", nc, ec, scale, now)
    # one route fails on the canary, the other is fine
    rows += _version(rng, "routes", "v1", 600, 0.0, 1.0, now, route="/a")
    rows += _version(rng, "routes", "v2", 300, 0.2, 1.0, now, route="/a")
    rows += _version(rng, "routes", "v1", 600, 0.01, 1.0, now, route="/b")
    rows += _version(rng, "routes", "v2", 300, 0.01, 1.0, now, route="/b")
    # gRPC canaries: 6 % UNAVAILABLE fails like 6 % 503s; 20 % NOT_FOUND (the caller's code) does not
    rows += _version(rng, "grpc-failing", "v1", 1000, 0.01, 1.0, now, grpc_error=GRPC_FAILED, route="/shop.Cart/Get")
    rows += _version(rng, "grpc-failing", "v2", 500, 0.06, 1.0, now, grpc_error=GRPC_FAILED, route="/shop.Cart/Get")
    rows += _version(rng, "grpc-callers", "v1", 1000, 0.01, 1.0, now, grpc_error=GRPC_CALLERS, route="/shop.Cart/Get")
    rows += _version(rng, "grpc-callers", "v2", 500, 0.20, 1.0, now, grpc_error=GRPC_CALLERS, route="/shop.Cart/Get")
    # outside the window (20 minutes ago): never counted with --since 15m
    rows += _version(rng, "equal", "v2", 100, 1.0, 1.0, now - 20 * 60 * S)
    return rows


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A data folder with the rows (engine closed again, so the CLI can open the folder) and an Arrow
    file of them (to load a server with)."""
    now = time.time_ns()
    rows = seeded_rows(now)
    base = tmp_path_factory.mktemp("canary")
    data = base / "data"
    svc = open_service(data_dir=data)
    try:
        migrate(svc)
        svc.insert_arrow("blindspot", "http_requests", http_table(rows), dedup_token="canary-seed")
        # many errors (past Fisher's bound): 60,000 requests a version, 10 % against 11 % failing
        svc.execute(
            "INSERT INTO blindspot.http_requests (time, end_time, duration_ns, service, service_version, side, "
            "status) SETTINGS async_insert = 0 "
            "SELECT fromUnixTimestamp64Nano(toInt64({now:Int64} - 10e9 - number * 1000)) AS t, t, 5000000 + number, "
            "'many', if(number % 2 = 0, 'v1', 'v2'), 'server', "
            "if(intDiv(number, 2) % 100 < if(number % 2 = 0, 10, 11), 500, 200) FROM numbers(120000)",
            {"now": now})
    finally:
        svc.close()
    arrow = base / "rows.arrow"
    with pa.ipc.new_file(str(arrow), http_table(rows).schema) as w:
        w.write_table(http_table(rows))
    return {"data": data, "rows": rows, "arrow": arrow, "now": now}


def cli(*args: str) -> tuple[int, dict[str, Any], str]:
    p = subprocess.run([str(BLINDSPOT), "canary", *args, "--format", "json"], capture_output=True, text=True,
                       timeout=120)
    assert p.stdout, p.stderr
    return p.returncode, json.loads(p.stdout), p.stderr


def on_folder(seeded: dict[str, Any], service: str, *extra: str) -> tuple[int, dict[str, Any]]:
    code, res, _err = cli("--data-dir", str(seeded["data"]), "--service", service, "--baseline", "v1",
                         "--canary", "v2", "--since", "15m", *extra)
    return code, res


# --- what the engine must say, recomputed here --------------------------------------------------


def fisher_greater(k: int, n: int, kk: int, nn: int) -> float:
    """P(X >= k), X hypergeometric: nn items, kk marked, n drawn."""
    tot = math.comb(nn, n)
    return min(1.0, sum(math.comb(kk, x) * math.comb(nn - kk, n - x) for x in range(k, min(kk, n) + 1)) / tot)


def mann_whitney_greater(canary: list[float], base: list[float]) -> float:
    """One-sided p (canary larger): normal approximation with continuity correction, mid-ranks and the
    tie-corrected variance."""
    ranked = sorted([(x, 0) for x in canary] + [(x, 1) for x in base])
    n1, n2 = len(canary), len(base)
    n = n1 + n2
    rank_sum, ties, i = 0.0, 0.0, 0
    while i < n:
        j = i
        while j + 1 < n and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        t = j - i + 1
        rank_sum += sum(1 for k in range(i, j + 1) if ranked[k][1] == 0) * (i + j + 2) / 2
        ties += t**3 - t
        i = j + 1
    u = rank_sum - n1 * (n1 + 1) / 2
    sd = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    z = (u - n1 * n2 / 2 - 0.5) / sd
    return 0.5 * math.erfc(z / math.sqrt(2))


def q_exact(xs: list[float], q: float) -> float:
    return sorted(xs)[int(q * len(xs))]


def expected(seeded: dict[str, Any], service: str, route: str | None = None) -> dict[str, Any]:
    lo = seeded["now"] - 15 * 60 * S
    rows = [r for r in seeded["rows"] if r["service"] == service and r["time"] >= lo
            and (route is None or r["route"] == route)]
    b = [r for r in rows if r["service_version"] == "v1"]
    c = [r for r in rows if r["service_version"] == "v2"]
    bm, cm = [r["duration_ns"] / 1e6 for r in b], [r["duration_ns"] / 1e6 for r in c]
    def failed(r: dict[str, Any]) -> bool:
        return r["status"] >= 500 or r.get("grpc_status") in ("2", "4", "12", "13", "14", "15")

    eb, ec = sum(map(failed, b)), sum(map(failed, c))
    p99 = q_exact(bm, 0.99)
    slow_b, slow_c = sum(x > p99 for x in bm), sum(x > p99 for x in cm)
    return {"requests_baseline": len(b), "requests_canary": len(c), "errors_baseline": eb, "errors_canary": ec,
            "error_p": fisher_greater(ec, len(c), eb + ec, len(b) + len(c)),
            "p50_baseline_ms": q_exact(bm, 0.5), "p50_canary_ms": q_exact(cm, 0.5), "p99_baseline_ms": p99,
            "p99_canary_ms": q_exact(cm, 0.99), "latency_p": mann_whitney_greater(cm, bm),
            "slower_than_p99_baseline": slow_b, "slower_than_p99_canary": slow_c,
            "tail_p": fisher_greater(slow_c, len(c), slow_b + slow_c, len(b) + len(c))}


def check_numbers(got: dict[str, Any], want: dict[str, Any]) -> None:
    for k, v in want.items():
        if isinstance(v, int):
            assert got[k] == v, k
        else:
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k


# --- the verdicts ---------------------------------------------------------------------------------


def test_worse_in_errors_only_fails(seeded: dict[str, Any]) -> None:
    code, res = on_folder(seeded, "errors-only")
    assert (code, res["verdict"], res["reasons"]) == (1, "fail", ["error rate higher"])
    n = res["numbers"]
    check_numbers(n, expected(seeded, "errors-only"))
    assert (n["requests_baseline"], n["requests_canary"]) == (1000, 500)
    assert (n["errors_baseline"], n["errors_canary"]) == (10, 30)
    assert n["error_p"] < 0.01 and n["latency_p"] > 0.01 and not n["latency_worse"] and not n["tail_worse"]


def test_worse_in_latency_only_fails(seeded: dict[str, Any]) -> None:
    code, res = on_folder(seeded, "latency-only")
    assert (code, res["verdict"]) == (1, "fail")
    assert res["reasons"] == ["latency higher (median)", "latency higher (tail)"]
    n = res["numbers"]
    check_numbers(n, expected(seeded, "latency-only"))
    assert (n["errors_baseline"], n["errors_canary"]) == (10, 5) and not n["error_worse"]
    assert n["p50_canary_ms"] > 1.3 * n["p50_baseline_ms"] and n["latency_p"] < 1e-6


def test_equal_passes(seeded: dict[str, Any]) -> None:
    code, res = on_folder(seeded, "equal")
    assert (code, res["verdict"], res["reasons"]) == (0, "pass", [])
    n = res["numbers"]
    # the 100 failing canary requests 20 minutes ago are outside the window
    check_numbers(n, expected(seeded, "equal"))
    assert (n["requests_baseline"], n["requests_canary"], n["errors_canary"]) == (1000, 500, 5)
    assert n["gray_leaks"] == 0 and n["intended_weight"] is None


def test_grpc_canary_fails_on_server_errors_not_on_callers_codes(seeded: dict[str, Any]) -> None:
    """The same rule for gRPC as for HTTP: UNAVAILABLE is the service's failure (6 % against 1 %: fail),
    NOT_FOUND the caller's (20 % against 1 %: pass, with no error counted)."""
    code, res = on_folder(seeded, "grpc-failing")
    assert (code, res["verdict"], res["reasons"]) == (1, "fail", ["error rate higher"])
    check_numbers(res["numbers"], expected(seeded, "grpc-failing"))
    assert (res["numbers"]["errors_baseline"], res["numbers"]["errors_canary"]) == (10, 30)
    code, res = on_folder(seeded, "grpc-callers")
    assert (code, res["verdict"], res["reasons"]) == (0, "pass", [])
    check_numbers(res["numbers"], expected(seeded, "grpc-callers"))
    assert (res["numbers"]["errors_baseline"], res["numbers"]["errors_canary"]) == (0, 0)


def test_too_little_traffic_is_not_enough_data(seeded: dict[str, Any]) -> None:
    code, res = on_folder(seeded, "little")
    assert (code, res["verdict"]) == (2, "not-enough-data")
    assert res["reasons"] == ["canary has fewer than the minimum requests"]
    assert res["numbers"]["requests_canary"] == 40
    # the minimum is a rule like the others
    code, res = on_folder(seeded, "little", "--min-requests", "40")
    assert (code, res["verdict"]) == (0, "pass")


def test_many_errors_use_the_z_test(seeded: dict[str, Any]) -> None:
    code, res = on_folder(seeded, "many")
    n = res["numbers"]
    assert (n["requests_baseline"], n["requests_canary"], n["errors_baseline"], n["errors_canary"]) == (
        60000, 60000, 6000, 6600)
    pool = 12600 / 120000
    z = (0.11 - 0.10) / math.sqrt(pool * (1 - pool) * (2 / 60000))
    assert n["error_p"] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-6)
    assert (code, res["verdict"], res["reasons"]) == (1, "fail", ["error rate higher"])


def test_no_traffic_at_all_is_not_enough_data(seeded: dict[str, Any]) -> None:
    code, res = on_folder(seeded, "no-such-service")
    assert (code, res["verdict"], res["numbers"]) == (2, "not-enough-data", {})


def test_traffic_share_against_the_weight(seeded: dict[str, Any]) -> None:
    code, res = on_folder(seeded, "equal", "--weight", "0.33")  # 500 of 1500
    assert (code, res["verdict"]) == (0, "pass")
    assert res["numbers"]["canary_share"] == pytest.approx(1 / 3)
    code, res = on_folder(seeded, "equal", "--weight", "0.1")
    assert (code, res["verdict"], res["reasons"]) == (1, "fail", ["traffic share off its weight"])
    z = (1 / 3 - 0.1) / math.sqrt(0.1 * 0.9 / 1500)
    assert res["numbers"]["share_p"] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-6, abs=1e-300)


def test_route_filter(seeded: dict[str, Any]) -> None:
    code, res = on_folder(seeded, "routes", "--route", "/a")
    assert (code, res["verdict"], res["reasons"]) == (1, "fail", ["error rate higher"])
    check_numbers(res["numbers"], expected(seeded, "routes", "/a"))
    code, res = on_folder(seeded, "routes", "--route", "/b")
    assert (code, res["verdict"]) == (0, "pass")
    check_numbers(res["numbers"], expected(seeded, "routes", "/b"))


def test_text_output_and_usage_errors(seeded: dict[str, Any]) -> None:
    p = subprocess.run([str(BLINDSPOT), "canary", "--data-dir", str(seeded["data"]), "--service", "errors-only",
                        "--baseline", "v1", "--canary", "v2"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stdout.splitlines()[0] == "canary errors-only v2 against v1, last 900 s: FAIL"
    assert "why: error rate higher" in p.stdout and "baseline 10 (1.000%)   canary 30 (6.000%)" in p.stdout
    # a pipeline must never read a usage error as "not enough data" (2): those exit 3
    for argv in (["--service", "x", "--baseline", "v1"], ["--service", "x", "--baseline", "v1", "--canary", "v1"],
                 ["--service", "x", "--baseline", "v1", "--canary", "v2", "--weight", "1.5"],
                 ["--service", "x", "--baseline", "v1", "--canary", "v2", "--since", "soon"]):
        p = subprocess.run([str(BLINDSPOT), "canary", "--data-dir", str(seeded["data"]), *argv],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 3, (argv, p.stderr)
    p = subprocess.run([str(BLINDSPOT), "canary", "--data-dir", str(seeded["data"] / "nothing"), "--service", "x",
                        "--baseline", "v1", "--canary", "v2"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 3 and "no data" in p.stderr


def test_hostile_names_are_parameters(seeded: dict[str, Any]) -> None:
    evil = "x' OR 1=1) --; DROP TABLE blindspot.http_requests"
    code, res = on_folder(seeded, evil)
    assert (code, res["verdict"], res["service"]) == (2, "not-enough-data", evil)
    code, res = on_folder(seeded, "equal")
    assert res["numbers"]["requests_baseline"] == 1000  # still there


# --- a ClickHouse server, and the dashboard ----------------------------------------------------------


def test_on_a_clickhouse_server(seeded: dict[str, Any]) -> None:
    fake = FakeClickHouse()
    try:
        svc = ServerService(f"http://default@127.0.0.1:{fake.port}/", timeout_s=30)
        migrate(svc)
        status, body, _ = fake.run_query("INSERT INTO blindspot.http_requests SELECT * FROM file("
                                         f"'{seeded['arrow']}', 'Arrow')")
        assert status == 200, body
        svc.close()
        url = f"http://default@127.0.0.1:{fake.port}/"
        for service, code_want in (("errors-only", 1), ("latency-only", 1), ("equal", 0), ("little", 2),
                                   ("grpc-failing", 1), ("grpc-callers", 0)):
            code, res, err = cli("--clickhouse", url, "--service", service, "--baseline", "v1", "--canary", "v2")
            assert (code, res["verdict"]) == (code_want, list(canary.EXIT)[code_want]), err
            check_numbers(res["numbers"], expected(seeded, service))
    finally:
        fake.close()


def test_dashboard_panel_gives_the_same_verdicts(seeded: dict[str, Any]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "grafana"))
    import build_dashboards

    board = build_dashboards.gray_release().json()
    (panel,) = [p for p in board["panels"] if p["title"].startswith("Canary verdict")]
    # the panel's statement is the CLI's, slot for slot apart from what it compares and the window
    assert canary.dashboard_sql(build_dashboards.CANARY_PAIRS, build_dashboards._CANARY_FROM,
                                build_dashboards._CANARY_TO, route=build_dashboards.CANARY_ROUTE
                                ) in panel["targets"][0]["rawSql"]
    options = {"service": ["errors-only", "latency-only", "equal", "little", "routes", "many", "grpc-failing",
                           "grpc-callers"], "version": ["v1", "v2"], "host": ["node-a"], "route": ["/a", "/b"]}

    def verdicts(**picked: list[str]) -> list[dict[str, Any]]:
        ctx = gs.context_for(3600, variables={"service": gs.ALL, "version": gs.ALL, "host": gs.ALL,
                                              "route": gs.ALL} | picked, options=options)
        svc = open_service(data_dir=seeded["data"])
        try:
            return svc.query_arrow(gs.expand(panel["targets"][0]["rawSql"], ctx)).to_pylist()  # type: ignore[no-any-return]
        finally:
            svc.close()

    # the route variable narrows the verdict as --route does: the canary of "routes" fails on /a only
    for route, verdict in (("/a", "fail"), ("/b", "pass")):
        (one,) = verdicts(service=["routes"], route=[route])
        assert (one["verdict"], one["requests_canary"]) == (verdict, 300), route
    rows = verdicts()
    got = {r["service"]: (r["baseline"], r["canary"], r["verdict"], r["why"]) for r in rows}
    assert got == {
        "errors-only": ("v1", "v2", "fail", "error rate higher"),
        "latency-only": ("v1", "v2", "fail", "latency higher (median), latency higher (tail)"),
        "equal": ("v1", "v2", "pass", ""),
        "little": ("v1", "v2", "not-enough-data", "canary has fewer than the minimum requests"),
        "routes": ("v1", "v2", "fail", "error rate higher"),
        "many": ("v1", "v2", "fail", "error rate higher"),
        "grpc-failing": ("v1", "v2", "fail", "error rate higher"),
        "grpc-callers": ("v1", "v2", "pass", ""),
    }
