"""Go HTTPS and gRPC capture cost (GoTlsSource: [http] go_tls / go_h2c): a Go server under load,
untraced vs traced, interleaved in one run (untraced, traced, untraced, traced).

Per scenario (HTTPS HTTP/1.1 GET /hello; gRPC unary Health.Check over h2c), prints:
- saturation: requests/s traced / untraced (each round, and the mean)
- fixed rate (default 2,000/s): p99 latency traced / untraced
- agent CPU seconds per 10k requests; probe hits per request; rows captured / requests

The agent runs in a child process (this file with --agent) so its CPU time is its own; the load
generator is a copy of the server's binary at another path, so the server's uprobes (which belong to
the file) do not fire in it. Needs root. On a 2-CPU machine run it alone (others' work skews it).
Usage: python -m bench.bench_go_tls [--rate 2000] [--n 20000] [--scenario https|grpc|grpc-nolink|both]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import cpu_seconds  # noqa: E402
from tests import gobuild, gobuild_tls  # noqa: E402
from tests.procs import spawn  # noqa: E402

GO = os.environ.get("BLINDSPOT_BENCH_GO", "go1.26.8")


def agent_main(pid: int, h2c: bool, link: bool = True) -> None:
    """Child: trace ``pid``; on each stdin line print {"rows": n, **counters}."""
    from agent.config import HttpConfig
    from agent.go_tls_source import GoTlsSource
    from contract import wire

    rows = [0]

    def emit(_kind: str, table: pa.Table) -> None:
        wire.ipc_bytes(table)  # what the fleet agent does with a batch besides publishing it
        rows[0] += table.num_rows

    src = GoTlsSource(HttpConfig(go_tls=not h2c, go_h2c=h2c, grpc_link=link, pids=(pid,), quiet_s=0.3), emit,
                      host=socket.gethostname())
    src.open()
    assert src.traced(pid)
    os.set_blocking(sys.stdin.fileno(), False)
    print(json.dumps({"ready": True}), flush=True)
    buf = b""
    while True:
        src.poll(0)
        time.sleep(0.05)
        try:
            chunk = os.read(sys.stdin.fileno(), 4096)
        except BlockingIOError:
            continue
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            _, buf = buf.split(b"\n", 1)
            for _ in range(10):
                src.poll(0)
                time.sleep(0.05)
            src.flush()
            print(json.dumps({"rows": rows[0], **src.counters()}), flush=True)
    src.close()


class Agent:
    def __init__(self, pid: int, h2c: bool, link: bool = True) -> None:
        args = [sys.executable, "-m", "bench.bench_go_tls", "--agent", str(pid)] + (["--h2c"] if h2c else [])
        args += [] if link else ["--no-link"]
        self.p = spawn(args, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       text=True)
        assert json.loads(self.p.stdout.readline())["ready"]  # type: ignore[union-attr]

    def report(self) -> dict:
        time.sleep(0.5)
        self.p.stdin.write("r\n")  # type: ignore[union-attr]
        self.p.stdin.flush()  # type: ignore[union-attr]
        out = json.loads(self.p.stdout.readline())  # type: ignore[union-attr]
        out["cpu_s"] = cpu_seconds(self.p.pid)
        return out

    def stop(self) -> None:
        self.p.stdin.close()  # type: ignore[union-attr]
        self.p.wait(timeout=30)


def run_load(argv: list[str]) -> dict:
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == "DONE", out
    n, errors, secs, p50, p99 = int(out[1]), int(out[2]), float(out[3]), int(out[4]), int(out[5])
    return {"n": n, "errors": errors, "rps": n / secs, "p50_us": p50, "p99_us": p99}


def scenario(name: str, n: int, rate: float) -> None:
    if name == "https":
        b = gobuild_tls.build(GO, "plain")
        exe, srv_argv = b.bin("tlsapp"), []
    else:
        b, _ = next(x for x in gobuild_tls.grpc_builds() if x[0].go == GO and x[0].variant == "plain")
        exe, srv_argv = b.bin("grpcapp"), ["-mode", "grpc-server"]
    loader = gobuild.CACHE / f"bench-loader-{exe.name}-{b.id}"
    shutil.copy(exe, loader)  # another file: the server's uprobes do not fire in the load generator
    srv = spawn([str(exe), *srv_argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = srv.stdout.readline().split()[1]  # type: ignore[union-attr]

    def load(count: int, r: float) -> dict:
        if name == "https":
            return run_load([str(loader), "-mode", "load", "-url", f"https://{addr}/hello", "-n", str(count),
                             "-c", "16", "-rate", str(r)])
        return run_load([str(loader), "-mode", "grpc-load", "-addr", addr, "-n", str(count), "-c", "16",
                         "-rate", str(r)])

    try:
        load(max(n // 10, 100), 0)  # warm up
        rounds = []
        fixed_n = max(int(rate * 4), 200)
        for _ in range(2):  # A B A B
            base_sat, base_fixed = load(n, 0), load(fixed_n, rate)
            ag = Agent(srv.pid, h2c=name != "https", link=name != "grpc-nolink")
            r0 = ag.report()
            sat = load(n, 0)
            r1 = ag.report()
            fixed = load(fixed_n, rate)
            r2 = ag.report()
            ag.stop()
            rounds.append((base_sat, base_fixed, sat, fixed, r0, r1, r2))
    finally:
        srv.kill()
        srv.wait()
        loader.unlink(missing_ok=True)
    print(f"{name}: Go {GO}, 16 connections (gRPC: one connection, 16 callers), {n} requests per saturation phase")
    ratios = []
    for i, (base_sat, base_fixed, sat, fixed, r0, r1, r2) in enumerate(rounds, 1):
        ratio = sat["rps"] / base_sat["rps"]
        ratios.append(ratio)
        reqs = sat["n"] + fixed["n"]
        hits = (r2["uprobe_hits"] - r0["uprobe_hits"]) / max(reqs, 1)
        rows = r2["rows"] - r0["rows"]
        cpu = (r1["cpu_s"] - r0["cpu_s"]) / max(sat["n"], 1) * 10_000
        print(f"  round {i}: saturation {base_sat['rps']:.0f} -> {sat['rps']:.0f} req/s (ratio {ratio:.2f}); "
              f"p99 at {rate:.0f}/s {base_fixed['p99_us']} -> {fixed['p99_us']} us "
              f"(ratio {fixed['p99_us'] / max(base_fixed['p99_us'], 1):.2f}); agent CPU {cpu:.3f} s per 10k; "
              f"probe hits per request {hits:.1f} (server side); rows {rows} for {reqs} requests "
              f"(each served request is one row), lost {r2['lost_ringbuf'] - r0['lost_ringbuf']}, "
              f"h2 connections lost {r2.get('h2_lost', 0) - r0.get('h2_lost', 0)}")
    print(f"  saturation ratio, mean of rounds: {sum(ratios) / len(ratios):.2f} (target >= 0.9)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", type=int)
    ap.add_argument("--h2c", action="store_true")
    ap.add_argument("--no-link", action="store_true", help="child: [http] grpc_link = false")
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--scenario", choices=("https", "grpc", "grpc-nolink", "both"), default="both",
                    help="both: https and grpc; grpc-nolink: gRPC with [http] grpc_link = false")
    a = ap.parse_args()
    if a.agent:
        agent_main(a.agent, a.h2c, link=not a.no_link)
        return
    for name in ("https", "grpc") if a.scenario == "both" else (a.scenario,):
        scenario(name, a.n, a.rate)


if __name__ == "__main__":
    main()
