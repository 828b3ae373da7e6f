"""Reads Go binaries in a child process with resource limits, for agent/go_binary.py.

The files are other users' (agent/go_binary.py bounds what it reads, but pyelftools' own loops and
allocations are out of its reach): the child caps its address space (RLIMIT_AS) and CPU time per file
(RLIMIT_CPU), and the parent waits at most ``timeout_s`` for an answer, then kills the child and
starts a new one on the next request. Every outcome is a GoBinary or NotGo/Rejected, never a hang.

Protocol: one JSON line per request (``{"path": ..., "want_offsets": ...}``) and per answer
(``{"ok": GoBinary fields}`` | ``{"not_go": msg}`` | ``{"rejected": reason, "msg": msg}`` |
``{"oserror": errno, "msg": msg}``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent import go_binary
from agent.go_binary import GoBinary, NotGo, Rejected

log = logging.getLogger(__name__)
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]

MEMORY_BYTES = 1 << 30  # the child's address space: reading a plain Go test server with its DWARF peaked at 77 MB
CPU_S_PER_FILE = 20
TIMEOUT_S = 10.0  # wall clock per file; above go_binary.BUDGET_S, so its own budget answers first
STARTUP_TIMEOUT_S = 10.0


class InspectWorker:
    def __init__(self, timeout_s: float = TIMEOUT_S, memory_bytes: int = MEMORY_BYTES) -> None:
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.restarts = 0
        self._failed_starts = 0
        self.broken = False  # the child cannot even start: read in this process (bounded, no rlimits)

    def _start(self) -> subprocess.Popen[bytes] | None:
        """The child, started if needed and answering; None (and ``broken`` after a few tries) if it
        cannot start at all, which hostile files cannot cause: it must answer a probe first."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        # -I: no current directory or PYTHON* variables on the child's path (the agent runs as root,
        # maybe from a folder others can write); the package comes from where this one was loaded.
        code = f"import sys; sys.path.insert(0, {str(_PACKAGE_ROOT)!r}); " \
               f"from agent.inspect_worker import _serve; _serve({self.memory_bytes})"
        proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, close_fds=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(b'{"path": "", "want_offsets": false}\n')
            proc.stdin.flush()
            ok = bool(_readline(proc.stdout.fileno(), time.monotonic() + STARTUP_TIMEOUT_S))
        except OSError:
            ok = False
        if not ok:
            proc.kill()
            proc.wait()
            self._failed_starts += 1
            if self._failed_starts >= 3:
                self.broken = True
                log.error("the Go binary reader process does not start (%s); reading in the agent itself, "
                          "with its own bounds but no resource limits", sys.executable)
            return None
        self._failed_starts = 0
        self._proc = proc
        return proc

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
            self.restarts += 1

    def warm(self) -> None:
        """Start the child now, so the first executable to read does not wait for it (~70 ms here)."""
        if not self.broken:
            with self._lock:
                self._start()

    def parse(self, path: str, want_offsets: bool) -> GoBinary:
        """go_binary.parse_file(path, want_offsets), in the child (a go_binary.Parser)."""
        if self.broken:
            return go_binary.parse_file(path, want_offsets)
        with self._lock:
            proc = self._start()
            if proc is None:
                if self.broken:
                    return go_binary.parse_file(path, want_offsets)
                raise Rejected("worker_died", "the reader process did not start")
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps({"path": path, "want_offsets": want_offsets}).encode() + b"\n")
                proc.stdin.flush()
            except OSError:
                self._kill()
                raise Rejected("worker_died", "the reader process was gone") from None
            line = _readline(proc.stdout.fileno(), time.monotonic() + self.timeout_s)
            if line is None:
                self._kill()
                raise Rejected("timeout", f"no answer within {self.timeout_s:.0f}s; reader killed")
            if not line:
                self._kill()  # killed by a limit (SIGXCPU, SIGKILL) or crashed
                raise Rejected("worker_died", "the reader process died on this file")
        answer = json.loads(line)
        if "ok" in answer:
            return GoBinary(**answer["ok"])
        if "not_go" in answer:
            raise NotGo(answer["not_go"])
        if "oserror" in answer:
            raise OSError(answer["oserror"], answer["msg"])
        raise Rejected(answer.get("rejected", "malformed"), answer.get("msg", ""))

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
                self._proc = None


def _readline(fd: int, deadline: float) -> bytes | None:
    """One line from ``fd`` by ``deadline`` (None: timed out; b"": end of file)."""
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b""
        buf += chunk
    return buf


def _serve(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    for line in sys.stdin.buffer:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = int(usage.ru_utime + usage.ru_stime)
        resource.setrlimit(resource.RLIMIT_CPU, (used + CPU_S_PER_FILE, resource.RLIM_INFINITY))
        req = json.loads(line)
        try:
            answer: dict = {"ok": dataclasses.asdict(go_binary.parse_file(req["path"], bool(req["want_offsets"])))}
        except Rejected as e:
            answer = {"rejected": e.reason, "msg": e.detail}
        except NotGo as e:
            answer = {"not_go": str(e)}
        except OSError as e:
            answer = {"oserror": e.errno or 0, "msg": str(e)}
        except MemoryError:
            answer = {"rejected": "memory_limit", "msg": "the reader ran out of its memory bound"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else MEMORY_BYTES)
