"""The hop, chain and leak views (0045_gray_hops.sql) on the real engine, over seeded http_requests rows
laid out as the agent records them: an inbound row, the outbound rows made while serving it (linked by
parent_request_id, or only by a forwarded X-Request-ID), and the callee's own inbound row on the same
connection seen from the other end, nested in time.

Topology: gw (one version) -> bff (v1, v2) -> pay (v1, v2) and -> stock (v1 only)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from ingest.clickhouse_sink import open_service
from ingest.schema import migrate
from tests.grafana_seed import blank_http_row, http_table

MS = 1_000_000
W = "t_from = now() - INTERVAL 1 HOUR, t_to = now()"
_ids = itertools.count(1)
_ports = itertools.count(40000)


class World:
    def __init__(self, now: int) -> None:
        self.rows: list[dict[str, Any]] = []
        self.now = now
        self.addr = {"gw": "10.0.0.1", "bff": "10.0.0.2", "pay": "10.0.0.3", "stock": "10.0.0.4"}

    def row(self, **kw: Any) -> dict[str, Any]:
        base = blank_http_row()
        r = base | {"family": 4, "method": "GET", "path": "/x", "route": "/x", "status": 200,
                    "end_reason": "complete", "host": "h1"} | kw
        r["duration_ns"] = r["end_time"] - r["time"]
        self.rows.append(r)
        return r

    def inbound(self, service: str, version: str, t: int, dur: int, header: str = "", rid: str = "",
                remote: tuple[str, int] = ("10.9.9.9", 50000), pid: int = 0) -> dict[str, Any]:
        return self.row(time=t, end_time=t + dur, service=service, service_version=version, side="server",
                        pid=pid or hash((service, version)) % 30000 + 1000, request_id=next(_ids),
                        x_gray_version=header, x_request_id=rid, local_addr=f"::ffff:{self.addr[service]}",
                        local_port=8080, remote_addr=f"::ffff:{remote[0]}", remote_port=remote[1])

    def call(self, caller: dict[str, Any], service: str, version: str, t: int, dur: int, *, link: bool = True,
             forward_rid: bool = False, header: str = "", port: int = 0) -> dict[str, Any]:
        """An outbound call from ``caller`` and the callee's inbound row; returns the callee row."""
        port = port or next(_ports)
        self.row(time=t, end_time=t + dur, service=caller["service"], service_version=caller["service_version"],
                 side="client", pid=caller["pid"], request_id=next(_ids),
                 parent_request_id=caller["request_id"] if link else 0, upstream_host=f"{service}:8080",
                 x_request_id=caller["x_request_id"] if forward_rid else "", x_gray_version=header,
                 local_addr=f"::ffff:{self.addr[caller['service']]}", local_port=port,
                 remote_addr=f"::ffff:{self.addr[service]}", remote_port=8080)
        return self.inbound(service, version, t + 100_000, dur - 200_000, header=header,
                            rid=caller["x_request_id"] if forward_rid else "",
                            remote=(self.addr[caller["service"]], port))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    now = time.time_ns()
    w = World(now)
    t = now - 10 * 60 * 1_000_000_000
    # A: header v2, kept all the way: gw -> bff v2 -> pay v2, and stock v1 (stock has no v2: no leak)
    a = w.inbound("gw", "g1", t, 50 * MS, header="v2", rid="A")
    b = w.call(a, "bff", "v2", t + MS, 40 * MS)
    w.call(b, "pay", "v2", t + 2 * MS, 10 * MS)
    w.call(b, "stock", "v1", t + 15 * MS, 10 * MS)
    # B: header v2, bff v2 calls pay v1 -> leak at depth 2
    t += 100 * MS
    a = w.inbound("gw", "g1", t, 50 * MS, header="v2", rid="B")
    b = w.call(a, "bff", "v2", t + MS, 40 * MS)
    w.call(b, "pay", "v1", t + 2 * MS, 10 * MS)
    # C: no header; the gw routes to bff v1 (lane v1, 'routed'); bff v1 calls pay v2 -> the reverse leak
    t += 100 * MS
    a = w.inbound("gw", "g1", t, 50 * MS, rid="C")
    b = w.call(a, "bff", "v1", t + MS, 40 * MS)
    w.call(b, "pay", "v2", t + 2 * MS, 10 * MS)
    # D: header v1 but the gw sends it to bff v2 -> leak at depth 1; bff v2 -> pay v1 is in the lane
    t += 100 * MS
    a = w.inbound("gw", "g1", t, 50 * MS, header="v1", rid="D")
    b = w.call(a, "bff", "v2", t + MS, 40 * MS)
    w.call(b, "pay", "v1", t + 2 * MS, 10 * MS)
    # E: no uprobes on gw: its call is linked only by the X-Request-ID it forwards
    t += 100 * MS
    a = w.inbound("gw", "g1", t, 50 * MS, header="v2", rid="E")
    w.call(a, "bff", "v2", t + MS, 40 * MS, link=False, forward_rid=True)
    # F: header v2 arriving straight at bff v1 (no gw): a leak at the root, depth 0
    t += 100 * MS
    w.inbound("bff", "v1", t, 5 * MS, header="v2", rid="F")
    # G: two requests on one keep-alive connection from bff v1 to pay v1, back to back: each call matches
    # its own callee only: the second, short, starts 0.2 ms after the first ended, so its callee lies
    # within 1 ms of the first call's span but does not overlap it
    t += 100 * MS
    a = w.inbound("gw", "g1", t, 50 * MS, header="v1", rid="G")
    b = w.call(a, "bff", "v1", t + MS, 40 * MS)
    w.call(b, "pay", "v1", t + 2 * MS, 1 * MS, port=45555)
    w.call(b, "pay", "v1", t + 3 * MS + MS // 5, MS // 2, port=45555)
    # H: an unlinked call (no parent, no forwarded id): the chain stops at gw; bff's row is a root
    t += 100 * MS
    a = w.inbound("gw", "g1", t, 50 * MS, header="v2", rid="H")
    w.call(a, "bff", "v1", t + MS, 40 * MS, link=False)
    # outside the window (2 hours ago): never seen
    old = w.inbound("gw", "g1", now - 2 * 3600 * 1_000_000_000, 50 * MS, header="v2", rid="OLD")
    w.call(old, "bff", "v1", old["time"] + MS, 40 * MS)
    svc = open_service(data_dir=tmp_path_factory.mktemp("hops"))
    migrate(svc)
    svc.insert_arrow("blindspot", "http_requests", http_table(w.rows), dedup_token="hops-seed")
    yield svc
    svc.close()


def rows(engine: Any, sql: str) -> list[dict[str, Any]]:
    return engine.query_arrow(sql).to_pylist()  # type: ignore[no-any-return]


def chains(engine: Any) -> dict[str, list[tuple[Any, ...]]]:
    got: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows(engine, f"SELECT root_x_request_id AS rid, depth, caller_service AS cs, callee_service AS s, "
                          f"callee_version AS v, lane, lane_source AS src, leak, link FROM blindspot.http_chains({W}) "
                          "ORDER BY rid, depth, s, v"):
        got.setdefault(r["rid"], []).append((r["depth"], r["cs"], r["s"], r["v"], r["lane"], r["src"], r["leak"],
                                             r["link"]))
    return got


def test_every_hop_is_one_row(engine: Any) -> None:
    got = rows(engine, f"SELECT caller_x_request_id AS rid, caller_service AS a, callee_service AS b, "
                       f"callee_version AS v, link FROM blindspot.http_hops({W}) ORDER BY rid, a, b, v")
    hops = sorted((r["rid"], r["a"], r["b"], r["v"], r["link"]) for r in got)
    p = "parent_request_id"
    assert hops == sorted([
        ("A", "gw", "bff", "v2", p), ("", "bff", "pay", "v2", p), ("", "bff", "stock", "v1", p),
        ("B", "gw", "bff", "v2", p), ("", "bff", "pay", "v1", p),
        ("C", "gw", "bff", "v1", p), ("", "bff", "pay", "v2", p),
        ("D", "gw", "bff", "v2", p), ("", "bff", "pay", "v1", p),
        ("E", "gw", "bff", "v2", "x-request-id"),
        ("G", "gw", "bff", "v1", p), ("", "bff", "pay", "v1", p), ("", "bff", "pay", "v1", p),
    ])


def test_chains_carry_the_lane(engine: Any) -> None:
    c = chains(engine)
    p = "parent_request_id"
    assert c["A"] == [(0, "", "gw", "g1", "v2", "header", 0, ""), (1, "gw", "bff", "v2", "v2", "header", 0, p),
                      (2, "bff", "pay", "v2", "v2", "header", 0, p), (2, "bff", "stock", "v1", "v2", "header", 0, p)]
    assert c["B"][2] == (2, "bff", "pay", "v1", "v2", "header", 1, p)
    assert c["C"] == [(0, "", "gw", "g1", "", "", 0, ""), (1, "gw", "bff", "v1", "v1", "routed", 0, p),
                      (2, "bff", "pay", "v2", "v1", "routed", 1, p)]
    assert c["D"] == [(0, "", "gw", "g1", "v1", "header", 0, ""), (1, "gw", "bff", "v2", "v1", "header", 1, p),
                      (2, "bff", "pay", "v1", "v1", "header", 0, p)]
    assert c["E"][1] == (1, "gw", "bff", "v2", "v2", "header", 0, "x-request-id")
    assert c["F"] == [(0, "", "bff", "v1", "v2", "header", 1, "")]
    assert [h[:4] for h in c["G"]] == [(0, "", "gw", "g1"), (1, "gw", "bff", "v1"), (2, "bff", "pay", "v1"),
                                       (2, "bff", "pay", "v1")]
    assert c["H"] == [(0, "", "gw", "g1", "v2", "header", 0, "")]  # cut where the call was not linked
    # H's bff row starts a chain of its own (no X-Request-ID), its lane the version it ran
    assert c[""] == [(0, "", "bff", "v1", "v1", "routed", 0, "")]
    assert "OLD" not in c
    assert sum(1 for hops in c.values() for h in hops if h[0] == 0) == 9  # one root row per chain


def test_gray_leaks(engine: Any) -> None:
    got = rows(engine, f"SELECT root_x_request_id AS rid, depth, caller_service AS a, caller_version AS av, "
                       f"callee_service AS b, callee_version AS bv, lane, lane_source AS src "
                       f"FROM blindspot.gray_leaks({W}) ORDER BY rid")
    assert [tuple(r.values()) for r in got] == [
        ("B", 2, "bff", "v2", "pay", "v1", "v2", "header"),
        ("C", 2, "bff", "v1", "pay", "v2", "v1", "routed"),
        ("D", 1, "gw", "g1", "bff", "v2", "v1", "header"),
        ("F", 0, "", "", "bff", "v1", "v2", "header"),
    ]
