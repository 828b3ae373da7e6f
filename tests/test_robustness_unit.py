"""Issue 9 without root: /proc read as untrusted bytes, callbacks and polls that count instead of
raising, the writer thread's unexpected errors, the live view's names, the CLI's one-line errors and
the query socket's bounds."""

from __future__ import annotations

import ctypes as C
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client import CollectorRegistry
from rich.console import Console

from agent import _http_event as hev
from agent import procfs
from agent.errors import SourceErrors, printable
from agent.metrics import AgentMetrics
from agent.pipeline import Pipeline, PipelineConfig
from blindspot import config, live
from contract.batch import Batch
from contract.records import PIPELINE_COUNTER, RecordKind

BLINDSPOT = str(Path(sys.executable).with_name("blindspot"))
ODD = [b"[/]", b"[bold]x", b"\x1b[2J", b"a\x9bb", b"\xff\xfe[/]", b"\x1b]0;owned\x07"]


# --- /proc ----------------------------------------------------------------------------------------
def _fake_proc(root: Path, comm: bytes) -> Path:
    (root / "net").mkdir(parents=True)
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    line = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242\n"
    (root / "net" / "tcp").write_text(head + line + "garbage line with \xff bytes\n")
    (root / "net" / "tcp6").write_bytes(head.encode() + b"\xff\xfe not a table\n")
    (root / "123" / "fd").mkdir(parents=True)
    os.symlink("socket:[4242]", root / "123" / "fd" / "3")
    os.symlink("socket:[not-a-number]", root / "123" / "fd" / "4")
    (root / "123" / "comm").write_bytes(comm + b"\n")
    return root


@pytest.mark.parametrize("comm", ODD)
def test_listener_owner_names_are_decoded_with_replacement(tmp_path: Path, comm: bytes) -> None:
    owners = list(procfs.listener_owners(_fake_proc(tmp_path / "proc", comm)))
    assert owners == [(0x1F90, 123, comm.decode("utf-8", "replace"))]


# --- callbacks and polls -------------------------------------------------------------------------
def test_source_errors_count_every_failure_and_log_the_first(caplog: pytest.LogCaptureFixture) -> None:
    errs = SourceErrors("http", logging.getLogger("t"))
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            errs.record("proc_event", ValueError(f"bad {i}"), "pid 1 (\x1b[31mred)")
        errs.record("proc_event", KeyError("other"))
        errs.record("pids_map_full", None, n=3)
    assert errs.counters() == {"source_errors:http:proc_event": 6, "source_errors:http:pids_map_full": 3}
    assert len(caplog.records) == 3  # one per (what, exception type)
    assert "\x1b" not in caplog.text and "\\x1b[31mred" in caplog.text


def test_http_proc_callback_never_raises() -> None:
    from agent.http_source import HttpConfig, HttpSource

    src = HttpSource(HttpConfig(), lambda *_: None, host="h")

    def boom(pid: int) -> None:
        raise RuntimeError(f"inspection of {pid} blew up")

    src._consider = boom  # type: ignore[method-assign]
    rec = hev.HttpProc()
    rec.kind, rec.pid, rec.flags = hev.KIND_PROC_EXEC, 4242, hev.EXEC_PENDING
    for _ in range(3):
        src._on_proc(None, C.addressof(rec), C.sizeof(rec))
    assert src._errors.counters() == {"source_errors:http:proc_event": 3}


def test_tcp_decode_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TCP source decodes a drain at a time (agent/tcp_bulk.py): a decoder bug loses that drain's
    records, counted, and the next drain goes on; records of another kind are counted, not decoded."""
    import numpy as np

    from agent import _tcp_event as tev
    from agent import tcp_source
    from agent.tcp_bulk import DTYPE
    from agent.tcp_source import TcpSource, TcpSourceConfig

    emitted: list[int] = []
    src = TcpSource(TcpSourceConfig(), lambda _kind, t: emitted.append(t.num_rows), host="h")

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("decoder bug")

    recs = np.zeros(3, DTYPE)
    recs["kind"] = [tev.KIND_CLOSED, tev.KIND_CLOSED, tev.KIND_OPEN]
    with monkeypatch.context() as m:
        m.setattr(tcp_source, "decode_closed_batch", boom)
        src._pending = [recs]
        src._decode()
    assert src._errors.counters() == {"source_errors:tcp:event": 2, "source_errors:tcp:event_kind": 1}
    src._pending = [recs]
    src._decode()
    assert emitted == [2] and src.decoded == 2


class _Collect:
    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.rows = 0
        self.counters: dict[str, int] = {}

    def write(self, kind: RecordKind, rows: Batch) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("sink bug")
        self.rows += rows.num_rows
        if kind is PIPELINE_COUNTER:
            for r in PIPELINE_COUNTER.to_rows(rows):
                self.counters[r["counter"]] = self.counters.get(r["counter"], 0) + r["value"]


class _Flaky:
    name = "flaky"

    def __init__(self) -> None:
        self.polls = 0

    def open(self) -> None: ...

    def poll(self, timeout_ms: int) -> None:
        self.polls += 1
        raise OSError("ring buffer gone")

    def counters(self) -> dict[str, int]:
        return {"source_errors:flaky:decode": 2}

    def close(self) -> None: ...


def test_writer_counts_unexpected_errors_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    sink = _Collect(fail_first=1)
    flaky = _Flaky()
    p = Pipeline([flaky], sink, PipelineConfig(batch_max_rows=2, poll_ms=5, counters_interval_s=3600), host="h")
    row = {"time": 1, "host": "h", "component": "t", "counter": "x", "value": 1}
    with caplog.at_level(logging.ERROR):
        for _ in range(4):  # two batches of two, queued for the writer
            p.emit(PIPELINE_COUNTER.name, PIPELINE_COUNTER.to_arrow([row]))
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        p.run(stop)  # the flaky source's poll raises every turn: counted, the loop goes on
    assert flaky.polls > 3
    assert p.counts["dropped_write_error"] == 2 and p.counts["dropped_queue_full"] == 0
    assert sink.rows >= 2  # the second batch, and the counters written at shutdown
    assert p.counts["source_errors:flaky:poll"] == flaky.polls
    assert sum("sink bug" in r.getMessage() or "unexpected error" in r.getMessage() for r in caplog.records) == 1


def test_reported_counters_include_source_errors() -> None:
    p = Pipeline([_Flaky()], _Collect(), PipelineConfig(counters_interval_s=3600), host="h")
    p.report_counters()
    rows = {}
    for _kind, batch in p.batcher.drain():
        for r in PIPELINE_COUNTER.to_rows(batch):
            rows[r["counter"]] = r["value"]
    assert rows["source_errors:flaky:decode"] == 2 and rows["dropped_write_error"] == 0


# --- live view -------------------------------------------------------------------------------------
def _row(comm: Any) -> dict[str, Any]:
    return {"pid": 1, "comm": comm, "role": "server", "local_addr": "127.0.0.1", "local_port": 80,
            "remote_addr": "127.0.0.1", "remote_port": 5000, "bytes_sent": 1, "bytes_received": 2,
            "duration_ns": 1000, "handshake_ns": 10, "close_reason": "fin"}


def test_live_view_shows_hostile_names_as_text() -> None:
    stats = {"uptime_s": 1, "conns_per_s": 0.0, "connections": 0, "open": 0, "rows_written": 0, "lost_kernel": 0,
             "dropped": 0}
    rows = [_row(c) for c in ODD] + [_row("a\x9bb"), _row("\x1b[2J")]  # bytes, and text as decoded rows carry it
    out = io.StringIO()
    console = Console(file=out, width=300, force_terminal=True, color_system=None)
    console.print(live._render(stats, rows))  # no MarkupError
    text = out.getvalue()
    assert "[/]" in text and "[bold]x" in text
    assert "\\x1b[2J" in text and "\\x9b" in text and "\ufffd\ufffd[/]" in text
    assert "\x1b[2J" not in text and "\x9b" not in text and "\x07" not in text


def test_printable() -> None:
    assert printable(b"\xff\x1b[31m\x7f ok") == "\ufffd\\x1b[31m\\x7f ok"
    assert printable("a\x9bb\x00") == "a\\x9bb\\x00"
    assert printable("x" * 600, limit=10) == "x" * 10 + "..."


# --- CLI -------------------------------------------------------------------------------------------
def _cli(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [BLINDSPOT, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def _one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_non_utf8_config_file(tmp_path: Path) -> None:
    f = tmp_path / "b.toml"
    f.write_bytes(b"retention_days = 3\n# \xff\xfe\n")
    with pytest.raises(config.ConfigError, match="not UTF-8"):
        config.load(str(f), env={})
    _one_line_error(_cli("query", "--config", str(f), "--data-dir", str(tmp_path), "SELECT 1"), "not UTF-8")


def test_query_on_a_data_folder_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_text("x")
    _one_line_error(_cli("query", "--data-dir", str(f), "SELECT 1"), "not a folder")


def test_metrics_address_nonsense_is_refused_before_anything_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _one_line_error(_cli("run", "--data-dir", str(data), "--metrics-address", "nonsense"), "nonsense")
    assert not (data / "query.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="`run` gets to its data folder only as root")
def test_run_refuses_unsafe_data_folders(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    _one_line_error(_cli("run", "--data-dir", str(f), "--duration", "1"), "not a folder")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    _one_line_error(_cli("run", "--data-dir", str(open_dir), "--duration", "1"), "writable by group or others")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    _one_line_error(_cli("run", "--data-dir", str(foreign), "--duration", "1"), "owned by uid 65534")
    # A metrics address that parses but cannot be served: refused before the query socket exists.
    data = tmp_path / "data"
    _one_line_error(_cli("run", "--data-dir", str(data), "--metrics-address", "256.0.0.1:9", "--duration", "1"),
                    "cannot listen")
    assert not (data / "query.sock").exists()
    assert (data.stat().st_mode & 0o777) == 0o700


def test_secure_data_dir_tightens_an_older_folder(tmp_path: Path) -> None:
    d = tmp_path / "old"
    (d / "store").mkdir(parents=True)
    (d / "store" / "part.bin").write_text("rows")
    os.chmod(d, 0o755)  # noqa: S103 (what older versions left)
    os.chmod(d / "store" / "part.bin", 0o644)
    config.secure_data_dir(d)
    assert (d.stat().st_mode & 0o777) == 0o700
    assert (d / "store" / "part.bin").stat().st_mode & 0o077 == 0


# --- query socket ------------------------------------------------------------------------------------
class _FakeService:
    def query_text(self, sql: str, fmt: str, params: Any) -> bytes:
        return b'{"one":1}\n'


def test_query_socket_bounds_idle_connections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blindspot import query_server as qs

    monkeypatch.setattr(qs._Handler, "timeout", 0.5)
    server = qs.QueryServer(tmp_path, _FakeService()).start()  # type: ignore[arg-type]
    idle = []
    try:
        for _ in range(qs.MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(server.path))
            idle.append(s)
        time.sleep(0.1)
        with pytest.raises(qs.QueryError, match="busy"):
            qs.query_via_socket(server.path, "SELECT 1", qs.FORMATS["json"], timeout_s=5)
        assert threading.active_count() < 30
        time.sleep(1.0)  # the idle ones time out and free their slots
        assert json.loads(qs.query_via_socket(server.path, "SELECT 1", qs.FORMATS["json"], timeout_s=5)) == {"one": 1}
    finally:
        for s in idle:
            s.close()
        server.close()


def test_refusals_and_source_errors_reach_prometheus() -> None:
    class _Src(_Flaky):
        name = "src"

        def counters(self) -> dict[str, int]:
            return {"go_binary_rejected:nobits": 2, "source_errors:src:proc_event": 3, "packet_drops:NO_SOCKET": 7}

    p = Pipeline([_Src()], _Collect(), PipelineConfig(), host="h",
                 metrics=AgentMetrics.on(CollectorRegistry()))
    p.export_metrics()
    p.export_metrics()  # deltas: nothing new the second time
    assert p.metrics.go_binaries_rejected.labels("nobits")._value.get() == 2
    assert p.metrics.source_errors.labels("src", "proc_event")._value.get() == 3
    assert p.metrics.packet_drops.labels("NO_SOCKET")._value.get() == 7
    rows = {}
    p.report_counters()
    for _kind, batch in p.batcher.drain():
        rows.update({r["counter"]: r["value"] for r in PIPELINE_COUNTER.to_rows(batch)})
    assert "packet_drops:NO_SOCKET" not in rows  # drops have their own table, not pipeline_counters


def test_exec_to_traced_and_requests_before_traced_reach_prometheus() -> None:
    class _Src(_Flaky):
        name = "http"
        figures: ClassVar[list[list[float]]] = [[0.0, 0.02, 0.3], []]

        def counters(self) -> dict[str, int]:
            return {"requests_before_traced": 5}

        def take_exec_to_traced(self) -> list[float]:
            return self.figures.pop(0) if self.figures else []

    p = Pipeline([_Src()], _Collect(), PipelineConfig(), host="h",
                 metrics=AgentMetrics.on(CollectorRegistry()))
    p.export_metrics()
    p.export_metrics()  # deltas, and figures taken once
    assert p.metrics.requests_before_traced._value.get() == 5
    samples = {s.name: s.value for m in p.metrics.exec_to_traced.collect() for s in m.samples
               if s.name.endswith(("_count", "_sum"))}
    assert samples == {"blindspot_http_exec_to_traced_seconds_count": 3,
                       "blindspot_http_exec_to_traced_seconds_sum": pytest.approx(0.32)}


def test_exe_registry_attach_failure_counted_retried_and_published_only_when_ready() -> None:
    """A uprobe that fails to attach (the OSError the issue saw raised inside the exec callback) is
    counted, the file is not handed to the kernel (its next processes are read and retried, never traced
    at exec without their probes), and the next process of the file attaches it once."""
    from agent.go_binary import GoBinary
    from agent.go_exes import ExeRegistry, kernel_dev

    errors = SourceErrors("http", logging.getLogger("test"))
    attached: list[tuple[str, int, str]] = []
    kernel: dict[tuple[int, int], Any] = {}
    fail = [True]

    def attach(path: str, off: int, prog: str) -> bytes:
        if fail[0]:
            raise OSError(f"uprobe {prog} at {path}+{off:#x} failed")
        attached.append((path, off, prog))
        return f"ev_{off:x}".encode()

    def set_kernel(key: tuple[int, int], leaf: Any) -> None:
        if leaf is None:
            kernel.pop(key, None)
        else:
            kernel[key] = leaf

    reg = ExeRegistry(attach, lambda ev: None, set_kernel, errors.record)
    st = os.stat(f"/proc/{os.getpid()}/exe")
    inode = (st.st_dev, st.st_ino)
    binary = GoBinary.__new__(GoBinary)
    probes = [(0x1000, "uprobe_finish_request"), (0x2000, "uprobe_persistconn_roundtrip")]
    exe = reg.add(os.getpid(), inode, binary, probes)
    assert exe is not None and not exe.ready
    reg.publish(exe, "leaf")
    assert kernel == {} and errors.counters() == {"source_errors:http:uprobe_attach_failed": 2}
    fail[0] = False
    again = reg.add(os.getpid(), inode, binary, probes)
    assert again is exe and exe.ready and len(attached) == 2
    assert reg.add(os.getpid(), inode, binary, probes) is exe and len(attached) == 2  # once per file
    assert all(path == f"/proc/self/fd/{exe.fd}" for path, _, _ in attached)
    reg.publish(exe, "leaf", key=(7, 8))
    assert kernel == {(kernel_dev(st.st_dev), st.st_ino): "leaf", (7, 8): "leaf"}
    # The last process of the file exits: probes detached, the kernel forgets the file (it may be
    # rewritten in place while nobody runs it: a probe at an old offset would break the new code).
    reg.gone(os.getpid(), inode)
    assert kernel == {} and reg.exes == {} and reg.c["exes_detached"] == 1
    exe = reg.add(os.getpid(), inode, binary, probes)
    assert exe is not None and exe.ready and len(attached) == 4
    reg.close()
    assert reg.exes == {}


class _FakeMap(dict):
    """A bcc table as the exit/forget paths of HttpSource use it: keyed by ints, ctypes keys accepted."""

    def __delitem__(self, k: Any) -> None:
        super().__delitem__(getattr(k, "value", k))


@pytest.mark.parametrize("filename", [b"/opt/app/bin/gray", b"bin/gray"])
def test_short_process_of_a_known_file_gone_before_its_exec_is_read_is_named_after_its_file(
        tmp_path: Path, filename: bytes) -> None:
    """A load client of a file the kernel already traces (flag TRACED) runs and exits before the poll
    thread reads its exec event: /proc/<pid>/exe no longer resolves. With exe_prefix set it was
    untraced (no path was kept for traced execs) and its records dropped as untraced_records: the flaky
    test_executable_replaced_at_the_same_path. It is named after the file the kernel saw at its exec,
    by (dev, ino), even when its path now names a newer build (renamed over it) or is relative."""
    from agent.go_binary import GoBinary
    from agent.go_exes import Exe, ExeRegistry
    from agent.http_source import HttpConfig, HttpSource

    src = HttpSource(HttpConfig(exe_prefix="/opt/app/"), lambda *_: None, host="h")
    src.bpf = {n: _FakeMap() for n in ("pids", "conns", "flushed", "client_marks", "inflight_io")}
    errors = SourceErrors("http", logging.getLogger("test"))
    src._exes = ExeRegistry(lambda *a: b"", lambda ev: None, lambda k, leaf: None, errors.record)
    untraced: list[int] = []
    src._untrace = lambda pid, definitive: untraced.append(pid)  # type: ignore[method-assign]
    old_key = (0x10_00001, 1234)  # the old build, as the kernel named it at the exec
    binary = GoBinary("/proc/self/fd/9", "go1.26.8", main_path="example.com/gray")
    src._exes.exes[(1, 1234)] = Exe((1, 1234), binary, fd=-1, kernel_keys={old_key}, ready=True)
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 7  # no such process: it is gone
    src.bpf["pids"][pid] = "traced at exec"
    rec = hev.HttpProc()
    rec.kind, rec.pid, rec.ts_ns, rec.dev, rec.ino = hev.KIND_PROC_EXEC, pid, 5, *old_key
    rec.flags, rec.filename = hev.EXEC_TRACED, filename
    src._on_proc(None, C.addressof(rec), C.sizeof(rec))
    rec.kind = hev.KIND_PROC_EXIT
    src._on_proc(None, C.addressof(rec), C.sizeof(rec))
    assert untraced == [] and errors.counters() == {} and src._errors.counters() == {}
    assert pid in src._gone and src._service(pid) == ("gray", "", "go1.26.8")
    assert src._exes.traced_at[pid] == 5 and src._exes.c["procs_traced_at_exec"] == 1
    assert src.bpf["pids"] == {} and src._execs == {} and src._exec_paths == {}


def test_tcp_ring_fill_is_counted_and_warned_before_loss(caplog: pytest.LogCaptureFixture) -> None:
    """Each drain checks how full the TCP ring is: the first drain (after the other sources opened) is
    only noted; later, a drain that finds it half full is counted and warned of, with the time since
    the previous drain, and so is a drain over 1 s late."""
    from agent.tcp_source import TcpSource, TcpSourceConfig

    class Ring:
        size = 1000
        pending = 0

        def pending_bytes(self) -> int:
            return self.pending

    src = TcpSource(TcpSourceConfig(), lambda _kind, _t: None, host="h")
    ring = src._ring = Ring()  # type: ignore[assignment]
    src._last_drain -= 2.0  # the start-up gap
    with caplog.at_level("INFO", logger="agent.tcp_source"):
        src._check_ring()
        ring.pending = 400
        src._check_ring()
        ring.pending = 600
        src._check_ring()
        src._check_ring()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "first drain" in caplog.records[0].getMessage() and len(warnings) == 1
    assert warnings[0].startswith("tcp ring buffer 60% full")  # once a minute: the second is counted only
    assert src._ring_late == 2  # ring_half_full:tcp in counters() once the source is open


def test_recursion_misses_summed_from_fdinfo(tmp_path: Path) -> None:
    """Events the kernel skipped because the program was already running on that CPU are read from
    each program's fdinfo and summed; a program without the field (an older kernel) or an fd that is
    gone counts nothing."""
    from types import SimpleNamespace

    from agent._bpf_abi import recursion_misses, recursion_misses_by_program

    (tmp_path / "7").write_text("pos:\t0\nprog_type:\t5\nprog_id:\t22148\nrun_cnt:\t9\nrecursion_misses:\t3\n")
    (tmp_path / "8").write_text("pos:\t0\nprog_type:\t5\nrecursion_misses:\t1\n")
    (tmp_path / "9").write_text("pos:\t0\nprog_type:\t5\n")
    bpf = SimpleNamespace(funcs={n: SimpleNamespace(fd=fd) for n, fd in ((b"a", 7), (b"b", 8), (b"c", 9), (b"d", 10))})
    assert recursion_misses(bpf, tmp_path) == 4
    assert recursion_misses_by_program(bpf, tmp_path) == {"a": 3, "b": 1}
    assert recursion_misses(SimpleNamespace(), tmp_path) == 0
