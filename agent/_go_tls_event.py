"""Mirror of the records in bpf/go_tls_event.h and its constants (parsed from the header)."""

from __future__ import annotations

import ctypes as C
import struct

from agent._bpf_abi import BPF_DIR, header_defines, struct_format

HEADER = BPF_DIR / "go_tls_event.h"
_D = header_defines(HEADER)
DATA_MAX = _D["BS_TLS_DATA_MAX"]
HEADER_SIZE = _D["BS_TLS_HEADER_SIZE"]
KIND_DATA, KIND_PROC_EXEC = _D["BS_TLS_DATA"], _D["BS_TLS_PROC_EXEC"]
DIR_READ, DIR_WRITE = _D["BS_TLS_READ"], _D["BS_TLS_WRITE"]
F_ADDR, F_CUT, F_PLAIN = _D["BS_TLS_F_ADDR"], _D["BS_TLS_F_CUT"], _D["BS_TLS_F_PLAIN"]
F_MORE, F_CONT = _D["BS_TLS_F_MORE"], _D["BS_TLS_F_CONT"]
STAT_RINGBUF_RETRIED = _D["BS_TLS_STAT_RINGBUF_RETRIED"]
STAT_EMITTED, STAT_LOST_RINGBUF, STAT_HITS, STAT_READ_LOST, STAT_AUX_FULL, STAT_N = (
    _D["BS_TLS_STAT_EMITTED"], _D["BS_TLS_STAT_LOST_RINGBUF"], _D["BS_TLS_STAT_HITS"],
    _D["BS_TLS_STAT_READ_LOST"], _D["BS_TLS_STAT_AUX_FULL"], _D["BS_TLS_STAT_N"])
STAT_H2C_CONNS, STAT_H2C_UNTRACKED = _D["BS_TLS_STAT_H2C_CONNS"], _D["BS_TLS_STAT_H2C_UNTRACKED"]
KIND_GRPC_LINK, LINK_SIZE = _D["BS_TLS_GRPC_LINK"], _D["BS_TLS_LINK_SIZE"]
STAT_GRPC_INBOUND, STAT_GRPC_NO_HANDLER, STAT_GRPC_LINKS = (
    _D["BS_TLS_STAT_GRPC_INBOUND"], _D["BS_TLS_STAT_GRPC_NO_HANDLER"], _D["BS_TLS_STAT_GRPC_LINKS"])

# struct tls_event without its data (which follows, data_len bytes).
HEADER_FIELDS = [
    ("kind", C.c_uint32), ("pid", C.c_uint32), ("tid", C.c_uint32), ("fd", C.c_int32),
    ("ts_ns", C.c_uint64), ("conn", C.c_uint64), ("goroutine", C.c_uint64),
    ("len", C.c_uint32), ("data_len", C.c_uint16), ("dir", C.c_uint8), ("flags", C.c_uint8),
    ("saddr", C.c_uint8 * 16), ("daddr", C.c_uint8 * 16),
    ("sport", C.c_uint16), ("dport", C.c_uint16), ("family", C.c_uint16), ("_pad", C.c_uint16),
    ("comm", C.c_char * 16),
]
HEADER_STRUCT = struct.Struct(struct_format(HEADER_FIELDS))
assert HEADER_STRUCT.size == HEADER_SIZE
FIELD_NAMES = tuple(n for n, _ in HEADER_FIELDS)

# struct grpc_link_event (same ring buffer, told apart by kind).
LINK_FIELDS = [
    ("kind", C.c_uint32), ("pid", C.c_uint32), ("ts_ns", C.c_uint64), ("goid", C.c_uint64),
    ("in_conn", C.c_uint64), ("out_conn", C.c_uint64), ("in_sid", C.c_uint32), ("out_sid", C.c_uint32),
]
LINK_STRUCT = struct.Struct(struct_format(LINK_FIELDS))
assert LINK_STRUCT.size == LINK_SIZE
