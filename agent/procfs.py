"""What the kernel already had before the agent started, read from /proc.

An accepted socket is created in softirq context, where the current task is not its owner; the BPF
program then takes the owner from the listening socket, which it learns when ``listen()`` runs. For
listeners opened before the agent started, this module finds their owners the way ``ss -lp`` does:
socket inodes in /proc/net/tcp{,6} matched against /proc/<pid>/fd.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

TCP_LISTEN = 0x0A


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _listening_inodes(proc: Path) -> dict[int, int]:
    """inode -> local port of every listening TCP socket."""
    out: dict[int, int] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and int(f[3], 16) == TCP_LISTEN:
                out[int(f[9])] = int(f[1].rsplit(":", 1)[1], 16)
    return out


def listener_owners(proc: Path = Path("/proc")) -> Iterator[tuple[int, int, str]]:
    """(port, pid, comm) for each listening TCP socket whose owner is visible."""
    inodes = _listening_inodes(proc)
    if not inodes:
        return
    seen: set[int] = set()
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = os.listdir(pid_dir / "fd")
        except OSError:
            continue  # exited, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(pid_dir / "fd" / fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes and inode not in seen:
                    seen.add(inode)
                    try:
                        comm = (pid_dir / "comm").read_text().strip()
                    except OSError:
                        comm = ""
                    yield inodes[inode], int(pid_dir.name), comm
