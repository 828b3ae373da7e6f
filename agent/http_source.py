"""HTTP request lifecycles of Go processes: a source for agent/pipeline.py.

Kernel side (bpf/http_trace.c): the read/write syscall tracepoints of traced processes see plaintext
HTTP/1; one record per exchange (request + response) with the first bytes of the request head. The
Go uprobes are optional (``go_uprobes``): each hit costs ~19 us on our machines, so by default routes
are templated from the path and outbound calls are not linked; with them, the ServeMux pattern is
read (Go 1.22+) and each outbound request made while serving an inbound one points at it through
``parent_request_id``.

Emits ``http_request`` rows (table http_requests, ingest/migrations/0010_http_requests.sql).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes as C
import hashlib
import itertools
import logging
import mmap
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from agent import _http_event as ev
from agent import btf, go_binary, go_procs, http_parse
from agent._bpf_abi import load_bpf, recursion_misses
from agent.bpf_maps import all_keys
from agent.clock import system_clock
from agent.config import HttpConfig
from agent.errors import SourceErrors
from agent.go_binary import FN_FINISH_REQUEST, FN_PC_ROUNDTRIP
from agent.go_exes import ExeRegistry
from agent.go_procs import GoProcess
from agent.http_decode import DecodeContext, Decoded, decode
from agent.inspect_worker import InspectWorker
from agent.ringbuf import FixedRingReader
from contract.records import HTTP_REQUEST

log = logging.getLogger(__name__)

KIND = HTTP_REQUEST.name
BPF_SOURCE = ev.BPF_DIR / "http_trace.c"
GO_OFFSET_KEYS = ("response_conn", "response_req", "conn_rwc", "req_pattern", "req_pat", "pattern_str",
                  "persistconn_conn", "tcpconn_fd", "netfd_sysfd")
REAP_INTERVAL_S = 10.0  # traced processes whose exit event was lost (ring full) are found this often
# Executables not seen before are read off the poll thread (a hostile one may take the inspection's
# whole timeout); at most this many processes wait for it, more are counted and not traced.
INSPECT_BACKLOG = 256
MAX_WAITING = 65_536  # outbound rows waiting for their inbound one (Go uprobes): ~2 s of a busy client
MAX_SERVERS = 65_536  # (pid, goroutine) keys of recent served requests kept for linking
MAX_SERVER_ROWS = 262_144  # served requests kept for linking, all keys together
# Records of a process traced from its exec wait (undecoded) until user space knows what it runs: at
# most this long (then decoded without a service), and this many (then the oldest are decoded).
HOLD_S = 15.0
MAX_HELD = 65_536
UNKNOWN_GRACE_S = 2.0  # records of a pid no exec event named yet (read from the ring before it) wait this long
MAX_EXECS = 65_536  # exec events waiting for their process's inspection
Emit = Callable[[str, pa.Table], None]  # (record kind, its rows): one record form, Arrow

# Kernel struct fields on the fd -> socket -> addresses walk, read from BTF.
_KERNEL_FIELDS = {
    "BS_OFF_TASK_FILES": ("task_struct", "files"),
    "BS_OFF_FILES_FDT": ("files_struct", "fdt"),
    "BS_OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "BS_OFF_FDT_FD": ("fdtable", "fd"),
    "BS_OFF_FILE_PRIVATE": ("file", "private_data"),
    "BS_OFF_FILE_F_OP": ("file", "f_op"),
    "BS_OFF_SOCKET_SK": ("socket", "sk"),
    "BS_OFF_SKC_DADDR": ("sock_common", "skc_daddr"),
    "BS_OFF_SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "BS_OFF_SKC_DPORT": ("sock_common", "skc_dport"),
    "BS_OFF_SKC_NUM": ("sock_common", "skc_num"),
    "BS_OFF_SKC_FAMILY": ("sock_common", "skc_family"),
    "BS_OFF_SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
    "BS_OFF_SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
    # task -> mm -> exe_file -> inode: which executable an exec ran (bpf `exes`)
    "BS_OFF_TASK_MM": ("task_struct", "mm"),
    "BS_OFF_MM_EXE_FILE": ("mm_struct", "exe_file"),
    "BS_OFF_FILE_F_INODE": ("file", "f_inode"),
    "BS_OFF_INODE_I_INO": ("inode", "i_ino"),
    "BS_OFF_INODE_I_SB": ("inode", "i_sb"),
    "BS_OFF_SB_S_DEV": ("super_block", "s_dev"),
}


def _kernel_defines() -> list[str]:
    out = [f"-D{name}={btf.offset_of(btf.FieldRef(s, p))}" for name, (s, p) in _KERNEL_FIELDS.items()]
    fops = 0
    try:  # socket_file_ops: lets the fd walk refuse files that are not sockets
        for line in Path("/proc/kallsyms").read_text().splitlines():
            if line.endswith(" socket_file_ops"):
                fops = int(line.split()[0], 16)
                break
    except OSError:
        pass
    out.append(f"-DBS_SOCKET_FILE_OPS={fops:#x}ULL")
    return out


class HttpSource:
    """Source shape: open(), poll(timeout_ms), counters(), close(). Each poll decodes what the kernel
    sent as one batch and hands it on as one Arrow table, ``emit(kind, table)``; outbound rows held back
    for linking go on together, one table per poll."""

    name = "http"
    kinds = (KIND,)

    def __init__(self, config: HttpConfig, emit: Emit, *, host: str) -> None:
        self.cfg = config
        self.host = host
        self._emit = emit
        self._linked_out: list[dict[str, Any]] = []  # outbound rows whose link was settled: emitted per poll
        self.bpf: Any = None
        self.procs: dict[int, GoProcess] = {}
        self._allow = frozenset(h.lower() for h in self.cfg.headers)
        self._kernel: dict[str, int] = {}
        # parse_errors: heads that are not HTTP/1 requests; rejected: records the decoder failed on
        # (isolated by _decode_isolated, never raised out of poll).
        self._c = {"captured": 0, "parse_errors": 0, "rejected": 0, "procs_attached": 0, "procs_detached": 0,
                   "linked": 0, "link_timeouts": 0}
        self._rejected_logged = False
        sensitive = sorted(self._allow & http_parse.SENSITIVE)
        if sensitive:
            log.warning("HTTP header allow-list captures credentials (%s): their values are stored in "
                        "http_requests as sent; anyone who can read the data folder or query it can read them",
                        ", ".join(sensitive))
        self._errors = SourceErrors(self.name, log)
        self._worker = InspectWorker() if self.cfg.inspect_in_child else None
        # Go linking: recent server rows by (pid, goroutine), outbound rows waiting for theirs.
        self._servers: dict[tuple[int, int], list[tuple[int, int, int, float]]] = {}
        self._waiting: deque = deque()
        self._clock = system_clock()
        # Salt for request ids: unique per host; a tuple of ints hashes the same in every run.
        self._salt = int.from_bytes(hashlib.blake2b(self.host.encode(), digest_size=8).digest(), "little")
        self._last_sweep = 0.0
        self._last_reap = time.monotonic()
        self._swept: set[tuple[int, int]] = set()  # (conn key, start_ns) emitted by _sweep_quiet
        self._swept_events: list[np.ndarray] = []
        self._dtype = ev.event_dtype(self.cfg.head_max)
        self._ring: FixedRingReader | None = None
        self._ctx = DecodeContext(self.host, self._salt, tuple(sorted(self._allow)), self.cfg.max_value,
                                  self._service, self.cfg.redact_paths)
        self._pending: list[np.ndarray] = []  # read from the ring, not decoded yet
        self._pending_rows = 0
        self._last_decode = time.monotonic()
        # Exited processes, kept until a later decode: their last records may still be pending.
        self._gone: dict[int, tuple[GoProcess, int]] = {}
        self._decodes = 0
        # Processes whose executable is being read by the inspector thread, and what it found.
        self._inspecting: set[int] = set()
        self._to_inspect: queue.Queue[tuple[int, go_procs.Snapshot] | None] = queue.Queue(maxsize=INSPECT_BACKLOG)
        self._inspected: deque[tuple[int, GoProcess | None, bool]] = deque()  # (pid, process, not Go)
        self._inspector: threading.Thread | None = None
        # Exec events (pid -> (CLOCK_MONOTONIC ns, the kernel's (dev, ino), BS_HTTP_EXEC_* flags)) of
        # processes not attached yet; records of processes user space has not decided on, held.
        self._execs: dict[int, tuple[int, tuple[int, int], int]] = {}
        self._held: list[tuple[np.ndarray, float]] = []
        self._held_rows = 0
        self._c["untraced_records"] = 0  # exchanges of processes traced from exec that proved not ours
        self._c["held_records_decoded_late"] = 0
        self._server_rows = 0
        self._last_prune = 0.0
        self._exes: ExeRegistry | None = None
        self._exited_pending: dict[int, float] = {}
        self._ready_ns: dict[int, int] = {}  # pid -> when the inspector thread made it fully traced
        self._exec_paths: dict[int, bytes] = {}  # pid -> the path it exec'd (processes the kernel traces)

    # --- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        from bcc import BPF  # Debian's python3-bpfcc; imported late so parsing works without it

        cflags = [
            f"-I{ev.BPF_DIR}",
            f"-DBS_HTTP_MAX_CONNS={self.cfg.max_conns}",
            f"-DBS_RINGBUF_PAGES={self.cfg.ringbuf_pages}",
            f"-DBS_HTTP_HEAD_MAX={self.cfg.head_max}",
            f"-DBS_GO_UPROBES={int(self.cfg.go_uprobes)}",
            f"-DBS_TRACE_ON_EXEC={int(not self.cfg.pids)}",
            *_kernel_defines(),
        ]
        self.bpf = load_bpf(src_file=str(BPF_SOURCE).encode(), cflags=cflags)
        self._ring = FixedRingReader(self.bpf["events"].map_fd, self.cfg.ringbuf_pages * mmap.PAGESIZE, self._dtype)
        self.bpf["proc_events"].open_ring_buffer(self._on_proc)
        self._exes = ExeRegistry(self._attach_uprobe, self._detach_uprobe, self._set_exe, self._errors.record)
        if self.cfg.go_uprobes:  # load (verify) once, before any process needs them
            for prog in ("uprobe_finish_request", "uprobe_persistconn_roundtrip"):
                self.bpf.load_func(prog.encode(), BPF.KPROBE)
        if self._worker is not None:
            self._worker.warm()
        for pid in self.cfg.pids or go_procs.scan_pids():
            self._consider(pid, wait=True)
        self._inspector = threading.Thread(target=self._inspect_loop, name="go-inspector", daemon=True)
        self._inspector.start()

    def close(self) -> None:
        if self.bpf is None:
            return
        self.poll(0)
        self._stop_inspector()
        for pid in list(self.procs):
            self._detach(pid)
        self._decode()  # what the detaches swept
        self._flush_waiting(force=True)
        self._emit_linked()
        self.counters()  # keep the kernel's last values
        assert self._ring is not None and self._exes is not None
        self._exes.close()
        self._ring.close()
        self.bpf.cleanup()
        self.bpf = None
        if self._worker is not None:
            self._worker.close()

    def counters(self) -> dict[str, int]:
        """Cumulative counters; the kernel's as last read once closed (they never go backwards)."""
        if self.bpf is not None:
            stats = self.bpf["stats"]
            tot = [sum(stats[C.c_int(i)]) for i in range(ev.STAT_N)]
            self._kernel = {
                "kernel_emitted": tot[ev.STAT_EMITTED],
                "lost_kernel": tot[ev.STAT_LOST_RINGBUF] + tot[ev.STAT_LOST_MAP_FULL],
                "lost_ringbuf": tot[ev.STAT_LOST_RINGBUF],
                "lost_map_full": tot[ev.STAT_LOST_MAP_FULL],
                "uprobe_hits": tot[ev.STAT_UPROBE_HITS],
                "source_errors:http:kernel_aux_map_full": tot[ev.STAT_AUX_MAP_FULL],
                "source_errors:http:kernel_pids_map_full": tot[ev.STAT_PIDS_FULL],
                # saved by a second try (bpf/http_trace.c): not lost
                "source_errors:http:kernel_ringbuf_retried": tot[ev.STAT_RINGBUF_RETRIED],
                # events the kernel did not run our programs for (another probe program running on that
                # CPU): a request or response missed, or recorded without its end
                "source_errors:http:kernel_events_missed": recursion_misses(self.bpf),
            }
        exes = self._exes.c if self._exes is not None else {}
        return {**self._c, **self._kernel, "procs_traced": len(self.procs), **exes, **self._errors.counters(),
                **go_binary.stats()}

    def exec_to_traced(self) -> list[float]:
        """Seconds from exec to fully traced of the latest processes that exec'd while the source ran
        (0: traced by the kernel at exec), oldest first: for a bench."""
        return list(self._exes.recent) if self._exes is not None else []

    def take_exec_to_traced(self) -> list[float]:
        """Exec-to-traced seconds since the last call: the pipeline moves them into Prometheus."""
        return self._exes.take() if self._exes is not None else []

    def before_traced(self, pid: int) -> int:
        """Exchanges of ``pid`` that started before it was fully traced (no route pattern, no link)."""
        return self._exes.before.get(pid, 0) if self._exes is not None else 0

    def poll(self, timeout_ms: int) -> None:
        """Process exec/exit now; read the exchange ring once it is 1/8 full, and decode what was read
        every ``decode_interval_s``. ``timeout_ms`` is there for the Source shape: the pipeline polls
        with 0 on a timer, and the exchange ring never wakes anyone (BPF_RB_NO_WAKEUP)."""
        assert self.bpf is not None and self._ring is not None
        self._clock.refresh()
        if self._ring.pending_bytes() >= self._ring.size // 8:
            self._read_ring()  # early, so the ring never fills between decodes
        self.bpf.ring_buffer_poll(0)  # exec/exit; an exited process stays known until its records are decoded
        self._attach_inspected()
        now = time.monotonic()
        if now - self._last_sweep >= self.cfg.quiet_s / 4:
            self._last_sweep = now
            try:
                self._sweep_quiet()
            except Exception as e:  # one bad sweep must not stop the source
                self._errors.record("sweep", e)
        if now - self._last_reap >= REAP_INTERVAL_S:
            self._last_reap = now
            self._reap_gone()
            try:
                assert self._exes is not None
                self._exes.reap(lambda pid: pid in self.procs or pid in self._inspecting)
            except Exception as e:
                self._errors.record("exe_reap", e)
        if now - self._last_decode >= self.cfg.decode_interval_s or self._pending_rows >= self.cfg.decode_max_rows:
            self._decode()
        try:
            self._flush_waiting()
        except Exception as e:
            self._errors.record("link", e)
        self._emit_linked()

    def flush(self) -> None:
        """Decode and hand on everything the kernel has sent so far, now."""
        self._decode()

    # --- processes ------------------------------------------------------------------------------
    def traced(self, pid: int) -> bool:
        return pid in self.procs

    def _consider(self, pid: int, wait: bool = False) -> None:
        """Trace ``pid`` if it runs a Go program: at once when its executable was read before (a new
        process of a known binary is traced before its first request), else once the inspector thread
        has read it (``wait``: here, now)."""
        if pid in self.procs:
            return
        if pid == os.getpid() or (self.cfg.pids and pid not in self.cfg.pids):
            self._untrace(pid, definitive=False)
            return
        if self.cfg.exe_prefix:
            try:
                exe_path = os.readlink(f"/proc/{pid}/exe")
            except OSError:  # gone already: the path it exec'd (its file is checked before it is read)
                exe_path = self._exec_paths.get(pid, b"").decode("utf-8", "replace")
                if not exe_path.startswith("/"):  # relative to a working directory we cannot know
                    exe_path = ""
            if not exe_path:
                # A file the kernel traced at exec was accepted when user space published it.
                if not self._adopt_exited(pid):
                    self._untrace(pid, definitive=False)
                return
            if not exe_path.startswith(self.cfg.exe_prefix):
                self._untrace(pid, definitive=True)
                return
        if wait or go_binary.is_cached(f"/proc/{pid}/exe", self.cfg.go_uprobes):
            p = self._inspect(pid)
            if p is not None:
                self._attach(p)
            elif not self._adopt_exited(pid):
                self._untrace(pid, definitive=os.path.exists(f"/proc/{pid}/exe"))
            return
        if pid in self._inspecting:
            return
        snap = go_procs.snapshot(pid)
        if snap is None and self._adopt_exited(pid):  # gone already, its file known to the kernel at exec
            return
        info = self._execs.get(pid)
        path = self._exec_paths.pop(pid, b"")
        if snap is None and info is not None and path:  # gone already: its file, by the path it exec'd
            snap = go_procs.snapshot_file(path, *info[1])
        if snap is None:  # gone already
            if not self._adopt_exited(pid):
                self._untrace(pid, definitive=False)
            return
        try:
            self._to_inspect.put_nowait((pid, snap))
        except queue.Full:
            snap.close()
            self._errors.record("inspect_backlog_full", None, f"pid {pid} not traced: {INSPECT_BACKLOG} waiting")
            self._untrace(pid, definitive=False)
            return
        self._inspecting.add(pid)

    def _adopt_exited(self, pid: int) -> bool:
        """A process the kernel traced from its exec (its file known) that exited before user space saw
        the exec: its records are named after its file, by the kernel's (dev, ino) of the exec, not by
        its path (which may name a newer build by now); its environment is gone with it. Exited means
        its executable no longer resolves: a zombie (not reaped yet) still has /proc/<pid>."""
        info = self._execs.get(pid)
        if info is None or not info[2] & ev.EXEC_TRACED or self._exes is None or self.bpf is None \
                or os.path.exists(f"/proc/{pid}/exe"):
            return False
        exe = self._exes.by_kernel_key(info[1])
        if exe is None:
            return False
        del self._execs[pid]
        self._exec_paths.pop(pid, None)
        name, version = go_procs.service_identity(exe.binary, {}, "")
        self._gone[pid] = (GoProcess(pid, f"/proc/{pid}/exe", "", exe.binary, name, version, exe.inode), self._decodes)
        self._exes.traced(pid, info[0], at_exec=True)
        # What _detach does at the exit of an attached process (its exit event, read later, finds
        # nothing to do): the exchanges still open when it exited (a keep-alive client's last one per
        # connection) go now, named while it is in _gone, and its kernel entries are forgotten.
        self._sweep_quiet(exited=pid)
        with contextlib.suppress(KeyError):
            del self.bpf["pids"][C.c_uint32(pid)]
        self._forget_pid(pid)
        return True

    def _untrace(self, pid: int, definitive: bool) -> None:
        """``pid`` is not traced: if the kernel traces it since its exec (pending), it stops; when the
        answer holds for its executable (``definitive``: not Go, or not under exe_prefix), the kernel
        learns it, and that file's next processes are not traced at all."""
        self._inspecting.discard(pid)
        self._ready_ns.pop(pid, None)
        info = self._execs.pop(pid, None)
        if info is None or self.bpf is None:
            return
        _ts, key, flags = info
        if flags & (ev.EXEC_PENDING | ev.EXEC_TRACED) and pid not in self.procs:
            with contextlib.suppress(KeyError):
                del self.bpf["pids"][C.c_uint32(pid)]
        if definitive and key[1] and not self.cfg.pids:
            try:
                self._set_exe(key, self._leaf(None, ev.GO_NOT_TRACED))
            except Exception as e:
                self._errors.record("exes_map_update", e, f"pid {pid}")

    def _inspect(self, pid: int, snap: go_procs.Snapshot | None = None) -> GoProcess | None:
        try:
            return go_procs.inspect_pid(pid, want_offsets=self.cfg.go_uprobes, configured=self.cfg.services,
                                        parse=self._worker.parse if self._worker is not None else None, snap=snap)
        except Exception as e:  # inspect_pid is meant to be total; this is the backstop
            self._errors.record("inspect", e, f"pid {pid}")
            return None

    def _inspect_loop(self) -> None:
        while (item := self._to_inspect.get()) is not None:
            pid, snap = item
            try:
                p = self._inspect(pid, snap)
                not_go = False
                if p is not None:
                    try:
                        self._ready_early(p)
                    except Exception as e:  # the poll thread's attach still comes
                        self._errors.record("ready_early", e, f"pid {pid}")
                else:  # read and refused (cached as such), not merely gone
                    not_go = go_binary.is_cached(f"/proc/{os.getpid()}/fd/{snap.fd}", self.cfg.go_uprobes)
                self._inspected.append((pid, p, not_go))
            finally:
                snap.close()

    def _probes(self, p: GoProcess) -> list[tuple[int, str]]:
        probes = []
        if self.cfg.go_uprobes:
            for fn, prog in ((FN_FINISH_REQUEST, "uprobe_finish_request"),
                             (FN_PC_ROUNDTRIP, "uprobe_persistconn_roundtrip")):
                off = p.binary.file_offsets.get(fn)
                if off:
                    probes.append((off, prog))
        return probes

    def _ready_early(self, p: GoProcess) -> None:
        """Inspector thread, as soon as a file is read: its probes attached, its offsets in the kernel for
        ``p`` and every other process of the file traced since exec, and the file published for the next
        ones. The poll thread's bookkeeping (_attach) follows at its next turn; without this, those
        processes waited for it (up to a poll interval and more) with no route and no links."""
        from bcc import lib

        info = self._execs.get(p.pid)
        if info is None or not info[2] & ev.EXEC_PENDING or self.bpf is None or self._exes is None:
            return
        gp = self._leaf(p, ev.GO_READY)
        exe = self._exes.add(p.pid, p.inode, p.binary, self._probes(p))
        if exe is None or not exe.ready:
            return
        self._exes.publish(exe, gp, info[1] if info[1][1] else None)
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        pids = self.bpf["pids"]
        # Every process the kernel traces as pending, whether or not its exec event was read yet.
        for k in list(pids.keys()):
            try:
                if pids[k].state != ev.GO_PENDING:
                    continue
            except KeyError:  # exited meanwhile
                continue
            try:
                st = os.stat(f"/proc/{k.value}/exe")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != p.inode:
                continue
            # BPF_EXIST: a process that exited meanwhile (its entry deleted) is not brought back.
            if lib.bpf_update_elem(pids.map_fd, C.byref(k), C.byref(gp), 2) == 0:
                self._ready_ns[k.value] = now

    def _attach_inspected(self) -> None:
        while self._inspected:
            pid, p, not_go = self._inspected.popleft()
            if pid not in self._inspecting:  # detached while it was read
                continue
            if pid in self._exited_pending:  # exited while it was read: its records still decode
                del self._exited_pending[pid]
                if p is None:  # and the kernel learns a file that is not Go (a short command)
                    self._untrace(pid, definitive=not_go)
                    continue
                self._inspecting.discard(pid)
                self._execs.pop(pid, None)
                self._ready_ns.pop(pid, None)
                if p is not None:
                    self._gone[pid] = (p, self._decodes)
                    if self._exes is not None:
                        self._exes.gone(pid, p.inode, p.comm)  # the inspector thread may have counted it
                continue
            if p is None:
                self._untrace(pid, definitive=not_go)
                continue
            self._inspecting.discard(pid)
            if pid in self.procs:
                continue
            try:  # the pid may have been reused by another executable meanwhile
                st = os.stat(f"/proc/{pid}/exe")
            except OSError:
                self._untrace(pid, definitive=False)
                continue
            if (st.st_dev, st.st_ino) == p.inode:
                self._attach(p)
            else:
                self._untrace(pid, definitive=False)

    def _stop_inspector(self) -> None:
        if self._inspector is None:
            return
        with contextlib.suppress(queue.Empty):
            while True:  # what still waits is not read: the source is closing
                item = self._to_inspect.get_nowait()
                if item is not None:
                    item[1].close()
        with contextlib.suppress(queue.Full):
            self._to_inspect.put_nowait(None)
        self._inspector.join(timeout=30)
        self._inspector = None

    def add_pid(self, pid: int) -> bool:
        """Trace ``pid`` now (tests; a pid allow-list); True if it is a Go process."""
        if self.cfg.pids and pid not in self.cfg.pids:
            self.cfg.pids = (*self.cfg.pids, pid)
        self._consider(pid, wait=True)
        return pid in self.procs

    def _leaf(self, p: GoProcess | None, state: int) -> Any:
        assert self.bpf is not None
        gp = self.bpf["pids"].Leaf()
        for k in GO_OFFSET_KEYS:
            setattr(gp, k, p.binary.offsets.get(k, -1) if p is not None and self.cfg.go_uprobes else -1)
        gp.state = state
        return gp

    def _set_exe(self, key: tuple[int, int], leaf: Any) -> None:
        assert self.bpf is not None
        exes = self.bpf["exes"]
        k = exes.Key(key[0], key[1])
        if leaf is None:
            with contextlib.suppress(KeyError):
                del exes[k]
        else:
            exes[k] = leaf

    def _detach_uprobe(self, ev_name: bytes) -> None:
        assert self.bpf is not None
        self.bpf.detach_uprobe_event(ev_name)

    def _attach(self, p: GoProcess) -> None:
        assert self.bpf is not None and self._exes is not None
        gp = self._leaf(p, ev.GO_READY)
        try:
            self.bpf["pids"][C.c_uint32(p.pid)] = gp
        except Exception as e:  # bcc raises a bare Exception when the map is full
            self._errors.record("pids_map_full", e, f"pid {p.pid} ({p.comm}) not traced; "
                                f"{len(self.procs)} traced")
            return
        # Probes once per executable file, shared by all its processes (agent/go_exes.py).
        exe = self._exes.add(p.pid, p.inode, p.binary, self._probes(p))
        info = self._execs.pop(p.pid, None)
        self._exec_paths.pop(p.pid, None)
        if exe is not None and not self.cfg.pids:  # new processes of this file: traced from their exec
            self._exes.publish(exe, gp, info[1] if info is not None and info[1][1] else None)
        # Only now is it traced: callers may wait for this before sending traffic.
        self.procs[p.pid] = p
        self._c["procs_attached"] += 1
        flags = info[2] if info is not None else 0
        if exe is not None and (exe.ready or not self.cfg.go_uprobes):
            # Fully traced from its exec when the kernel traced it there with the offsets (or, without
            # uprobes, captured its syscalls from there while the file was read).
            at_exec = bool(flags & ev.EXEC_TRACED) or (not self.cfg.go_uprobes and bool(flags & ev.EXEC_PENDING))
            self._exes.traced(p.pid, info[0] if info is not None else 0, at_exec, self._ready_ns.pop(p.pid, 0))
        else:
            self._exes.traced_at[p.pid] = 1 << 63  # not fully traced: every exchange counts as before
        if exe is not None and exe.ready:
            # Other processes of this file traced since their exec, waiting behind this one: now, not
            # one poll or one inspection later each.
            for q in [q for q, (_, k, _) in self._execs.items() if k in exe.kernel_keys and q not in self.procs]:
                self._consider(q, wait=True)

    def _detach(self, pid: int, keep_kernel: bool = False) -> None:
        if pid in self._inspecting and pid not in self.procs and self.bpf is not None:
            # Exited while its executable is read (traced since exec): the answer still names its rows.
            self._exited_pending[pid] = time.monotonic()
            with contextlib.suppress(KeyError):
                del self.bpf["pids"][C.c_uint32(pid)]
        p = self.procs.get(pid)
        if p is None or self.bpf is None:
            if pid not in self._exited_pending:  # else its file is still to be named (_attach_inspected)
                self._execs.pop(pid, None)
            self._exec_paths.pop(pid, None)
            return
        self._sweep_quiet(exited=pid)  # a process exits without close(): its open exchanges end here
        del self.procs[pid]
        self._gone[pid] = (p, self._decodes)
        self._c["procs_detached"] += 1
        if not keep_kernel:
            try:
                del self.bpf["pids"][C.c_uint32(pid)]
            except KeyError:
                pass
        self._forget_pid(pid)
        if self._exes is not None:  # the file's probes stay for its other (and next) processes
            self._exes.gone(pid, p.inode, p.comm)

    def _reap_gone(self) -> None:
        """Detach traced processes that no longer exist: their exit event can be lost (proc_events
        full, counted in lost_ringbuf), which left them and their kernel entries behind for good."""
        now = time.monotonic()
        for pid in [p for p, t in self._exited_pending.items() if now - t > 60]:  # the answer never came
            del self._exited_pending[pid]
            self._inspecting.discard(pid)
        for pid in [p for p in self._execs if p not in self.procs and p not in self._inspecting
                    and not os.path.exists(f"/proc/{p}")]:
            del self._execs[pid]
        for pid in [p for p in self._exec_paths if p not in self._execs]:
            del self._exec_paths[pid]
        for pid in [p for p in self.procs if not os.path.exists(f"/proc/{p}")]:
            self._errors.record("exit_event_missed", None, f"pid {pid} gone without an exit event")
            try:
                self._detach(pid)
            except Exception as e:
                self._errors.record("detach", e, f"pid {pid}")

    def _forget_pid(self, pid: int) -> None:
        """Every kernel entry keyed by the process (tgid << 32 | fd or tid): a process that exits
        without closing its sockets (most short-lived clients) leaves them behind otherwise, and
        ``flushed`` markers of its quiet exchanges filled that map within a few thousand processes."""
        assert self.bpf is not None
        for name in ("conns", "flushed", "client_marks", "inflight_io"):
            table = self.bpf[name]
            for k in [k for k in all_keys(table) if k.value >> 32 == pid]:
                with contextlib.suppress(KeyError):
                    del table[k]

    def _attach_uprobe(self, path: str, file_offset: int, prog: str) -> bytes:
        """Entry uprobe at a file offset we computed (bcc's own address lookup fails on Go binaries
        without symbols, and on /proc/<pid>/exe paths). Never a uretprobe: Go moves stacks."""
        from bcc import BPF, lib

        assert self.bpf is not None
        fn = self.bpf.load_func(prog.encode(), BPF.KPROBE)
        ev_name = self.bpf._get_uprobe_evname(b"p", path.encode(), file_offset, -1)
        fd = lib.bpf_attach_uprobe(fn.fd, 0, ev_name, path.encode(), file_offset, -1)
        if fd < 0:
            raise OSError(f"uprobe {prog} at {path}+{file_offset:#x} failed")
        self.bpf._add_uprobe_fd(ev_name, fd)
        return ev_name

    def _sweep_quiet(self, exited: int = 0) -> None:
        """Emit exchanges whose response ended but whose connection went quiet: the kernel side only
        sees an end when the next request or a close comes (a keep-alive client waits). A marker in
        ``flushed`` stops the kernel from sending the same exchange again later."""
        assert self.bpf is not None
        conns, flushed = self.bpf["conns"], self.bpf["flushed"]
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        quiet_ns = int(self.cfg.quiet_s * 1e9)
        live = set()
        for k, st in conns.items():
            e = st.ev
            if not st.active:
                continue
            mark = (k.value, e.start_ns)
            live.add(mark)
            if mark in self._swept:
                continue
            if exited:
                if k.value >> 32 != exited:
                    continue
            elif not (e.resp_bytes and now - e.end_ns > quiet_ns):
                continue
            try:
                flushed[k] = C.c_uint64(e.start_ns)
            except Exception as ex:  # full: the kernel emits this exchange itself later
                self._errors.record("flushed_map_full", ex, f"{len(flushed)} markers")
                continue
            self._swept.add(mark)
            record = np.frombuffer(bytes(e), self._dtype).copy()
            record["end_reason"] = ev.END_QUIET
            self._swept_events.append(record)
        self._swept &= live

    # --- records --------------------------------------------------------------------------------
    def _on_proc(self, _ctx, data, _size) -> None:  # type: ignore[no-untyped-def]
        # A ctypes callback: nothing may escape (bcc would print it and go on as if nothing happened).
        pid = 0
        try:
            rec = C.cast(data, C.POINTER(ev.HttpProc)).contents
            pid = rec.pid
            if rec.kind == ev.KIND_PROC_EXEC:
                # Pending and traced ones alike: a short process is gone before user space reads
                # /proc/<pid>/exe, and exe_prefix is then checked against the path it exec'd.
                if rec.flags & (ev.EXEC_PENDING | ev.EXEC_TRACED) and len(self._exec_paths) < MAX_EXECS:
                    self._exec_paths[rec.pid] = rec.filename  # ctypes: bytes up to the first NUL
                self._on_exec(rec.pid, rec.ts_ns, (rec.dev, rec.ino), rec.flags)
            elif rec.kind == ev.KIND_PROC_EXIT:
                self._detach(rec.pid)
        except Exception as e:
            self._errors.record("proc_event", e, f"pid {pid}")

    def _on_exec(self, pid: int, ts_ns: int, key: tuple[int, int], flags: int) -> None:
        if pid in self.procs:  # a traced process ran another program: the old one is gone
            self._detach(pid, keep_kernel=bool(flags & (ev.EXEC_TRACED | ev.EXEC_PENDING)))
        if flags & (ev.EXEC_TRACED | ev.EXEC_PENDING):
            if len(self._execs) < MAX_EXECS:
                self._execs[pid] = (ts_ns, key, flags)
            else:
                self._errors.record("exec_backlog_full", None, f"{MAX_EXECS} processes waiting")
        elif not self.cfg.pids and not flags & ev.EXEC_NO_INODE:
            return  # the kernel knows this executable is not ours
        self._consider(pid)

    def _service(self, pid: int) -> tuple[str, str, str]:
        p = self.procs.get(pid) or self._gone.get(pid, (None, 0))[0]
        return (p.service, p.version, p.binary.go_version) if p else ("", "", "")

    def _read_ring(self) -> None:
        assert self._ring is not None
        events = self._ring.read()
        if len(events):
            self._pending.append(events)
            self._pending_rows += len(events)

    def _decode(self) -> None:
        """Everything in the ring, read before and swept so far, as one batch."""
        self._last_decode = time.monotonic()
        self._read_ring()
        batch = self._pending + self._swept_events
        self._pending, self._pending_rows, self._swept_events = [], 0, []
        if batch:
            # Concatenated as bytes: numpy's structured concatenate is slow for padded dtypes.
            raw = np.concatenate([b.view(np.uint8).reshape(len(b), -1) for b in batch])
            batch_events = raw.view(self._dtype).ravel()
        else:
            batch_events = np.empty(0, self._dtype)
        try:
            events = self._hold_undecided(batch_events)
        except Exception as e:  # a bug here must not lose the batch
            self._errors.record("hold", e, f"{len(batch_events)} records decoded at once")
            events, self._held, self._held_rows = batch_events, [], 0
        if len(events):
            for dec in self._decode_isolated(events):
                try:
                    self._dispatch(dec)
                except Exception as e:  # a linking bug loses these rows, counted; not the agent
                    self._errors.record("dispatch", e, f"{dec.table.num_rows} rows lost", n=dec.table.num_rows)
        self._decodes += 1
        for pid in [p for p, (_, at) in self._gone.items() if at <= self._decodes - 2]:
            del self._gone[pid]
            if self._exes is not None and pid not in self.procs:
                self._exes.forget(pid)

    def _hold_undecided(self, events: np.ndarray) -> np.ndarray:
        """The records to decode now. Those of processes the kernel traces since their exec but user space
        has not decided on yet (their executable is being read) wait, at most HOLD_S, then decode without
        a service; those of processes that proved not ours (or whose exec event never came) are dropped,
        counted in ``untraced_records``."""
        now = time.monotonic()
        parts = [*self._held, (events, now)]
        self._held, self._held_rows = [], 0
        out: list[np.ndarray] = []
        decided = self.procs.keys() | self._gone.keys()
        for arr, t0 in parts:
            if not len(arr):
                continue
            pids = arr["pid"]
            undecided = [p for p in np.unique(pids).tolist() if p not in decided]
            if not undecided:
                out.append(arr)
                continue
            m = np.isin(pids, undecided)
            out.append(arr[~m])
            rest = arr[m]
            waiting = np.isin(rest["pid"], [p for p in undecided if p in self._inspecting or p in self._execs])
            age = now - t0
            if age <= HOLD_S and self._held_rows + len(rest) <= MAX_HELD:
                # Unknown pids too, for a short while: their exec event may come in the next poll.
                keep_mask = waiting | (age <= UNKNOWN_GRACE_S)
                keep, drop = rest[keep_mask], rest[~keep_mask]
            else:
                keep, drop = rest[:0], rest[~waiting]
                late = rest[waiting]
                if len(late):
                    self._c["held_records_decoded_late"] += len(late)
                    out.append(late)
            if len(keep):
                self._held.append((keep, t0))
                self._held_rows += len(keep)
            if len(drop):
                self._c["untraced_records"] += len(drop)
                # Its connections' kernel entries too: no close() of an untraced process is seen.
                for pid in np.unique(drop["pid"]).tolist():
                    if pid not in self.procs and pid not in self._inspecting:
                        self._forget_pid(pid)
        out = [a for a in out if len(a)]
        if not out:
            return np.empty(0, self._dtype)
        if len(out) == 1:
            return out[0]
        raw = np.concatenate([b.view(np.uint8).reshape(len(b), -1) for b in out])
        return raw.view(self._dtype).ravel()

    def _decode_isolated(self, events: np.ndarray) -> list[Decoded]:
        """decode(events), or when that raises (a decoder bug some record triggers: the decoder is
        meant to be total), the batch in halves down to single records: the bad ones are counted in
        ``rejected`` and logged once, the rest decode as usual."""
        try:
            return [decode(events, self._ctx, self._clock)]
        except Exception as e:
            if len(events) > 1:
                half = len(events) // 2
                return self._decode_isolated(events[:half]) + self._decode_isolated(events[half:])
            self._reject(events, e)
            return []

    def _reject(self, events: np.ndarray, error: Exception) -> None:
        self._c["rejected"] += len(events)
        if self._rejected_logged:
            return
        self._rejected_logged = True
        e = events[0]
        comm = e["comm"].tobytes().split(b"\0", 1)[0].decode("utf-8", "replace")
        # Context without the head's bytes: they may carry credentials.
        log.error("HTTP record rejected (decoder error %s: %s): pid %d comm %r head_len %d flags %#x role %d; "
                  "counted in 'rejected', further rejections are counted only", type(error).__name__, error,
                  int(e["pid"]), comm, int(e["head_len"]), int(e["flags"]), int(e["role"]), exc_info=error)

    def _dispatch(self, dec: Decoded) -> None:
        self._c["parse_errors"] += dec.parse_errors
        table, g = dec.table, dec.goroutine
        if not table.num_rows:
            return
        self._c["captured"] += table.num_rows
        if self._exes is not None:  # exchanges that started before their process was fully traced
            for pid in np.unique(dec.pid).tolist():
                at = self._exes.traced_at.get(pid)
                if at is not None:
                    self._exes.count_before(pid, int(np.count_nonzero(dec.start_ns[dec.pid == pid] < at)))
        if self.cfg.go_uprobes and g.any():
            # Linking (uprobes only): remember served requests by goroutine, hold back outbound ones
            # until the inbound request that made them is known.
            now = time.monotonic()
            server = dec.role == ev.ROLE_SERVER
            keys = set()
            for i in np.flatnonzero(server & (g != 0)).tolist():
                key = (int(dec.pid[i]), int(g[i]))
                end = int(dec.end_ns[i]) or int(dec.start_ns[i])
                # Every served request of the goroutine, sorted by start: a keep-alive connection is served
                # by one goroutine, and a burst on it must all stay findable (a 64-entry ring per key
                # kept only the last 64 of a 300-request burst decoded together: 64 of 300 linked).
                q = self._servers.setdefault(key, [])
                entry = (int(dec.start_ns[i]), end, int(dec.request_id[i]), now)
                if not q or q[-1][0] <= entry[0]:
                    q.append(entry)
                else:
                    bisect.insort(q, entry)
                self._server_rows += 1
                keys.add(key)
            outbound = ~server & (g != 0)
            if outbound.any():
                rows = HTTP_REQUEST.to_rows(table.filter(pa.array(outbound)))
                for i, row in zip(np.flatnonzero(outbound).tolist(), rows, strict=True):
                    pid, gi, start = int(dec.pid[i]), int(g[i]), int(dec.start_ns[i])
                    if not self._link(row, pid, gi, start):
                        if len(self._waiting) >= MAX_WAITING:  # bounded: the oldest goes on unlinked
                            self._errors.record("link_backlog_full", None, f"{MAX_WAITING} rows waiting")
                            self._c["link_timeouts"] += 1
                            self._linked_out.append(self._waiting.popleft()[4])
                        self._waiting.append((now, pid, gi, start, row))
                table = table.filter(pa.array(~outbound))
            for key in keys:
                self._match_waiting(key)
        self._emit(KIND, table)
        self._emit_linked()

    def _emit_linked(self) -> None:
        # Outbound rows held for their link (uprobes only) go on together, one table per poll.
        if self._linked_out:
            rows, self._linked_out = self._linked_out, []
            self._emit(KIND, HTTP_REQUEST.to_arrow(rows))

    # --- linking outbound to inbound (Go uprobes) -----------------------------------------------
    def _link(self, row: dict, pid: int, g: int, start_ns: int) -> bool:
        q = self._servers.get((pid, g))
        if not q:
            return False
        # One goroutine serves one request at a time: the last one started at or before this call.
        i = bisect.bisect_right(q, start_ns, key=lambda e: e[0]) - 1
        if i >= 0 and q[i][0] <= start_ns <= q[i][1]:
            row["parent_request_id"] = q[i][2]
            self._c["linked"] += 1
            self._linked_out.append(row)
            return True
        return False

    def _match_waiting(self, key: tuple[int, int]) -> None:
        if not self._waiting:
            return
        keep: deque = deque()
        for item in self._waiting:
            _, pid, g, start, row = item
            if (pid, g) != key or not self._link(row, pid, g, start):
                keep.append(item)
        self._waiting = keep

    def _flush_waiting(self, force: bool = False) -> None:
        now = time.monotonic()
        while self._waiting and (force or now - self._waiting[0][0] > self.cfg.link_wait_s):
            row = self._waiting.popleft()[4]
            self._c["link_timeouts"] += 1
            self._linked_out.append(row)
        # Forget server rows older than twice the wait: no outbound row can still need them.
        if len(self._servers) > 4096 or self._server_rows > MAX_SERVER_ROWS // 2 or force \
                or now - self._last_prune > self.cfg.link_wait_s:
            self._last_prune = now
            cutoff = now - 2 * self.cfg.link_wait_s
            for k in [k for k, q in self._servers.items() if q and q[-1][3] < cutoff]:
                del self._servers[k]
            for q in self._servers.values():
                if q[0][3] < cutoff:
                    q[:] = [e for e in q if e[3] >= cutoff]
            self._server_rows = sum(len(q) for q in self._servers.values())
            while self._server_rows > MAX_SERVER_ROWS and self._servers:  # all recent: the oldest keys go
                k = next(iter(self._servers))
                self._server_rows -= len(self._servers.pop(k))
                self._errors.record("link_servers_evicted", None, f"over {MAX_SERVER_ROWS} served requests")
            if len(self._servers) > MAX_SERVERS:  # all recent: the oldest keys go (their rows link no more)
                excess = len(self._servers) - MAX_SERVERS
                for k in list(itertools.islice(self._servers, excess)):
                    del self._servers[k]
                self._errors.record("link_servers_evicted", None, f"over {MAX_SERVERS} goroutines", n=excess)

