"""What user space reads from the BPF event headers in bpf/: their #define constants, and a
``struct`` format equal to a ctypes mirror's layout (unpacking a tuple is far cheaper than reading
ctypes fields one by one on the hot path)."""

from __future__ import annotations

import ctypes as C
import re
from pathlib import Path
from typing import Any

BPF_DIR = Path(__file__).resolve().parents[1] / "bpf"

_CODES: dict[Any, str] = {
    C.c_uint64: "Q", C.c_int64: "q", C.c_uint32: "I", C.c_int32: "i", C.c_uint16: "H", C.c_uint8: "B",
}


def header_defines(path: Path) -> dict[str, int]:
    """``#define BS_NAME 12`` and ``#define BS_NAME (1u << 3)`` lines of a header."""
    out: dict[str, int] = {}
    for m in re.finditer(r"^#define\s+(BS_\w+)\s+\(?(\d+)u?(?:\s*<<\s*(\d+)\))?", path.read_text(), re.M):
        value = int(m.group(2))
        out[m.group(1)] = value << int(m.group(3)) if m.group(3) else value
    return out


def struct_format(fields: list[tuple[str, Any]]) -> str:
    """A little-endian ``struct`` format for ctypes ``_fields_`` laid out with natural alignment and
    explicit padding fields (as the headers declare them). Byte and char arrays come out as bytes."""
    out = "<"
    for _name, typ in fields:
        out += f"{typ._length_}s" if issubclass(typ, C.Array) else _CODES[typ]
    return out
