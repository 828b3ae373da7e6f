"""Realistic rows for the dashboard tests, written through the real sink (so the MVs fill the rollups).

A small fleet over the last few hours: three hosts; a gray-release router calling two versions of
``shop`` (v1 baseline, v2 canary, the canary slower and failing more), curl-like and browser clients;
TCP connections of those services with handshakes, resets and failed connects; pipeline counters.
Until the agent's real TCP and HTTP sources land in main, this stands in for traffic (see report).
"""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa

from contract.records import PACKET_DROP, PIPELINE_COUNTER, TCP_CONNECTION, TCP_OPEN_CONNECTION
from ingest.clickhouse_sink import ClickHouseSink

S = 1_000_000_000
HOSTS = ["node-a", "node-b", "node-c"]
ROUTES = ["/api/cart", "/api/items/{id}", "/healthz"]


def seed(service: Any, now_ns: int, hours: int = 3, rng: random.Random | None = None) -> dict[str, int]:
    rng = rng or random.Random(7)
    sink = ClickHouseSink(service)
    tcp, http, counters, open_rows, drops = [], [], [], [], []
    drop_reasons = ["NETFILTER_DROP", "NO_SOCKET", "TCP_LISTEN_OVERFLOW", "TCP_OFO_DROP"]
    start = now_ns - hours * 3600 * S
    for i in range(3000):
        t0 = start + rng.randrange(hours * 3600 * S - 60 * S)
        host = HOSTS[i % 3]
        role = "client" if i % 2 else "server"
        comm = ["router", "shop-v1", "shop-v2", "curl"][i % 4]
        failed = role == "client" and rng.random() < 0.03
        hs = 0 if failed else int(rng.lognormvariate(11.5, 0.8))  # ~100 us
        dur = int(rng.lognormvariate(20, 2)) if not failed else hs + 3 * S
        tcp.append({
            "host": host, "conn_id": i, "start_time": t0, "end_time": t0 + dur, "duration_ns": dur,
            "handshake_ns": hs, "role": role, "family": 2, "local_addr": f"10.0.0.{1 + i % 3}",
            "local_port": 8080 if role == "server" else 40000 + i % 20000,
            "remote_addr": f"10.0.1.{i % 7}", "remote_port": 8080 if role == "client" else 50000 + i,
            "pid": 100 + i % 4, "comm": comm, "bytes_sent": rng.randrange(100, 100_000),
            "bytes_received": rng.randrange(100, 1_000_000), "retransmits": int(rng.random() < 0.05),
            "srtt_us": rng.randrange(50, 5000), "started_before_agent": int(i < 20),
            "close_reason": "refused" if failed else ("reset_received" if rng.random() < 0.02 else "fin"),
            "owner_source": "exact",
            "drops": (d := rng.randrange(1, 40) if rng.random() < 0.1 else 0),
            "drop_reason": rng.choice(drop_reasons) if d else "",
        })
    for host in HOSTS:
        snap = now_ns - 10 * S
        for j in range(25):
            open_rows.append({
                "snapshot_time": snap, "host": host, "conn_id": 10_000 + j, "start_time": snap - 60 * S,
                "role": "server", "family": 2, "local_addr": "10.0.0.1", "local_port": 8080,
                "remote_addr": "10.0.1.9", "remote_port": 50000 + j, "pid": 100,
                "comm": ["router", "shop-v1", "shop-v2", "curl"][j % 4],
                "bytes_sent": 1000, "bytes_received": 200,
                "drops": j % 3, "drop_reason": "TCP_OFO_DROP" if j % 3 else "",
            })
        for m in range(hours * 60):
            t = start + m * 60 * S
            for counter, v in (("captured", 1000), ("lost_ringbuf", int(m % 17 == 0)), ("dropped_queue_full", 0),
                               ("dead_lettered", int(m % 50 == 0))):
                counters.append({"time": t, "host": host, "component": "agent" if counter != "dead_lettered"
                                 else "ingest", "counter": counter, "value": v})
            for k, reason in enumerate(drop_reasons):
                if (m + k) % 3 == 0:
                    n_drops = rng.randrange(1, 100)
                    drops.append({"time": t, "host": host, "netns": 4026531840, "reason": reason,
                                  "drops": n_drops, "conn_drops": n_drops // 2})
    # HTTP as issue 4's tracer records it (0010_http_requests.sql): the router's inbound row carries
    # X-Gray-Version; its outbound row links to it by parent_request_id; the upstream's own row (no
    # header: the router does not forward it) sits on the mirrored connection, nested in time.
    for i in range(6000):
        t0 = start + rng.randrange(hours * 3600 * S - 60 * S)
        canary = rng.random() < 0.2
        version = "v2" if canary else "v1"
        header = rng.choice(["", "", "v2", "v1"])
        if header and rng.random() < 0.9:
            version = header
        browser = rng.random() < 0.3
        status = 500 if rng.random() < (0.05 if canary else 0.01) else 200
        dur = int(rng.lognormvariate(15.5 if canary else 15, 0.7))  # ms scale
        route = rng.choice(ROUTES)
        host = HOSTS[i % 3]
        router_port = 30000 + i % 30000
        common = {
            "time": t0, "end_time": t0 + dur, "duration_ns": dur, "host": host, "go_version": "go1.26.0",
            "tid": 1, "method": "GET", "path": route.replace("{id}", str(i)), "route": route,
            "route_source": "pattern", "status": status, "request_bytes": 200,
            "response_bytes": rng.randrange(100, 20_000), "family": 4, "x_request_id": f"req-{i}",
            "traceparent": "", "host_header": "shop", "extra_headers": "", "head_truncated": 0,
            "end_reason": "complete", "x_gray_version": "", "upstream_host": "", "parent_request_id": 0,
        }
        inbound = common | {
            "side": "server", "service": "router", "service_version": "r1", "pid": 300, "comm": "router",
            "local_addr": "::ffff:10.0.0.9", "local_port": 8080, "remote_addr": f"::ffff:10.0.1.{i % 5}",
            "remote_port": 40000 + i % 20000, "x_gray_version": header, "request_id": 3 * i + 1,
            "user_agent": "Mozilla/5.0 (X11)" if browser else "blindspot-loadgen/1",
            "time": t0 - 1000, "end_time": t0 + dur + 1000, "duration_ns": dur + 2000}
        outbound = common | {
            "side": "client", "service": "router", "service_version": "r1", "pid": 300, "comm": "router",
            "local_addr": "::ffff:10.0.0.9", "local_port": router_port, "remote_addr": "::ffff:10.0.0.1",
            "remote_port": 8080, "request_id": 3 * i + 2, "parent_request_id": 3 * i + 1,
            "upstream_host": f"shop-{version}:8080", "user_agent": "Go-http-client/1.1",
            "time": t0 - 500, "end_time": t0 + dur + 500, "duration_ns": dur + 1000}
        served = common | {
            "side": "server", "service": "shop", "service_version": version, "pid": 200, "comm": "shop",
            "local_addr": "::ffff:10.0.0.1", "local_port": 8080, "remote_addr": "::ffff:10.0.0.9",
            "remote_port": router_port, "request_id": 3 * i + 3, "user_agent": "Go-http-client/1.1"}
        http += [inbound, outbound, served]
    n = {
        "tcp": sink.write(TCP_CONNECTION, TCP_CONNECTION.to_arrow(tcp), dedup_token="seed-tcp"),
        "tcp_open": sink.write(TCP_OPEN_CONNECTION, TCP_OPEN_CONNECTION.to_arrow(open_rows), dedup_token="seed-open"),
        "counters": sink.write(PIPELINE_COUNTER, PIPELINE_COUNTER.to_arrow(counters), dedup_token="seed-counters"),
        "drops": sink.write(PACKET_DROP, PACKET_DROP.to_arrow(drops), dedup_token="seed-drops"),
    }
    service.insert_arrow("blindspot", "http_requests", http_table(http), dedup_token="seed-http")
    n["http"] = len(http)
    return n


_TS = pa.timestamp("ns", tz="UTC")
_S, _U8, _U16, _U32, _U64 = pa.string(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()
# The columns of 0010_http_requests.sql (issue 4) that are stored (remote_ip is an ALIAS).
HTTP_COLUMNS: dict[str, pa.DataType] = {
    "time": _TS, "end_time": _TS, "duration_ns": _U64, "host": _S, "service": _S, "service_version": _S,
    "go_version": _S, "pid": _U32, "tid": _U32, "comm": _S, "side": _S, "method": _S, "path": _S,
    "route": _S, "route_source": _S, "status": _U16, "request_bytes": _U64, "response_bytes": _U64,
    "family": _U8, "local_addr": _S, "local_port": _U16, "remote_addr": _S, "remote_port": _U16,
    "upstream_host": _S, "x_gray_version": _S, "x_request_id": _S, "traceparent": _S, "user_agent": _S,
    "host_header": _S, "extra_headers": _S, "head_truncated": _U8, "end_reason": _S, "request_id": _U64,
    "parent_request_id": _U64, "protocol": _S, "encrypted": _U8, "grpc_status": _S,
}
# Columns added after the seed's rows were first written (0050): these defaults unless a row sets them.
LATER = {"protocol": "http/1.1", "encrypted": 0, "grpc_status": ""}


def blank_http_row() -> dict[str, Any]:
    """Every column of HTTP_COLUMNS, empty: '' for strings, 0 for the rest (tests set what they check)."""
    return {c: "" if pa.types.is_string(t) else 0 for c, t in HTTP_COLUMNS.items()}


def http_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table({c: pa.array([r[c] if c in r or c not in LATER else LATER[c] for r in rows], type=t)
                     for c, t in HTTP_COLUMNS.items()})
