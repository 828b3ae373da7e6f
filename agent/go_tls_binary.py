"""Where to put the Go TLS probes in one executable: the file offsets of crypto/tls.(*Conn).Write's
and (*Conn).Read's entries, and of every RET instruction of (*Conn).Read.

Go code must never get a uretprobe (the runtime moves goroutine stacks and the return trampoline
crashes it), so the return of Read is caught by entry-style uprobes on its RET instructions, found by
disassembling the function (capstone), as Beyla/OBI does. Functions are found in .symtab, else (a
``-s -w`` build) in .gopclntab, whose function table also gives where each function ends.

Total over any bytes: :func:`find` returns a :class:`TlsProbes` or None with the reason counted in
:data:`REJECTED` (the file was already accepted by agent/go_binary.py, which bounds its sections).
Results are cached by file identity.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from agent import go_binary

log = logging.getLogger(__name__)

FN_TLS_READ = "crypto/tls.(*Conn).Read"
FN_TLS_WRITE = "crypto/tls.(*Conn).Write"
# Cleartext HTTP/2 (h2c, gRPC): the same probes on every net.Conn read/write of the program.
FN_NET_READ = "net.(*conn).Read"
FN_NET_WRITE = "net.(*conn).Write"
MAX_FUNC_BYTES = 64 << 10  # (*Conn).Read is ~1 KiB of code; a larger "function" is not it
MAX_RETS = 32  # uprobes per function at most
CACHE_SIZE = 1024

REJECTED: Counter[str] = Counter()
_lock = threading.Lock()
_cache: OrderedDict[tuple[int, int, int, int, str], TlsProbes | None] = OrderedDict()


@dataclass(frozen=True)
class TlsProbes:
    read: int  # file offset of (*Conn).Read's entry
    read_rets: tuple[int, ...]  # file offsets of its RET instructions
    write: int  # file offset of (*Conn).Write's entry


class _NoTls(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def _pclntab_end(data: bytes, start: int, text_addr: int) -> int:
    """The address where the function starting at ``start`` ends: the next entry of .gopclntab's
    function table (sorted by entry; the table ends with a sentinel entry)."""
    ptr = data[7]
    fmt = "<Q" if ptr == 8 else "<I"
    nfunc = struct.unpack_from(fmt, data, 8)[0]
    text_start = struct.unpack_from(fmt, data, 8 + 2 * ptr)[0] or text_addr
    pcln_off = struct.unpack_from(fmt, data, 8 + 7 * ptr)[0]
    if nfunc > (len(data) - pcln_off) // 8 - 1:
        raise _NoTls("malformed", ".gopclntab function table outside the section")
    entries = [struct.unpack_from("<I", data, pcln_off + k * 8)[0] for k in range(nfunc + 1)]
    k = bisect.bisect_left(entries, start - text_start)
    if k >= nfunc or entries[k] != start - text_start:
        raise _NoTls("malformed", "function entry not in .gopclntab")
    return int(text_start + entries[k + 1])


def _ranges(elf: ELFFile, wanted: tuple[str, str]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    symtab = elf.get_section_by_name(".symtab")
    if symtab is not None and symtab["sh_size"] <= go_binary.MAX_SYMTAB_BYTES:
        for name in wanted:
            syms = symtab.get_symbol_by_name(name)  # type: ignore[attr-defined]
            if syms and syms[0]["st_size"]:
                out[name] = (syms[0]["st_value"], syms[0]["st_value"] + syms[0]["st_size"])
    if len(out) < len(wanted):
        pcln = go_binary._section(elf, ".gopclntab")
        if pcln:
            text = elf.get_section_by_name(".text")
            text_addr = text["sh_addr"] if text is not None else 0
            entries = go_binary.pclntab_functions(pcln, set(wanted) - set(out), text_addr)
            for name, start in entries.items():
                out[name] = (start, _pclntab_end(pcln, start, text_addr))
    return out


def _file_offset(elf: ELFFile, addr: int) -> int:
    for seg in elf.iter_segments():
        h = seg.header
        if h.p_type == "PT_LOAD" and h.p_vaddr <= addr < h.p_vaddr + h.p_filesz:
            return int(addr - h.p_vaddr + h.p_offset)
    raise _NoTls("malformed", f"address {addr:#x} in no loaded segment")


def ret_offsets(code: bytes, addr: int) -> list[int]:
    """Addresses of the RET instructions in ``code`` (x86-64, loaded at ``addr``)."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = []
    end = addr
    for insn in md.disasm_lite(code, addr):
        a, size, mnemonic, _ = insn
        end = a + size
        if mnemonic == "ret":
            out.append(a)
    if end != addr + len(code):  # capstone stops at bytes it cannot decode: a RET after them is missed
        raise _NoTls("disassembly", f"stopped at {end:#x} of [{addr:#x}, {addr + len(code):#x})")
    return out


def _read(path: str, read_fn: str, write_fn: str) -> TlsProbes:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if elf["e_machine"] != "EM_X86_64":
            raise _NoTls("arch", f"{elf['e_machine']}: the probes read amd64 registers")
        ranges = _ranges(elf, (read_fn, write_fn))
        if read_fn not in ranges or write_fn not in ranges:
            raise _NoTls("no_tls" if read_fn == FN_TLS_READ else "no_net", f"no {read_fn} / {write_fn}")
        start, end = ranges[read_fn]
        if not 0 < end - start <= MAX_FUNC_BYTES:
            raise _NoTls("malformed", f"{read_fn} is {end - start} bytes")
        read_off = _file_offset(elf, start)
        f.seek(read_off)
        code = f.read(end - start)
        rets = ret_offsets(code, start)
        if not rets or len(rets) > MAX_RETS:
            raise _NoTls("disassembly", f"{len(rets)} RET instructions in {read_fn}")
        return TlsProbes(read_off, tuple(read_off + (r - start) for r in rets),
                         _file_offset(elf, ranges[write_fn][0]))


def find(path: str, read_fn: str = FN_TLS_READ, write_fn: str = FN_TLS_WRITE) -> TlsProbes | None:
    """The probe points of the Go binary at ``path`` (already accepted by go_binary.inspect) for
    ``read_fn`` / ``write_fn`` (crypto/tls by default; FN_NET_* for cleartext), or None when it has
    none (no such functions, not amd64, unreadable: counted by reason)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, read_fn)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        result: TlsProbes | None = _read(path, read_fn, write_fn)
    except _NoTls as e:
        result = None
        with _lock:
            REJECTED[e.reason] += 1
        if e.reason not in ("no_tls", "no_net"):
            log.warning("Go TLS probes not placed in %s (%s): %s", go_binary.printable(path), e.reason, e)
    except Exception as e:  # pyelftools / struct on odd bytes: counted, never raised
        result = None
        with _lock:
            REJECTED["malformed"] += 1
        log.warning("Go TLS probes not placed in %s: %s: %s", go_binary.printable(path), type(e).__name__, e)
    with _lock:
        _cache[key] = result
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return result
