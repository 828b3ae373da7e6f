"""gRPC and h2c of Go programs on the real kernel (GoTlsSource with ``go_h2c``): grpc-go's health
service (an old and a current grpc-go from the module proxy) and net/http over cleartext HTTP/2
(golang.org/x/net/http2/h2c), Go 1.21..1.26, plain and stripped. Servers and clients are Go programs
started after the agent; every row, from both ends, is checked field by field against the call the
test made and the answer the client printed.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from contract.records import HTTP_REQUEST
from tests import gobuild, gobuild_tls
from tests.gobuild_tls import Capture
from tests.procs import spawn

pytestmark = [pytest.mark.root, pytest.mark.go]

HOSTILE = "v2'); DROP TABLE blindspot.http_requests; -- <script>x</script> $(rm -rf /) %s"
METHOD = "/grpc.health.v1.Health/Check"


@pytest.fixture(scope="module")
def builds() -> list[tuple[gobuild.GoBuild, str]]:
    if not gobuild.go_available():
        pytest.skip("no go command")
    return gobuild_tls.grpc_builds()


@pytest.fixture(scope="module")
def cap() -> Any:
    c = Capture(go_h2c=True)
    yield c
    c.close()


def _start_pair(cap: Capture, build: gobuild.GoBuild, kind: str) -> tuple[subprocess.Popen, subprocess.Popen, int]:
    srv = spawn([str(build.bin("grpcapp")), "-mode", f"{kind}-server"], stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
    line = srv.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("LISTEN"), line
    addr = line.split()[1]
    cap.wait_traced(srv.pid)  # found from its exec event
    argv = [str(build.bin("grpcapp")), "-mode", f"{kind}-client"] + (["-addr", addr] if kind != "h2c" else [])
    cli = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    assert cli.stdout.readline().strip() == "READY"  # type: ignore[union-attr]
    cap.wait_traced(cli.pid)
    return srv, cli, int(addr.rsplit(":", 1)[1])


def _call(cli: subprocess.Popen, line: str) -> list[str]:
    cli.stdin.write(line + "\n")  # type: ignore[union-attr]
    return cli.stdout.readline().split()  # type: ignore[union-attr]


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.kill()
        p.wait()


def _common(row: dict[str, Any], build: gobuild.GoBuild, pid: int) -> dict[str, Any]:
    info = gobuild.read_build_info(build.bin("grpcapp"))
    return {"pid": pid, "service": "grpcapp", "service_version": gobuild.service_version(info),
            "go_version": info["go"], "encrypted": 0, "end_reason": "end", "family": 4,
            "local_addr": "127.0.0.1", "remote_addr": "127.0.0.1", "parent_request_id": 0, "head_truncated": 0}


def _check_grpc_call(s: dict[str, Any], c: dict[str, Any], build: gobuild.GoBuild, grpc_version: str,
                     pids: tuple[int, int], port: int, path: str, call: dict[str, Any]) -> None:
    """Both ends of one gRPC call over h2c: every column against the call the test made (``call``: its
    status, bytes and metadata), the two rows on one connection, the server's span inside the client's."""
    for side, row, pid in (("server", s, pids[0]), ("client", c, pids[1])):
        want = {
            **_common(row, build, pid), "side": side, "protocol": "grpc", "method": "POST",
            "path": path, "route": path, "route_source": "grpc", "status": 200, **call,
            "host_header": f"127.0.0.1:{port}",
            "upstream_host": "" if side == "server" else f"127.0.0.1:{port}",
        }
        assert {k: row[k] for k in want} == want, (build.id, grpc_version, side, path, call)
        assert row["user_agent"].startswith(f"grpc-go/{grpc_version[1:]}"), row["user_agent"]
        assert "s3cr3t" not in json.dumps(row)
        assert 0 < row["duration_ns"] < 5_000_000_000
    assert (s["local_port"], s["remote_port"]) == (port, c["local_port"])
    assert c["remote_port"] == port
    assert c["time"] <= s["time"] + 1_000_000 and s["end_time"] <= c["end_time"] + 1_000_000


def test_connection_begun_before_agent_counted_not_guessed(builds: list[tuple[gobuild.GoBuild, str]]) -> None:
    """A gRPC connection that began before the agent: its HPACK state is unknown, so none of its calls
    becomes a row (no method or status guessed); they are counted in h2c_untracked_frames. A new
    connection of the same processes afterwards is decoded. (First in this module: the module's
    Capture, once open, traces every program it sees start.)"""
    build = builds[-1][0]
    srv = spawn([str(build.bin("grpcapp")), "-mode", "grpc-server"], stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
    addr = srv.stdout.readline().split()[1]  # type: ignore[union-attr]
    cli = spawn([str(build.bin("grpcapp")), "-mode", "grpc-client", "-addr", addr], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    assert cli.stdout.readline().strip() == "READY"  # type: ignore[union-attr]
    try:
        assert _call(cli, "check\tup")[1] == "0"  # the connection is up before the agent
        cap = Capture(go_h2c=True)
        try:
            assert cap.src.add_pid(srv.pid) and cap.src.add_pid(cli.pid)
            for _ in range(3):
                assert _call(cli, "check\tup")[1] == "0"
            time.sleep(1.0)
            assert cap.wait_rows(srv.pid, 1, timeout=1.0) == [] and cap.wait_rows(cli.pid, 1, timeout=0.1) == []
            assert cap.src.counters()["h2c_untracked_frames"] >= 6  # HEADERS + DATA each way, per call
            assert _call(cli, "dial") == ["RESULT", "dialed"]  # a new connection, seen from its preface
            assert _call(cli, "check\tdown")[1] == "0"
            rows = cap.wait_rows(srv.pid, 1) + cap.wait_rows(cli.pid, 1)
            assert [(r["side"], r["route"], r["grpc_status"], r["request_bytes"]) for r in rows] == [
                ("server", METHOD, "0", 11), ("client", METHOD, "0", 11)]
        finally:
            cap.close()
    finally:
        _stop(cli, srv)


# (service asked, gRPC code the client printed, serving status in the answer or -1, response DATA bytes)
GRPC_CASES = [("up", 0, 1, 7), ("down", 0, 2, 7), ("nope", 5, -1, 0)]


def test_grpc_unary_rows_exact(cap: Capture, builds: list[tuple[gobuild.GoBuild, str]]) -> None:
    for build, grpc_version in builds:
        srv, cli, port = _start_pair(cap, build, "grpc")
        try:
            for i, (svc, code, serving, _) in enumerate(GRPC_CASES):
                md = [f"x-request-id: {build.id}-{i}", "authorization: Bearer s3cr3t"]
                if i == 0:
                    md.append(f"x-gray-version: {HOSTILE}")
                out = _call(cli, "\t".join(["check", svc, *md]))
                assert out == ["RESULT", str(code), str(serving)], (build.id, out)
            srows = cap.wait_rows(srv.pid, len(GRPC_CASES))
            crows = cap.wait_rows(cli.pid, len(GRPC_CASES))
            assert len(srows) == len(crows) == len(GRPC_CASES), build.id
            for i, (svc, code, _, resp_bytes) in enumerate(GRPC_CASES):
                _check_grpc_call(srows[i], crows[i], build, grpc_version, (srv.pid, cli.pid), port, METHOD, {
                    "grpc_status": str(code), "request_bytes": 5 + 2 + len(svc), "response_bytes": resp_bytes,
                    "x_request_id": f"{build.id}-{i}", "x_gray_version": HOSTILE if i == 0 else ""})
        finally:
            _stop(cli, srv)
    counters = cap.src.counters()
    assert counters["h2_lost"] == 0 and counters["h2_hpack_errors"] == 0 and counters["lost_ringbuf"] == 0


def test_grpc_50_concurrent_streams_one_connection(cap: Capture, builds: list[tuple[gobuild.GoBuild, str]]) -> None:
    build = builds[-1][0]  # the current grpc-go on the newest Go
    srv, cli, port = _start_pair(cap, build, "grpc")
    try:
        assert _call(cli, "check\tup")[1] == "0"  # the connection is up before the burst
        out = _call(cli, "par\t50\tup")
        assert out[0] == "RESULT" and out[1:] == ["[" + "0"] + ["0"] * 48 + ["0]"], out
        srows = [r for r in cap.wait_rows(srv.pid, 51) if r["x_request_id"].startswith("par-")]
        crows = [r for r in cap.wait_rows(cli.pid, 51) if r["x_request_id"].startswith("par-")]
        for rows in (srows, crows):
            assert sorted(r["x_request_id"] for r in rows) == sorted(f"par-{i}" for i in range(50))
            assert {(r["route"], r["grpc_status"], r["request_bytes"], r["response_bytes"], r["end_reason"])
                    for r in rows} == {(METHOD, "0", 9, 7, "end")}
            assert len({r["remote_port"] for r in rows}) == 1  # one connection
            assert len({r["request_id"] for r in rows}) == 50
        assert {r["local_port"] for r in srows} == {r["remote_port"] for r in crows} == {port}
    finally:
        _stop(cli, srv)


def test_h2c_rows_exact(cap: Capture, builds: list[tuple[gobuild.GoBuild, str]]) -> None:
    for build, _ in builds:
        srv, cli, port = _start_pair(cap, build, "h2c")
        cases = [("GET", "/status/201", 0), ("POST", "/status/503?tok=1", 20_000), ("DELETE", "/status/404", 0)]
        try:
            for i, (method, path, body) in enumerate(cases):
                out = _call(cli, "\t".join([method, f"http://127.0.0.1:{port}{path}", str(body),
                                            f"X-Request-ID: {build.id}-h{i}", "Cookie: c00kie-s3cr3t"]))
                assert out == ["RESULT", path.split("?")[0].rsplit("/", 1)[1], "11"], out
            srows = cap.wait_rows(srv.pid, len(cases))
            crows = cap.wait_rows(cli.pid, len(cases))
            assert len(srows) == len(crows) == len(cases), build.id
            for i, (method, path, body) in enumerate(cases):
                for side, row, pid in (("server", srows[i], srv.pid), ("client", crows[i], cli.pid)):
                    want = {
                        **_common(row, build, pid), "side": side, "protocol": "h2c", "method": method,
                        "path": path.split("?")[0], "route": "/status/{id}", "route_source": "template",
                        "status": int(path.split("?")[0].rsplit("/", 1)[1]), "grpc_status": "",
                        "request_bytes": body, "response_bytes": 11, "x_request_id": f"{build.id}-h{i}",
                        "host_header": f"127.0.0.1:{port}", "user_agent": "Go-http-client/2.0",
                        "upstream_host": "" if side == "server" else f"127.0.0.1:{port}",
                    }
                    assert {k: row[k] for k in want} == want, (build.id, side, method, path)
                    assert "s3cr3t" not in json.dumps(row)
        finally:
            _stop(cli, srv)


def test_grpc_server_streaming_cancelled(cap: Capture, builds: list[tuple[gobuild.GoBuild, str]]) -> None:
    """Health.Watch (server streaming): the first message, then the client cancels: RST_STREAM ends
    the stream on both ends (end_reason 'reset', no trailers: grpc_status '')."""
    for build, _ in (builds[0], builds[-1]):  # the old and the current grpc-go
        srv, cli, port = _start_pair(cap, build, "grpc")
        try:
            assert _call(cli, "watch\tup") == ["RESULT", "watch", "1"]
            srows = cap.wait_rows(srv.pid, 1)
            crows = cap.wait_rows(cli.pid, 1)
            for side, rows, pid in (("server", srows, srv.pid), ("client", crows, cli.pid)):
                assert len(rows) == 1, (build.id, side)
                want = {**_common(rows[0], build, pid), "side": side, "protocol": "grpc",
                        "route": "/grpc.health.v1.Health/Watch", "status": 200, "grpc_status": "",
                        "request_bytes": 9, "response_bytes": 7, "x_request_id": "watch", "end_reason": "reset"}
                assert {k: rows[0][k] for k in want} == want, (build.id, side)
            assert srows[0]["local_port"] == crows[0]["remote_port"] == port
        finally:
            _stop(cli, srv)


# Client and bidirectional streaming (tests/go_grpc/grpcapp/streams.go, a service written with grpc.ServiceDesc):
# (method, names sent: one HealthCheckRequest each, gRPC code, what the client printed after the code,
# response DATA bytes). The server reads every request to the client's end of stream, then answers: a
# name "fail" makes it end with ABORTED (10). Collect answers once (SERVING: 5 + 2 bytes) when OK;
# Echo answers every request (5 + 2 bytes each), also when it then fails.
STREAM_CASES = [
    ("Collect", ["a", "bb", "ccc"], 0, 1, 7),
    ("Collect", ["x" * 40, "fail"], 10, -1, 0),
    ("Echo", ["a", "bb", "ccc", "dddd"], 0, 4, 28),
    ("Echo", ["x", "fail", "y"], 10, 3, 21),
    ("Echo", ["y" * 20_000, "z" * 20_000], 0, 2, 14),  # calls past one 16 KiB capture (3-byte lengths)
]


def _grpc_msg(name: str) -> int:
    """Bytes of one HealthCheckRequest{service: name} with its gRPC prefix: 5 + tag + varint length + name."""
    return 5 + 1 + max(1, (len(name).bit_length() + 6) // 7) + len(name)


def test_grpc_client_and_bidi_streaming_rows_exact(cap: Capture, builds: list[tuple[gobuild.GoBuild, str]]) -> None:
    """Client streaming (Collect) and bidirectional streaming (Echo), OK and ABORTED, from both ends:
    one row per stream per side; request/response bytes are the messages' bytes each way with their
    5-byte prefixes; metadata from the allow-list stored, ``authorization`` not."""
    for build, grpc_version in builds:
        srv, cli, port = _start_pair(cap, build, "streams")
        try:
            for i, (method, names, code, printed, _) in enumerate(STREAM_CASES):
                md = [f"x-request-id: {build.id}-s{i}", "authorization: Bearer s3cr3t"]
                if i == 1:
                    md.append(f"x-gray-version: {HOSTILE}")
                out = _call(cli, "\t".join([method.lower(), ",".join(names), *md]))
                assert out == ["RESULT", str(code), str(printed)], (build.id, method, out)
            srows = cap.wait_rows(srv.pid, len(STREAM_CASES))
            crows = cap.wait_rows(cli.pid, len(STREAM_CASES))
            assert len(srows) == len(crows) == len(STREAM_CASES), (build.id, len(srows), len(crows))
            for i, (method, names, code, _, resp_bytes) in enumerate(STREAM_CASES):
                _check_grpc_call(srows[i], crows[i], build, grpc_version, (srv.pid, cli.pid), port,
                                 f"/blindspot.test.Streams/{method}", {
                                     "grpc_status": str(code), "request_bytes": sum(_grpc_msg(n) for n in names),
                                     "response_bytes": resp_bytes, "x_request_id": f"{build.id}-s{i}",
                                     "x_gray_version": HOSTILE if i == 1 else ""})
            assert len({r["request_id"] for r in srows + crows}) == 2 * len(STREAM_CASES)
        finally:
            _stop(cli, srv)
    counters = cap.src.counters()
    assert counters["h2_lost"] == 0 and counters["h2_hpack_errors"] == 0 and counters["lost_ringbuf"] == 0
    assert counters["tls_chunks"] >= len(builds)  # the 40 KB calls went on past their first record


def test_rows_store_in_chdb(cap: Capture, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The HTTP/2 and gRPC rows captured above go through the real sink into chDB (migration 0050's
    columns) and come back as they were."""
    from ingest import ClickHouseSink, migrate, open_service

    with cap.lock:
        rows = list(cap.rows)
    if not rows:
        pytest.skip("no rows captured by the tests before this one")
    svc = open_service(data_dir=tmp_path / "chdb")
    try:
        migrate(svc, retention_days=7)
        assert ClickHouseSink(svc).write(HTTP_REQUEST, HTTP_REQUEST.to_arrow(rows)) == len(rows)
        got = svc.query_arrow("SELECT protocol, grpc_status, count() AS n, countIf(x_gray_version = {h:String}) AS "
                              "hostile FROM blindspot.http_requests GROUP BY protocol, grpc_status "
                              "ORDER BY protocol, grpc_status", {"h": HOSTILE}).to_pylist()
        want: dict[tuple[str, str], list[int]] = {}
        for r in rows:
            w = want.setdefault((r["protocol"], r["grpc_status"]), [0, 0])
            w[0] += 1
            w[1] += r["x_gray_version"] == HOSTILE
        assert got == [{"protocol": p, "grpc_status": g, "n": n, "hostile": h}
                       for (p, g), (n, h) in sorted(want.items())]
        assert {r["protocol"] for r in got} == {"grpc", "h2c"}
    finally:
        svc.close()
