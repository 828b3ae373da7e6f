"""Every request of a Go process is captured and linked from its first one, whatever the order in which
the processes and the agent start (issue 12, part 1).

All programs are ONE executable (tests/go/gray, three roles), copied per test to a fresh path: a new
inode the agent has never seen, shared by every process of the test, as replicas of one binary on a
host are. No test waits for the agent to report a process traced before sending traffic: a canary is a
process that has just started. Rows are matched by the test's own pids and X-Request-ID values.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import gobuild
from tests.procs import spawn

pytestmark = [pytest.mark.root, pytest.mark.go]

N = 300


class Capture:
    """The agent's HTTP source (Go uprobes on) in this process, polled every 20 ms as the pipeline does."""

    def __init__(self, exe_prefix: str) -> None:
        from agent.http_source import HttpConfig, HttpSource

        self.rows: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.src = HttpSource(self._emit, HttpConfig(go_uprobes=True, exe_prefix=exe_prefix, link_wait_s=1.0))
        self.src.open()
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _emit(self, kind: str, row: dict[str, Any]) -> None:
        with self.lock:
            self.rows.append(row)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.src.poll(0)
            time.sleep(0.02)

    def wait_rows(self, pred, n: int, timeout: float = 8.0) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = [r for r in self.rows if pred(r)]
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.t.join()
        self.src.close()


@pytest.fixture(scope="module")
def gray_bin() -> Path:
    if not gobuild.go_available():
        pytest.skip("no go command")
    return gobuild.build(gobuild.GO_VERSIONS[-1], "stripped").bin("gray")


@pytest.fixture
def exe(gray_bin: Path, tmp_path: Path) -> Path:
    """A fresh copy: a new inode, never inspected by any agent before."""
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy2(gray_bin, d / "gray")
    return d / "gray"


def serve(exe: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    p = spawn([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
              env={**os.environ, **(env or {})})
    line = p.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("LISTEN"), line
    return p, int(line.rsplit(":", 1)[1])


def load(exe: Path, port: int, n: int = N, conc: int = 8) -> tuple[subprocess.Popen, list[dict]]:
    p = spawn([str(exe), "-role", "load", "-url", f"http://127.0.0.1:{port}", "-n", str(n), "-c", str(conc)],
              stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=60)
    return p, [json.loads(x) for x in out.splitlines()]


def expected_version(i: int, split: int = 20) -> str:
    """The router's choice for load-<i>: the header for i%3 in (0, 1), else the split by arrival order.
    With c > 1 headerless requests may arrive out of order, so only the header cases are exact."""
    return ("v1", "v2", "")[i % 3]


def check_gray(cap: Capture, router: subprocess.Popen, ups: dict[int, tuple[subprocess.Popen, str]],
               client: subprocess.Popen, results: list[dict], n: int = N) -> None:
    assert [r.get("status") for r in results] == [200] * n, results[:3]
    want_ids = {f"load-{i}" for i in range(n)}
    client_rows = cap.wait_rows(lambda r: r["pid"] == client.pid, n)
    inbound = cap.wait_rows(lambda r: r["pid"] == router.pid and r["side"] == "server", n)
    outbound = cap.wait_rows(lambda r: r["pid"] == router.pid and r["side"] == "client"
                             and r["parent_request_id"] != 0, n)
    up_pids = {p.pid for p, _ in ups.values()}
    served = cap.wait_rows(lambda r: r["pid"] in up_pids and r["side"] == "server", n)
    with cap.lock:
        unlinked = [r for r in cap.rows if r["pid"] == router.pid and r["side"] == "client"
                    and r["parent_request_id"] == 0]
    by_id = {r["request_id"]: r for r in inbound}
    linked = [r for r in outbound if r["parent_request_id"] in by_id]
    missing = sorted(int(r["x_request_id"].split("-")[1]) for r in inbound
                     if r["request_id"] not in {o["parent_request_id"] for o in outbound})
    seen = {"client": len(client_rows), "inbound": len(inbound), "linked": len(linked),
            "unlinked": len(unlinked), "served": len(served)}
    summary = f"{seen} of {n}; inbound without a link: {missing[:10]}...; counters {cap.src.counters()}"
    # The load client's requests, its first ones too.
    assert sorted(r["x_request_id"] for r in client_rows) == sorted(want_ids), summary
    assert sorted(r["x_request_id"] for r in inbound) == sorted(want_ids), summary
    assert len(linked) == n and not unlinked, summary
    assert sorted(r["x_request_id"] for r in served) == sorted(want_ids), summary
    port_version = {port: v for port, (_, v) in ups.items()}
    for o in outbound:
        parent = by_id[o["parent_request_id"]]
        i = int(parent["x_request_id"].split("-")[1])
        want = expected_version(i)
        if want:
            assert port_version[o["remote_port"]] == want, parent["x_request_id"]
        assert parent["time"] <= o["time"] <= o["end_time"] <= parent["end_time"]
        assert o["path"] == parent["path"] == f"/users/{i}"


def start_gray(exe: Path) -> tuple[subprocess.Popen, int, dict[int, tuple[subprocess.Popen, str]]]:
    v1, p1 = serve(exe, "-role", "upstream", "-version", "v1", env={"SERVICE_VERSION": "v1"})
    v2, p2 = serve(exe, "-role", "upstream", "-version", "v2", env={"SERVICE_VERSION": "v2"})
    router, pr = serve(exe, "-role", "router", "-v1", f"http://127.0.0.1:{p1}", "-v2", f"http://127.0.0.1:{p2}")
    return router, pr, {p1: (v1, "v1"), p2: (v2, "v2")}


@pytest.fixture
def cap(exe: Path) -> Iterator[Capture]:
    c = Capture(str(exe.parent))
    yield c
    c.close()


def test_gray_release_started_after_agent_every_request_linked(cap: Capture, exe: Path) -> None:
    """Router and both upstream versions from one executable, started after the agent, and a
    300-request burst from a load client (the same executable) started right after them."""
    router, pr, ups = start_gray(exe)
    client, results = load(exe, pr)
    check_gray(cap, router, ups, client, results)
