"""Go HTTP capture on the real kernel: Go servers and clients built by the test with several Go
versions, plain and stripped; every request the test sends is checked against its stored row.

The agent (HttpSource) runs in this process and is started BEFORE the Go programs: they are found
from their exec events. Rows are filtered by the test's own pids, so other work on the machine does
not matter. Rows go through the real sink into chDB at the end (test_rows_store_in_chdb).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from contract.records import HTTP_REQUEST
from tests import capture, gobuild
from tests.procs import spawn

pytestmark = [pytest.mark.root, pytest.mark.go]

AUTH_SECRET = "Bearer s3cr3t-t0ken"
COOKIE_SECRET = "session=c00kie-s3cr3t"
HOSTILE = "v2'); DROP TABLE blindspot.http_requests; -- <script>alert(1)</script> $(rm -rf /) %s"
NON_ASCII = "blindspot-tëst/1.0 ✓ 日本"
LONG_TRACEPARENT = "00-" + "a" * 600  # longer than the 256-byte bound


@dataclass
class Sent:
    """One request as the test sent it, and what it observed."""

    rid: str
    method: str
    path: str  # as sent, maybe with a query
    headers: dict[str, str]
    body: int = 0
    req_bytes: int = 0
    resp_bytes: int = 0
    status: int = 0
    client_port: int = 0
    t0: int = 0
    t1: int = 0
    expect_close: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _recv_response(sock: socket.socket, head_only: bool) -> tuple[int, int]:
    """Read one response; return (status, bytes). Status 0 when the server closed without one."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, len(buf)
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
        if k.strip().lower() == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    total = len(head) + 4
    if head_only:
        return status, total
    if chunked:
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, total + len(rest)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, total + len(rest)


def send_on(sock: socket.socket, port: int, s: Sent) -> None:
    lines = [f"{s.method} {s.path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in s.headers.items()]
    if s.body:
        lines.append(f"Content-Length: {s.body}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + b"b" * s.body
    s.client_port = sock.getsockname()[1]
    s.t0 = time.time_ns()
    sock.sendall(raw)
    s.req_bytes = len(raw)
    s.status, s.resp_bytes = _recv_response(sock, s.method == "HEAD")
    s.t1 = time.time_ns()


def std_headers(rid: str) -> dict[str, str]:
    return {"User-Agent": "blindspot-test/1", "X-Request-ID": rid, "X-Gray-Version": "v1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


def expected_route(go: str, path: str, pattern: str | None, uprobes: bool) -> str:
    from agent.http_parse import template_path

    minor = int(go.split(".")[1])
    if uprobes and pattern and minor >= 22:
        return pattern
    return template_path(path.split("?")[0])


# (method, path, body, ServeMux pattern on Go 1.22+ or None when no pattern matches / no finishRequest)
CASES = [
    ("GET", "/hello", 0, "/hello"),
    ("GET", "/users/7?token=abc", 0, "/users/{id}"),
    ("GET", "/status/201", 0, "/status/{code}"),
    ("DELETE", "/status/503", 0, "/status/{code}"),
    ("GET", "/missing/thing", 0, None),  # 404 from ServeMux
    ("HEAD", "/hello", 0, "/hello"),
    ("POST", "/echo", 100_000, "/echo"),
    ("PUT", "/echo", 10, "/echo"),
    ("GET", "/bytes/70000", 0, "/bytes/{n}"),
    ("GET", "/slow", 0, "/slow"),
]


def Capture(uprobes: bool) -> capture.Capture:
    from agent.http_source import HttpConfig, HttpSource

    cfg = HttpConfig(go_uprobes=uprobes, exe_prefix=str(gobuild.CACHE), link_wait_s=1.0)
    return capture.Capture(lambda emit: HttpSource(cfg, emit, host=socket.gethostname()), poll_ms=50)


@pytest.fixture(scope="module")
def builds() -> list[gobuild.GoBuild]:
    if not gobuild.go_available():
        pytest.skip("no go command")
    return gobuild.all_builds()


@pytest.fixture(scope="module")
def cap() -> Iterator[Capture]:
    c = Capture(uprobes=True)
    yield c
    c.close()


def start(cap: Capture, argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    import os

    p = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
    line = p.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("LISTEN"), line
    cap.wait_traced(p.pid)
    return p, int(line.rsplit(":", 1)[1])


def stop(cap: Capture, p: subprocess.Popen) -> None:
    p.kill()
    p.wait()
    deadline = time.monotonic() + 10
    while cap.src.traced(p.pid):  # detached on its exit event
        assert time.monotonic() < deadline, "process exit did not detach"
        time.sleep(0.05)


def check_server_row(row: dict[str, Any], s: Sent, port: int, pid: int, build: gobuild.GoBuild,
                     pattern: str | None, uprobes: bool) -> None:
    want = {
        "side": "server", "pid": pid, "method": s.method, "path": s.path.split("?")[0],
        "route": expected_route(build.go, s.path, pattern, uprobes),
        "status": s.status, "request_bytes": s.req_bytes, "response_bytes": s.resp_bytes,
        "local_addr": "127.0.0.1", "local_port": port, "remote_addr": "127.0.0.1", "remote_port": s.client_port,
        "family": 4, "x_request_id": s.rid, "host_header": f"127.0.0.1:{port}", "upstream_host": "",
        "service": "server", "service_version": build.service_version("server"),
        "go_version": build.build_info("server")["go"], "parent_request_id": 0,
    }
    for k in ("user_agent", "x_gray_version", "traceparent"):
        hk = {"user_agent": "User-Agent", "x_gray_version": "X-Gray-Version", "traceparent": "traceparent"}[k]
        want[k] = s.headers.get(hk, "")[:256]
    got = {k: row[k] for k in want}
    assert got == want, f"{build.id} {s.method} {s.path}"
    assert s.t0 - 2_000_000 <= row["time"] <= row["end_time"] <= s.t1 + 2_000_000
    assert 0 < row["duration_ns"] <= s.t1 - s.t0 + 2_000_000
    if s.path == "/slow":
        assert row["duration_ns"] >= 20_000_000
    blob = json.dumps(row, ensure_ascii=False)
    assert "s3cr3t" not in blob  # Authorization / Cookie are never captured


CROSSING_NS = 1_000_000


def holds(client: dict, server: dict) -> bool:
    """The client's span holds the server's, to within CROSSING_NS, and the two overlap.

    Both ends stamp syscall exits, and on loopback the server's read() can return before the
    client's write() that fed it does (and the client's read() before the server's write()).
    """
    return (client["time"] <= server["time"] + CROSSING_NS
            and client["end_time"] >= server["end_time"] - CROSSING_NS
            and client["time"] < server["end_time"] and server["time"] < client["end_time"])


@pytest.mark.parametrize("variant", ["plain", "stripped"])
@pytest.mark.parametrize("go", gobuild.GO_VERSIONS)
def test_server_and_client_rows_exact(cap: Capture, builds: list[gobuild.GoBuild], go: str, variant: str) -> None:
    build = next(b for b in builds if b.go == go and b.variant == variant)
    srv, port = start(cap, [str(build.bin("server")), "-version", "v1"])
    sent: list[Sent] = []
    try:
        # Keep-alive: every case on one connection, in order.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for i, (m, path, body, pattern) in enumerate(CASES):
                s = Sent(f"{build.id}-ka-{i}", m, path, std_headers(f"{build.id}-ka-{i}"), body,
                         extra={"pattern": pattern})
                send_on(sock, port, s)
                sent.append(s)
        # Header values: non-ASCII, hostile, over the bound, secrets that must not be kept.
        odd = Sent(f"{build.id}-odd", "GET", "/hello", {"User-Agent": NON_ASCII, "X-Request-ID": f"{build.id}-odd",
                   "X-Gray-Version": HOSTILE, "traceparent": LONG_TRACEPARENT, "Authorization": AUTH_SECRET,
                   "Cookie": COOKIE_SECRET}, extra={"pattern": "/hello"})
        with socket.create_connection(("127.0.0.1", port)) as sock:
            send_on(sock, port, odd)
        sent.append(odd)
        # A handler panic: the server closes the connection without a response.
        boom = Sent(f"{build.id}-panic", "GET", "/panic", std_headers(f"{build.id}-panic"),
                    extra={"pattern": None})
        with socket.create_connection(("127.0.0.1", port)) as sock:
            send_on(sock, port, boom)
        assert boom.status == 0 and boom.resp_bytes == 0
        sent.append(boom)
        # Concurrent keep-alive connections.
        conc: list[Sent] = []

        def worker(w: int) -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                for j in range(5):
                    path = ["/hello", f"/users/{w * 10 + j}", "/bytes/3000", "/status/404", "/echo"][j]
                    pat = ["/hello", "/users/{id}", "/bytes/{n}", "/status/{code}", "/echo"][j]
                    s = Sent(f"{build.id}-c{w}-{j}", "POST" if path == "/echo" else "GET", path,
                             std_headers(f"{build.id}-c{w}-{j}"), 500 if path == "/echo" else 0,
                             extra={"pattern": pat})
                    send_on(sock, port, s)
                    conc.append(s)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent += conc
        rows = cap.wait_rows(lambda r: r["pid"] == srv.pid and r["side"] == "server", len(sent))
        by_rid = {r["x_request_id"]: r for r in rows}
        missing = [(s.rid, s.method, s.path) for s in sent if s.rid not in by_rid]
        seen = [(r["x_request_id"], r["path"], r["request_bytes"], r["end_reason"]) for r in rows]
        assert len(rows) == len(sent) == len(by_rid), f"{len(rows)}/{len(sent)}; missing {missing} {seen}"
        for s in sent:
            pattern = s.extra["pattern"]
            check_server_row(by_rid[s.rid], s, port, srv.pid, build, pattern, uprobes=True)
        panic_row = by_rid[boom.rid]
        assert panic_row["end_reason"] == "close" and panic_row["status"] == 0
        odd_row = by_rid[odd.rid]
        assert odd_row["user_agent"] == NON_ASCII and odd_row["x_gray_version"] == HOSTILE
        assert odd_row["traceparent"] == LONG_TRACEPARENT[:256]

        # Client side: the Go client (exec'd after the agent) makes requests through its Transport.
        cli = spawn([str(build.bin("client")), "-c", "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        cap.wait_traced(cli.pid)  # it reads all of stdin before sending anything
        plan = [("GET", "/hello", 0), ("GET", "/status/503", 0), ("GET", "/bytes/5000", 0),
                ("POST", "/echo", 3000), ("GET", "/nowhere", 0), ("GET", "/users/99", 0)] * 2
        reqs = [{"method": m, "url": f"http://127.0.0.1:{port}{p}", "body": b,
                 "headers": {"X-Request-ID": f"{build.id}-cli-{i}", "X-Gray-Version": "v2"}}
                for i, (m, p, b) in enumerate(plan)]
        out, _ = cli.communicate("\n".join(json.dumps(r) for r in reqs) + "\n", timeout=30)
        results = [json.loads(x) for x in out.splitlines()]
        crow = cap.wait_rows(lambda r: r["pid"] == cli.pid, len(plan))
        srows = cap.wait_rows(lambda r: r["pid"] == srv.pid and "-cli-" in r["x_request_id"], len(plan))
        s_by = {r["x_request_id"]: r for r in srows}
        assert len(crow) == len(plan) and len(s_by) == len(plan)
        for r in crow:
            i = int(r["x_request_id"].rsplit("-", 1)[1])
            m, p, _body = plan[i]
            peer = s_by[r["x_request_id"]]
            want = {"side": "client", "method": m, "path": p, "status": results[i]["status"],
                    "upstream_host": f"127.0.0.1:{port}", "host_header": f"127.0.0.1:{port}",
                    "remote_addr": "127.0.0.1", "remote_port": port, "x_gray_version": "v2",
                    "user_agent": "Go-http-client/1.1", "service": "client", "go_version": build.go,
                    # The two ends of one exchange agree on every byte.
                    "request_bytes": peer["request_bytes"], "response_bytes": peer["response_bytes"],
                    "local_port": peer["remote_port"]}
            assert {k: r[k] for k in want} == want, f"{build.id} client {m} {p}"
            # The client's span holds the server's.
            assert holds(r, peer)
        cli_pid = cli.pid
    finally:
        stop(cap, srv)
    assert not cap.src.traced(cli_pid)
    cap.src.counters()  # readable after processes came and went
    assert cap.src.counters()["lost_kernel"] == 0


def test_gray_release_links_inbound_to_upstream(cap: Capture, builds: list[gobuild.GoBuild]) -> None:
    build = next(b for b in builds if b.go == gobuild.GO_VERSIONS[-1] and b.variant == "stripped")
    v1, p1 = start(cap, [str(build.bin("server")), "-version", "v1"],
                   {"OTEL_SERVICE_NAME": "bff", "SERVICE_VERSION": "v1"})
    v2, p2 = start(cap, [str(build.bin("server")), "-version", "v2"],
                   {"OTEL_SERVICE_NAME": "bff", "SERVICE_VERSION": "v2"})
    split = 20
    router, pr = start(cap, [str(build.bin("router")), "-v1", f"http://127.0.0.1:{p1}",
                             "-v2", f"http://127.0.0.1:{p2}", "-split", str(split)],
                       {"OTEL_SERVICE_NAME": "gray-router"})
    try:
        expect: dict[str, str] = {}
        headerless = 0
        with socket.create_connection(("127.0.0.1", pr)) as sock:
            for i in range(30):
                rid = f"gray-{i}"
                h = {"X-Request-ID": rid}
                if i % 3 == 0:
                    h["X-Gray-Version"] = "v1"
                    expect[rid] = "v1"
                elif i % 3 == 1:
                    h["X-Gray-Version"] = "v2"
                    expect[rid] = "v2"
                else:
                    expect[rid] = "v2" if headerless * split % 100 < split else "v1"
                    headerless += 1
                s = Sent(rid, "GET", f"/users/{i}", h)
                send_on(sock, pr, s)
                assert s.status == 200
        inbound = cap.wait_rows(lambda r: r["pid"] == router.pid and r["side"] == "server", 30)
        outbound = cap.wait_rows(lambda r: r["pid"] == router.pid and r["side"] == "client", 30)
        up = cap.wait_rows(lambda r: r["pid"] in (v1.pid, v2.pid), 30)
        assert len(inbound) == 30 and len(outbound) == 30 and len(up) == 30
        children = {r["parent_request_id"]: r for r in outbound}
        port_version = {p1: "v1", p2: "v2"}
        for r in inbound:
            assert r["service"] == "gray-router"
            child = children[r["request_id"]]  # linked through the goroutine, not through headers
            assert port_version[child["remote_port"]] == expect[r["x_request_id"]], r["x_request_id"]
            assert child["path"] == r["path"]
            # The upstream's own row of that request: same connection, inside the outbound call.
            served = [u for u in up if u["remote_port"] == child["local_port"] and holds(child, u)]
            assert len(served) == 1, r["x_request_id"]
            served = served[0]
            assert served["service"] == "bff" and served["service_version"] == expect[r["x_request_id"]]
            assert r["time"] <= child["time"] <= child["end_time"] <= r["end_time"]
    finally:
        for p in (router, v1, v2):
            stop(cap, p)


def test_rows_store_in_chdb(cap: Capture, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The rows captured above go through the real sink into chDB and come back as they were."""
    from ingest import ClickHouseSink, migrate, open_service

    with cap.lock:
        rows = list(cap.rows)
    if not rows:
        pytest.skip("no rows captured by the tests before this one")
    svc = open_service(data_dir=tmp_path / "chdb")
    try:
        migrate(svc, retention_days=7)
        assert ClickHouseSink(svc).write(HTTP_REQUEST, HTTP_REQUEST.to_arrow(rows)) == len(rows)
        got = svc.query_arrow("SELECT count() AS n, countIf(x_gray_version = {h:String}) AS hostile, "
                              "countIf(user_agent = {u:String}) AS utf8, max(length(traceparent)) AS tp "
                              "FROM blindspot.http_requests",
                              {"h": HOSTILE, "u": NON_ASCII}).to_pylist()[0]
        odd = sum(1 for r in rows if r["x_gray_version"] == HOSTILE)
        assert got == {"n": len(rows), "hostile": odd, "utf8": odd, "tp": 256}
    finally:
        svc.close()


def test_default_config_without_uprobes(builds: list[gobuild.GoBuild]) -> None:
    """The default (syscall tracepoints only): same exact rows, routes templated, no links."""
    build = next(b for b in builds if b.go == gobuild.GO_VERSIONS[-1] and b.variant == "stripped")
    c = Capture(uprobes=False)
    try:
        srv, port = start(c, [str(build.bin("server"))])
        sent = []
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for i, (m, path, body, _pattern) in enumerate(CASES):
                s = Sent(f"nou-{i}", m, path, std_headers(f"nou-{i}"), body)
                send_on(sock, port, s)
                sent.append(s)
        rows = c.wait_rows(lambda r: r["pid"] == srv.pid, len(sent))
        by_rid = {r["x_request_id"]: r for r in rows}
        assert len(by_rid) == len(sent)
        for s in sent:
            check_server_row(by_rid[s.rid], s, port, srv.pid, build, None, uprobes=False)
            assert by_rid[s.rid]["route_source"] == "template"
        assert c.src.counters()["uprobe_hits"] == 0
        stop(c, srv)
    finally:
        c.close()
