"""Builds the Go TLS/HTTP2 test programs (tests/go_tls, a module of their own) with the toolchains and
variants of tests/gobuild.py, cached the same way (keyed by toolchain, flags and sources)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from tests import capture
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


class Capture(capture.Capture):
    """A GoTlsSource in this process (capture.Capture). ``settings``: HttpConfig fields (go_tls / go_h2c,
    pids, ...) over the tests' defaults."""

    def __init__(self, **settings: Any) -> None:
        from agent.config import HttpConfig
        from agent.go_tls_source import GoTlsSource

        cfg = HttpConfig(**{"exe_prefix": str(CACHE), "quiet_s": 0.3, **settings})
        super().__init__(lambda emit: GoTlsSource(cfg, emit, host=socket.gethostname()), pause_s=0.05,
                         check_schema=True)

    def wait_rows(self, pid: int, n: int, timeout: float | None = None) -> list[dict[str, Any]]:  # type: ignore[override]
        """Process ``pid``'s rows in time order."""
        return sorted(super().wait_rows(lambda r: r["pid"] == pid, n, timeout), key=lambda r: r["time"])
