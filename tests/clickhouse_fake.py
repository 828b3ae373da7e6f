"""A local endpoint that speaks enough of ClickHouse's HTTP interface for clickhouse-connect, and fails
on purpose: queries are answered by the embedded engine (chDB, in this process), inserts are taken
(rows counted) or failed the way a troubled server fails them."""

from __future__ import annotations

import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa

# mode -> (HTTP status, body) for inserts; "hang" sleeps past the client's timeout; "ok" takes them.
FAILURES = {
    "disk_full": (500, b"Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)"),
    "too_many_parts": (500, b"Code: 252. DB::Exception: Too many parts (3000). (TOO_MANY_PARTS)"),
    "unavailable": (503, b"Service Unavailable"),
    "bad_gateway": (502, b"<html>502 Bad Gateway</html>"),
    "bad_row": (500, b"Code: 27. DB::Exception: Cannot parse input: expected '\\t'. "
                     b"(CANNOT_PARSE_INPUT_ASSERTION_FAILED)"),
}


def _decompress(encoding: str, body: bytes) -> bytes:
    if encoding == "gzip":
        import gzip

        return gzip.decompress(body)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    raise ValueError(f"content encoding {encoding}")


class FakeClickHouse:
    def __init__(self) -> None:
        from chdb import session

        self.mode = "ok"
        self.inserted_rows = 0
        self.rows_by_table: dict[str, int] = {}
        self.hang_s = 3.0
        self.inserts = 0
        self.tokens: list[str] = []
        self._session = session.Session()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))  # param_x= is ""
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = params.get("query", "")
                if not query.lstrip().upper().startswith("INSERT"):
                    query = (query + " " + body.decode("utf-8", "replace")).strip()
                    qp = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
                    self._reply(*fake.run_query(query, qp))
                    return
                fake.inserts += 1
                table = query.split("INSERT INTO", 1)[1].split()[0].replace("`", "") if "INSERT INTO" in query else ""
                if fake.mode == "hang":  # takes the rows, then answers too late: a timeout mid-insert
                    fake.tokens.append(params.get("insert_deduplication_token", ""))
                    time.sleep(fake.hang_s)
                    return
                if fake.mode in FAILURES:
                    status, text = FAILURES[fake.mode]
                    code = text[6:].split(b".")[0].decode() if text.startswith(b"Code:") else None
                    self._reply(status, text, {"X-ClickHouse-Exception-Code": code} if code else {})
                    return
                enc = self.headers.get("Content-Encoding")
                if enc:
                    body = _decompress(enc, body)
                rows = pa.ipc.open_file(pa.BufferReader(body)).read_all().num_rows if body else 0  # FORMAT Arrow
                fake.inserted_rows += rows
                fake.rows_by_table[table] = fake.rows_by_table.get(table, 0) + rows
                fake.tokens.append(params.get("insert_deduplication_token", ""))
                self._reply(200, b"", {})

            def _reply(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def run_query(self, query: str, params: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        fmt = "TabSeparated"
        words = query.rsplit(None, 2)
        if len(words) == 3 and words[1].upper() == "FORMAT":
            query, fmt = query[: query.upper().rfind("FORMAT")], words[2]
        try:
            with self._lock:
                res = self._session.query(query, fmt, params=params or None)
            return 200, bytes(res.bytes()), {"X-ClickHouse-Format": fmt}
        except Exception as e:
            return 500, str(e).encode(), {}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._session.close()
