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


def load_bpf(attempts: int = 4, **kwargs: Any) -> Any:
    """``bcc.BPF(**kwargs)``, retried when the verifier gave up with EAGAIN: it does so whenever a
    signal is pending during verification (SIGCHLD, a terminal resize, a profiler attaching)."""
    from bcc import BPF  # Debian's python3-bpfcc; imported late so decoding works without it

    for attempt in range(1, attempts + 1):
        try:
            return BPF(**kwargs)
        except Exception as e:  # bcc raises a bare Exception carrying strerror
            if "Resource temporarily unavailable" not in str(e) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


def recursion_misses(bpf: Any, fdinfo_dir: Path = Path("/proc/self/fdinfo")) -> int:
    """Events the kernel did not run our programs for (5.12+): a program already running on a CPU is
    skipped when its tracepoint fires again there (a softirq interrupting it), and the event is gone.
    Summed over ``bpf``'s loaded programs, from their fds' fdinfo (a few short reads)."""
    total = 0
    for fn in list(getattr(bpf, "funcs", {}).values()):
        try:
            text = (fdinfo_dir / str(fn.fd)).read_text()[:4096]
        except (OSError, AttributeError):
            continue
        m = re.search(r"^recursion_misses:\s*(\d+)", text, re.M)
        if m:
            total += int(m.group(1))
    return total
