"""Builds the Go test programs in tests/go with several Go toolchains, plain and stripped.

Toolchains come through the go command (``GOTOOLCHAIN=go1.x.y``, fetched once into the module cache);
builds are cached outside the work tree, keyed by toolchain, variant and a hash of the Go sources, so
a second run only checks that the binaries exist.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

GO_SRC = Path(__file__).resolve().parent / "go"
CACHE = Path(os.environ.get("BLINDSPOT_GO_CACHE", Path.home() / ".cache" / "blindspot" / "gobuild"))
# Spans the Go 1.21..1.26 range the issue asks for; override with BLINDSPOT_GO_VERSIONS="go1.x.y ...".
GO_VERSIONS = os.environ.get("BLINDSPOT_GO_VERSIONS", "go1.21.13 go1.22.12 go1.23.12 go1.26.8").split()
VARIANTS = {"plain": [], "stripped": ["-ldflags=-s -w"]}
PROGRAMS = ("server", "client", "router")


@dataclass(frozen=True)
class GoBuild:
    go: str  # toolchain, e.g. go1.23.12
    variant: str  # plain | stripped
    dir: Path

    def bin(self, program: str) -> Path:
        return self.dir / program

    @property
    def id(self) -> str:
        return f"{self.go}-{self.variant}"


def _src_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(GO_SRC.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(GO_SRC).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def go_available() -> bool:
    return shutil.which("go") is not None


def build(go: str, variant: str) -> GoBuild:
    out = CACHE / f"{go}-{variant}-{_src_hash()}"
    b = GoBuild(go, variant, out)
    if all(b.bin(p).exists() for p in PROGRAMS):
        return b
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = dict(os.environ, GOTOOLCHAIN=go, CGO_ENABLED="0", GOFLAGS="-mod=mod")
    for p in PROGRAMS:
        subprocess.run(
            ["go", "build", *VARIANTS[variant], "-o", str(tmp / p), f"./{p}"],
            cwd=GO_SRC, env=env, check=True, capture_output=True,
        )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return b


def all_builds() -> list[GoBuild]:
    return [build(go, v) for go in GO_VERSIONS for v in VARIANTS]


if __name__ == "__main__":
    for b in all_builds():
        print(b.id, b.dir)
