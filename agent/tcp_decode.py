"""Decoding kernel TCP records into rows of ``tcp_connections``: pure functions, no BPF needed."""

from __future__ import annotations

import errno
import functools
import hashlib
import socket
from collections.abc import Mapping
from typing import Any

from agent import _tcp_event as ev
from agent.clock import Clock
from agent.drop_reasons import reason_name

TCP_SYN_SENT, TCP_SYN_RECV = 2, 3
ROLE_NAMES = {ev.ROLE_CLIENT: "client", ev.ROLE_SERVER: "server", ev.ROLE_UNKNOWN: "unknown"}
COMM_MAX = 16  # bytes of the comm columns: a kernel comm is at most 15, but U+FFFD takes 3 bytes


def bounded(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, at a character boundary (a column's bound)."""
    raw = text.encode()
    return text if len(raw) <= max_bytes else raw[:max_bytes].decode("utf-8", "ignore")


def comm_text(raw: bytes) -> str:
    """A task comm (NUL-padded bytes, not always UTF-8) as the comm column's text."""
    text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return text if len(text) < COMM_MAX and text.isascii() else bounded(text, COMM_MAX)


def address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


_M64 = (1 << 64) - 1


@functools.cache
def _boot_salt(boot_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(boot_id.encode(), digest_size=8).digest(), "little")


def conn_id(boot_id: str, sk: int, start_ns: int) -> int:
    """Stable 64-bit id of a connection, unique per boot (a socket address is reused only after it is
    freed, and never with the same start time). splitmix64's finalizer: cheap on the hot path."""
    x = ((sk ^ _boot_salt(boot_id)) * 0x9E3779B97F4A7C15 + start_ns) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def close_reason(old_state: int, flags: int, sk_err: int) -> str:
    """How a connection ended, from the state it left, the reset flags and the socket's error;
    ``close_unseen`` when the kernel skipped its end and the agent found its socket gone later."""
    if flags & ev.F_CLOSE_UNSEEN:
        return "close_unseen"
    if old_state == TCP_SYN_SENT:
        if sk_err == errno.ECONNREFUSED or flags & ev.F_RST_RECEIVED:
            return "refused"
        if sk_err == errno.ETIMEDOUT:
            return "timeout"
        return "connect_failed"  # unreachable, or the caller gave up before the handshake finished
    if old_state == TCP_SYN_RECV and not flags & ev.F_ESTABLISHED:
        return "handshake_failed"
    if sk_err == errno.ETIMEDOUT:
        return "timeout"
    if flags & ev.F_RST_RECEIVED:
        return "reset_received"
    if flags & ev.F_RST_SENT:
        return "reset_sent"
    return "closed"


def owner_source(flags: int) -> str:
    if flags & ev.F_OWNER_EXACT:
        return "exact"
    if flags & ev.F_OWNER_LISTENER:
        return "listener"
    return "unknown"


def drop_reason(e: ev.TcpRecord, names: Mapping[int, str]) -> str:
    """The name of a connection's main drop reason ("" when none of its packets was dropped)."""
    return reason_name(names, e.drop_reason) if e.drops else ""


_NO_NAMES: Mapping[int, str] = {}


def decode_closed(
    e: ev.TcpRecord, *, clock: Clock, host: str, boot_id: str, agent_start_ns: int, app_bytes: bool,
    drop_names: Mapping[int, str] = _NO_NAMES,
) -> dict[str, Any]:
    """One ``tcp_connections`` row from a ``struct tcp_event``.

    ``app_bytes``: the kernel has the sock_*_length tracepoints, so payload bytes are exact. Without
    them, fall back to the sequence-space counters, which count a SYN and a FIN as one byte each.
    ``drop_names``: the running kernel's drop reasons (agent/drop_reasons.py).
    """
    preexisting = bool(e.flags & ev.F_PREEXISTING)
    start = e.start_ns
    if preexisting or not app_bytes:
        sent, received = e.bytes_acked, e.bytes_received
    else:
        sent, received = e.app_bytes_sent, e.app_bytes_received
    return {
        "host": host,
        "conn_id": conn_id(boot_id, e.sk, start or agent_start_ns),
        "start_time": clock.wall(start),
        "end_time": clock.wall(e.end_ns),
        "duration_ns": max(e.end_ns - start, 0) if start else 0,
        "handshake_ns": max(e.established_ns - start, 0) if start and e.established_ns else 0,
        "role": ROLE_NAMES.get(e.role, "unknown"),
        "family": 4 if e.family == socket.AF_INET else 6,
        "local_addr": address(e.family, e.saddr),
        "local_port": e.sport,
        "remote_addr": address(e.family, e.daddr),
        "remote_port": e.dport,
        "pid": e.pid,
        "comm": comm_text(e.comm),
        "bytes_sent": sent,
        "bytes_received": received,
        "retransmits": e.retransmits,
        "srtt_us": e.srtt_us,
        "close_reason": close_reason(e.old_state, e.flags, e.sk_err),
        "started_before_agent": int(preexisting),
        "owner_source": owner_source(e.flags),
        "drops": e.drops,
        "drop_reason": drop_reason(e, drop_names),
    }


def decode_open(
    c: ev.TcpRecord, *, clock: Clock, host: str, boot_id: str, agent_start_ns: int, snapshot_ns: int,
    drop_names: Mapping[int, str] = _NO_NAMES,
) -> dict[str, Any] | None:
    """One ``tcp_connections_open`` row from an entry of the BPF ``conns`` map, or None for entries
    that are not open connections (still in the handshake, or closed and waiting for their owner)."""
    preexisting = bool(c.flags & ev.F_PREEXISTING)
    if c.flags & ev.F_CLOSED or not (c.flags & ev.F_ESTABLISHED or preexisting):
        return None
    return {
        "snapshot_time": snapshot_ns,
        "host": host,
        "conn_id": conn_id(boot_id, c.sk, c.start_ns or agent_start_ns),
        "start_time": clock.wall(c.start_ns),
        "role": ROLE_NAMES.get(c.role, "unknown"),
        "family": 4 if c.family == socket.AF_INET else 6,
        "local_addr": address(c.family, c.saddr),
        "local_port": c.sport,
        "remote_addr": address(c.family, c.daddr),
        "remote_port": c.dport,
        "pid": c.pid,
        "comm": comm_text(c.comm),
        "bytes_sent": c.app_bytes_sent,
        "bytes_received": c.app_bytes_received,
        "started_before_agent": int(preexisting),
        "drops": c.drops,
        "drop_reason": drop_reason(c, drop_names),
    }
