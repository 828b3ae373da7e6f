"""Builds the Go TLS/HTTP2 test programs (tests/go_tls, a module of their own) with the toolchains and
variants of tests/gobuild.py, cached the same way (keyed by toolchain, flags and sources)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from contract.records import HTTP_REQUEST
from tests.gobuild import CACHE, GO_ENV, GO_VERSIONS, VARIANTS, GoBuild

GO_SRC = Path(__file__).resolve().parent / "go_tls"
PROGRAMS = ("tlsapp",)


def _key(go: str, variant: str) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(repr((go, VARIANTS[variant], sorted(GO_ENV.items()))).encode())
    for p in sorted(GO_SRC.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(GO_SRC).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def build(go: str, variant: str) -> GoBuild:
    out = CACHE / f"tls-{go}-{variant}-{_key(go, variant)}"
    b = GoBuild(go, variant, out)
    if all(b.bin(p).exists() for p in PROGRAMS):
        return b
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {**os.environ, "GOTOOLCHAIN": go, **GO_ENV}
    try:
        for p in PROGRAMS:
            subprocess.run(["go", "build", *VARIANTS[variant], "-o", str(tmp / p), f"./{p}"],
                           cwd=GO_SRC, env=env, check=True, capture_output=True)
        if not all(b.bin(p).exists() for p in PROGRAMS):
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return b


def all_builds() -> list[GoBuild]:
    return [build(go, v) for go in GO_VERSIONS for v in VARIANTS]


if __name__ == "__main__":
    for b in all_builds():
        print(b.id, b.dir)


# gRPC / h2c programs (tests/go_grpc): one source, two grpc-go versions (an old one and a current
# one, each with its go.mod/go.sum under mods/), built with the toolchains each supports.
GRPC_SRC = Path(__file__).resolve().parent / "go_grpc"
GRPC_MATRIX = [("go1.21.13", "v1.56.3"), ("go1.22.12", "v1.67.1"), ("go1.23.12", "v1.56.3"), ("go1.26.8", "v1.67.1")]


def _grpc_key(go: str, variant: str, grpc: str) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(repr((go, grpc, VARIANTS[variant], sorted(GO_ENV.items()))).encode())
    for p in sorted(GRPC_SRC.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(GRPC_SRC).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def build_grpc(go: str, variant: str, grpc: str) -> GoBuild:
    out = CACHE / f"grpc-{go}-{grpc}-{variant}-{_grpc_key(go, variant, grpc)}"
    b = GoBuild(go, variant, out)
    if b.bin("grpcapp").exists():
        return b
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "src").mkdir(parents=True)
    shutil.copytree(GRPC_SRC / "grpcapp", tmp / "src" / "grpcapp")
    for f in ("go.mod", "go.sum"):
        shutil.copy(GRPC_SRC / "mods" / grpc / f, tmp / "src" / f)
    env = {**os.environ, "GOTOOLCHAIN": go, **GO_ENV}
    try:
        subprocess.run(["go", "build", *VARIANTS[variant], "-o", str(tmp / "grpcapp"), "./grpcapp"],
                       cwd=tmp / "src", env=env, check=True, capture_output=True)
        shutil.rmtree(tmp / "src")
        if not b.bin("grpcapp").exists():
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return b


def grpc_builds() -> list[tuple[GoBuild, str]]:
    return [(build_grpc(go, v, grpc), grpc) for go, grpc in GRPC_MATRIX for v in VARIANTS]


class Capture:
    """A GoTlsSource polled on a thread of its own; the rows it emits kept for the test to read.
    ``settings``: HttpConfig fields (go_tls / go_h2c, pids, ...) over the tests' defaults."""

    def __init__(self, **settings: Any) -> None:
        from agent.config import HttpConfig
        from agent.go_tls_source import GoTlsSource

        self.rows: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        cfg = HttpConfig(**{"exe_prefix": str(CACHE), "quiet_s": 0.3, **settings})
        self.src = GoTlsSource(cfg, self._emit, host=socket.gethostname())
        self.src.open()
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _emit(self, kind: str, table: pa.Table) -> None:
        assert table.schema.equals(HTTP_REQUEST.arrow_schema)
        with self.lock:
            self.rows.extend(HTTP_REQUEST.to_rows(table))

    def _run(self) -> None:
        while not self.stop.is_set():
            self.src.poll(0)
            time.sleep(0.05)

    def wait_traced(self, pid: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.src.traced(pid):
            assert time.monotonic() < deadline, f"pid {pid} never traced"
            time.sleep(0.02)

    def wait_rows(self, pid: int, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = [r for r in self.rows if r["pid"] == pid]
            if len(got) >= n or time.monotonic() > deadline:
                return sorted(got, key=lambda r: r["time"])
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.t.join()
        self.src.close()
