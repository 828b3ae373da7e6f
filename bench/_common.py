"""Helpers shared by the bench scripts: building Go load tools, CPU time. (`blindspot run` itself is
started by tests/embedded_agent.py, shared with the tests.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("BLINDSPOT_CACHE", "/var/cache/blindspot"))


def build_go(src: Path, name: str) -> Path:
    out = CACHE / "bench" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=src, check=True)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (clock ticks -> seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
