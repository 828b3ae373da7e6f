"""TCP lifecycle agent cost, as ratios against the same load untraced in the same run.

    .venv/bin/python bench/bench_tcp.py [--seconds 5]

1. saturation: short-lived connections/s untraced, then traced (`blindspot run` attached): ratio.
2. agent CPU seconds per 1,000 connections (from /proc/<pid>/stat of the agent over the traced run).
3. zero-loss rate: fixed rates stepped up; a step passes when the table holds exactly 2 rows (client
   and server) per connection the load tool completed, and the kernel reported no loss.
Needs root.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench._common import REPO, build_go, cpu_seconds
from tests.embedded_agent import running_agent
from tests.procs import spawn

COUNT_SQL = """SELECT count() AS n FROM blindspot.tcp_connections
WHERE (local_port = {p:UInt16} OR remote_port = {p:UInt16}) AND end_time >= fromUnixTimestamp64Nano({t:Int64})"""
LOSS_SQL = """SELECT toUInt64(sumIf(value, counter IN ('lost_ringbuf', 'lost_map_full'))) AS lost
FROM blindspot.pipeline_counters"""


def load(tool: str, port: int, seconds: float, rate: int = 0) -> dict:
    out = subprocess.run([tool, "-addr", f"127.0.0.1:{port}", "-duration", f"{seconds}s", "-rate", str(rate)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rates", default="1000,2000,4000,6000,8000")
    a = ap.parse_args()
    tool = str(build_go(REPO / "bench" / "tcpload", "tcpload"))
    server = spawn([tool, "-mode", "server"], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    try:
        load(tool, port, 1)  # warm-up
        untraced = load(tool, port, a.seconds)
        # TCP source only: the load tool is a Go program, and the HTTP source would trace its every
        # read and write (bench_http measures that cost).
        data_dir = Path(tempfile.mkdtemp(prefix="blindspot-bench-"))
        with running_agent(data_dir, snapshot_interval_s=10, BLINDSPOT_PIPELINE_COUNTERS_INTERVAL_S="1",
                           BLINDSPOT_HTTP_ENABLED="0") as agent:
            cpu0, t_sat = cpu_seconds(agent.proc.pid), time.time_ns()
            traced = load(tool, port, a.seconds)
            time.sleep(2)
            cpu = cpu_seconds(agent.proc.pid) - cpu0
            sat_rows = agent.rows(COUNT_SQL, p=port, t=t_sat)[0]["n"]
            print(f"saturation untraced  {untraced['rate']:9.0f} conn/s")
            print(f"saturation traced    {traced['rate']:9.0f} conn/s   ratio {traced['rate'] / untraced['rate']:.3f}")
            print(f"saturation recorded  {sat_rows} rows for {traced['connections']} connections "
                  f"(expect {2 * traced['connections']})")
            print(f"agent CPU            {cpu:.2f} s for {traced['connections']} connections = "
                  f"{1000 * cpu / traced['connections']:.3f} s per 1,000 connections")
            best = 0
            for rate in [int(r) for r in a.rates.split(",")]:
                t0 = time.time_ns()
                r = load(tool, port, a.seconds, rate)
                want = 2 * r["connections"]
                rows = agent.wait_rows(COUNT_SQL, lambda r, want=want: int(r[0]["n"]) >= want, timeout_s=15,
                                       p=port, t=t0)[0]["n"]
                lost = int(agent.rows(LOSS_SQL)[0]["lost"])
                ok = int(rows) == want and lost == 0 and r["failed"] == 0
                print(f"fixed rate {rate:6d}/s  achieved {r['rate']:8.0f}/s  rows {rows}/{want}  "
                      f"kernel lost {lost}  {'ZERO LOSS' if ok else 'LOSS'}")
                if ok:
                    best = max(best, int(r["rate"]))
                if r["rate"] < 0.95 * rate:
                    break  # the load tool itself cannot go faster on this machine
            print(f"highest zero-loss rate recorded: {best} conn/s (2 rows each)")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
