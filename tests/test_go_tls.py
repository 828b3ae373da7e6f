"""HTTPS of Go programs on the real kernel: Go's crypto/tls plaintext read by uprobes (GoTlsSource),
for Go 1.21..1.26, plain and stripped. The test talks TLS itself (Python's ssl) to a Go HTTPS server,
and is the TLS server a Go HTTPS client talks to, so it knows every byte of every exchange: each
stored row is checked field by field against what the test sent and received.

Servers are started AFTER the agent (found from their exec event); clients BEFORE it (found by the
scan when the source opens).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import gobuild, gobuild_tls
from tests.gobuild_tls import Capture
from tests.procs import spawn

pytestmark = [pytest.mark.root, pytest.mark.go]

HOSTILE = "v2'); DROP TABLE blindspot.http_requests; -- <script>x</script> $(rm -rf /) \u00e9\u65e5"
SECRET = "Bearer s3cr3t-t0ken"
COOKIE = "session=c00kie-s3cr3t"


@pytest.fixture(scope="module")
def builds() -> list[gobuild.GoBuild]:
    if not gobuild.go_available():
        pytest.skip("no go command")
    return gobuild_tls.all_builds()


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _read_response(sock: ssl.SSLSocket, head_only: bool) -> tuple[int, int]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "server closed"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b"\r\n")[0].split()[1])
    length = 0
    for ln in head.split(b"\r\n")[1:]:
        k, _, v = ln.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while not head_only and len(rest) < length:
        rest += sock.recv(65536)
    return status, len(head) + 4 + len(rest)


# (method, path as sent, body bytes, extra headers)
SERVER_CASES = [
    ("GET", "/hello", 0, {}),
    ("GET", "/status/503?token=abc", 0, {"Authorization": SECRET, "Cookie": COOKIE}),
    ("POST", "/echo", 40_000, {"X-Gray-Version": HOSTILE}),  # more than two TLS records each way
    ("DELETE", "/status/201", 0, {}),
    ("HEAD", "/hello", 0, {}),
    ("GET", "/users/42", 0, {"traceparent": "00-" + "a" * 600}),  # 404; a header past the value bound
]


def test_https_server_rows_exact(builds: list[gobuild.GoBuild]) -> None:
    cap = Capture(go_tls=True)
    procs = []
    try:
        for build in builds:
            p = spawn([str(build.bin("tlsapp"))], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(p)
            line = p.stdout.readline()  # type: ignore[union-attr]
            assert line.startswith("LISTEN"), line
            port = int(line.rsplit(":", 1)[1])
            cap.wait_traced(p.pid)  # started after the agent: found from its exec event
            sent = []
            with _client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port))) as sock:
                for i, (method, path, body, extra) in enumerate(SERVER_CASES):
                    rid = f"{build.id}-{i}"
                    hdrs = {"Host": f"127.0.0.1:{port}", "User-Agent": "blindspot-tls-test/1", "X-Request-ID": rid,
                            **extra}
                    if body:
                        hdrs["Content-Length"] = str(body)
                    raw = (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
                           + "\r\n").encode() + b"b" * body
                    t0 = time.time_ns()
                    sock.sendall(raw)
                    status, resp = _read_response(sock, method == "HEAD")
                    sent.append((method, path, hdrs, len(raw), status, resp, t0, time.time_ns(),
                                 sock.getsockname()[1]))
            rows = cap.wait_rows(p.pid, len(sent))
            assert len(rows) == len(sent), f"{build.id}: {len(rows)} rows for {len(sent)} requests"
            info = gobuild.read_build_info(build.bin("tlsapp"))
            for row, (method, path, hdrs, req, status, resp, t0, t1, cport) in zip(rows, sent, strict=True):
                from agent.http_parse import template_path

                want = {
                    "side": "server", "pid": p.pid, "method": method, "path": path.split("?")[0],
                    "route": template_path(path.split("?")[0]), "route_source": "template",
                    "status": status, "request_bytes": req, "response_bytes": resp,
                    "local_addr": "127.0.0.1", "local_port": port, "remote_addr": "127.0.0.1", "remote_port": cport,
                    "family": 4, "x_request_id": hdrs["X-Request-ID"], "host_header": f"127.0.0.1:{port}",
                    "user_agent": "blindspot-tls-test/1", "x_gray_version": hdrs.get("X-Gray-Version", ""),
                    "traceparent": hdrs.get("traceparent", "")[:256], "upstream_host": "",
                    "service": "tlsapp", "service_version": gobuild.service_version(info), "go_version": info["go"],
                    "encrypted": 1, "protocol": "http/1.1", "head_truncated": 0, "parent_request_id": 0,
                }
                assert {k: row[k] for k in want} == want, f"{build.id} {method} {path}"
                assert t0 - 2_000_000 <= row["time"] <= row["end_time"] <= t1 + 2_000_000
                assert 0 < row["duration_ns"] <= t1 - t0 + 2_000_000
                assert "s3cr3t" not in json.dumps(row, ensure_ascii=False)
            p.kill()
            p.wait()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        cap.close()
    c = cap.src.counters()
    assert c["lost_ringbuf"] == 0 and c["rejected"] == 0 and c["parse_errors"] == 0, c


class TlsServer:
    """A TLS HTTP/1.1 server of the test's own: records every request's plaintext bytes and answers
    ``/status/<code>`` with that code and a body of ``len(path)`` bytes."""

    def __init__(self, certdir: Path) -> None:
        cert, key = certdir / "cert.pem", certdir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                       check=True, capture_output=True)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.ls = socket.create_server(("127.0.0.1", 0))
        self.port = self.ls.getsockname()[1]
        self.got: list[tuple[bytes, int, int]] = []  # (request bytes, response bytes, client port)
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while True:
            try:
                c, addr = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c, addr[1]), daemon=True).start()

    def _serve(self, raw: socket.socket, cport: int) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as s:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        chunk = s.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = 0
                    for ln in head.split(b"\r\n")[1:]:
                        k, _, v = ln.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v)
                    while len(rest) < length:
                        rest += s.recv(65536)
                    req, buf = head + b"\r\n\r\n" + rest[:length], rest[length:]
                    path = head.split(b" ")[1].split(b"?")[0].decode()
                    code = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
                    body = b"r" * len(path)
                    resp = f"HTTP/1.1 {code} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
                    self.got.append((req, len(resp), cport))
                    s.sendall(resp)
        except (OSError, ssl.SSLError):
            return

    def close(self) -> None:
        self.ls.close()


def test_https_client_rows_exact_started_before_agent(builds: list[gobuild.GoBuild], tmp_path: Path) -> None:
    server = TlsServer(tmp_path)
    clients = []
    try:
        for build in builds:  # every client runs before the agent starts
            p = spawn([str(build.bin("tlsapp")), "-mode", "client"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
            assert p.stdout.readline().strip() == "READY"  # type: ignore[union-attr]
            clients.append((build, p))
        cap = Capture(go_tls=True, pids=tuple(p.pid for _, p in clients))
        try:
            for build, p in clients:
                assert cap.src.traced(p.pid), build.id
                cases = [("GET", "/status/200", 0, {}), ("POST", "/status/503?x=1", 30_000, {}),
                         ("PUT", "/status/404", 5, {"X-Gray-Version": HOSTILE, "Authorization": SECRET})]
                first = len(server.got)
                for i, (method, path, body, extra) in enumerate(cases):
                    rid = f"{build.id}-c{i}"
                    fields = [method, f"https://127.0.0.1:{server.port}{path}", str(body), f"X-Request-ID: {rid}",
                              *(f"{k}: {v}" for k, v in extra.items())]
                    p.stdin.write("\t".join(fields) + "\n")  # type: ignore[union-attr]
                    out = p.stdout.readline().split()  # type: ignore[union-attr]
                    assert out[0] == "RESULT" and out[1] == path.split("?")[0].rsplit("/", 1)[1], out
                rows = cap.wait_rows(p.pid, len(cases))
                assert len(rows) == len(cases), build.id
                info = gobuild.read_build_info(build.bin("tlsapp"))
                for i, (row, (method, path, _body, extra), (req, resp, cport)) in enumerate(
                        zip(rows, cases, server.got[first:], strict=True)):
                    assert req.startswith(f"{method} {path} HTTP/1.1\r\n".encode())
                    want = {
                        "side": "client", "pid": p.pid, "method": method, "path": path.split("?")[0],
                        "status": int(path.split("?")[0].rsplit("/", 1)[1]), "request_bytes": len(req),
                        "response_bytes": resp, "local_addr": "127.0.0.1", "local_port": cport,
                        "remote_addr": "127.0.0.1", "remote_port": server.port, "family": 4,
                        "x_request_id": f"{build.id}-c{i}", "x_gray_version": extra.get("X-Gray-Version", ""),
                        "user_agent": "Go-http-client/1.1", "host_header": f"127.0.0.1:{server.port}",
                        "upstream_host": f"127.0.0.1:{server.port}", "service": "tlsapp",
                        "service_version": gobuild.service_version(info), "go_version": info["go"],
                        "encrypted": 1, "protocol": "http/1.1", "head_truncated": 0,
                    }
                    assert {k: row[k] for k in want} == want, f"{build.id} {method} {path}"
                    assert "s3cr3t" not in json.dumps(row, ensure_ascii=False)
        finally:
            cap.close()
    finally:
        for _, p in clients:
            p.kill()
            p.wait()
        server.close()


def test_https_h2_rows_exact(builds: list[gobuild.GoBuild]) -> None:
    """HTTPS where both Go ends negotiate HTTP/2 by ALPN (net/http's default): one row per stream from
    both ends, protocol 'h2', encrypted; bodies past a TLS record."""
    cap = Capture(go_tls=True)
    procs = []
    try:
        for build in builds:
            srv = spawn([str(build.bin("tlsapp")), "-h2"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                        text=True)
            procs.append(srv)
            port = int(srv.stdout.readline().rsplit(":", 1)[1])  # type: ignore[union-attr]
            cap.wait_traced(srv.pid)
            cli = spawn([str(build.bin("tlsapp")), "-mode", "client", "-h2"], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
            procs.append(cli)
            assert cli.stdout.readline().strip() == "READY"  # type: ignore[union-attr]
            cap.wait_traced(cli.pid)
            cases = [("GET", "/hello", 0, 200, 10), ("POST", "/echo", 30_000, 200, 30_000),
                     ("GET", "/status/503?k=v", 0, 503, 11)]
            for i, (method, path, body, status, resp) in enumerate(cases):
                line = "\t".join([method, f"https://127.0.0.1:{port}{path}", str(body), f"X-Request-ID: {build.id}-{i}",
                                  f"Authorization: {SECRET}"])
                cli.stdin.write(line + "\n")  # type: ignore[union-attr]
                assert cli.stdout.readline().split() == ["RESULT", str(status), str(resp)]  # type: ignore[union-attr]
            info = gobuild.read_build_info(build.bin("tlsapp"))
            srows, crows = cap.wait_rows(srv.pid, len(cases)), cap.wait_rows(cli.pid, len(cases))
            assert len(srows) == len(crows) == len(cases), build.id
            for i, (method, path, body, status, resp) in enumerate(cases):
                for side, row, pid in (("server", srows[i], srv.pid), ("client", crows[i], cli.pid)):
                    want = {
                        "side": side, "pid": pid, "protocol": "h2", "encrypted": 1, "method": method,
                        "path": path.split("?")[0], "status": status, "grpc_status": "", "request_bytes": body,
                        "response_bytes": resp, "x_request_id": f"{build.id}-{i}",
                        "host_header": f"127.0.0.1:{port}", "user_agent": "Go-http-client/2.0",
                        "upstream_host": "" if side == "server" else f"127.0.0.1:{port}", "end_reason": "end",
                        "service": "tlsapp", "go_version": info["go"], "local_addr": "127.0.0.1",
                    }
                    assert {k: row[k] for k in want} == want, (build.id, side, method, path)
                    assert "s3cr3t" not in json.dumps(row)
                assert (srows[i]["local_port"], srows[i]["remote_port"]) == (port, crows[i]["local_port"])
            for p in procs[-2:]:
                p.kill()
                p.wait()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        cap.close()
    c = cap.src.counters()
    assert c["h2_lost"] == 0 and c["h2_hpack_errors"] == 0 and c["lost_ringbuf"] == 0, c


def test_https_server_started_before_agent_mid_connection(builds: list[gobuild.GoBuild]) -> None:
    """An HTTPS server and a keep-alive connection both older than the agent. HTTP/1.1 carries no
    connection state, so requests on that connection become exact rows, except the one the server
    was already waiting for when the probes were placed: its Read began before them, so its return
    has no buffer to read. That one is not guessed: it is counted (read_return_unmatched)."""
    build = builds[-1]
    p = spawn([str(build.bin("tlsapp"))], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(p.stdout.readline().rsplit(":", 1)[1])  # type: ignore[union-attr]
        with _client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port))) as sock:
            def ask(code: int, rid: str) -> tuple[int, int]:
                raw = f"GET /status/{code} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Request-ID: {rid}\r\n\r\n".encode()
                sock.sendall(raw)
                status, resp = _read_response(sock, False)
                assert status == code
                return len(raw), resp

            ask(202, "before")  # served before the agent
            cap = Capture(go_tls=True, pids=(p.pid,))
            try:
                assert cap.src.traced(p.pid)  # found by the scan when the source opened
                ask(203, "waited-for")  # the server's Read for it began before the probes
                req, resp = ask(204, "after")
                rows = cap.wait_rows(p.pid, 2, timeout=3.0)
                got = [(r["x_request_id"], r["status"], r["request_bytes"], r["response_bytes"], r["remote_port"],
                        r["encrypted"]) for r in rows]
                assert ("after", 204, req, resp, sock.getsockname()[1], 1) in got
                assert all(r["x_request_id"] != "before" for r in rows)
                if len(rows) == 1:  # the waited-for request: counted, not guessed
                    assert cap.src.counters()["source_errors:go_tls:read_return_unmatched"] >= 1
            finally:
                cap.close()
    finally:
        p.kill()
        p.wait()


# gRPC over TLS (tests/go_grpc/grpcapp/streams.go: credentials.NewTLS, ALPN h2): (client line, full
# method, gRPC code, what the client printed after the code, request and response DATA bytes).
GRPC_TLS_CASES = [
    ("check\tup", "/grpc.health.v1.Health/Check", 0, 1, 5 + 2 + 2, 7),
    ("check\tnope", "/grpc.health.v1.Health/Check", 5, -1, 5 + 2 + 4, 0),
    ("echo\ta,fail", "/blindspot.test.Streams/Echo", 10, 2, 5 + 3 + 5 + 6, 14),
    ("collect\t" + "x" * 30_000, "/blindspot.test.Streams/Collect", 0, 1, 5 + 1 + 3 + 30_000, 7),  # past a record
]
GRPC_HOSTILE = HOSTILE.encode("ascii", "ignore").decode()  # gRPC metadata values are printable ASCII


def test_grpc_over_tls_rows_exact() -> None:
    """grpc-go with credentials.NewTLS at both ends (HTTP/2 by ALPN), both grpc-go versions: one row
    per call from each end, protocol 'grpc', encrypted, grpc_status and exact message bytes."""
    if not gobuild.go_available():
        pytest.skip("no go command")
    builds = gobuild_tls.grpc_builds()
    cap = Capture(go_tls=True)
    procs: list[subprocess.Popen] = []
    try:
        for build, grpc_version in (builds[0], builds[-1]):  # the old and the current grpc-go
            srv = spawn([str(build.bin("grpcapp")), "-mode", "streams-tls-server"], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True)
            procs.append(srv)
            addr = srv.stdout.readline().split()[1]  # type: ignore[union-attr]
            port = int(addr.rsplit(":", 1)[1])
            cap.wait_traced(srv.pid)
            cli = spawn([str(build.bin("grpcapp")), "-mode", "streams-tls-client", "-addr", addr],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
            procs.append(cli)
            assert cli.stdout.readline().strip() == "READY"  # type: ignore[union-attr]
            cap.wait_traced(cli.pid)
            for i, (line, _, code, printed, _, _) in enumerate(GRPC_TLS_CASES):
                md = [f"x-request-id: {build.id}-t{i}", f"authorization: {SECRET}"]
                if i == 1:
                    md.append(f"x-gray-version: {GRPC_HOSTILE}")
                cli.stdin.write("\t".join([line, *md]) + "\n")  # type: ignore[union-attr]
                out = cli.stdout.readline().split()  # type: ignore[union-attr]
                assert out == ["RESULT", str(code), str(printed)], (build.id, line[:20], out)
            info = gobuild.read_build_info(build.bin("grpcapp"))
            srows = cap.wait_rows(srv.pid, len(GRPC_TLS_CASES))
            crows = cap.wait_rows(cli.pid, len(GRPC_TLS_CASES))
            assert len(srows) == len(crows) == len(GRPC_TLS_CASES), (build.id, len(srows), len(crows))
            for i, (_, full, code, _, req, resp) in enumerate(GRPC_TLS_CASES):
                for side, row, pid in (("server", srows[i], srv.pid), ("client", crows[i], cli.pid)):
                    want = {
                        "side": side, "pid": pid, "protocol": "grpc", "encrypted": 1, "method": "POST",
                        "path": full, "route": full, "route_source": "grpc", "status": 200, "grpc_status": str(code),
                        "request_bytes": req, "response_bytes": resp, "x_request_id": f"{build.id}-t{i}",
                        "x_gray_version": GRPC_HOSTILE if i == 1 else "", "host_header": f"127.0.0.1:{port}",
                        "upstream_host": "" if side == "server" else f"127.0.0.1:{port}", "end_reason": "end",
                        "service": "grpcapp", "service_version": gobuild.service_version(info),
                        "go_version": info["go"], "family": 4, "local_addr": "127.0.0.1", "remote_addr": "127.0.0.1",
                        "head_truncated": 0, "parent_request_id": 0,
                    }
                    assert {k: row[k] for k in want} == want, (build.id, grpc_version, side, full, code)
                    assert row["user_agent"].startswith(f"grpc-go/{grpc_version[1:]}"), row["user_agent"]
                    assert "s3cr3t" not in json.dumps(row, ensure_ascii=False)
                    assert 0 < row["duration_ns"] < 5_000_000_000
                s, c = srows[i], crows[i]
                assert (s["local_port"], s["remote_port"], c["remote_port"]) == (port, c["local_port"], port)
            for p in procs[-2:]:
                p.kill()
                p.wait()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        cap.close()
    c = cap.src.counters()
    assert c["h2_lost"] == 0 and c["h2_hpack_errors"] == 0 and c["lost_ringbuf"] == 0, c
    assert c["tls_chunks"] >= 2, c  # the 30 KB Collect call went on past its first record, on both builds
