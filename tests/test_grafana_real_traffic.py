"""The TCP and pipeline panels on REAL traffic: the real agent (`blindspot run`, root) records
connections made by separate processes (tests/traffic.py): normal, refused and reset, plus one held
open. Each panel's SQL, expanded as the plugin would, runs through the agent's query socket and must
return the shape its panel type needs, with rows, and the numbers that traffic implies.

The HTTP panels likewise, on the Go test programs (tests/go: two server versions behind the
gray-release router) traced by the same agent."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests import gobuild
from tests import grafana_sql as gs
from tests.embedded_agent import REPO, Agent
from tests.procs import spawn
from tests.test_grafana_dashboards import _ch_kind, _check_shape, dashboards
from tests.traffic import CLIENT_COMM, SERVER_COMM

pytestmark = pytest.mark.root

# Panels that stay empty on a healthy host: no loss happened (a loss counter appears only when it moves).
# A host's own traffic drops no packet of a connection unless something goes wrong (tests/test_tcp_drops.py
# makes it happen); its refused connect is a host-level drop (NO_SOCKET), so "drops by reason" has rows.
# Empty unless the kernel dropped a packet while the agent ran (drops are checked exactly in
# test_tcp_drops.py, the panels' SQL on seeded drops in test_grafana_dashboards.py).
MAY_BE_EMPTY = {"Events lost per second, by component and counter", "Connections with most packet drops",
                "Packet drops per second, by reason"}
TCP_PANELS = {
    "connections": None,  # all
    "latency": {"TCP handshake latency heatmap (ms)"},
    "overview": {"Service-to-service connections: share made by our own services",
                 "Pipeline completeness per host", "Events lost per second, by component and counter"},
}


def _traffic(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return spawn([sys.executable, "-m", "tests.traffic", *args], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, **kw)


def _run_via_socket(agent: Agent, sql: str) -> tuple[list[str], list[list[Any]]]:
    # The query socket speaks a few text formats only: types from DESCRIBE, rows from JSONEachRow.
    desc = agent.rows(f"DESCRIBE TABLE ({sql})")
    rows = agent.rows(sql)
    names = [d["name"] for d in desc]
    return [_ch_kind(d["type"]) for d in desc], [[r[n] for n in names] for r in rows]


def _variables(agent: Agent, board: dict[str, Any], pick: dict[str, list[str]] | None = None
               ) -> tuple[gs.QueryContext, dict[str, list[str]]]:
    """The board's template variables resolved in order, as Grafana does (each variable's query sees
    the choices before it): every one "All" unless ``pick`` names its values. Returns the panels'
    query context over the last hour and each variable's options."""
    base = gs.context_for(3600)
    current: dict[str, Any] = {}
    opts: dict[str, list[str]] = {}
    for v in board["templating"]["list"]:
        ctx = gs.QueryContext(base.time_from, base.time_to, base.interval_ms, current, opts)
        opts[v["name"]] = [str(next(iter(r.values()))) for r in agent.rows(gs.expand(v["query"], ctx))]
        current[v["name"]] = (pick or {}).get(v["name"], gs.ALL)
    return gs.QueryContext(base.time_from, base.time_to, base.interval_ms, current, opts), opts


@pytest.fixture(scope="module")
def traffic(agent: Agent) -> dict[str, Any]:
    n = 20
    server = _traffic("server", "--count", str(n + 1))
    assert server.stdout is not None
    info = json.loads(server.stdout.readline())
    port = str(info["port"])
    held = _traffic("client", "--port", port, "--sizes", "100", "--hold", "25")  # open while we look
    subprocess.run([sys.executable, "-m", "tests.traffic", "client", "--port", port, "--sizes",
                    ",".join(str(500 + i) for i in range(n))], cwd=REPO, check=True, timeout=60,
                   capture_output=True)
    refused_srv = _traffic("server", "--count", "0")
    assert refused_srv.stdout is not None
    rport = json.loads(refused_srv.stdout.readline())["port"]
    refused_srv.wait(timeout=10)
    subprocess.run([sys.executable, "-m", "tests.traffic", "client", "--port", str(rport), "--sizes", "10"],
                   cwd=REPO, check=True, timeout=60, capture_output=True)
    agent.wait_rows("SELECT count() AS n FROM blindspot.tcp_connections WHERE comm = {c:String}",
                    lambda r: int(r[0]["n"]) >= n + 1, c=CLIENT_COMM)
    # Panels read the latest snapshot up to "now" cut to the second, so wait for a few snapshots of the
    # held connection; and for a counters report (every 2 s) for the completeness panel.
    agent.wait_rows("SELECT count(DISTINCT snapshot_time) AS n FROM blindspot.tcp_connections_open "
                    "WHERE comm = {c:String}", lambda r: int(r[0]["n"]) >= 3, c=CLIENT_COMM)
    agent.wait_rows("SELECT count() AS n FROM blindspot.pipeline_counters", lambda r: int(r[0]["n"]) >= 1)
    yield {"n": n}
    held.wait(timeout=60)
    server.wait(timeout=60)


@pytest.mark.parametrize("board_name", list(TCP_PANELS))
def test_tcp_panels_on_real_traffic(agent: Agent, traffic: dict[str, Any], board_name: str) -> None:
    board = dashboards()[board_name]
    ctx, opts = _variables(agent, board)
    if board_name == "connections":
        assert SERVER_COMM in opts["service"] and CLIENT_COMM in opts["service"]
    wanted = TCP_PANELS[board_name]
    checked, empty = 0, []
    for p in board["panels"]:
        if wanted is not None and p["title"] not in wanted:
            continue
        sql = gs.expand(p["targets"][0]["rawSql"], ctx)
        kinds, rows = _run_via_socket(agent, sql)
        if not rows and p["title"] in MAY_BE_EMPTY:
            empty.append(p["title"])
            continue
        _check_shape(p["type"], p["targets"][0]["format"], kinds, rows, f"{board_name}/{p['title']}")
        checked += 1
    # Every panel checked but those allowed to be empty (and found empty).
    expected = [p["title"] for p in board["panels"] if wanted is None or p["title"] in wanted]
    assert checked + len(empty) == len(expected), (checked, empty, expected)


def test_connection_numbers_match_the_traffic(agent: Agent, traffic: dict[str, Any]) -> None:
    """One host, one service picked: the panels count exactly the client connections made."""
    board = dashboards()["connections"]
    base = gs.context_for(3600)
    host = agent.rows("SELECT any(host) AS h FROM blindspot.tcp_connections")[0]["h"]  # the agent's own name
    ctx = gs.QueryContext(base.time_from, base.time_to, base.interval_ms,
                          {"host": [host], "service": [CLIENT_COMM]}, {})
    by_title = {p["title"]: p["targets"][0]["rawSql"] for p in board["panels"]}
    deadline = time.monotonic() + 15
    while True:
        rows = agent.rows(gs.expand(by_title["Connections opened and closed per second, by role"], ctx))
        step = max(ctx.interval_ms // 1000, 60)
        closed = round(sum(float(r["closed"]) for r in rows if r["role"] == "client") * step)
        if closed >= traffic["n"] + 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # n normal + 1 refused (+ the held one once it closes, + other runs of this session's clients)
    assert closed >= traffic["n"] + 1
    failed = agent.rows(gs.expand(by_title["Failed connects, resets, retransmits per second"], ctx))
    assert round(sum(float(r["failed_connects"]) for r in failed) * step) >= 1
    # Raw rows, exact times: read with the range a dashboard refresh would ask for now (the rollups above
    # count whole minutes; this one compares each end_time with "now" cut to the second).
    deadline = time.monotonic() + 15
    while True:
        now = gs.context_for(3600)
        tctx = gs.QueryContext(now.time_from, now.time_to, now.interval_ms, ctx.variables, {})
        table = agent.rows(gs.expand(by_title["Connections (latest 200 in the last hour of the range)"], tctx))
        if {"refused", "closed"} <= {r["close_reason"] for r in table} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    evidence = agent.rows("SELECT host, close_reason, end_time, now64(9) AS now FROM blindspot.tcp_connections "
                          "WHERE comm = {c:String} ORDER BY end_time DESC LIMIT 5", c=CLIENT_COMM)
    assert {r["service"] for r in table} == {CLIENT_COMM} and len(table) >= traffic["n"] + 1, (tctx, evidence)
    assert {"refused", "closed"} <= {r["close_reason"] for r in table}, (tctx, evidence)


# --- HTTP: the Go test programs (tests/go) behind the gray-release router, traced by the agent ----------

GRAY_SERVICE, ROUTER_SERVICE = "bs-gray-shop", "bs-gray-router"
# Without Go uprobes (the agent's default) outbound requests carry no parent link: the two panels that
# join inbound to upstream rows may be empty then.
HTTP_MAY_BE_EMPTY = {"Routing matrix, last hour of the range: X-Gray-Version -> version that served",
                     "Requests routed against their header, last hour of the range",
                     # issue 12: hops (no links without uprobes) and leaks (none when routing is right)
                     "Every hop: caller -> callee, gray lane -> version that served, last hour of the range",
                     "Gray leaks, last hour of the range: per service pair and lane, with examples"}


def _go_build() -> dict[str, str]:
    b = gobuild.build(gobuild.GO_VERSIONS[-1], "plain")  # deterministic and cached (tests/gobuild.py)
    return {prog: str(b.bin(prog)) for prog in ("server", "router")}


def _start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    p = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env={**os.environ, **env})
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.startswith("LISTEN"), line
    return p, int(line.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def gray_traffic(agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> Any:
    bins = _go_build()
    procs = []
    try:
        shop = {"OTEL_SERVICE_NAME": GRAY_SERVICE}
        v1, p1 = _start([bins["server"], "-version", "v1"], shop | {"SERVICE_VERSION": "v1"})
        v2, p2 = _start([bins["server"], "-version", "v2"], shop | {"SERVICE_VERSION": "v2"})
        router, pr = _start([bins["router"], "-v1", f"http://127.0.0.1:{p1}", "-v2", f"http://127.0.0.1:{p2}",
                             "-split", "20"], {"OTEL_SERVICE_NAME": ROUTER_SERVICE})
        procs = [v1, v2, router]
        q = "SELECT count() AS n FROM blindspot.http_requests WHERE service = {s:String}"
        deadline = time.monotonic() + 60
        i = 0
        # The agent finds new Go processes by itself: send until their rows arrive.
        while int(agent.rows(q, s=GRAY_SERVICE)[0]["n"]) < 60 and time.monotonic() < deadline:
            for _ in range(20):
                i += 1
                headers = {"User-Agent": "Mozilla/5.0" if i % 3 == 0 else "bs-loadgen/1"}
                if i % 4 == 1:
                    headers["X-Gray-Version"] = "v2" if i % 8 == 1 else "v1"
                conn = http.client.HTTPConnection("127.0.0.1", pr, timeout=10)
                conn.request("GET", ["/hello", "/users/7", "/status/503"][i % 3], headers=headers)
                conn.getresponse().read()
                conn.close()
            time.sleep(0.5)
        assert int(agent.rows(q, s=GRAY_SERVICE)[0]["n"]) >= 60, agent.log()[-3000:]
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


@pytest.mark.parametrize("board_name", ["latency", "gray-release", "overview"])
def test_http_panels_on_real_traffic(agent: Agent, gray_traffic: Any, board_name: str) -> None:
    board = dashboards()[board_name]
    ctx, opts = _variables(agent, board, {"service": [GRAY_SERVICE]})
    assert GRAY_SERVICE in opts["service"]
    if board_name == "gray-release":
        assert ROUTER_SERVICE not in opts["service"]  # one version: not a gray release
        assert {"v1", "v2"} <= set(opts["version"])
    for p in board["panels"]:
        sql = gs.expand(p["targets"][0]["rawSql"], ctx)
        kinds, rows = _run_via_socket(agent, sql)
        if not rows and p["title"] in HTTP_MAY_BE_EMPTY | MAY_BE_EMPTY:
            continue
        _check_shape(p["type"], p["targets"][0]["format"], kinds, rows, f"{board_name}/{p['title']}")
