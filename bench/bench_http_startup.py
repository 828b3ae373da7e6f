"""How soon a Go process that starts after the agent is fully traced, and what is lost meanwhile.

Each round copies the gray test program (tests/go/gray: router, upstream and load roles in one
executable) to a fresh path, so the agent has never seen its inode, then:
- fresh: starts upstream v1, v2 and the router from it, and right after the router listens a load client
  (the same file) sends a burst through the router;
- known: the same again from the same file while the first trio still runs (replicas): the kernel
  traces these from their exec.
The agent (HttpSource with Go uprobes, polled every 50 ms as the pipeline does) runs in this process.

Prints per round and phase: exec-to-fully-traced (ms) of each process (0 = traced by the kernel at
exec), the router's inbound requests captured, outbound calls linked, exchanges counted as before fully
traced, and the load client's requests captured. Needs root.
Usage: python -m bench.bench_http_startup [--rounds 5] [--requests 300] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import gobuild  # noqa: E402
from tests.procs import reap  # noqa: E402
from tests.test_http_go_startup import Capture, load, start_gray  # noqa: E402


def phase(cap: Capture, exe: Path, n: int, conc: int, procs: list) -> dict:
    before = len(cap.src.exec_to_traced())
    router, pr, ups = start_gray(exe)
    client, results = load(exe, pr, n=n, conc=conc)
    ok = sum(1 for r in results if r.get("status") == 200)
    inbound = cap.wait_rows(lambda r: r["pid"] == router.pid and r["side"] == "server", n, timeout=5)
    outbound = cap.wait_rows(lambda r: r["pid"] == router.pid and r["side"] == "client", n, timeout=5)
    ids = {r["request_id"] for r in inbound}
    out = {
        "exec_to_traced_ms": [round(x * 1000, 1) for x in cap.src.exec_to_traced()[before:]],
        "answered": ok,
        "inbound": len(inbound),
        "linked": sum(1 for o in outbound if o["parent_request_id"] in ids),
        "before_traced": cap.src.before_traced(router.pid),
        "client_rows": len(cap.wait_rows(lambda r: r["pid"] == client.pid, n, timeout=5)),
    }
    procs += [router, *(p for p, _ in ups.values())]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    src = gobuild.build(gobuild.GO_VERSIONS[-1], "stripped").bin("gray")
    with tempfile.TemporaryDirectory() as tmp:
        cap = Capture(tmp)
        fresh_first: list[float] = []
        try:
            for i in range(args.rounds):
                exe = Path(tmp) / f"r{i}" / "gray"
                exe.parent.mkdir()
                shutil.copy2(src, exe)
                procs: list = []
                for name in ("fresh", "known"):
                    r = phase(cap, exe, args.requests, args.concurrency, procs)
                    if name == "fresh" and r["exec_to_traced_ms"]:
                        fresh_first.append(max(r["exec_to_traced_ms"]))
                    print(f"round {i} {name:5}: exec->traced ms {r['exec_to_traced_ms']}  answered {r['answered']}"
                          f"  inbound {r['inbound']}  linked {r['linked']}  before-traced {r['before_traced']}"
                          f"  client rows {r['client_rows']}  (of {args.requests})", flush=True)
                for p in procs:
                    p.kill()
                    p.wait()
                time.sleep(0.2)
        finally:
            cap.close()
            reap(0)
    if fresh_first:
        print(f"new file: slowest exec->fully traced per round, median {statistics.median(fresh_first):.1f} ms, "
              f"max {max(fresh_first):.1f} ms; known file: traced at exec (0 ms)")
    c = cap.src.counters()
    print(f"counters: traced at exec {c['procs_traced_at_exec']}, requests before traced "
          f"{c['requests_before_traced']}, untraced records {c['untraced_records']}, lost in kernel {c['lost_kernel']}")


if __name__ == "__main__":
    main()
