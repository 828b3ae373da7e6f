"""Helpers shared by the bench scripts: building Go load tools, running `blindspot run`, CPU time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from blindspot.query_server import FORMATS, query_via_socket, socket_path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("BLINDSPOT_CACHE", "/var/cache/blindspot"))
BLINDSPOT = Path(sys.executable).with_name("blindspot")


def build_go(src: Path, name: str) -> Path:
    out = CACHE / "bench" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=src, check=True)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (clock ticks -> seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EmbeddedAgent:
    """`blindspot run` in a temporary data folder, queried through its socket."""

    def __init__(self, **env: str) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="blindspot-bench-"))
        self.log = self.data_dir.parent / (self.data_dir.name + ".log")
        self.proc = subprocess.Popen(
            [str(BLINDSPOT), "run", "--data-dir", str(self.data_dir), "--no-live", "--metrics-address", "off"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **env},
        )
        # Ready once a connection made after start-up is in the table: tables exist before the BPF
        # programs are compiled and attached.
        deadline = time.monotonic() + 120
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with srv:
            while not self._seen(port):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.log.read_text())
                socket.create_connection(("127.0.0.1", port)).close()
                srv.accept()[0].close()
                time.sleep(0.5)

    def _seen(self, port: int) -> bool:
        try:
            return bool(self.rows("SELECT 1 FROM blindspot.tcp_connections WHERE local_port = {p:UInt16} LIMIT 1",
                                  p=port))
        except Exception:  # not up yet: no socket, or tables not created
            return False

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        out = query_via_socket(socket_path(self.data_dir), sql, FORMATS["json"], params)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
