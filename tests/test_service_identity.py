"""The service version the agent reports, against what the go tool itself reads from the binary.

The Go test programs are built with -buildvcs=false (tests/gobuild.py) so that no test depends on the
git state of the checkout it runs in. This test builds one program on purpose inside a git repository
of its own, so the VCS path of the rule is exercised, and deterministically.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent import go_binary
from agent.go_procs import service_identity
from tests import gobuild

pytestmark = pytest.mark.go

MAIN = 'package main\n\nimport "net/http"\n\nfunc main() { _ = http.ListenAndServe("127.0.0.1:0", nil) }\n'


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture(scope="module")
def stamped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    if not gobuild.go_available():
        pytest.skip("no go command")
    repo = tmp_path_factory.mktemp("vcsrepo")
    (repo / "go.mod").write_text("module example.test/svc\n\ngo 1.21\n")
    (repo / "main.go").write_text(MAIN)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    exe = repo / "svc"
    subprocess.run(["go", "build", "-o", str(exe), "."], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "GOFLAGS": "-buildvcs=true", "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"})
    return exe, _git(repo, "rev-parse", "HEAD")


def test_version_is_the_vcs_revision_the_binary_carries(stamped: tuple[Path, str]) -> None:
    exe, head = stamped
    info = gobuild.read_build_info(exe)
    assert info["vcs.revision"] == head
    want = gobuild.service_version(info)  # go1.24+: a pseudo-version ending in the revision; older: it
    assert want.endswith(head[:12])
    binary = go_binary.inspect(str(exe))
    assert service_identity(binary, {}, "svc") == ("svc", want)
    # The process's own declaration wins over the build info.
    assert service_identity(binary, {b"SERVICE_VERSION": b"v7"}, "svc") == ("svc", "v7")
    assert service_identity(binary, {b"OTEL_RESOURCE_ATTRIBUTES": b"a=b, service.version = v8"}, "svc")[1] == "v8"


def test_test_programs_carry_no_checkout_state() -> None:
    """What made issue 8: a program built inside a checkout reported that checkout's revision."""
    if not gobuild.go_available():
        pytest.skip("no go command")
    b = gobuild.build(gobuild.GO_VERSIONS[-1], "stripped")
    info = b.build_info("server")
    assert "vcs.revision" not in info and b.service_version("server") == "(devel)"
    binary = go_binary.inspect(str(b.bin("server")))
    assert service_identity(binary, {}, "server")[1] == b.service_version("server")
