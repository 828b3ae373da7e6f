"""ctypes mirrors of ``struct drop_key`` and ``struct drop_count`` (bpf/drop_event.h).

Kept by hand beside the header; tests/test_bpf_layout.py compiles the header and checks every field
offset and the total size against these classes.
"""

from __future__ import annotations

import ctypes as C

from agent._bpf_abi import BPF_DIR

HEADER = BPF_DIR / "drop_event.h"


class DropKey(C.Structure):
    _fields_ = [
        ("reason", C.c_uint32),
        ("netns", C.c_uint32),
    ]


class DropCount(C.Structure):
    _fields_ = [
        ("drops", C.c_uint64),
        ("conn_drops", C.c_uint64),
    ]


assert C.sizeof(DropKey) == 8 and C.sizeof(DropCount) == 16  # pinned by _Static_assert in the header
