"""Decoding kernel records into rows: pure functions, no root."""

from __future__ import annotations

import errno
import socket

import pytest

from agent import _tcp_event as ev
from agent.clock import Clock
from agent.tcp_decode import address, close_reason, conn_id, decode_closed, decode_open
from tests.fuzz.corpus import tcp_record

ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, LAST_ACK = 1, 2, 3, 4, 5, 9


@pytest.mark.parametrize(
    ("old_state", "flags", "sk_err", "want"),
    [
        (SYN_SENT, ev.F_RST_RECEIVED, errno.ECONNREFUSED, "refused"),
        (SYN_SENT, 0, errno.ECONNREFUSED, "refused"),
        (SYN_SENT, 0, errno.ETIMEDOUT, "timeout"),
        (SYN_SENT, 0, errno.EHOSTUNREACH, "connect_failed"),
        (SYN_SENT, 0, 0, "connect_failed"),
        (SYN_RECV, 0, 0, "handshake_failed"),
        (ESTABLISHED, ev.F_ESTABLISHED | ev.F_RST_RECEIVED, errno.ECONNRESET, "reset_received"),
        (FIN_WAIT1, ev.F_ESTABLISHED | ev.F_RST_SENT, 0, "reset_sent"),
        (ESTABLISHED, ev.F_ESTABLISHED, errno.ETIMEDOUT, "timeout"),
        (LAST_ACK, ev.F_ESTABLISHED, 0, "closed"),
        (FIN_WAIT2, ev.F_ESTABLISHED, 0, "closed"),
        # found gone by check_conn: whatever the entry said before, its end was not seen
        (0, ev.F_ESTABLISHED | ev.F_CLOSE_UNSEEN, 0, "close_unseen"),
        (SYN_SENT, ev.F_RST_RECEIVED | ev.F_CLOSE_UNSEEN, errno.ECONNREFUSED, "close_unseen"),
    ],
)
def test_close_reason(old_state: int, flags: int, sk_err: int, want: str) -> None:
    assert close_reason(old_state, flags, sk_err) == want


def test_address_forms() -> None:
    assert address(socket.AF_INET, bytes([10, 1, 2, 3]) + bytes(12)) == "10.1.2.3"
    assert address(socket.AF_INET6, bytes(15) + b"\x01") == "::1"


def test_conn_id_is_stable_and_distinct() -> None:
    a = conn_id("boot", 0xFFFF888100000000, 123)
    assert a == conn_id("boot", 0xFFFF888100000000, 123)
    assert a != conn_id("boot", 0xFFFF888100000000, 124)
    assert a != conn_id("other-boot", 0xFFFF888100000000, 123)
    assert 0 <= a < 2**64


def _event(**kw: object) -> ev.TcpRecord:
    return ev.unpack(tcp_record(**kw))  # the same path as the ring buffer callback


def test_decode_closed_uses_app_bytes_and_wall_clock() -> None:
    e = _event(start_ns=1_000, established_ns=1_500, end_ns=9_000, bytes_acked=101, bytes_received=51,
               app_bytes_sent=100, app_bytes_received=50, pid=42, role=ev.ROLE_CLIENT, old_state=LAST_ACK,
               flags=ev.F_ESTABLISHED | ev.F_OWNER_EXACT | ev.F_CLOSED, srtt_us=30, retransmits=2)
    row = decode_closed(e, clock=Clock(offset_ns=10**18), host="h", boot_id="b", agent_start_ns=0, app_bytes=True)
    assert row["start_time"] == 10**18 + 1_000 and row["end_time"] == 10**18 + 9_000
    assert (row["duration_ns"], row["handshake_ns"]) == (8_000, 500)
    assert (row["bytes_sent"], row["bytes_received"]) == (100, 50)
    assert (row["role"], row["comm"], row["pid"], row["owner_source"]) == ("client", "curl", 42, "exact")
    assert (row["local_addr"], row["remote_addr"], row["local_port"], row["remote_port"]) == (
        "127.0.0.1", "127.0.0.2", 40000, 80)
    assert (row["srtt_us"], row["retransmits"], row["close_reason"]) == (30, 2, "closed")


def test_decode_closed_without_app_bytes_or_start() -> None:
    e = _event(end_ns=9_000, bytes_acked=101, bytes_received=51, flags=ev.F_PREEXISTING | ev.F_CLOSED)
    row = decode_closed(e, clock=Clock(offset_ns=0), host="h", boot_id="b", agent_start_ns=77, app_bytes=True)
    assert (row["bytes_sent"], row["bytes_received"]) == (101, 51)  # kernel counters: no app bytes seen
    assert row["started_before_agent"] == 1 and row["start_time"] == 0 and row["duration_ns"] == 0
    assert row["conn_id"] == conn_id("b", e.sk, 77)
    assert row["role"] == "unknown"


def test_decode_open_skips_handshakes_and_closed() -> None:
    kw = {"clock": Clock(offset_ns=0), "host": "h", "boot_id": "b", "agent_start_ns": 0, "snapshot_ns": 5}
    assert decode_open(_event(start_ns=1), **kw) is None
    assert decode_open(_event(start_ns=1, flags=ev.F_ESTABLISHED | ev.F_CLOSED), **kw) is None
    row = decode_open(_event(start_ns=1, flags=ev.F_ESTABLISHED, app_bytes_sent=7, role=ev.ROLE_SERVER), **kw)
    assert row is not None and row["bytes_sent"] == 7 and row["role"] == "server"
    assert row["conn_id"] == conn_id("b", 0xFFFF8881, 1)
