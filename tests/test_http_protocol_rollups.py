"""HTTP rollups by protocol and gRPC status (migration 0055) on the real engine (chDB): a store migrated
before 0055 keeps its rollup rows and reads them as HTTP/1.1; gRPC calls roll up with their grpc-status,
counted as failed by the same rule as `blindspot canary` (a server-error code, never a caller's code);
and the Latency dashboard's protocol variable narrows its panels to gRPC."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import ingest.schema
from ingest.clickhouse_sink import open_service
from ingest.schema import migrate
from tests import grafana_sql as gs
from tests.grafana_seed import blank_http_row, http_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "grafana"))
import build_dashboards

S = 1_000_000_000
TABLES = ("http_1m", "http_1h", "http_fleet_1m", "http_fleet_1h")


def _row(t: int, status: int, **kw: Any) -> dict[str, Any]:
    row = blank_http_row()
    return row | {"time": t, "end_time": t + 2_000_000, "duration_ns": 2_000_000, "host": "h1", "service": "cart",
                  "service_version": "v1", "side": "server", "method": "POST", "route": "/shop.Cart/Get",
                  "path": "/shop.Cart/Get", "status": status, "local_addr": "::ffff:127.0.0.1",
                  "remote_addr": "::ffff:127.0.0.1", "family": 4} | kw


def _by_protocol(svc: Any, table: str) -> dict[tuple[str, str], tuple[int, int]]:
    rows = svc.query_arrow(f"SELECT protocol, grpc_status, toUInt64(sum(requests)) AS n, toUInt64(sum(errors)) AS e "
                           f"FROM blindspot.{table} WHERE service = 'cart' GROUP BY protocol, grpc_status").to_pylist()
    return {(r["protocol"], r["grpc_status"]): (r["n"], r["e"]) for r in rows}


def test_upgrade_keeps_old_rollups_and_rolls_up_grpc(tmp_path: Path) -> None:
    now = time.time_ns() - 60 * S
    svc = open_service(data_dir=tmp_path / "chdb")
    try:
        # A store as it was before 0055: three HTTP/1 requests, one of them a 503.
        migrate(svc, before=55)
        old = [_row(now, 200), _row(now + 1, 200), _row(now + 2, 503)]
        for r in old:
            del r["protocol"], r["encrypted"], r["grpc_status"]  # an agent from before 0050
        svc.insert_arrow("blindspot", "http_requests", http_table(old).drop_columns(
            ["protocol", "encrypted", "grpc_status"]), dedup_token="old")
        assert "protocol" not in {c["name"] for c in svc.query_arrow(
            "SELECT name FROM system.columns WHERE database = 'blindspot' AND table = 'http_1m'").to_pylist()}
        every = ingest.schema.migrations()
        assert [m.version for m in migrate(svc)] == [m.version for m in every if m.version >= 55]  # 0060 too

        # gRPC calls: OK x4, UNAVAILABLE x2 and DEADLINE_EXCEEDED x1 (the server's failures), NOT_FOUND x3
        # and CANCELLED x1 (the caller's), one h2 request answered 502 and one plaintext HTTP/1.1 request.
        calls = [("0", 4), ("14", 2), ("4", 1), ("5", 3), ("1", 1)]
        new = [_row(now + 10 + i, 200, protocol="grpc", grpc_status=code)
               for i, (code, n) in enumerate(calls) for _ in range(n)]
        new += [_row(now + 20, 502, protocol="h2", encrypted=1), _row(now + 21, 200, protocol="http/1.1")]
        svc.insert_arrow("blindspot", "http_requests", http_table(new), dedup_token="new")

        want = {("", ""): (3, 1),  # rolled up before 0055: no protocol column then
                ("grpc", "0"): (4, 0), ("grpc", "14"): (2, 2), ("grpc", "4"): (1, 1), ("grpc", "5"): (3, 0),
                ("grpc", "1"): (1, 0), ("h2", ""): (1, 1), ("http/1.1", ""): (1, 0)}
        for table in TABLES:
            assert _by_protocol(svc, table) == want, table

        # The Latency board with protocol = grpc: only the gRPC calls, by their code; with http/1.1, the old
        # rows (read as HTTP/1.1) and the new plaintext one.
        board = build_dashboards.latency().json()
        (panel,) = [p for p in board["panels"] if p["title"].startswith("Requests per second by status")]
        (pvar,) = [v for v in board["templating"]["list"] if v["name"] == "protocol"]
        base = gs.context_for(3600)
        everything = {"service": ["cart"], "host": gs.ALL, "version": gs.ALL, "protocol": gs.ALL, "route": gs.ALL}
        ctx = gs.QueryContext(base.time_from, base.time_to, base.interval_ms, everything, {
            "host": ["h1"], "version": ["v1"], "route": ["/shop.Cart/Get"], "protocol": []})
        options = svc.query_arrow(gs.expand(pvar["query"], ctx)).column(0).to_pylist()
        assert options == ["grpc", "h2", "http/1.1"]

        def per_status(protocol: str) -> dict[str, float]:
            c = gs.QueryContext(base.time_from, base.time_to, base.interval_ms, everything | {"protocol": [protocol]},
                                {"host": ["h1"], "version": ["v1"], "route": ["/shop.Cart/Get"], "protocol": options})
            res = json.loads(svc.query_text(gs.expand(panel["targets"][0]["rawSql"], c), "JSONCompact"))
            step = max(base.interval_ms // 1000, 60)
            out: dict[str, float] = {}
            for _t, status, rps in res["data"]:
                out[status] = out.get(status, 0) + round(rps * step)
            return out

        assert per_status("grpc") == {"grpc 0": 4, "grpc 14": 2, "grpc 4": 1, "grpc 5": 3, "grpc 1": 1}
        assert per_status("http/1.1") == {"2xx": 3, "5xx": 1}
        assert per_status("h2") == {"5xx": 1}
    finally:
        svc.close()
