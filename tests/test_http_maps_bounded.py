"""The HTTP source's kernel maps stay bounded under process churn, and a full map is counted, never
raised (issue 9). The source runs in this process, polled by the test; Go programs are built by
tests/gobuild.py."""

from __future__ import annotations

import ctypes as C
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import gobuild, procs

pytestmark = [pytest.mark.root, pytest.mark.go]

CLIENTS = 150


class _Failing:
    """A BPF table whose updates fail the way bcc reports a full map."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __setitem__(self, key: Any, value: Any) -> None:
        raise Exception("Could not update table: [Errno 7] Argument list too long")  # bcc raises a bare Exception

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __len__(self) -> int:
        return len(self.real)

    def __delitem__(self, key: Any) -> None:
        del self.real[key]


@pytest.fixture
def src() -> Iterator[Any]:
    from agent.http_source import HttpConfig, HttpSource

    if not gobuild.go_available():
        pytest.skip("no go command")
    gobuild.build(gobuild.GO_VERSIONS[-1], "stripped")
    s = HttpSource(HttpConfig(exe_prefix=str(gobuild.CACHE)), lambda *_: None, host="h")
    s.open()
    yield s
    s.close()


def _poll_until(s: Any, cond: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        s.poll(0)
        time.sleep(0.02)


def _keys_of(s: Any, name: str, pids: set[int]) -> int:
    return sum(1 for k in s.bpf[name].keys() if k.value >> 32 in pids)


def test_short_lived_keep_alive_clients_leave_nothing_behind(src: Any) -> None:
    """Each client exits with its keep-alive connection open: its exchange is swept at exit, which
    writes a ``flushed`` marker; before, nothing removed it and ~2,700 clients filled the map."""
    build = gobuild.build(gobuild.GO_VERSIONS[-1], "stripped")
    server = procs.spawn([str(build.bin("server"))], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().rsplit(":", 1)[1])  # type: ignore[union-attr]
        _poll_until(src, lambda: src.traced(server.pid))
        req = json.dumps({"method": "GET", "url": f"http://127.0.0.1:{port}/hello"}) + "\n"
        pids: set[int] = set()
        swept_before = src.counters()["procs_detached"]
        for _ in range(CLIENTS):
            c = procs.spawn([str(build.bin("client"))], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 text=True)
            pids.add(c.pid)
            _poll_until(src, lambda c=c: src.traced(c.pid))  # it waits for its stdin: attached first
            c.communicate(req, timeout=10)
            src.poll(0)
        _poll_until(src, lambda: not any(src.traced(p) for p in pids))
        counters = src.counters()
        assert counters["procs_detached"] - swept_before >= CLIENTS * 0.9  # they were traced, then detached
        for name in ("flushed", "conns", "client_marks", "inflight_io"):
            assert _keys_of(src, name, pids) == 0, name
        assert len(src.bpf["flushed"]) <= 4  # the server's own, at most one per open connection
        assert not any(v for k, v in counters.items() if k.startswith("source_errors:")), counters
    finally:
        server.kill()
        server.wait()


def test_full_maps_are_counted_not_raised(src: Any) -> None:
    build = gobuild.build(gobuild.GO_VERSIONS[-1], "stripped")
    server = procs.spawn([str(build.bin("server"))], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().rsplit(":", 1)[1])  # type: ignore[union-attr]
        _poll_until(src, lambda: src.traced(server.pid))
        # A full `flushed`: a client exiting with its connection open needs a marker.
        src.bpf["flushed"] = _Failing(src.bpf["flushed"])
        req = json.dumps({"method": "GET", "url": f"http://127.0.0.1:{port}/hello"}) + "\n"
        c = procs.spawn([str(build.bin("client"))], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        _poll_until(src, lambda: src.traced(c.pid))
        c.communicate(req, timeout=10)
        _poll_until(src, lambda: src.counters().get("source_errors:http:flushed_map_full", 0) >= 1)
        # A full `pids`: a new Go process is counted and left untraced; the source goes on.
        src.bpf["pids"] = _Failing(src.bpf["pids"])
        other = procs.spawn([str(build.bin("server"))], stdout=subprocess.PIPE, text=True)
        try:
            other.stdout.readline()  # type: ignore[union-attr]
            _poll_until(src, lambda: src.counters().get("source_errors:http:pids_map_full", 0) >= 1)
            assert not src.traced(other.pid)
        finally:
            other.kill()
            other.wait()
        src.poll(0)
        assert src.traced(server.pid)
        del src.bpf["pids"][C.c_uint32(server.pid)]  # leave the real map as the fixture's close expects
        src.bpf["pids"] = src.bpf["pids"].real
        src.bpf["flushed"] = src.bpf["flushed"].real
        src.procs.pop(server.pid, None)
    finally:
        server.kill()
        server.wait()


def test_process_whose_exit_event_was_lost_is_reaped(src: Any) -> None:
    """proc_events can fill (counted as lost_ringbuf): a traced process gone without an exit event is
    detached by the periodic check, with its kernel entries."""
    build = gobuild.build(gobuild.GO_VERSIONS[-1], "stripped")
    c = procs.spawn([str(build.bin("client"))], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    _poll_until(src, lambda: src.traced(c.pid))
    p = src.procs[c.pid]
    c.kill()
    c.wait()
    _poll_until(src, lambda: not src.traced(c.pid))  # the exit event
    # As if that event had been lost: known again, with a kernel entry, but the process is gone.
    src.procs[c.pid] = p
    src.bpf["pids"][C.c_uint32(c.pid)] = src.bpf["pids"].Leaf()
    src._reap_gone()
    assert not src.traced(c.pid)
    assert all(k.value != c.pid for k in src.bpf["pids"].keys())
    assert src.counters()["source_errors:http:exit_event_missed"] == 1


def test_an_executable_slow_to_read_does_not_stall_the_poll_loop(src: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading an executable never seen before happens off the poll thread: a hostile one may take the
    inspection's whole timeout, and the rings must go on being drained meanwhile. A second process of
    a binary already read is traced at once, from its exec event."""
    from collections import OrderedDict

    from agent import go_binary, go_procs

    monkeypatch.setattr(go_binary, "_cache", OrderedDict())  # nothing read before, in this process
    real = go_procs.inspect_pid

    def slow(pid: int, **kw: Any) -> Any:
        time.sleep(2.0)
        return real(pid, **kw)

    monkeypatch.setattr(go_procs, "inspect_pid", slow)
    build = gobuild.build(gobuild.GO_VERSIONS[-1], "stripped")
    first = procs.spawn([str(build.bin("server"))], stdout=subprocess.PIPE, text=True)
    first.stdout.readline()  # type: ignore[union-attr]
    t0, worst = time.monotonic(), 0.0
    while not src.traced(first.pid):
        assert time.monotonic() - t0 < 20
        t = time.monotonic()
        src.poll(0)
        worst = max(worst, time.monotonic() - t)
        time.sleep(0.02)
    assert time.monotonic() - t0 >= 1.5  # it did go the slow way
    assert worst < 0.5, worst  # and the loop was never held for it
    monkeypatch.setattr(go_procs, "inspect_pid", real)
    second = procs.spawn([str(build.bin("server"))], stdout=subprocess.PIPE, text=True)
    second.stdout.readline()  # type: ignore[union-attr]
    src.poll(0)  # its exec event: the binary is known, so it is traced right there
    assert src.traced(second.pid)
