"""Builds the Go test programs in tests/go with several Go toolchains, plain and stripped.

Toolchains come through the go command (``GOTOOLCHAIN=go1.x.y``, fetched once into the module cache).
Builds are deterministic on purpose: ``-buildvcs=false``, so a binary does not carry the revision of
whatever checkout it was built in (the agent reports ``vcs.revision`` as the service version, and a
test must not pass or fail with the git state of the machine). Tests still take their expectations
from the binary itself: :meth:`GoBuild.service_version` reads the build info with ``go version -m``
(the go tool's reader, not ours) and applies the agent's documented rule.

Builds are cached outside the work tree, keyed by everything that shapes the output: the toolchain,
the variant's flags, the target platform, the Go sources and this file's own recipe. A second run only
checks that the binaries exist.
"""

from __future__ import annotations

import functools
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
PROGRAMS = ("server", "client", "router", "gray")
# GOFLAGS from the environment (or a go env file) would otherwise change the build behind our back.
GO_ENV = {"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false", "GOOS": "linux", "GOARCH": "amd64"}


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

    def build_info(self, program: str = "server") -> dict[str, str]:
        """The binary's build info as ``go version -m`` prints it: ``go``, ``path``, ``mod`` (the main
        module's version) and every ``build`` setting (``vcs.revision``, ...)."""
        return read_build_info(self.bin(program))

    def service_version(self, program: str = "server") -> str:
        """The version the agent must report for ``program`` run without SERVICE_VERSION: the main
        module's version, else the VCS revision (12 characters), else "(devel)"."""
        return service_version(self.build_info(program))


def service_version(info: dict[str, str]) -> str:
    """The agent's documented rule over ``go version -m`` output: the main module's version (Go 1.24+
    stamps a pseudo-version from the VCS), else the VCS revision's first 12 characters, else "(devel)"."""
    v = info.get("mod", "")
    if v in ("", "(devel)"):
        v = info.get("vcs.revision", "")[:12] or v
    return v


@functools.cache
def read_build_info(binary: Path) -> dict[str, str]:
    out = subprocess.run(["go", "version", "-m", str(binary)], check=True, capture_output=True, text=True,
                         env={**os.environ, "GOTOOLCHAIN": "local"}).stdout
    info: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        f = line.strip().split("\t")
        if f[0] in ("path", "mod") and len(f) >= 3:
            info[f[0]] = f[2]
        elif f[0] == "path" and len(f) == 2:
            info["path"] = f[1]
        elif f[0] == "build" and len(f) >= 2:
            k, _, v = f[1].partition("=")
            info[k] = v
    info["go"] = out.split(":", 1)[1].strip().split()[0] if ":" in out else ""
    return info


def _key(go: str, variant: str) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())  # the recipe: flags, environment, programs
    h.update(repr((go, VARIANTS[variant], sorted(GO_ENV.items()))).encode())
    for p in sorted(GO_SRC.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(GO_SRC).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def go_available() -> bool:
    return shutil.which("go") is not None


def build(go: str, variant: str) -> GoBuild:
    out = CACHE / f"{go}-{variant}-{_key(go, variant)}"
    b = GoBuild(go, variant, out)
    if all(b.bin(p).exists() for p in PROGRAMS):
        return b
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # concurrent test runs never share a half build
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {**os.environ, "GOTOOLCHAIN": go, **GO_ENV}
    try:
        for p in PROGRAMS:
            subprocess.run(
                ["go", "build", *VARIANTS[variant], "-o", str(tmp / p), f"./{p}"],
                cwd=GO_SRC, env=env, check=True, capture_output=True,
            )
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
        print(b.id, b.dir, b.service_version())
