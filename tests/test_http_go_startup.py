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
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import capture, gobuild
from tests.procs import spawn

pytestmark = [pytest.mark.root, pytest.mark.go]

N = 300


def Capture(exe_prefix: str) -> capture.Capture:
    """The agent's HTTP source (Go uprobes on) in this process, polled every 20 ms as the pipeline does."""
    from agent.http_source import HttpConfig, HttpSource

    cfg = HttpConfig(go_uprobes=True, exe_prefix=exe_prefix, link_wait_s=1.0)
    return capture.Capture(lambda emit: HttpSource(cfg, emit, host=socket.gethostname()), pause_s=0.02, wait_s=8.0)


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


def known(cap: Capture, exe: Path) -> subprocess.Popen:
    """A process of the file already running (a replica, the stable version): while one runs, the kernel
    traces every new process of the file from its exec, probes and offsets included."""
    p, _ = serve(exe, "-role", "upstream", "-version", "v0")
    deadline = time.monotonic() + 15
    while not cap.src.traced(p.pid):
        assert time.monotonic() < deadline, "never traced"
        time.sleep(0.02)
    return p


def test_gray_release_started_after_agent_every_request_linked(cap: Capture, exe: Path) -> None:
    """Router and both upstream versions from one executable, started after the agent, and a
    300-request burst from a load client (the same executable) started right after them: every
    request linked, the client's first ones captured, each process traced from its exec (a replica of
    the file already runs; the very first process of a file is the next test's case)."""
    known(cap, exe)
    at_exec = cap.src.counters()["procs_traced_at_exec"]
    router, pr, ups = start_gray(exe)
    client, results = load(exe, pr)
    check_gray(cap, router, ups, client, results)
    assert cap.src.counters()["procs_traced_at_exec"] == at_exec + 4
    for pid in (router.pid, client.pid, *(p.pid for p, _ in ups.values())):
        assert cap.src.before_traced(pid) == 0
    assert cap.src.exec_to_traced()[-4:] == [0.0] * 4


def test_first_process_of_a_new_file_every_request_captured_and_counted(cap: Capture, exe: Path) -> None:
    """The very first processes of a never-seen executable, burst right after start: every request is
    captured (traced from exec), and a call made before the file was read and its probes attached (a
    window of ~10 ms here for a stripped build) is counted for its process, never silently unlinked."""
    router, pr, _ups = start_gray(exe)
    client, results = load(exe, pr)
    assert [r.get("status") for r in results] == [200] * N
    inbound = cap.wait_rows(lambda r: r["pid"] == router.pid and r["side"] == "server", N)
    outbound = cap.wait_rows(lambda r: r["pid"] == router.pid and r["side"] == "client", N)
    client_rows = cap.wait_rows(lambda r: r["pid"] == client.pid, N)
    assert len(inbound) == len(outbound) == len(client_rows) == N
    ids = {r["request_id"] for r in inbound}
    unlinked = [o for o in outbound if o["parent_request_id"] not in ids]
    # Every unlinked call is one the router made before it was fully traced, and counted as such.
    assert len(unlinked) <= cap.src.before_traced(router.pid), cap.src.counters()
    figures = cap.src.exec_to_traced()
    assert len(figures) >= 4 and all(0 <= f < 10 for f in figures)


def test_keepalive_burst_on_one_connection_every_request_linked(cap: Capture, exe: Path) -> None:
    """300 requests one after another on ONE keep-alive connection: one router goroutine serves them all,
    and all are decoded in one batch. A 64-entry ring per goroutine linked only the last 64 (the issue)."""
    known(cap, exe)
    router, pr, ups = start_gray(exe)
    client, results = load(exe, pr, conc=1)
    check_gray(cap, router, ups, client, results)


def test_started_before_agent_load_after(gray_bin: Path, exe: Path) -> None:
    """The programs run before the agent starts (found by the /proc scan); the load client starts after
    it: every request linked, the client's first ones captured."""
    router, pr, ups = start_gray(exe)
    c = Capture(str(exe.parent))
    try:
        client, results = load(exe, pr)
        check_gray(c, router, ups, client, results)
        assert c.src.counters()["procs_traced_at_exec"] == 1  # the client
    finally:
        c.close()


def test_multi_hop_chain_every_call_linked(cap: Capture, exe: Path) -> None:
    """edge router -> bff v1/v2 -> orders router -> orders v1/v2, all one executable, started after the
    agent: each hop's every outbound call is linked to the inbound request it was made for."""
    known(cap, exe)
    o1, po1 = serve(exe, "-role", "upstream", "-version", "v1")
    o2, po2 = serve(exe, "-role", "upstream", "-version", "v2")
    orouter, por = serve(exe, "-role", "router", "-v1", f"http://127.0.0.1:{po1}", "-v2", f"http://127.0.0.1:{po2}")
    b1, pb1 = serve(exe, "-role", "upstream", "-version", "v1", "-next", f"http://127.0.0.1:{por}")
    b2, pb2 = serve(exe, "-role", "upstream", "-version", "v2", "-next", f"http://127.0.0.1:{por}")
    edge, pe = serve(exe, "-role", "router", "-v1", f"http://127.0.0.1:{pb1}", "-v2", f"http://127.0.0.1:{pb2}")
    _client, results = load(exe, pe)
    assert [r.get("status") for r in results] == [200] * N
    callers = {"edge": edge.pid, "bff": (b1.pid, b2.pid), "orders-router": orouter.pid}
    for hop, pids in callers.items():
        pids = pids if isinstance(pids, tuple) else (pids,)
        inbound = cap.wait_rows(lambda r, p=pids: r["pid"] in p and r["side"] == "server", N)
        outbound = cap.wait_rows(lambda r, p=pids: r["pid"] in p and r["side"] == "client", N)
        assert len(inbound) == len(outbound) == N, hop
        by_id = {r["request_id"]: r for r in inbound}
        linked = [o for o in outbound if o["parent_request_id"] in by_id]
        assert len(linked) == N, f"{hop}: {len(linked)}/{N} linked; {cap.src.counters()}"
        for o in linked:  # the same request, one hop further
            assert by_id[o["parent_request_id"]]["x_request_id"] == o["x_request_id"] or hop != "bff"
            assert by_id[o["parent_request_id"]]["path"] == o["path"]
    served = cap.wait_rows(lambda r: r["pid"] in (o1.pid, o2.pid), N)
    assert sorted(r["x_request_id"] for r in served) == sorted(f"load-{i}" for i in range(N))


def test_executable_replaced_at_the_same_path(cap: Capture, exe: Path, gray_bin: Path) -> None:
    """A new build at the same path is a new inode: read and attached on its first exec; the old file's
    processes keep theirs while they run."""
    known(cap, exe)
    router, pr, ups = start_gray(exe)
    client, results = load(exe, pr, n=30)
    check_gray(cap, router, ups, client, results, n=30)
    old = exe.stat().st_ino
    new = exe.with_name("gray.new")
    shutil.copy2(gray_bin, new)
    new.rename(exe)  # what `go build -o` and most deploys do: a new file renamed over the old
    assert exe.stat().st_ino != old
    known(cap, exe)
    router2, pr2, ups2 = start_gray(exe)
    with cap.lock:
        cap.rows.clear()
    client2, results2 = load(exe, pr2)
    check_gray(cap, router2, ups2, client2, results2)
    assert cap.src.counters()["exes_attached"] == 2
    # The old build's processes are still traced, probes included.
    with cap.lock:
        cap.rows.clear()
    client3, results3 = load(exe, pr, n=30)  # new-file client, old-file router
    check_gray(cap, router, ups, client3, results3, n=30)


def test_a_program_that_is_not_go_is_traced_from_exec_only_until_read(cap: Capture, exe: Path) -> None:
    """Every new executable is traced from its exec until it is read (its first requests must not be
    lost if it is Go). One that is not Go (curl, copied beside the Go program so the agent's path filter
    admits it) yields no rows (what it sent before it was read, if anything, is counted in
    untraced_records), and the kernel then knows
    the file: its next processes are not traced at all."""
    from agent import _http_event as ev
    from agent.go_exes import kernel_dev

    curl = exe.with_name("curl")
    shutil.copy2("/usr/bin/curl", curl)
    router, pr, _ups = start_gray(exe)
    pids = []
    for i in range(2):
        p = spawn([str(curl), "-s", "-o", "/dev/null", "-H", f"X-Request-ID: curl-{i}", f"http://127.0.0.1:{pr}/users/{i}"])
        assert p.wait(timeout=30) == 0
        pids.append(p.pid)
    served = cap.wait_rows(lambda r: r["pid"] == router.pid and r["x_request_id"].startswith("curl-"), 2)
    assert len(served) == 2  # the router's side of both
    time.sleep(2.5)  # past the hold of records from processes nobody has named yet
    with cap.lock:
        assert [r for r in cap.rows if r["pid"] in pids] == []
    st = curl.stat()
    exes = cap.src.bpf["exes"]
    assert exes[exes.Key(kernel_dev(st.st_dev), st.st_ino)].state == ev.GO_NOT_TRACED
