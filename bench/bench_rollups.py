"""What the rollups cost at insert time, as ratios against a bare table measured in the same run.

Each round inserts the same connection rows (loopback churn as `blindspot run` stores it: two rows a
connection, one host, a few services) into `tcp_connections` of a fresh chDB store, in batches, with:

    bare        no materialized view (the table alone: the baseline)
    from-raw    every rollup tier fed by the raw rows (the schema before migration 0060)
    cascaded    the schema now: the per-host minute tier and the hourly peers read the raw rows, the
                coarser tiers read the tier below (0060)

Variants run in turn within each round (A B C, A B C, ...), each in a child process of its own (chDB
serves one folder per process), and report the engine's CPU (the child's user + system time, its
threads included) per 1,000 rows of the inserts alone, and rows per second.

    .venv/bin/python -m bench.bench_rollups [--rows 100000] [--batches 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import REPO

VARIANTS = ("bare", "from-raw", "cascaded")
CASCADE_VERSION = 60  # ingest/migrations/0060_cascaded_rollups.sql


def rows_table(n: int, batch: int, now_ns: int):  # type: ignore[no-untyped-def]
    from contract.records import TCP_CONNECTION

    out = []
    for i in range(n):
        k = batch * n + i
        st = now_ns - 600 * 10**9 + k * 50_000  # 20,000 connections a second, within the TTL
        server = i % 2
        port = 30000 + (k // 2) % 20000
        out.append({
            "host": "h1", "conn_id": k + 1, "start_time": st, "end_time": st + 300_000, "duration_ns": 300_000,
            "handshake_ns": 30_000 + i % 700, "role": "server" if server else "client", "family": 2,
            "local_addr": "127.0.0.1", "local_port": 9000 if server else port, "remote_addr": "127.0.0.1",
            "remote_port": port if server else 9000, "pid": 1000 + i % 4, "comm": f"svc{i % 4}",
            "bytes_sent": 100 + i % 50, "bytes_received": 100, "retransmits": int(i % 97 == 0),
            "srtt_us": 20 + i % 30, "close_reason": "fin", "started_before_agent": 0, "owner_source": "tracepoint"})
    return TCP_CONNECTION.to_arrow(out)


def child(variant: str, rows: int, batches: int) -> None:
    import ingest.schema
    from ingest.clickhouse_sink.service import open_service

    data = Path(tempfile.mkdtemp(prefix="blindspot-bench-rollups-"))
    try:
        svc = open_service(data_dir=data)
        ingest.schema.migrate(svc, before=CASCADE_VERSION if variant == "from-raw" else None)
        if variant == "bare":
            views = svc.query_arrow("SELECT name FROM system.tables WHERE database = 'blindspot' "
                                    "AND engine = 'MaterializedView'").column(0).to_pylist()
            for v in views:
                svc.execute(f"DROP VIEW blindspot.`{v}`")  # names from the engine's own catalogue
        now = time.time_ns()
        tables = [rows_table(rows, b, now) for b in range(batches)]
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for b, t in enumerate(tables):
            svc.insert_arrow("blindspot", "tcp_connections", t, dedup_token=f"bench:{b}")
        w1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        n = svc.query_arrow("SELECT count() AS n FROM blindspot.tcp_connections").column(0).to_pylist()[0]
        assert n == rows * batches, (n, rows * batches)
        svc.close()
        cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        print(json.dumps({"cpu_s": cpu, "wall_s": w1 - w0, "rows": rows * batches}))
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows per insert (blindspot run: up to 100,000)")
    ap.add_argument("--batches", type=int, default=6, help="inserts per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.rows, a.batches)
    variants = a.variants.split(",")
    got: dict[str, list[dict]] = {v: [] for v in variants}
    for rnd in range(1, a.rounds + 1):
        for v in variants:
            out = subprocess.run([sys.executable, "-m", "bench.bench_rollups", "--child", v, "--rows", str(a.rows),
                                  "--batches", str(a.batches)], cwd=REPO, check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            got[v].append(r)
            print(f"round {rnd} {v:9s} CPU {1000 * r['cpu_s'] / r['rows']:.4f} s/1000 rows  "
                  f"{r['rows'] / r['wall_s']:10,.0f} rows/s", flush=True)
    print("\nmedians (rounds):")
    base = statistics.median(r["cpu_s"] / r["rows"] for r in got.get("bare", [])) if "bare" in got else None
    for v in variants:
        per = [1000 * r["cpu_s"] / r["rows"] for r in got[v]]
        rate = statistics.median(r["rows"] / r["wall_s"] for r in got[v])
        line = f"  {v:9s} CPU {statistics.median(per):.4f} s/1000 rows ({', '.join(f'{x:.4f}' for x in per)})"
        line += f"  {rate:,.0f} rows/s"
        if base:
            line += f"  CPU x{statistics.median(per) / (1000 * base):.2f} of bare"
        print(line)


if __name__ == "__main__":
    main()
