"""TCP lifecycle agent cost beside bcc's tcplife, as ratios measured in one run.

    .venv/bin/python -m bench.bench_tcp [--seconds 5] [--rounds 3] [--rates 2000,4000,8000]

Interleaved rounds (A B C D, A B C D, ...) of connection churn from the Go load tool bench/tcpload
(connect, 100 bytes each way, close; as fast as it can):
  untraced   nothing attached
  tcplife    bcc's tcplife-bpfcc (Debian bpfcc-tools), printing one line per connection to a file
  no-http    `blindspot run --no-http` (the TCP source alone)
  default    `blindspot run` as installed (the HTTP source traces the load tool: it is a Go program)
  floor-kernel, floor-no-store (not in the default set): default's BPF programs with every record thrown
             away unread, and default's whole pipeline into a sink that keeps nothing (bench/tracer_floor.py):
             the ratio if user space, or the embedded engine, cost nothing
Each round prints connections/s, the ratio to the same round's untraced rate, the tracer's CPU per
1,000 connections (/proc/<pid>/stat over the load), and for blindspot whether every connection was
stored exactly (2 rows: client and server) with no kernel loss. The summary gives the medians and the
targets of issue 13: default >= 0.95 of untraced, blindspot CPU per 1,000 <= tcplife's, zero loss at
the highest rate the tool reaches. ``--rates``: fixed-rate steps after the rounds (default config).
Needs root. The agents run with the product's batch age (5 s for blindspot run) and snapshot interval (10 s).
Meaningful only on an otherwise idle machine (FIELD-NOTES: a compile beside a bench ruins it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._common import REPO, build_go, cpu_seconds
from bench.bench_drops import STATS
from bench.profile_tcp import bpf_times
from tests.embedded_agent import Agent, running_agent
from tests.procs import spawn

COUNT_SQL = """SELECT count() AS n FROM blindspot.tcp_connections
WHERE (local_port = {p:UInt16} OR remote_port = {p:UInt16}) AND end_time >= fromUnixTimestamp64Nano({t:Int64})"""
# Every counter of a closed connection's record lost on the way: in the kernel, in decoding or encoding
# (agent/tcp_source.py), between the pipeline and the store (agent/pipeline.py).
LOST_COUNTERS = ("lost_ringbuf", "lost_map_full", "source_errors:tcp:event", "source_errors:tcp:event_kind",
                 "source_errors:tcp:encode", "source_errors:tcp:kernel_events_missed", "dropped_queue_full",
                 "dropped_sink", "dropped_write_error")
LOSS_SQL = f"""SELECT toUInt64(sumIf(value, counter IN {LOST_COUNTERS})) AS lost,
       toUInt64(sumIf(value, counter = 'lost_ringbuf')) AS ringbuf,
       toUInt64(sumIf(value, counter = 'source_errors:tcp:kernel_ringbuf_rescued')) AS rescued,
       toUInt64(sumIf(value, counter = 'source_errors:tcp:close_unseen')) AS unseen,
       toUInt64(sumIf(value, counter = 'source_errors:tcp:kernel_events_nested')) AS nested
FROM blindspot.pipeline_counters"""
SLOW_SQL = """SELECT counter, toUInt64(sum(value)) AS n FROM blindspot.pipeline_counters
WHERE counter LIKE 'slow_loop_steps:%' OR counter LIKE 'ring_half_full:%'
   OR counter = 'source_errors:tcp:kernel_map_refused'
GROUP BY counter ORDER BY counter"""
ROLE_SQL = """SELECT role, count() AS n, countIf(started_before_agent = 1) AS preexisting,
       groupUniqArray(close_reason) AS reasons
FROM blindspot.tcp_connections
WHERE (local_port = {p:UInt16} OR remote_port = {p:UInt16}) AND end_time >= fromUnixTimestamp64Nano({t:Int64})
GROUP BY role ORDER BY role"""
OPEN_SQL = """SELECT count() AS n FROM blindspot.tcp_connections_open
WHERE (local_port = {p:UInt16} OR remote_port = {p:UInt16})
  AND snapshot_time = (SELECT max(snapshot_time) FROM blindspot.tcp_connections_open)"""
COUNTERS_SQL = """SELECT counter, toUInt64(sum(value)) AS n FROM blindspot.pipeline_counters
WHERE counter NOT LIKE 'packet_drops%' GROUP BY counter ORDER BY counter"""
MODES = ("untraced", "tcplife", "no-http", "default")
BPF_STATS = False
# Batch age: the product's unless --batch-age (None removes tests/embedded_agent.py's 0.2 s).
AGENT_ENV: dict[str, str | None] = {"BLINDSPOT_PIPELINE_COUNTERS_INTERVAL_S": "1",
                                    "BLINDSPOT_PIPELINE_BATCH_MAX_AGE_S": None}


def load(tool: str, port: int, seconds: float, rate: int = 0) -> dict:
    out = subprocess.run([tool, "-addr", f"127.0.0.1:{port}", "-duration", f"{seconds}s", "-rate", str(rate)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@contextlib.contextmanager
def tracer(cmd: list[str], out: Path, ready: bytes, **kw: Any) -> Iterator[subprocess.Popen]:
    """A tracer writing to ``out``, once it has printed ``ready`` (its programs attached) and until the
    block ends."""
    with out.open("wb") as f:
        proc = spawn(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    try:
        deadline = time.monotonic() + 120
        while ready not in out.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} did not start: {out.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def tcplife(out: Path) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """bcc's tcplife, attached (its header line printed) before the load starts."""
    exe = shutil.which("tcplife-bpfcc")
    if exe is None:
        raise SystemExit("tcplife-bpfcc not found: apt-get install -y bpfcc-tools")
    return tracer([exe], out, b"PID")


def floor(what: str, out: Path) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """bench/tracer_floor.py, its programs attached before the load starts."""
    env = {k: v for k, v in {**os.environ, **AGENT_ENV}.items() if v is not None}
    return tracer([sys.executable, "-m", "bench.tracer_floor", what], out, b"ready", env=env, cwd=REPO)


def traced_round(tool: str, port: int, seconds: float, pid_of: Any, agent: Agent | None) -> dict:
    pid = pid_of()
    k0 = bpf_times(pid) if BPF_STATS else {}
    cpu0, t0 = cpu_seconds(pid), time.time_ns()
    r = load(tool, port, seconds)
    time.sleep(1.5)  # the tracer's last drain (and for blindspot, its last batch) belongs to the load
    if BPF_STATS:
        k1 = bpf_times(pid)
        r["bpf_ns"] = sum(v[0] - k0.get(name, (0, 0))[0] for name, v in k1.items())
    if agent is not None:
        want = 2 * r["connections"]
        rows = agent.wait_rows(COUNT_SQL, lambda rs, want=want: int(rs[0]["n"]) >= want, timeout_s=20,
                               p=port, t=t0)[0]["n"]
        r["rows"], r["want_rows"] = int(rows), want
        loss = agent.rows(LOSS_SQL)[0]
        r["lost"], r["lost_ringbuf"], r["rescued"] = int(loss["lost"]), int(loss["ringbuf"]), int(loss["rescued"])
        r["nested"] = int(loss["nested"])  # events the kernel skipped for a program, which its twin took
        r["exact"] = r["rows"] == want and r["lost"] == 0 and r["failed"] == 0
        if r["lost"]:  # which of the loss counters, and (in the agent's log) which kernel programs
            r["lost_by"] = {c["counter"]: int(c["n"]) for c in agent.rows(COUNTERS_SQL)
                            if c["counter"] in LOST_COUNTERS and int(c["n"])}
            r["missed_log"] = [ln.split("WARNING", 1)[1].strip() for ln in agent.log().splitlines()
                               if "the kernel skipped" in ln]
        if r["rows"] < want and r["lost"] == 0:
            # Rows missing and no loss counted: late (a socket its owner has not closed yet is emitted by
            # the 30 s sweep) or lost in silence, which would be a defect. Counted again past the sweep;
            # CPU is taken first, so the wait does not count as the load's.
            r["cpu_s"] = cpu_seconds(pid) - cpu0
            r["rows_after_sweep"] = int(agent.wait_rows(COUNT_SQL, lambda rs, want=want: int(rs[0]["n"]) >= want,
                                                        timeout_s=40, p=port, t=t0)[0]["n"])
            # entries left open after their socket was gone, found by the snapshots' check and sent
            r["close_unseen"] = int(agent.rows(LOSS_SQL)[0]["unseen"])
            if r["rows_after_sweep"] < want:  # where it went missing: which end, and the agent's own counts
                r["missing"] = {
                    "by_role": agent.rows(ROLE_SQL, p=port, t=t0),
                    "open_now": agent.rows(OPEN_SQL, p=port)[0]["n"],
                    "counters": {c["counter"]: int(c["n"]) for c in agent.rows(COUNTERS_SQL)}}
        # every connection stored with no loss counted: at once (exact), or after the sweep
        r["whole"] = r.get("rows_after_sweep", r["rows"]) == want and r["lost"] == 0 and r["failed"] == 0
        # loop steps over 1 s (agent/pipeline.py SLOW_STEP_S): no ring was drained meanwhile; drains that
        # found the TCP ring half full (agent/tcp_source.py)
        r["slow"] = {s["counter"]: int(s["n"]) for s in agent.rows(SLOW_SQL)}
        r["late_drain"] = [line.split("WARNING", 1)[1].strip() for line in agent.log().splitlines()
                           if "tcp ring buffer" in line and "WARNING" in line]
        if not r["exact"]:  # kept for a look: the agent's own account of the round
            keep = Path(tempfile.gettempdir()) / f"blindspot-bench-tcp-loss-{agent.log_path.name}"
            shutil.copy(agent.log_path, keep)
            r["log"] = str(keep)
    # blindspot: once every row is stored, so the last insert (a longer batch age puts it after the
    # load) is in the count; it also counts the agent's idle polling while the query waits
    r.setdefault("cpu_s", cpu_seconds(pid) - cpu0)
    return r


def run_mode(mode: str, tool: str, port: int, seconds: float, tmp: Path, rnd: int) -> dict:
    if mode == "untraced":
        return load(tool, port, seconds)
    if mode == "tcplife":
        with tcplife(tmp / f"tcplife{rnd}.txt") as proc:
            return traced_round(tool, port, seconds, lambda: proc.pid, None)
    if mode.startswith("floor-"):
        with floor(mode.removeprefix("floor-"), tmp / f"{mode}{rnd}.txt") as proc:
            return traced_round(tool, port, seconds, lambda: proc.pid, None)
    name, _, age = mode.partition("@")  # "default@5": that mode with a batch age of 5 s
    env = {**AGENT_ENV, "BLINDSPOT_HTTP_ENABLED": "0" if name == "no-http" else "1"}
    if age:
        env["BLINDSPOT_PIPELINE_BATCH_MAX_AGE_S"] = age
    with running_agent(tmp / f"{name}{age}-{rnd}", snapshot_interval_s=10, **env) as agent:
        return traced_round(tool, port, seconds, lambda: agent.proc.pid, agent)


def line(rnd: int, mode: str, r: dict, base: float) -> str:
    out = f"round {rnd} {mode:9s} {r['rate']:8.0f} conn/s  ratio {r['rate'] / base:5.3f}"
    if "cpu_s" in r:
        out += f"  CPU {1000 * r['cpu_s'] / max(r['connections'], 1):.4f} s/1000 conn"
    if "bpf_ns" in r:
        out += f"  BPF {r['bpf_ns'] / max(r['connections'], 1):6.0f} ns/conn"
    if "rows" in r:
        out += f"  rows {r['rows']}/{r['want_rows']} lost {r['lost']} (ring {r['lost_ringbuf']}) "
        if r["exact"]:
            out += "EXACT"
        elif r["whole"]:
            out += f"WHOLE LATE (agent log: {r['log']})"  # every row, some after the snapshots' sweep
        else:
            out += f"LOSS (agent log: {r['log']})"
        if "rows_after_sweep" in r:
            out += f"  rows after 40 s more: {r['rows_after_sweep']}/{r['want_rows']}"
            out += f"  close_unseen: {r['close_unseen']}"
        if r.get("rescued"):  # records the main ring refused and the rescue ring took
            out += f"  rescued: {r['rescued']}"
        if r.get("nested"):
            out += f"  taken by twins: {r['nested']}"
        if r.get("slow"):
            out += "  " + " ".join(f"{k}={v}" for k, v in r["slow"].items())
        if "lost_by" in r:
            out += f"\n    lost: {r['lost_by']} {r['missed_log']}"
        if "missing" in r:
            out += f"\n    missing: {r['missing']}"
        for warning in r.get("late_drain", []):
            out += f"\n    {warning[:160]}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES),
                    help="subset, in this order within each round; MODE@S runs a blindspot mode with a batch age "
                         "of S seconds (e.g. default@5 beside default)")
    ap.add_argument("--batch-age", type=float, default=None,
                    help="the agents' batch_max_age_s (default: the product's, 5 s for blindspot run): each insert "
                         "into tcp_connections has a fixed engine cost (~80 ms of CPU here, its rollups' views)")
    ap.add_argument("--bpf-stats", action="store_true",
                    help="also report the tracers' BPF run time per connection (kernel.bpf_stats_enabled, "
                         "which itself adds two clock reads per program run)")
    ap.add_argument("--rates", default="", help="fixed-rate zero-loss steps after the rounds (default config)")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    global BPF_STATS
    BPF_STATS = a.bpf_stats
    stats_before = STATS.read_text().strip()
    if BPF_STATS:
        STATS.write_text("1")
    if a.batch_age is not None:
        AGENT_ENV["BLINDSPOT_PIPELINE_BATCH_MAX_AGE_S"] = str(a.batch_age)
    tool = str(build_go(REPO / "bench" / "tcpload", "tcpload"))
    server = spawn([tool, "-mode", "server"], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    results: dict[str, list[dict]] = {m: [] for m in modes}
    try:
        with tempfile.TemporaryDirectory(prefix="blindspot-bench-tcp-") as tmpdir:
            tmp = Path(tmpdir)
            load(tool, port, 1)  # warm-up
            for rnd in range(1, a.rounds + 1):
                base = 0.0
                for mode in modes:
                    r = run_mode(mode, tool, port, a.seconds, tmp, rnd)
                    results[mode].append(r)
                    if mode == "untraced":
                        base = r["rate"]
                    print(line(rnd, mode, r, base or r["rate"]), flush=True)
            if a.rates:
                fixed_rates(tool, port, a.seconds, tmp, [int(x) for x in a.rates.split(",")])
    finally:
        server.terminate()
        STATS.write_text(stats_before)
    summary(results)


def fixed_rates(tool: str, port: int, seconds: float, tmp: Path, rates: list[int]) -> None:
    with running_agent(tmp / "rates", snapshot_interval_s=10, **AGENT_ENV) as agent:
        for rate in rates:
            t0 = time.time_ns()
            r = load(tool, port, seconds, rate)
            want = 2 * r["connections"]
            rows = agent.wait_rows(COUNT_SQL, lambda rs, want=want: int(rs[0]["n"]) >= want, timeout_s=20,
                                   p=port, t=t0)[0]["n"]
            lost = int(agent.rows(LOSS_SQL)[0]["lost"])
            ok = int(rows) == want and lost == 0 and r["failed"] == 0
            print(f"fixed rate {rate:6d}/s  achieved {r['rate']:8.0f}/s  rows {rows}/{want}  kernel lost {lost}  "
                  f"{'ZERO LOSS' if ok else 'LOSS'}", flush=True)


def summary(results: dict[str, list[dict]]) -> None:
    untraced = results.get("untraced", [])
    print("summary (medians over rounds; ratios to the same round's untraced rate):")
    med: dict[str, dict[str, float]] = {}
    for mode, rs in results.items():
        if not rs:
            continue
        m: dict[str, float] = {"rate": statistics.median(r["rate"] for r in rs)}
        if untraced and mode != "untraced":
            m["ratio"] = statistics.median(r["rate"] / u["rate"] for r, u in zip(rs, untraced, strict=False))
        if all("cpu_s" in r for r in rs):
            m["cpu"] = statistics.median(1000 * r["cpu_s"] / max(r["connections"], 1) for r in rs)
        med[mode] = m
        text = f"  {mode:9s} {m['rate']:8.0f} conn/s"
        if "ratio" in m:
            each = ", ".join(f"{r['rate'] / u['rate']:.3f}" for r, u in zip(rs, untraced, strict=False))
            text += f"  ratio {m['ratio']:.3f} (rounds: {each})"
        if "cpu" in m:
            each = ", ".join(f"{1000 * r['cpu_s'] / max(r['connections'], 1):.4f}" for r in rs)
            text += f"  CPU {m['cpu']:.4f} s/1000 conn (rounds: {each})"
        if all("bpf_ns" in r for r in rs):
            text += f"  BPF {statistics.median(r['bpf_ns'] / max(r['connections'], 1) for r in rs):.0f} ns/conn"
        if all("exact" in r for r in rs):
            text += f"  stored exactly in {sum(r['exact'] for r in rs)}/{len(rs)} rounds"
            late = sum(r["whole"] and not r["exact"] for r in rs)
            if late:
                text += f", whole after the sweep in {late} more"
        print(text)
    print("targets:")
    if "default" in med and "ratio" in med["default"]:
        print(f"  default >= 0.95 of untraced: {med['default']['ratio']:.3f} "
              f"{'MET' if med['default']['ratio'] >= 0.95 else 'NOT MET'}")
    if "tcplife" in med and "cpu" in med["tcplife"]:
        for mode in ("no-http", "default"):
            if mode in med and "cpu" in med[mode]:
                ratio = med[mode]["cpu"] / med["tcplife"]["cpu"] if med["tcplife"]["cpu"] else float("inf")
                print(f"  {mode} CPU per 1,000 <= tcplife's: {med[mode]['cpu']:.4f} vs {med['tcplife']['cpu']:.4f} "
                      f"(x{ratio:.2f}) {'MET' if ratio <= 1 else 'NOT MET'}")
    blind = [r for mode in ("no-http", "default") for r in results.get(mode, [])]
    if blind:
        unseen = sum(r.get("close_unseen", 0) for r in blind)
        print(f"  zero loss at the tool's highest rate: {'MET' if all(r['whole'] for r in blind) else 'NOT MET'} "
              f"({sum(r['exact'] for r in blind)}/{len(blind)} blindspot rounds stored exactly, "
              f"{sum(r['whole'] for r in blind)}/{len(blind)} whole; close_unseen rows: {unseen})")


if __name__ == "__main__":
    main()
