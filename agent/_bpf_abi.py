"""What user space reads from the BPF event headers in bpf/: their #define constants, and a
``struct`` format equal to a ctypes mirror's layout (unpacking a tuple is far cheaper than reading
ctypes fields one by one on the hot path)."""

from __future__ import annotations

import ctypes as C
import os
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


def recursion_misses_by_program(bpf: Any, fdinfo_dir: Path = Path("/proc/self/fdinfo")) -> dict[str, int]:
    """Events the kernel did not run each of ``bpf``'s loaded programs for (5.12+): a raw tracepoint's
    program when it is already running on that CPU (a softirq interrupting it), a classic tracepoint's,
    kprobe's or uprobe's when any such program is; the event is gone. From the programs' fdinfo (a few
    short reads); programs without the field are left out."""
    out: dict[str, int] = {}
    for name, fn in list(getattr(bpf, "funcs", {}).items()):
        try:
            text = (fdinfo_dir / str(fn.fd)).read_text()[:4096]
        except (OSError, AttributeError):
            continue
        m = re.search(r"^recursion_misses:\s*(\d+)", text, re.M)
        if m:
            key = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            out[key] = out.get(key, 0) + int(m.group(1))
    return out


def recursion_misses(bpf: Any, fdinfo_dir: Path = Path("/proc/self/fdinfo")) -> int:
    """The sum of ``recursion_misses_by_program``."""
    return sum(recursion_misses_by_program(bpf, fdinfo_dir).values())


class _TestRunAttr(C.Structure):
    """The BPF_PROG_TEST_RUN part of ``union bpf_attr`` (include/uapi/linux/bpf.h)."""
    _fields_ = [
        ("prog_fd", C.c_uint32), ("retval", C.c_uint32), ("data_size_in", C.c_uint32),
        ("data_size_out", C.c_uint32), ("data_in", C.c_uint64), ("data_out", C.c_uint64),
        ("repeat", C.c_uint32), ("duration", C.c_uint32), ("ctx_size_in", C.c_uint32),
        ("ctx_size_out", C.c_uint32), ("ctx_in", C.c_uint64), ("ctx_out", C.c_uint64),
        ("flags", C.c_uint32), ("cpu", C.c_uint32), ("batch_size", C.c_uint32), ("_pad", C.c_uint32),
    ]


_SYS_BPF = 321  # x86-64, as the rest of the agent assumes
_BPF_PROG_TEST_RUN = 10
_libc: Any = None


def run_raw_tracepoint(prog_fd: int, args: list[int]) -> int:
    """Run a loaded raw-tracepoint program once, here and now, with ``args`` as its ``ctx->args``
    (kernel 5.10+); return what it returned. Raises OSError when the kernel refuses."""
    global _libc
    if _libc is None:
        _libc = C.CDLL(None, use_errno=True)
    ctx = (C.c_uint64 * len(args))(*args)
    attr = _TestRunAttr(prog_fd=prog_fd, ctx_size_in=C.sizeof(ctx), ctx_in=C.addressof(ctx))
    if _libc.syscall(_SYS_BPF, _BPF_PROG_TEST_RUN, C.byref(attr), C.sizeof(attr)) != 0:
        err = C.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return int(attr.retval)
