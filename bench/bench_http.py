"""Go HTTP capture cost: a Go server under load, untraced vs traced, in the same run.

Prints, each as traced/untraced ratios where it makes sense:
- fixed rate (default 2,000 req/s): p50 and p99 latency ratio; agent CPU seconds per 10k requests
- saturation: throughput ratio, and the added CPU cost per request in us (default probes, and with
  the optional Go uprobes)
- the highest rate among the steps tried at which every request was captured and nothing was lost.

The agent runs in a child process (this file with --agent) so its CPU time is its own. Needs root.
Usage: python -m bench.bench_http [--rate 2000] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import cpu_seconds  # noqa: E402
from tests import gobuild  # noqa: E402
from tests.procs import spawn  # noqa: E402

GO = os.environ.get("BLINDSPOT_BENCH_GO", "go1.26.8")


def agent_main(pid: int, uprobes: bool) -> None:
    """Child: trace ``pid``; on each stdin line print {"rows": n, **counters}."""
    import pyarrow.compute as pc

    from agent.http_source import HttpConfig, HttpSource
    from agent.pipeline import PipelineConfig
    from contract import wire

    rows = [0]

    def emit(_kind: str, table: pa.Table) -> None:
        # What the fleet agent does with a batch besides publishing it: Arrow IPC (contract/wire.py).
        wire.ipc_bytes(table)
        mine = pc.and_(pc.equal(table["pid"], pid), pc.equal(table["side"], "server"))
        rows[0] += pc.sum(mine.cast("int64")).as_py() or 0

    src = HttpSource(HttpConfig(go_uprobes=uprobes, pids=(pid,)), emit, host=socket.gethostname())
    src.open()
    assert src.traced(pid)
    os.set_blocking(sys.stdin.fileno(), False)
    print(json.dumps({"ready": True}), flush=True)
    buf = b""
    drain_s = PipelineConfig().poll_ms / 1000
    while True:
        src.poll(0)  # as agent/pipeline.py does: drain, then sleep (no wake-up per record)
        time.sleep(drain_s)
        try:
            chunk = os.read(sys.stdin.fileno(), 4096)
        except BlockingIOError:
            continue
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            _, buf = buf.split(b"\n", 1)
            for _ in range(10):  # let exchanges still open end (quiet), then decode everything
                src.poll(0)
                time.sleep(drain_s)
            src.flush()
            print(json.dumps({"rows": rows[0], **src.counters()}), flush=True)
    src.close()


class Agent:
    def __init__(self, pid: int, uprobes: bool) -> None:
        args = [sys.executable, "-m", "bench.bench_http", "--agent", str(pid)] + (["--uprobes"] if uprobes else [])
        self.p = spawn(args, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        assert json.loads(self.p.stdout.readline())["ready"]  # type: ignore[union-attr]

    def _one(self) -> dict:
        self.p.stdin.write("r\n")  # type: ignore[union-attr]
        self.p.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self.p.stdout.readline())  # type: ignore[union-attr]

    def report(self, settle_s: float = 10.0) -> dict:
        """Counters once they are final: asked again (each ask polls the source for 0.5 s, which sweeps
        quiet exchanges and decodes) until rows and kernel records stop changing, so a step's rows
        that were still in flight are not left to the next step (or to nobody, after the last)."""
        time.sleep(1.0)  # past quiet_s: exchanges of connections left open are swept
        out = self._one()
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            again = self._one()
            if (again["rows"], again.get("kernel_emitted")) == (out["rows"], out.get("kernel_emitted")):
                break
            out = again
        out["cpu_s"] = cpu_seconds(self.p.pid)
        return out

    def stop(self) -> None:
        self.p.stdin.close()  # type: ignore[union-attr]
        self.p.wait(timeout=30)


def _counted_drops(counters: dict) -> int:
    return int(counters.get("parse_errors", 0)) + sum(
        int(v) for k, v in counters.items() if k.startswith("source_errors:http:decode"))


def load(url: str, rate: float, seconds: float, conns: int = 16) -> dict:
    out = subprocess.run([str(LOADGEN), "-url", url, "-rate", str(rate), "-c", str(conns), "-d", f"{seconds}s"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def build_loadgen() -> Path:
    out = gobuild.CACHE / "httpload"
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=REPO / "bench" / "httpload", check=True)
    return out


LOADGEN = Path()


def main() -> None:
    global LOADGEN
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", type=int)
    ap.add_argument("--uprobes", action="store_true")
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--seconds", type=float, default=8)
    a = ap.parse_args()
    if a.agent:
        agent_main(a.agent, a.uprobes)
        return
    LOADGEN = build_loadgen()
    build = gobuild.build(GO, "plain")
    srv = spawn([str(build.bin("server"))], stdout=subprocess.PIPE, text=True)
    port = int(srv.stdout.readline().rsplit(":", 1)[1])  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/hello"
    try:
        load(url, 0, 2)  # warm up
        base_fixed = load(url, a.rate, a.seconds)
        base_sat = load(url, 0, a.seconds)

        ag = Agent(srv.pid, uprobes=False)
        r0 = ag.report()
        fixed = load(url, a.rate, a.seconds)
        r1 = ag.report()
        sat = load(url, 0, a.seconds)
        r2 = ag.report()
        steps = []
        for rate in (5000, 10000, 20000, 40000):
            res = load(url, rate, 4)
            rb = ag.report()
            steps.append((rate, res, rb))
        ag.stop()

        agu = Agent(srv.pid, uprobes=True)
        agu.report()
        sat_up = load(url, 0, a.seconds)
        agu.stop()
        base_sat2 = load(url, 0, a.seconds)  # untraced again: drift check
    finally:
        srv.kill()

    def per10k(cpu: float, n: int) -> float:
        return cpu / max(n, 1) * 10_000

    ncpu = os.cpu_count() or 1
    untraced_rps = (base_sat["rps"] + base_sat2["rps"]) / 2
    print(f"Go server {GO}, GET /hello, 16 keep-alive connections, {a.seconds:.0f}s phases, {ncpu} CPUs")
    print(f"fixed {a.rate:.0f} req/s: p50 {base_fixed['p50_us']:.0f} -> {fixed['p50_us']:.0f} us "
          f"(ratio {fixed['p50_us'] / max(base_fixed['p50_us'], 1):.2f}), "
          f"p99 {base_fixed['p99_us']:.0f} -> {fixed['p99_us']:.0f} us "
          f"(ratio {fixed['p99_us'] / max(base_fixed['p99_us'], 1):.2f})")
    fixed_rows = r1["rows"] - r0["rows"]
    print(f"  agent CPU {per10k(r1['cpu_s'] - r0['cpu_s'], fixed['requests']):.3f} s per 10k requests; "
          f"rows {fixed_rows}/{fixed['requests']}, lost {r1['lost_kernel'] - r0['lost_kernel']}")
    print(f"saturation: {untraced_rps:.0f} -> {sat['rps']:.0f} req/s (ratio {sat['rps'] / untraced_rps:.2f}); "
          f"untraced before/after {base_sat['rps']:.0f}/{base_sat2['rps']:.0f}")
    cost = (1 / sat["rps"] - 1 / untraced_rps) * ncpu * 1e6
    print(f"  added CPU per request {cost:.1f} us; rows {r2['rows'] - r1['rows']}/{sat['requests']}, "
          f"lost {r2['lost_kernel'] - r1['lost_kernel']}, agent CPU "
          f"{per10k(r2['cpu_s'] - r1['cpu_s'], sat['requests']):.3f} s per 10k")
    cost_up = (1 / sat_up["rps"] - 1 / untraced_rps) * ncpu * 1e6
    print(f"with Go uprobes (routes + links): {sat_up['rps']:.0f} req/s (ratio {sat_up['rps'] / untraced_rps:.2f}), "
          f"added CPU per request {cost_up:.1f} us")
    best = 0.0
    prev = r2
    for rate, res, rb in steps:
        rows, lost = rb["rows"] - prev["rows"], rb["lost_kernel"] - prev["lost_kernel"]
        # Rows the source counted but did not emit (heads that did not parse, batches a decoder bug lost):
        # "lost" alone hid them.
        dropped = _counted_drops(rb) - _counted_drops(prev)
        uncounted = res["requests"] - rows - lost - dropped
        ok = lost == 0 and dropped == 0 and rows == res["requests"] and res["errors"] == 0
        print(f"  step {rate} req/s asked: {res['rps']:.0f} done, rows {rows}/{res['requests']}, lost {lost}, "
              f"dropped by the source {dropped}, uncounted {uncounted}, errors {res['errors']}{' ok' if ok else ''}")
        if ok:
            best = max(best, res["rps"])
        prev = rb
    print(f"highest zero-loss rate recorded: {best:.0f} req/s")


if __name__ == "__main__":
    main()
