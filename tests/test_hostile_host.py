"""`blindspot run` on a host whose users try to stop it (issue 9), end to end on the real kernel:
listeners with hostile names started before the agent, a crafted Go-looking executable started after
it, and then an ordinary Go server whose requests must still be recorded. The agent's data folder is
private afterwards."""

from __future__ import annotations

import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests import gobuild, procs
from tests.embedded_agent import Agent, running_agent

pytestmark = [pytest.mark.root, pytest.mark.go]

# Process names a local user can choose (/proc/self/comm takes any bytes, 15 of them).
ODD_NAMES = {b"\xff\xfebad-utf8": "\ufffd\ufffdbad-utf8", b"[/]": "[/]", b"\x1b[31mred": "\x1b[31mred"}

LISTENER = r"""
import socket, sys
name = bytes.fromhex(sys.argv[1])
with open("/proc/self/comm", "wb") as f:
    f.write(name)
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.recv(16)
    c.close()
"""


def _nobits_buildinfo(src: Path, dst: Path) -> Path:
    """A copy of a Go server that still runs (the loader reads segments, not sections) but whose
    .go.buildinfo section header says NOBITS of 1 TiB: the reader must refuse it, not allocate it."""
    data = bytearray(src.read_bytes())
    with src.open("rb") as f:
        elf = ELFFile(f)
        shoff, entsize = elf["e_shoff"], elf["e_shentsize"]
        idx = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".go.buildinfo")
    struct.pack_into("<I", data, shoff + idx * entsize + 4, 8)  # sh_type = SHT_NOBITS
    struct.pack_into("<Q", data, shoff + idx * entsize + 32, 1 << 40)  # sh_size
    dst.write_bytes(data)
    dst.chmod(0o755)
    return dst


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, dict[str, int]]]:
    if not gobuild.go_available():
        pytest.skip("no go command")
    gobuild.build(gobuild.GO_VERSIONS[-1], "stripped")
    listeners, ports = [], {}
    try:
        for raw, decoded in ODD_NAMES.items():
            p = procs.spawn([sys.executable, "-c", LISTENER, raw.hex()], stdout=subprocess.PIPE, text=True)
            listeners.append(p)
            ports[decoded] = int(p.stdout.readline())  # type: ignore[union-attr]
        data = tmp_path_factory.mktemp("hostile") / "data"  # created by the agent
        with running_agent(data) as agent:
            yield agent, ports
    finally:
        for p in listeners:
            p.kill()
            p.wait()


def _connect(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"x")
        c.recv(1)


def test_odd_process_names_are_recorded_decoded(hostile: tuple[Agent, dict[str, int]]) -> None:
    agent, ports = hostile
    for port in ports.values():
        _connect(port)
    for name, port in ports.items():
        rows = agent.wait_rows(
            "SELECT comm FROM blindspot.tcp_connections WHERE local_port = {p:UInt16} AND role = 'server'",
            lambda r: bool(r), p=port)
        assert rows and {r["comm"] for r in rows} == {name}, (name, rows)
    assert agent.proc.poll() is None


def test_crafted_go_binary_is_refused_and_counted(hostile: tuple[Agent, dict[str, int]], tmp_path: Path) -> None:
    agent, _ = hostile
    build = gobuild.build(gobuild.GO_VERSIONS[-1], "stripped")
    crafted = _nobits_buildinfo(build.bin("server"), tmp_path / "crafted-server")
    started = []
    try:
        bad = procs.spawn([str(crafted)], stdout=subprocess.PIPE, text=True)
        started.append(bad)
        bad_port = int(bad.stdout.readline().rsplit(":", 1)[1])  # type: ignore[union-attr]
        with urllib.request.urlopen(f"http://127.0.0.1:{bad_port}/hello", timeout=5) as r:
            assert r.status == 200  # it runs: only its section headers lie
        # The agent lives on and still records an ordinary Go server started afterwards.
        good = procs.spawn([str(build.bin("server"))], stdout=subprocess.PIPE, text=True)
        started.append(good)
        port = int(good.stdout.readline().rsplit(":", 1)[1])  # type: ignore[union-attr]
        sql = ("SELECT count() AS n FROM blindspot.http_requests WHERE pid = {pid:UInt32} "
               "AND side = 'server' AND path = '/hello'")
        deadline = time.monotonic() + 30
        rows = [{"n": 0}]
        while rows[0]["n"] < 3 and time.monotonic() < deadline:
            # The agent attaches on the exec event: requests sent before that are not seen.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=5) as r:
                assert r.status == 200
            time.sleep(0.2)
            rows = agent.rows(sql, pid=good.pid)
        assert rows[0]["n"] >= 3, agent.log()
        counted = agent.wait_rows(
            "SELECT sum(value) AS n FROM blindspot.pipeline_counters WHERE counter = 'go_binary_rejected:nobits'",
            lambda r: bool(r) and int(r[0]["n"] or 0) >= 1, timeout_s=20)
        assert int(counted[0]["n"]) >= 1, agent.log()
        assert agent.rows("SELECT count() AS n FROM blindspot.http_requests WHERE pid = {pid:UInt32}",
                          pid=bad.pid)[0]["n"] == 0
        assert "refused (nobits)" in agent.log()
        assert agent.proc.poll() is None
    finally:
        for p in started:
            p.kill()
            p.wait()


def test_data_folder_is_private(hostile: tuple[Agent, dict[str, int]]) -> None:
    agent, _ = hostile
    assert agent.rows("SELECT count() AS n FROM blindspot.tcp_connections")[0]["n"] > 0  # it has written
    assert stat.S_IMODE(agent.data_dir.stat().st_mode) == 0o700
    leaky = []
    for root, dirs, files in os.walk(agent.data_dir):
        for name in dirs + files:
            try:
                mode = os.lstat(Path(root) / name).st_mode
            except FileNotFoundError:  # chDB's temporary parts come and go
                continue
            if not stat.S_ISLNK(mode) and mode & 0o077:
                leaky.append((name, oct(mode)))
    assert not leaky


def test_query_as_another_user_is_a_clean_refusal(hostile: tuple[Agent, dict[str, int]]) -> None:
    agent, _ = hostile
    blindspot = Path(sys.executable).with_name("blindspot")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(blindspot), "query",
                        "--data-dir", str(agent.data_dir), "SELECT 1"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 2, r
    assert "permission denied" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_idle_query_connections_do_not_stop_queries(hostile: tuple[Agent, dict[str, int]]) -> None:
    """More idle connections than the server serves at once: the surplus is answered "busy" at once,
    and once the idle ones time out, queries work again; the agent never waits on any of them."""
    agent, _ = hostile
    from blindspot.query_server import MAX_CONNECTIONS, READ_TIMEOUT_S, socket_path

    idle = []
    for _ in range(MAX_CONNECTIONS + 4):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(socket_path(agent.data_dir)))
        idle.append(s)
    time.sleep(0.5)
    busy = idle[-1]
    busy.settimeout(5)
    assert b"busy" in busy.recv(4096)
    t = threading.Timer(READ_TIMEOUT_S + 2, lambda: None)
    t.start()
    t.join()
    assert agent.rows("SELECT 1 AS one") == [{"one": 1}]
    for s in idle:
        s.close()
