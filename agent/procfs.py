"""What the kernel already had before the agent started, read from /proc.

An accepted socket is created in softirq context, where the current task is not its owner; the BPF
program then takes the owner from the listening socket, which it learns when ``listen()`` runs. For
listeners opened before the agent started, this module finds their owners the way ``ss -lp`` does:
socket inodes in /proc/net/tcp{,6} matched against /proc/<pid>/fd.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

TCP_LISTEN = 0x0A
# /proc is read at start-up, on the main thread, and its contents belong to every user: bounded.
MAX_NET_TCP_BYTES = 64 << 20  # /proc/net/tcp{,6}: 150 bytes a socket, ~450k sockets
MAX_PIDS = 200_000
MAX_FDS_PER_PID = 100_000
BUDGET_S = 10.0


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", "rb") as f:
        return f.read(64).strip().decode("ascii", "replace")


def _listening_inodes(proc: Path) -> dict[int, int]:
    """inode -> local port of every listening TCP socket."""
    out: dict[int, int] = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(proc / "net" / name, "rb") as fh:
                lines = fh.read(MAX_NET_TCP_BYTES).decode("ascii", "replace").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            try:
                if len(f) > 9 and int(f[3], 16) == TCP_LISTEN:
                    out[int(f[9])] = int(f[1].rsplit(":", 1)[1], 16)
            except ValueError:
                continue  # a line cut by the size bound
    return out


def read_comm(pid_dir: Path) -> str:
    """A process's name: bytes its owner chose (prctl, /proc/self/comm), so undecodable ones become
    U+FFFD; at most 64 bytes read (the kernel keeps 15)."""
    try:
        with open(pid_dir / "comm", "rb") as f:
            return f.read(64).rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return ""


def listener_owners(proc: Path = Path("/proc")) -> Iterator[tuple[int, int, str]]:
    """(port, pid, comm) for each listening TCP socket whose owner is visible."""
    inodes = _listening_inodes(proc)
    if not inodes:
        return
    seen: set[int] = set()
    deadline = time.monotonic() + BUDGET_S
    for n, pid_dir in enumerate(proc.iterdir()):
        if n >= MAX_PIDS or time.monotonic() > deadline:
            log.warning("listener owners: stopped after %d processes (bound); later listeners' owners "
                        "are learnt when they next listen()", n)
            return
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = os.listdir(pid_dir / "fd")[:MAX_FDS_PER_PID]
        except OSError:
            continue  # exited, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(pid_dir / "fd" / fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                try:
                    inode = int(target[8:-1])
                except ValueError:
                    continue
                if inode in inodes and inode not in seen:
                    seen.add(inode)
                    yield inodes[inode], int(pid_dir.name), read_comm(pid_dir)
