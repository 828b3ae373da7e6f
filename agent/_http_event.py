"""ctypes mirrors of the records in bpf/http_event.h, and its constants (parsed from the header)."""

from __future__ import annotations

import ctypes as C
from typing import Any

import numpy as np

from agent._bpf_abi import BPF_DIR, header_defines

HEADER = BPF_DIR / "http_event.h"


_D = header_defines(HEADER)
HEAD_MAX = _D["BS_HTTP_HEAD_MAX"]
STATUS_MAX = _D["BS_HTTP_STATUS_MAX"]
ROUTE_MAX = _D["BS_HTTP_ROUTE_MAX"]


def event_class(head_max: int = HEAD_MAX) -> type[C.Structure]:
    """struct http_event for a given BS_HTTP_HEAD_MAX (the agent may compile another size)."""

    class HttpEvent(C.Structure):
        _fields_ = [
            ("kind", C.c_uint32),
            ("pid", C.c_uint32),
            ("tid", C.c_uint32),
            ("fd", C.c_int32),
            ("start_ns", C.c_uint64),
            ("resp_start_ns", C.c_uint64),
            ("end_ns", C.c_uint64),
            ("req_bytes", C.c_uint64),
            ("resp_bytes", C.c_uint64),
            ("goroutine", C.c_uint64),
            ("saddr", C.c_uint8 * 16),
            ("daddr", C.c_uint8 * 16),
            ("sport", C.c_uint16),
            ("dport", C.c_uint16),
            ("family", C.c_uint16),
            ("head_len", C.c_uint16),
            ("status_len", C.c_uint16),
            ("route_len", C.c_uint16),
            ("role", C.c_uint8),
            ("end_reason", C.c_uint8),
            ("held_byte", C.c_uint8),
            ("_pad", C.c_uint8),
            ("flags", C.c_uint32),
            ("_pad2", C.c_uint32),
            ("comm", C.c_char * 16),
            ("status", C.c_char * STATUS_MAX),
            ("route", C.c_char * ROUTE_MAX),
            ("head", C.c_char * head_max),
        ]

    assert C.sizeof(HttpEvent) == 296 + head_max  # pinned by _Static_assert in the header
    return HttpEvent


def event_dtype(head_max: int = HEAD_MAX) -> np.dtype:
    """The same struct as a numpy dtype (char arrays as uint8 arrays), for decoding in bulk."""
    cls = event_class(head_max)
    names: list[str] = []
    formats: list[Any] = []
    offsets: list[int] = []
    for name, ctype in cls._fields_:  # type: ignore[attr-defined,misc]
        names.append(name)
        offsets.append(getattr(cls, name).offset)
        length = getattr(ctype, "_length_", None)  # a C array
        formats.append((np.uint8, (length,)) if length is not None else np.dtype(ctype).newbyteorder("<"))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": C.sizeof(cls)})


EXEC_PATH_MAX = _D["BS_HTTP_EXEC_PATH_MAX"]


class HttpProc(C.Structure):
    _fields_ = [("kind", C.c_uint32), ("pid", C.c_uint32), ("ts_ns", C.c_uint64), ("dev", C.c_uint64),
                ("ino", C.c_uint64), ("flags", C.c_uint32), ("_pad", C.c_uint32),
                ("filename", C.c_char * EXEC_PATH_MAX)]


assert C.sizeof(HttpProc) == 40 + EXEC_PATH_MAX

KIND_EXCHANGE, KIND_PROC_EXEC, KIND_PROC_EXIT = (
    _D["BS_HTTP_EXCHANGE"], _D["BS_HTTP_PROC_EXEC"], _D["BS_HTTP_PROC_EXIT"])
ROLE_CLIENT, ROLE_SERVER = _D["BS_HTTP_CLIENT"], _D["BS_HTTP_SERVER"]
END_REASONS = {_D["BS_HTTP_END_IDLE"]: "idle", _D["BS_HTTP_END_NEXT"]: "next", _D["BS_HTTP_END_CLOSE"]: "close",
               _D["BS_HTTP_END_QUIET"]: "quiet"}
END_QUIET = _D["BS_HTTP_END_QUIET"]
F_HEAD_TRUNC = _D["BS_HTTP_F_HEAD_TRUNC"]
F_ADDR = _D["BS_HTTP_F_ADDR"]
F_GO_SERVER = _D["BS_HTTP_F_GO_SERVER"]
F_GO_CLIENT = _D["BS_HTTP_F_GO_CLIENT"]
F_HELD_BYTE = _D["BS_HTTP_F_HELD_BYTE"]
STAT_EMITTED, STAT_LOST_RINGBUF, STAT_LOST_MAP_FULL, STAT_UPROBE_HITS = (
    _D["BS_HTTP_STAT_EMITTED"], _D["BS_HTTP_STAT_LOST_RINGBUF"], _D["BS_HTTP_STAT_LOST_MAP_FULL"],
    _D["BS_HTTP_STAT_UPROBE_HITS"])
STAT_AUX_MAP_FULL = _D["BS_HTTP_STAT_AUX_MAP_FULL"]
STAT_PIDS_FULL = _D["BS_HTTP_STAT_PIDS_FULL"]
STAT_RINGBUF_RETRIED = _D["BS_HTTP_STAT_RINGBUF_RETRIED"]
STAT_N = _D["BS_HTTP_STAT_N"]
EXEC_TRACED, EXEC_PENDING, EXEC_NO_INODE = (
    _D["BS_HTTP_EXEC_TRACED"], _D["BS_HTTP_EXEC_PENDING"], _D["BS_HTTP_EXEC_NO_INODE"])
GO_READY, GO_PENDING, GO_NOT_TRACED = _D["BS_GO_READY"], _D["BS_GO_PENDING"], _D["BS_GO_NOT_TRACED"]
