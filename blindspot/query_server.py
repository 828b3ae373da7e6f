"""SQL over a Unix socket, so other processes can query a chDB folder that this process owns.

chDB locks its data folder per process. ``blindspot run`` owns the folder and serves
``<data-dir>/query.sock`` (mode 0600: the same user only); ``blindspot query`` sends SQL there, and
opens the folder itself only when nobody owns it.

Protocol, one query per connection: the client sends a JSON header line
``{"sql": "...", "format": "...", "params": {"port": 80}}`` (params fill ``{port:UInt16}``); the
server answers a JSON line ``{"ok": true}`` or
``{"ok": false, "error": "..."}``, then (if ok) the result in that ClickHouse output format until EOF.

Before each query the server calls ``before_query`` (``blindspot run``: the pipeline's
``flush_pending``), so a query sees the records the agent still held in its batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path

from ingest.clickhouse_sink.service import ClickHouseService

log = logging.getLogger(__name__)
SOCKET_NAME = "query.sock"
MAX_SQL_BYTES = 1 << 20
READ_TIMEOUT_S = 10.0  # a client has this long to send its query line (and per send of the answer)
MAX_CONNECTIONS = 8  # served at once; more are answered "busy" at once, never given a thread
FORMATS = {"table": "PrettyCompactMonoBlock", "csv": "CSVWithNames", "json": "JSONEachRow", "tsv": "TSVWithNames"}


class QueryError(RuntimeError):
    """The server answered with an error, or nobody answered."""


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / SOCKET_NAME


class _Handler(socketserver.StreamRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT_S  # socketserver sets it on the connection: an idle client cannot hold a thread

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_SQL_BYTES + 1)
        except OSError:  # timed out or gone: nothing to answer
            return
        if not line:
            return
        try:
            req = json.loads(line)
            sql, fmt = str(req["sql"]), str(req.get("format", "PrettyCompactMonoBlock"))
            params = req.get("params") or None
            if fmt not in FORMATS.values():
                raise ValueError(f"unsupported format {fmt!r}")
            if self.server.before_query is not None:
                self.server.before_query()
            body = self.server.service.query_text(sql, fmt, params)
        except Exception as e:
            answer = json.dumps({"ok": False, "error": str(e)}).encode() + b"\n"
            body = b""
        else:
            answer = b'{"ok": true}\n'
        with contextlib.suppress(OSError):  # a client that left (or stopped reading past the timeout)
            self.wfile.write(answer)
            self.wfile.write(body)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 16

    def __init__(self, path: Path, service: ClickHouseService) -> None:
        self.service = service
        self.before_query: Callable[[], object] | None = None
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0
        super().__init__(str(path), _Handler)

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            with contextlib.suppress(OSError):
                request.setblocking(False)  # never wait on a client that does not read
                request.send(json.dumps({"ok": False, "error": f"busy: {MAX_CONNECTIONS} queries running; "
                                         "try again"}).encode() + b"\n")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        log.warning("query socket: a connection failed", exc_info=True)


class QueryServer:
    def __init__(self, data_dir: str | os.PathLike[str], service: ClickHouseService) -> None:
        self.path = socket_path(data_dir)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale socket from a crashed run; the chDB lock proves we own the folder
        old = os.umask(0o177)
        try:
            self._server = _Server(self.path, service)
        finally:
            os.umask(old)
        self._thread = threading.Thread(target=self._server.serve_forever, name="query-server", daemon=True)

    def start(self) -> QueryServer:
        self._thread.start()
        return self

    def call_before_each_query(self, fn: Callable[[], object]) -> None:
        self._server.before_query = fn

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def query_via_socket(
    path: Path, sql: str, fmt: str, params: dict[str, object] | None = None, timeout_s: float = 300.0
) -> bytes:
    """Run ``sql`` in the process that owns the folder. Raises FileNotFoundError if none does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError) as e:
            raise FileNotFoundError(str(path)) from e
        try:
            s.sendall(json.dumps({"sql": sql, "format": fmt, "params": params or {}}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before reading (busy): the answer is still there to read
        f = s.makefile("rb")
        header = json.loads(f.readline() or b'{"ok": false, "error": "no answer"}')
        if not header.get("ok"):
            raise QueryError(header.get("error", "unknown error"))
        return f.read()
