"""ctypes mirror of ``struct tcp_event`` (bpf/tcp_event.h) and its constants.

Kept by hand beside the header; tests/test_bpf_layout.py compiles the header and checks every field
offset and the total size against this class, so the two cannot drift apart silently.
"""

from __future__ import annotations

import ctypes as C
import struct
from collections import namedtuple
from typing import Any, TypeAlias

from agent._bpf_abi import BPF_DIR, header_defines, struct_format

HEADER = BPF_DIR / "tcp_event.h"


class TcpEvent(C.Structure):
    _fields_ = [
        ("sk", C.c_uint64),
        ("start_ns", C.c_uint64),
        ("established_ns", C.c_uint64),
        ("end_ns", C.c_uint64),
        ("bytes_acked", C.c_uint64),
        ("bytes_received", C.c_uint64),
        ("app_bytes_sent", C.c_uint64),
        ("app_bytes_received", C.c_uint64),
        ("saddr", C.c_uint8 * 16),
        ("daddr", C.c_uint8 * 16),
        ("pid", C.c_uint32),
        ("srtt_us", C.c_uint32),
        ("retransmits", C.c_uint32),
        ("flags", C.c_uint32),
        ("sk_err", C.c_int32),
        ("sport", C.c_uint16),
        ("dport", C.c_uint16),
        ("family", C.c_uint16),
        ("role", C.c_uint8),
        ("old_state", C.c_uint8),
        ("kind", C.c_uint8),
        ("_pad", C.c_uint8 * 3),
        ("comm", C.c_char * 16),
        ("drops", C.c_uint32),
        ("drop_reason", C.c_uint32),
        ("drop_votes", C.c_uint32),
        ("_pad2", C.c_uint32),
    ]


# Reading fields off a ctypes object costs far more than unpacking a tuple: the hot path unpacks.
_Record = namedtuple("TcpRecord", [name for name, _ in TcpEvent._fields_], rename=True)  # type: ignore[misc]
TcpRecord: TypeAlias = Any  # a namedtuple with TcpEvent's field names (built at import: typed loosely)
_UNPACK = struct.Struct(struct_format(TcpEvent._fields_))  # type: ignore[arg-type]
assert _UNPACK.size == C.sizeof(TcpEvent)


def unpack(buf: bytes | bytearray | memoryview) -> TcpRecord:
    """A ``TcpRecord`` (namedtuple, same field names) from the raw bytes of a struct tcp_event."""
    return _Record._make(_UNPACK.unpack_from(buf))


_D = header_defines(HEADER)
TCP_EVENT_SIZE = 160  # pinned by _Static_assert in the header
assert C.sizeof(TcpEvent) == TCP_EVENT_SIZE

KIND_OPEN = _D["BS_TCP_OPEN"]
KIND_CLOSED = _D["BS_TCP_CLOSED"]
ROLE_UNKNOWN, ROLE_CLIENT, ROLE_SERVER = _D["BS_ROLE_UNKNOWN"], _D["BS_ROLE_CLIENT"], _D["BS_ROLE_SERVER"]
F_RST_RECEIVED = _D["BS_F_RST_RECEIVED"]
F_RST_SENT = _D["BS_F_RST_SENT"]
F_PREEXISTING = _D["BS_F_PREEXISTING"]
F_ESTABLISHED = _D["BS_F_ESTABLISHED"]
F_OWNER_EXACT = _D["BS_F_OWNER_EXACT"]
F_OWNER_LISTENER = _D["BS_F_OWNER_LISTENER"]
F_CLOSED = _D["BS_F_CLOSED"]
F_SENT = _D["BS_F_SENT"]
F_CLOSE_UNSEEN = _D["BS_F_CLOSE_UNSEEN"]
STAT_EMITTED = _D["BS_STAT_EMITTED"]
STAT_LOST_RINGBUF = _D["BS_STAT_LOST_RINGBUF"]
STAT_LOST_MAP_FULL = _D["BS_STAT_LOST_MAP_FULL"]
STAT_LISTENERS_FULL = _D["BS_STAT_LISTENERS_FULL"]
STAT_DROP_KEYS_FULL = _D["BS_STAT_DROP_KEYS_FULL"]
STAT_RINGBUF_RESCUED = _D["BS_STAT_RINGBUF_RESCUED"]
STAT_MAP_REFUSED = _D["BS_STAT_MAP_REFUSED"]
STAT_CLOSE_UNSEEN = _D["BS_STAT_CLOSE_UNSEEN"]
STAT_NESTED_HANDLED = _D["BS_STAT_NESTED_HANDLED"]
STAT_N = _D["BS_STAT_N"]
CHECK_NOT_OPEN, CHECK_ALIVE, CHECK_GONE = _D["BS_CHECK_NOT_OPEN"], _D["BS_CHECK_ALIVE"], _D["BS_CHECK_GONE"]
