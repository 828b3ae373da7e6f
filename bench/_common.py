"""Helpers shared by the bench scripts: building Go load tools, running `blindspot run`, CPU time."""

from __future__ import annotations

import json
import os
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
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.rows("SELECT count() AS n FROM blindspot.pipeline_counters")[0]["n"] is not None:
                    break
            except Exception:  # not up yet: no socket, or tables not created
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.log.read_text()) from None
                time.sleep(0.5)

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        out = query_via_socket(socket_path(self.data_dir), sql, FORMATS["json"], params)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
