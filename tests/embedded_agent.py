"""`blindspot run` as a user runs it, for tests and benchmarks: a subprocess on its own data folder,
queried through its socket."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from blindspot.query_server import FORMATS, QueryError, query_via_socket, socket_path
from tests.procs import spawn

REPO = Path(__file__).resolve().parents[1]
BLINDSPOT = Path(sys.executable).with_name("blindspot")


class Agent:
    """A running `blindspot run` and SQL against its data."""

    def __init__(self, data_dir: Path, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.data_dir = data_dir
        self.proc = proc
        self.log_path = log_path

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        out = query_via_socket(socket_path(self.data_dir), sql, FORMATS["json"], params)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_rows(
        self, sql: str, ready: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 15.0, **params: Any
    ) -> list[dict[str, Any]]:
        """Poll until ``ready(rows)``; return the last rows either way (the test asserts on them)."""
        deadline = time.monotonic() + timeout_s
        rows = self.rows(sql, **params)
        while not ready(rows) and time.monotonic() < deadline:
            time.sleep(0.2)
            rows = self.rows(sql, **params)
        return rows

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _canary_seen(agent: Agent, port: int) -> bool:
    try:
        return bool(agent.rows(
            "SELECT 1 FROM blindspot.tcp_connections WHERE local_port = {p:UInt16} LIMIT 1", p=port))
    except (FileNotFoundError, QueryError):
        return False


@contextlib.contextmanager
def running_agent(data_dir: Path, snapshot_interval_s: float = 1.0, **env_overrides: str | None) -> Iterator[Agent]:
    """`blindspot run` on ``data_dir`` (open-connection snapshots every ``snapshot_interval_s``, counter
    reports every 2 s and batches cut every 0.2 s unless overridden; None removes a variable, e.g. to
    run on the product's default), ready once a canary connection made after start-up is in the
    table: the tables exist before the BPF programs are compiled and attached."""
    log_path = data_dir.parent / f"{data_dir.name}.log"
    env = {**os.environ, "BLINDSPOT_PIPELINE_COUNTERS_INTERVAL_S": "2", "BLINDSPOT_PIPELINE_BATCH_MAX_AGE_S": "0.2"}
    env = {k: v for k, v in {**env, **env_overrides}.items() if v is not None}
    with log_path.open("wb") as log:
        proc = spawn(
            [str(BLINDSPOT), "run", "--data-dir", str(data_dir), "--snapshot-interval", str(snapshot_interval_s),
             "--no-live", "--metrics-address", "127.0.0.1:0", "-v"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
    a = Agent(data_dir, proc, log_path)
    deadline = time.monotonic() + 90
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        while not _canary_seen(a, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"blindspot run did not become ready:\n{a.log()}")
            c = socket.create_connection(("127.0.0.1", port))
            s, _ = srv.accept()
            c.close()
            s.close()
            time.sleep(0.5)
        yield a
    finally:
        srv.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
