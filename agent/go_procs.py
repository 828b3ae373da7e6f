"""Finding Go processes: at start by scanning /proc, later from exec events (the BPF program reports
every sched_process_exec; this module decides which are Go). Service name and version come from, in
order: the agent's configuration (by comm), the process environment (OTEL_SERVICE_NAME / SERVICE_NAME,
SERVICE_VERSION / OTEL_RESOURCE_ATTRIBUTES service.version), the Go build info."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent import go_binary, procfs
from agent.go_binary import GoBinary, NotGo

ENV_KEYS = (b"OTEL_SERVICE_NAME", b"SERVICE_NAME", b"SERVICE_VERSION", b"OTEL_RESOURCE_ATTRIBUTES")


@dataclass
class GoProcess:
    pid: int
    exe: str  # /proc/<pid>/exe: opens the binary even from another mount namespace
    comm: str
    binary: GoBinary
    service: str
    version: str
    inode: tuple[int, int]  # (st_dev, st_ino) of the binary: uprobes attach per file


MAX_ENVIRON_BYTES = 1 << 20  # /proc/<pid>/environ belongs to the process's user: read a bounded prefix


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read(MAX_ENVIRON_BYTES)
    except OSError:
        return {}
    out = {}
    for kv in raw.split(b"\0"):
        k, sep, v = kv.partition(b"=")
        if sep and k in ENV_KEYS:
            out[k] = v
    return out


def service_identity(binary: GoBinary, env: dict[bytes, bytes], comm: str,
                     configured: dict[str, tuple[str, str]] | None = None) -> tuple[str, str]:
    if configured and comm in configured:
        return configured[comm]
    name = (env.get(b"OTEL_SERVICE_NAME") or env.get(b"SERVICE_NAME") or b"").decode("utf-8", "replace")
    version = env.get(b"SERVICE_VERSION", b"").decode("utf-8", "replace")
    if not version:
        for attr in env.get(b"OTEL_RESOURCE_ATTRIBUTES", b"").decode("utf-8", "replace").split(","):
            k, _, v = attr.partition("=")
            if k.strip() == "service.version":
                version = v.strip()
    if not name:
        name = binary.main_path.rsplit("/", 1)[-1] or comm
    if not version:
        v = binary.main_version
        if v in ("", "(devel)"):
            v = binary.settings.get("vcs.revision", "")[:12] or v
        version = v
    return name[:128], version[:128]


def inspect_pid(pid: int, want_offsets: bool, configured: dict[str, tuple[str, str]] | None = None,
                parse: go_binary.Parser | None = None, snap: Snapshot | None = None) -> GoProcess | None:
    exe = f"/proc/{pid}/exe"
    try:
        if snap is not None:  # taken at exec: the process may be gone by now, its file is still open
            st, comm, env, path = os.fstat(snap.fd), snap.comm, snap.env, f"/proc/{os.getpid()}/fd/{snap.fd}"
        else:
            st = os.stat(exe)
            comm = procfs.read_comm(Path(f"/proc/{pid}"))
            env, path = _environ(pid), exe
        binary = go_binary.inspect(path, want_offsets=want_offsets, parse=parse)
    except (OSError, NotGo):  # gone, not ours, not Go, or refused (go_binary counts and logs those)
        return None
    name, version = service_identity(binary, env, comm, configured)
    return GoProcess(pid, exe, comm, binary, name, version, (st.st_dev, st.st_ino))


@dataclass
class Snapshot:
    """What identifies a process, read at its exec: reading its executable takes a while, and a short
    process (a client's burst) may be gone by then, its requests still to be named."""

    fd: int  # its executable, open
    comm: str
    env: dict[bytes, bytes]

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def snapshot_file(path: bytes, dev: int, ino: int) -> Snapshot | None:
    """The file a process exec'd, by the path it gave (it is gone: a short command), only if that path
    still names the very file the kernel saw, (dev, ino) in the kernel's encoding. The path is another
    user's: it is resolved with O_PATH (opens nothing: no FIFO waits, no device side effects) and only a
    regular file with that identity is then opened, through the O_PATH descriptor."""
    if not path.startswith(b"/"):
        return None
    try:
        opath = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(opath)
        if not stat.S_ISREG(st.st_mode) or ((os.major(st.st_dev) << 20) | os.minor(st.st_dev), st.st_ino) != (dev, ino):
            return None
        fd = os.open(f"/proc/self/fd/{opath}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(opath)
    return Snapshot(fd, "", {})


def snapshot(pid: int) -> Snapshot | None:
    try:
        fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        comm = procfs.read_comm(Path(f"/proc/{pid}"))
    except OSError:
        comm = ""
    return Snapshot(fd, comm, _environ(pid))


def scan_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]
