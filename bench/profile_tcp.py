"""Where the agent's CPU goes on connection churn: kernel side (BPF programs' own run time, from
kernel.bpf_stats_enabled) and user side (py-spy samples of every thread of `blindspot run`, sorted into
ring reading, decoding, rows -> Arrow, batching, engine insert, snapshots, counters, HTTP source).

    .venv/bin/python -m bench.profile_tcp [--rate 3000] [--seconds 8] [--http] [--tree DIR]

``--tree DIR``: profile another checkout's code (e.g. ``git archive main | tar -x -C DIR``) with this
venv, for a before/after. Shares are what matter; absolute numbers only on an otherwise idle machine.
Needs root and py-spy (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import REPO, build_go, cpu_seconds
from bench.bench_drops import STATS, prog_ids
from tests.embedded_agent import running_agent
from tests.procs import spawn

# (category, substrings of a py-spy frame "function (file:line)"), matched from the leaf frame up:
# the first frame that matches any category names the sample's category.
CATEGORIES = [
    ("ring read (bulk, agent/ringbuf.py)", ("ringbuf.py",)),
    ("decode (tcp_bulk / tcp_decode)", ("tcp_bulk.py", "tcp_decode.py", "_tcp_event.py", "TcpSource._decode")),
    ("rows -> Arrow (per-row dicts)", ("rows_table", "to_arrow (contract/records.py")),
    ("bcc ring poll + ctypes callback per record", ("ring_buffer_poll", "_on_event")),
    ("engine insert (chDB)", ("clickhouse_sink", "chdb")),
    ("batching (Batcher, hand-off)", ("batch.py", "emit (agent/pipeline.py")),
    ("open-connection snapshots", ("snapshot_open", "decode_open")),
    ("packet drops", ("packet_drops.py", "report_drops")),
    ("counters / metrics", ("counters", "metrics.py", "prometheus")),
    ("HTTP source", ("http_source.py", "http_decode.py", "go_binary.py", "go_procs.py", "inspect_worker")),
    ("pipeline loop / other", ("",)),
]


IDLE = {"wait", "select", "sleep"}  # leaf functions of a blocked thread (py-spy's idle test misses some)


def classify(stack: list[str]) -> str:
    if stack and stack[-1].split(" (")[0].rsplit(".", 1)[-1] in IDLE:
        return "idle"
    for frame in reversed(stack):
        for name, keys in CATEGORIES[:-1]:
            if any(k in frame for k in keys):
                return name
    return CATEGORIES[-1][0]


def summarize(raw: Path) -> dict[str, int]:
    """Samples per category from py-spy's raw (collapsed) output: ``frame;frame;... count``."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        counts[classify(stack.split(";"))] += int(n)
    counts.pop("idle", None)
    return dict(counts.most_common())


def bpf_times(pid: int) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of each BPF program the agent holds, by name."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    mine = prog_ids(pid)
    out: dict[str, tuple[int, int]] = {}
    for p in progs:
        if p["id"] in mine:
            rt, cnt = out.get(p.get("name", str(p["id"])), (0, 0))
            out[p.get("name", str(p["id"]))] = (rt + int(p.get("run_time_ns", 0)), cnt + int(p.get("run_cnt", 0)))
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the agent's threads by thread name (chDB's native threads have their own names;
    Python's threads all carry the process's)."""
    out: collections.Counter[str] = collections.Counter()
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=3000, help="connections/s (0: as fast as the tool can)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--http", action="store_true", help="HTTP source on (default: --no-http)")
    ap.add_argument("--batch-age", type=float, default=1.0,
                    help="pipeline batch_max_age_s (blindspot run's default: 5)")
    ap.add_argument("--gil", action="store_true",
                    help="py-spy samples only while holding the GIL (a thread waiting for it is not working)")
    ap.add_argument("--tree", type=Path, help="run this checkout's code instead of this one's")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "blindspot-profile-tcp.txt")
    a = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    tool = str(build_go(REPO / "bench" / "tcpload", "tcpload"))
    env = {"BLINDSPOT_HTTP_ENABLED": "1" if a.http else "0", "BLINDSPOT_PIPELINE_BATCH_MAX_AGE_S": str(a.batch_age)}
    if a.tree:
        env["PYTHONPATH"] = str(a.tree.resolve())
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    server = spawn([tool, "-mode", "server"], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    stats_before = STATS.read_text().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp, running_agent(Path(tmp) / "data", snapshot_interval_s=10,
                                                                 **env) as agent:
            pid = agent.proc.pid
            STATS.write_text("1")
            time.sleep(1)
            k0, cpu0, t0 = bpf_times(pid), cpu_seconds(pid), thread_cpu(pid)
            rec = spawn([pyspy, "record", "-p", str(pid), "--format", "raw", "-o", str(a.out), "-r", "250",
                         "--nonblocking", "-d", str(int(a.seconds + 3)), *(["--gil"] if a.gil else [])],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            r = json.loads(subprocess.run([tool, "-addr", f"127.0.0.1:{port}", "-duration", f"{a.seconds}s",
                                           "-rate", str(a.rate)], capture_output=True, text=True,
                                          check=True).stdout)
            time.sleep(2)  # the last batch's insert
            k1, cpu, t1 = bpf_times(pid), cpu_seconds(pid) - cpu0, thread_cpu(pid)
            rec.wait(timeout=60)
    finally:
        STATS.write_text(stats_before)
        server.terminate()
    n = max(int(r["connections"]), 1)
    print(f"{r['connections']} connections at {r['rate']:.0f}/s; agent CPU {cpu:.2f} s = "
          f"{1000 * cpu / n:.4f} s per 1,000 connections (user side, whole process)")
    print("kernel side (bpf_stats: the programs' own run time, charged to the traced programs):")
    total_k = 0
    for name in sorted(k1):
        rt = k1[name][0] - k0.get(name, (0, 0))[0]
        cnt = k1[name][1] - k0.get(name, (0, 0))[1]
        if cnt:
            total_k += rt
            print(f"  {name:28s} {cnt:9d} runs  {rt / max(cnt, 1):7.0f} ns/run  {rt / n:8.0f} ns per connection")
    print(f"  all programs: {total_k / n:.0f} ns per connection")
    print("agent threads (CPU s by thread name; Python threads share the process's name):")
    for name, sec in sorted(((k, v - t0.get(k, 0.0)) for k, v in t1.items()), key=lambda kv: -kv[1]):
        if sec > 0:
            print(f"  {sec:6.2f} s  {name}")
    shares = summarize(a.out)
    total = sum(shares.values()) or 1
    print(f"user side ({total} py-spy samples of active threads, {a.out}):")
    for name, c in shares.items():
        print(f"  {100 * c / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
