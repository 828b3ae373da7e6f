"""A source of the agent in the test's own process, polled on a thread of its own as the pipeline does;
the http_requests rows it emits kept, as records, for the test to read."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from contract.records import HTTP_REQUEST

Emit = Callable[[str, pa.Table], None]


class Capture:
    """``make(emit)`` builds the source. Each turn polls it with ``poll_ms`` then pauses ``pause_s``;
    ``wait_s`` is how long ``wait_rows`` waits by default; ``check_schema`` asserts every table emitted
    is exactly the http_requests schema."""

    def __init__(self, make: Callable[[Emit], Any], *, poll_ms: int = 0, pause_s: float = 0.0,
                 wait_s: float = 15.0, check_schema: bool = False) -> None:
        self.rows: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.poll_ms, self.pause_s, self.wait_s, self.check_schema = poll_ms, pause_s, wait_s, check_schema
        self.src = make(self._emit)
        self.src.open()
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _emit(self, kind: str, table: pa.Table) -> None:
        if self.check_schema:
            assert table.schema.equals(HTTP_REQUEST.arrow_schema)
        rows = HTTP_REQUEST.to_rows(table)
        with self.lock:
            self.rows.extend(rows)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.src.poll(self.poll_ms)
            if self.pause_s:
                time.sleep(self.pause_s)

    def wait_traced(self, pid: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.src.traced(pid):
            assert time.monotonic() < deadline, f"pid {pid} never traced"
            time.sleep(0.02)

    def wait_rows(self, pred: Callable[[dict[str, Any]], bool], n: int,
                  timeout: float | None = None) -> list[dict[str, Any]]:
        """The rows ``pred`` picks, once there are ``n`` of them or the wait is over."""
        deadline = time.monotonic() + (self.wait_s if timeout is None else timeout)
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
