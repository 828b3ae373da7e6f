"""Requests that used to stop the agent, or leak secrets into rows, sent to a real Go server traced by
the real agent (`blindspot run`, real kernel): request lines longer than the 1 KiB capture (the
crash of issue 9), an absolute-form target with userinfo, a JWT in the path. The agent must still be
running afterwards and every row must be there, exact where it can be, honest where it cannot
(head_truncated = 1 when the capture cut the head), and free of the secrets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from agent.http_parse import MAX_PATH
from tests import gobuild
from tests.embedded_agent import Agent, running_agent
from tests.procs import spawn

pytestmark = [pytest.mark.root]

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
       "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
CAPTURE = 1024  # BS_HTTP_HEAD_MAX: bytes of a request head the kernel side keeps


def _request(port: int, target: str, rid: str) -> int:
    """One request on its own connection (closed after it: the exchange ends at once); its status."""
    head = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: bs-hostile/1\r\n"
            f"X-Request-ID: {rid}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    return int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/1.") else 0


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, int, int]]:
    if not gobuild.go_available():
        pytest.skip("no go toolchain")
    binary = gobuild.build(gobuild.GO_VERSIONS[-1], "plain").bin("server")  # cached (tests/gobuild.py)
    with running_agent(tmp_path_factory.mktemp("hostile") / "data") as agent:
        server = spawn([str(binary)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                       env={**os.environ, "OTEL_SERVICE_NAME": "bs-hostile"})
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline().rsplit(":", 1)[1])
            # The agent finds the new Go process by itself: send until its rows arrive.
            q = "SELECT count() AS n FROM blindspot.http_requests WHERE pid = {p:UInt32}"
            for i in range(60):
                _request(port, "/hello", f"warm-{i}")
                if int(agent.wait_rows(q, lambda r: int(r[0]["n"]) > 0, timeout_s=1, p=server.pid)[0]["n"]):
                    break
            yield agent, port, server.pid
        finally:
            server.kill()
            server.wait(timeout=10)


def test_hostile_requests_leave_the_agent_running_and_rows_honest(traced: tuple[Agent, int, int]) -> None:
    agent, port, pid = traced
    long_query = "/hello?q=" + "a" * 1100  # request line ~1,130 bytes
    long_path = "/users/" + "b" * 3000  # request line ~3,030 bytes
    sent = {
        "long-query": (long_query, 200),
        "long-path": (long_path, 200),
        "absolute": (f"HTTP://user:pw@127.0.0.1:{port}/hello", 200),
        "jwt": (f"/reset/{JWT}", 404),
        "normal": ("/users/42?token=abc", 200),  # after all of them
    }
    for rid, (target, status) in sent.items():
        assert _request(port, target, rid) == status, rid
    rows: list[dict[str, Any]] = agent.wait_rows(
        "SELECT * FROM blindspot.http_requests WHERE pid = {p:UInt32} AND x_request_id NOT LIKE 'warm-%' "
        "ORDER BY time", lambda r: len(r) >= len(sent), timeout_s=30, p=pid)
    assert agent.proc.poll() is None, agent.log()[-3000:]
    assert len(rows) == len(sent), (rows, agent.log()[-3000:])
    # The long ones lost their X-Request-ID with the rest of the head: tell them apart by order.
    long_q, long_p, absolute, jwt, normal = rows

    assert {k: normal[k] for k in ("method", "path", "route", "status", "x_request_id", "user_agent",
                                   "head_truncated", "side", "service")} == {
        "method": "GET", "path": "/users/42", "route": "/users/{id}", "status": 200, "x_request_id": "normal",
        "user_agent": "bs-hostile/1", "head_truncated": 0, "side": "server", "service": "bs-hostile"}

    # Cut by the capture: method and path as far as they came, honestly marked.
    assert (long_q["method"], long_q["path"], long_q["status"], long_q["head_truncated"]) == ("GET", "/hello", 200, 1)
    cut_path = long_path[: CAPTURE - len("GET ")]
    assert len(cut_path.encode()) <= MAX_PATH
    assert (long_p["method"], long_p["path"], long_p["status"], long_p["head_truncated"]) == ("GET", cut_path, 200, 1)
    assert long_q["x_request_id"] == long_p["x_request_id"] == ""  # beyond the capture

    assert (absolute["path"], absolute["route"], absolute["x_request_id"]) == ("/hello", "/hello", "absolute")
    assert (jwt["path"], jwt["route"], jwt["status"], jwt["x_request_id"]) == (
        "/reset/{token}", "/reset/{token}", 404, "jwt")
    stored = json.dumps(rows)
    assert "user:pw" not in stored and "pw@" not in stored and JWT not in stored and JWT[:36] not in stored

    # Decoder rejections are reported (none here: every record decoded).
    counters = agent.wait_rows("SELECT sum(value) AS v, count() AS n FROM blindspot.pipeline_counters "
                               "WHERE counter = 'rejected'", lambda r: int(r[0]["n"]) > 0, timeout_s=10)
    assert int(counters[0]["n"]) > 0 and int(counters[0]["v"]) == 0
    assert agent.proc.poll() is None
