"""What the agent needs to know about a Go binary, read from the file itself.

- Go build info (``.go.buildinfo``): tells a Go program from any other, its Go version, main package
  path and module version (the service name and version when nothing else says).
- Function addresses: from ``.symtab`` when present, else from ``.gopclntab``, which every Go binary
  keeps (the runtime needs it for stack traces), ``-ldflags="-s -w"`` or not.
- Struct field offsets the uprobes read: from DWARF when present, else from a table per Go version
  (``GO_OFFSETS``, itself measured from the DWARF of plain builds; tests check it stays true).

Every file read here belongs to whoever can run a program on the host: it is untrusted input to a root
process. ``inspect`` is total: it returns a ``GoBinary`` or raises ``NotGo`` (``Rejected`` when the file
broke one of the bounds below, with a ``reason`` that is counted in ``REJECTED``). Bounds: the file's
size, the section count, every section read (no NOBITS, inside the file, capped; compressed only for
DWARF, with a capped declared size and ratio), name scans, varints, DWARF DIEs walked, typedef chains
(depth + visited set), and a wall-clock budget checked in every loop of ours. Results, negative ones
included, are cached by file identity (device, inode, size, mtime) in a bounded LRU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from elftools.elf.elffile import ELFFile

from agent.errors import printable

log = logging.getLogger(__name__)

# Bounds (see the module docstring). Real Go binaries: a few MiB to a few hundred; .go.buildinfo is
# under 4 KiB; .gopclntab a few MiB; Go's zlib DWARF expands 3-5x.
MAX_FILE_BYTES = 1 << 30
MAX_SECTIONS = 4096
MAX_BUILDINFO_BYTES = 1 << 20
MAX_SECTION_BYTES = 256 << 20  # .gopclntab
MAX_SYMTAB_BYTES = 32 << 20  # 1.4 M symbols; a larger .symtab is ignored (.gopclntab has the functions)
MAX_DWARF_BYTES = 128 << 20  # all DWARF sections pyelftools loads, decompressed, together
MAX_COMPRESSION_RATIO = 32
MAX_FUNCS = 4_000_000
MAX_NAME_BYTES = 4096  # a function name without its NUL within this is refused
MAX_DIES = 3_000_000
MAX_TYPEDEF_DEPTH = 32
BUDGET_S = 5.0  # wall-clock per inspection, DWARF included
# DWARF reading is the slow part (~1.5 s for a small Go server here) and only refines what the table per
# Go version already gives: at most this many seconds of it per minute, then the table (counted).
DWARF_S_PER_MIN = 10.0
CACHE_SIZE = 4096

# Rejections by reason, each counted once per file identity (inspections are cached).
REJECTED: Counter[str] = Counter()
_lock = threading.Lock()
_dwarf_spent: deque[tuple[float, float]] = deque()  # (monotonic end, seconds) of recent DWARF reads


def _dwarf_allowed(now: float) -> bool:
    while _dwarf_spent and _dwarf_spent[0][0] < now - 60:
        _dwarf_spent.popleft()
    return sum(sec for _, sec in _dwarf_spent) < DWARF_S_PER_MIN

BUILDINFO_MAGIC = b"\xff Go buildinf:"

# The functions the optional uprobes attach to.
FN_FINISH_REQUEST = "net/http.(*response).finishRequest"
FN_PC_ROUNDTRIP = "net/http.(*persistConn).roundTrip"
FUNCTIONS = (FN_FINISH_REQUEST, FN_PC_ROUNDTRIP)

# (struct, dotted field path) for each offset the BPF side uses; names as DWARF spells the types.
FIELDS: dict[str, tuple[str, str]] = {
    "response_conn": ("net/http.response", "conn"),
    "response_req": ("net/http.response", "req"),
    "conn_rwc": ("net/http.conn", "rwc"),
    "req_pattern": ("net/http.Request", "Pattern"),  # Go 1.23+
    "req_pat": ("net/http.Request", "pat"),  # Go 1.22
    "pattern_str": ("net/http.pattern", "str"),  # Go 1.22+
    "persistconn_conn": ("net/http.persistConn", "conn"),
    "tcpconn_fd": ("net.TCPConn", "conn.fd"),
    "netfd_sysfd": ("net.netFD", "pfd.Sysfd"),
}

# Fallback for binaries without DWARF, by Go minor version ("1.23"), measured from plain builds with
# `python -m agent.go_binary offsets <binary>`. -1: the field does not exist in that version.
GO_OFFSETS: dict[str, dict[str, int]] = {}  # filled at the end of this module


@dataclass
class GoBinary:
    path: str
    go_version: str  # "go1.23.12"
    main_path: str = ""  # main package path, e.g. example.com/shop/cmd/api
    main_version: str = ""  # module version, e.g. v1.4.2 or (devel)
    settings: dict[str, str] = field(default_factory=dict)  # build settings (vcs.revision, ...)
    functions: dict[str, int] = field(default_factory=dict)  # name -> virtual address
    file_offsets: dict[str, int] = field(default_factory=dict)  # name -> offset in the file (uprobes)
    offsets: dict[str, int] = field(default_factory=dict)
    offsets_from: str = ""  # "dwarf" | "table go1.x" | "none"
    stripped: bool = False
    dwarf_refused: str = ""  # reason the DWARF was refused (offsets then come from the table), counted
    dwarf_detail: str = ""

    @property
    def minor(self) -> str:
        m = re.match(r"go(\d+\.\d+)", self.go_version)
        return m.group(1) if m else ""


class NotGo(ValueError):
    """The file is not a Go program we can read (no build info, not ELF, Go < 1.18)."""

    reason = "not_go"


class Rejected(NotGo):
    """The file broke a bound or is malformed: counted by ``reason``, logged once per file."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise Rejected("timeout", f"inspection took over {BUDGET_S:.0f}s")


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while shift <= 63:
        if i >= len(b):
            raise Rejected("malformed", "varint past the end of .go.buildinfo")
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v, i
        shift += 7
    raise Rejected("malformed", "varint longer than 64 bits")


def _section(elf: ELFFile, name: str, cap: int = MAX_SECTION_BYTES) -> bytes | None:
    """A section's bytes, refused unless stored in the file (not NOBITS, not compressed), inside it and
    at most ``cap`` bytes."""
    s = elf.get_section_by_name(name)
    if s is None:
        return None
    _check_stored(elf, s, name, cap)
    return s.data()


def _check_stored(elf: ELFFile, s: Any, name: str, cap: int) -> None:
    h = s.header
    if h["sh_type"] == "SHT_NOBITS":
        raise Rejected("nobits", f"{name} has no bytes in the file")
    if s.compressed:
        raise Rejected("compressed", f"{name} is compressed (Go never compresses it)")
    _check_in_file(elf, name, h["sh_offset"], h["sh_size"], cap)


def _file_size(elf: ELFFile) -> int:
    return int(os.fstat(elf.stream.fileno()).st_size)


def _check_in_file(elf: ELFFile, name: str, offset: int, size: int, cap: int) -> None:
    if size > cap:
        raise Rejected("section_too_large", f"{name}: {size} bytes > {cap}")
    if offset < 0 or offset + size > _file_size(elf):
        raise Rejected("section_bounds", f"{name}: [{offset}, +{size}) outside the file")


def _check_section_table(elf: ELFFile, f: BinaryIO, size: int) -> None:
    """Every section with bytes in the file lies inside it (a linker never writes anything else): a
    truncated or patched file is refused before pyelftools reads names or data past its end."""
    n, entsize = elf.num_sections(), elf["e_shentsize"]
    if n == 0:
        return
    if elf.elfclass != 64 or entsize < 40:
        raise Rejected("malformed", f"ELF class {elf.elfclass}, section header size {entsize}")
    f.seek(elf["e_shoff"])
    table = f.read(n * entsize)
    end = "<" if elf.little_endian else ">"
    for i in range(n):
        sh_type, = struct.unpack_from(end + "I", table, i * entsize + 4)
        sh_offset, sh_size = struct.unpack_from(end + "QQ", table, i * entsize + 24)
        if sh_type != 8 and sh_offset + sh_size > size:  # 8: SHT_NOBITS (.bss) has no bytes in the file
            raise Rejected("section_bounds", f"section {i}: [{sh_offset}, +{sh_size}) outside the file")


def _check_dwarf_sections(elf: ELFFile) -> None:
    """What pyelftools' get_dwarf_info will read and decompress, bounded before it does."""
    total = 0
    for sec in elf.iter_sections():
        name = sec.name
        if not (name.startswith((".debug_", ".zdebug_")) or name == ".eh_frame"):
            continue
        h = sec.header
        if h["sh_type"] == "SHT_NOBITS":
            raise Rejected("nobits", f"{name} has no bytes in the file")
        _check_in_file(elf, name, h["sh_offset"], h["sh_size"], MAX_DWARF_BYTES)
        size = h["sh_size"]
        if sec.compressed:  # SHF_COMPRESSED: pyelftools decompresses at most ch_size bytes
            size = sec.data_size
            if size > max(h["sh_size"], 4096) * MAX_COMPRESSION_RATIO:
                raise Rejected("compressed", f"{name}: {h['sh_size']} -> {size} bytes declared")
        elif name.startswith(".zdebug_"):  # GNU style: pyelftools ignores the declared size; try it here
            elf.stream.seek(h["sh_offset"])
            raw = elf.stream.read(h["sh_size"])
            if raw[:4] != b"ZLIB" or len(raw) < 12:
                raise Rejected("compressed", f"{name}: not a ZLIB section")
            limit = min(MAX_DWARF_BYTES, max(len(raw), 4096) * MAX_COMPRESSION_RATIO)
            d = zlib.decompressobj()
            try:
                out = d.decompress(raw[12:], limit + 1)
            except zlib.error as e:
                raise Rejected("compressed", f"{name}: {e}") from None
            if len(out) > limit or not d.eof:
                raise Rejected("compressed", f"{name}: expands beyond {limit} bytes")
            size = len(out)
        total += size
        if total > MAX_DWARF_BYTES:
            raise Rejected("dwarf_too_large", f"DWARF over {MAX_DWARF_BYTES} bytes")


def parse_buildinfo(data: bytes) -> tuple[str, str] | None:
    """(Go version, module info text) from a .go.buildinfo section (Go 1.18+ inline format)."""
    i = data.find(BUILDINFO_MAGIC, 0, 1 << 16)
    if i < 0 or len(data) < i + 32:
        return None
    flags = data[i + 15]
    if not flags & 2:
        return None  # pre-1.18 pointer format: not supported (Go < 1.18 has no register ABI uprobes either)
    j = i + 32
    n, j = _read_varint(data, j)
    version = data[j : j + n].decode("utf-8", "replace")
    j += n
    n, j = _read_varint(data, j)
    mod = data[j : j + n]
    if len(mod) >= 33:
        mod = mod[16:-16]  # sentinels around the module info
    return version, mod.decode("utf-8", "replace")


def parse_modinfo(text: str) -> tuple[str, str, dict[str, str]]:
    main_path = main_version = ""
    settings: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if parts[0] == "path" and len(parts) > 1:
            main_path = parts[1]
        elif parts[0] == "mod" and len(parts) > 2:
            main_version = parts[2]
        elif parts[0] == "build" and len(parts) > 1 and "=" in parts[1]:
            k, _, v = parts[1].partition("=")
            settings[k] = v
    return main_path, main_version, settings


def pclntab_functions(data: bytes, wanted: set[str], text_addr: int = 0,
                      budget: _Budget | None = None) -> dict[str, int]:
    """Entry addresses of ``wanted`` functions from a Go 1.18+ .gopclntab. Newer linkers (seen on
    Go 1.26) leave the header's text start 0: entries are then relative to ``text_addr`` (.text).
    Bounded: at most MAX_FUNCS entries, names scanned at most MAX_NAME_BYTES each."""
    if len(data) < 8 + 8 * 8:
        raise Rejected("malformed", ".gopclntab shorter than its header")
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic not in (0xFFFFFFF0, 0xFFFFFFF1):  # 1.18-1.19, 1.20+
        raise ValueError(f"unsupported pclntab magic {magic:#x} (Go < 1.18?)")
    ptr = data[7]
    if ptr not in (4, 8):
        raise Rejected("malformed", f".gopclntab pointer size {ptr}")
    fmt = "<Q" if ptr == 8 else "<I"

    def word(k: int) -> int:
        return struct.unpack_from(fmt, data, 8 + k * ptr)[0]

    nfunc, text_start = word(0), word(2) or text_addr
    funcname_off, pcln_off = word(3), word(7)
    if funcname_off >= len(data) or pcln_off >= len(data):
        raise Rejected("malformed", ".gopclntab offsets outside the section")
    names = memoryview(data)[funcname_off:]
    functab = memoryview(data)[pcln_off:]
    if nfunc > min(MAX_FUNCS, len(functab) // 8):
        raise Rejected("malformed", f".gopclntab declares {nfunc} functions")
    by_len = {len(w.encode()) for w in wanted}
    out: dict[str, int] = {}
    for k in range(nfunc):
        if budget is not None and k & 0xFFF == 0:
            budget.check()
        entry_off, func_off = struct.unpack_from("<II", functab, k * 8)
        if func_off + 8 > len(functab):
            continue
        name_off = struct.unpack_from("<i", functab, func_off + 4)[0]
        if not 0 <= name_off < len(names):
            continue
        # Only names of a wanted length can match: one byte compared, no scan for the NUL.
        hit = None
        for n in by_len:
            if name_off + n < len(names) and names[name_off + n] == 0:
                hit = bytes(names[name_off : name_off + n]).decode("utf-8", "replace")
                break
        if hit is None:
            continue
        name = hit
        if name in wanted:
            out[name] = text_start + entry_off
            if len(out) == len(wanted):
                break
    return out


def _resolve_typedefs(typ: object) -> object:
    """Follow a typedef chain to the type it names: at most MAX_TYPEDEF_DEPTH links, no cycles."""
    seen: set[int] = set()
    depth = 0
    while typ.tag == "DW_TAG_typedef":  # type: ignore[attr-defined]
        off = typ.offset  # type: ignore[attr-defined]
        if off in seen or depth >= MAX_TYPEDEF_DEPTH:
            raise Rejected("dwarf_typedef_loop", f"typedef chain at DIE {off:#x}")
        seen.add(off)
        depth += 1
        typ = typ.get_DIE_from_attribute("DW_AT_type")  # type: ignore[attr-defined]
    return typ


def _dwarf_offsets(elf: ELFFile, budget: _Budget | None = None) -> dict[str, int]:
    """Field offsets for FIELDS from DWARF: walk the struct types we need once."""
    budget = budget or _Budget(BUDGET_S)
    _check_dwarf_sections(elf)
    dwarf = elf.get_dwarf_info()
    walked = 0
    want_structs = {s for s, _ in FIELDS.values()}
    structs: dict[str, dict[str, tuple[int, object]]] = {}
    for cu in dwarf.iter_CUs():
        budget.check()
        top = cu.get_top_DIE()
        cu_name = top.attributes.get("DW_AT_name")
        if cu_name is None or cu_name.value != b"runtime":
            continue  # the Go linker puts every type's DIE in the runtime package's CU
        for die in cu.iter_DIEs():
            walked += 1
            if walked & 0xFFF == 0:
                budget.check()
                if walked > MAX_DIES:
                    raise Rejected("dwarf_too_large", f"more than {MAX_DIES} DIEs")
            if die.tag != "DW_TAG_structure_type":
                continue
            name = die.attributes.get("DW_AT_name")
            if name is None:
                continue
            n = name.value.decode("utf-8", "replace")
            if n in want_structs and n not in structs:
                members: dict[str, tuple[int, object]] = {}
                for m in die.iter_children():
                    if m.tag != "DW_TAG_member" or "DW_AT_name" not in m.attributes:
                        continue
                    loc = m.attributes.get("DW_AT_data_member_location")
                    members[m.attributes["DW_AT_name"].value.decode("utf-8", "replace")] = (
                        int(loc.value) if loc is not None else 0,
                        m.get_DIE_from_attribute("DW_AT_type"),
                    )
                structs[n] = members
        # The nested types (net.conn, internal/poll.FD) resolve through get_DIE_from_attribute.
        if len(structs) == len(want_structs):
            break

    def member_offset(struct_name: str, path: str) -> int:
        members = structs.get(struct_name)
        off = 0
        for part in path.split("."):
            if members is None or part not in members:
                return -1
            o, typ = members[part]
            off += o
            typ = _resolve_typedefs(typ)
            tname = typ.attributes.get("DW_AT_name")  # type: ignore[attr-defined]
            members = None
            if tname is not None and typ.tag == "DW_TAG_structure_type":  # type: ignore[attr-defined]
                tn = tname.value.decode("utf-8", "replace")
                if tn not in structs:
                    structs[tn] = {
                        m.attributes["DW_AT_name"].value.decode("utf-8", "replace"): (
                            int(m.attributes["DW_AT_data_member_location"].value),
                            m.get_DIE_from_attribute("DW_AT_type"),
                        )
                        for m in typ.iter_children()  # type: ignore[attr-defined]
                        if m.tag == "DW_TAG_member" and "DW_AT_name" in m.attributes
                    }
                members = structs.get(tn)
        return off

    return {k: member_offset(s, p) for k, (s, p) in FIELDS.items()}


def _inspect_file(f: BinaryIO, path: str, want_offsets: bool) -> GoBinary:
    budget = _Budget(BUDGET_S)
    size = os.fstat(f.fileno()).st_size
    if f.read(4) != b"\x7fELF":
        raise NotGo(f"{path}: not ELF")
    if size > MAX_FILE_BYTES:
        raise Rejected("too_large", f"{size} bytes")
    f.seek(0)
    elf = ELFFile(f)
    if elf.num_sections() > MAX_SECTIONS or elf["e_phnum"] > MAX_SECTIONS:
        raise Rejected("malformed", f"{elf.num_sections()} sections, {elf['e_phnum']} segments")
    if elf["e_shoff"] + elf.num_sections() * elf["e_shentsize"] > size or \
            elf["e_phoff"] + elf["e_phnum"] * elf["e_phentsize"] > size:
        raise Rejected("section_bounds", "section or program header table outside the file")
    _check_section_table(elf, f, size)
    bi = _section(elf, ".go.buildinfo", MAX_BUILDINFO_BYTES)
    parsed = parse_buildinfo(bi) if bi else None
    if parsed is None:
        raise NotGo(f"{path}: no Go build info")
    version, mod = parsed
    main_path, main_version, settings = parse_modinfo(mod)
    gb = GoBinary(path, version, main_path, main_version, settings)
    symtab = elf.get_section_by_name(".symtab")
    gb.stripped = symtab is None
    if symtab is not None:
        _check_stored(elf, symtab, ".symtab", MAX_SECTION_BYTES)
        if symtab["sh_size"] > MAX_SYMTAB_BYTES:
            symtab = None  # pyelftools would index every name: read .gopclntab instead
    wanted = set(FUNCTIONS)
    if symtab is not None:
        for name in wanted:
            syms = symtab.get_symbol_by_name(name)  # type: ignore[attr-defined]
            if syms:
                gb.functions[name] = syms[0]["st_value"]
    if len(gb.functions) < len(wanted):
        pcln = _section(elf, ".gopclntab")
        if pcln:
            text = elf.get_section_by_name(".text")
            text_addr = text["sh_addr"] if text is not None else 0
            gb.functions.update(pclntab_functions(pcln, wanted - set(gb.functions), text_addr, budget))
    # Uprobes take a file offset: map each address through the PT_LOAD segment holding it.
    for name, addr in gb.functions.items():
        for seg in elf.iter_segments():
            h = seg.header
            if h.p_type == "PT_LOAD" and h.p_vaddr <= addr < h.p_vaddr + h.p_filesz:
                gb.file_offsets[name] = addr - h.p_vaddr + h.p_offset
                break
    if want_offsets:
        if (elf.has_dwarf_info() and elf.get_section_by_name(".debug_info") is not None) or \
                elf.get_section_by_name(".zdebug_info") is not None:
            t0 = time.monotonic()
            try:
                if not _dwarf_allowed(t0):
                    raise Rejected("dwarf_rate_limited", f"over {DWARF_S_PER_MIN:.0f} s of DWARF reading a minute")
                gb.offsets = _dwarf_offsets(elf, budget)
                gb.offsets_from = "dwarf"
            except Rejected as e:  # a hostile or odd DWARF: the table per Go version still works
                gb.dwarf_refused, gb.dwarf_detail = e.reason, f"DWARF refused ({e}); offsets from the table"
            except Exception as e:  # pyelftools raises anything on bad DWARF
                gb.dwarf_refused = "dwarf_malformed"
                gb.dwarf_detail = f"DWARF unreadable ({type(e).__name__}: {e}); offsets from the table"
            finally:
                _dwarf_spent.append((time.monotonic(), time.monotonic() - t0))
        if gb.offsets_from == "dwarf":
            pass
        elif gb.minor in GO_OFFSETS:
            gb.offsets = dict(GO_OFFSETS[gb.minor])
            gb.offsets_from = f"table go{gb.minor}"
        else:
            known = sorted(GO_OFFSETS, key=lambda v: tuple(map(int, v.split("."))))
            older = [v for v in known if tuple(map(int, v.split("."))) <= tuple(map(int, gb.minor.split(".")))]
            if older:  # nearest older version: these structs change rarely
                gb.offsets = dict(GO_OFFSETS[older[-1]])
                gb.offsets_from = f"table go{older[-1]} (nearest)"
            else:
                gb.offsets_from = "none"
    return gb


def _count(reason: str, path: str, detail: str) -> None:
    with _lock:
        REJECTED[reason] += 1
    log.warning("Go binary %s refused (%s): %s", printable(path), reason, printable(detail))


FileId = tuple[int, int, int, int]
_cache: OrderedDict[tuple[FileId, bool], GoBinary | NotGo] = OrderedDict()
_EVICTIONS = [0]


def _identity(st: os.stat_result) -> FileId:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def parse_file(path: str, want_offsets: bool) -> GoBinary:
    """One inspection, no cache: a GoBinary, or NotGo / Rejected (never anything else but OSError)."""
    with open(path, "rb") as f:
        try:
            return _inspect_file(f, path, want_offsets)
        except NotGo:
            raise
        except MemoryError:
            raise Rejected("memory_limit", "the reader ran out of its memory bound") from None
        except RecursionError:
            raise Rejected("malformed", "nesting too deep") from None
        except Exception as e:  # struct.error, ELFError, DWARFError, ... on any bytes
            raise Rejected("malformed", f"{type(e).__name__}: {e}") from None


Parser = Callable[[str, bool], GoBinary]


def inspect(path: str | Path, want_offsets: bool = True, parse: Parser | None = None) -> GoBinary:
    """The Go binary at ``path``; raises NotGo (or Rejected, counted) for anything else, OSError if it
    cannot be opened. Cached by file identity, not path: every /proc/<pid>/exe of one binary shares
    one inspection, and a refused file costs a stat and a lookup the next time. ``parse`` does the
    reading (agent/inspect_worker.py: in a child process under resource limits); by default here."""
    p = str(path)
    key = (_identity(os.stat(p)), want_offsets)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
    if hit is None:
        try:
            hit = (parse or parse_file)(p, want_offsets)
            if hit.dwarf_refused:
                _count(hit.dwarf_refused, p, hit.dwarf_detail)
        except Rejected as e:
            _count(e.reason, p, str(e))
            hit = e
        except NotGo as e:
            hit = e
        with contextlib.suppress(OSError), _lock:
            if _identity(os.stat(p)) == key[0]:  # not replaced while it was read
                _cache[key] = hit
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
                _EVICTIONS[0] += 1
    if isinstance(hit, NotGo):
        raise hit
    return hit


def is_cached(path: str | Path, want_offsets: bool = True) -> bool:
    """Whether ``inspect(path, want_offsets)`` would answer from the cache (a stat and a lookup)."""
    try:
        key = (_identity(os.stat(str(path))), want_offsets)
    except OSError:
        return False
    with _lock:
        return key in _cache


def stats() -> dict[str, int]:
    """Counters for a source: rejections by reason and in total, cache evictions."""
    with _lock:
        out = {f"go_binary_rejected:{k}": v for k, v in REJECTED.items()}
        out["go_binary_rejected"] = sum(REJECTED.values())
        out["go_binary_cache_evictions"] = _EVICTIONS[0]
    return out


def is_go_binary(path: str | Path) -> bool:
    """Cheap check: ELF with a .go.buildinfo section."""
    try:
        inspect(path, want_offsets=False)
        return True
    except (NotGo, OSError):
        return False


# Measured from the DWARF of plain builds (`python -m agent.go_binary offsets <binary>`); checked against
# DWARF again by tests/test_http_go.py for every Go version it builds.
_BASE = {"response_conn": 0, "response_req": 8, "conn_rwc": 16, "persistconn_conn": 80, "tcpconn_fd": 0,
         "netfd_sysfd": 16, "req_pattern": -1, "req_pat": -1, "pattern_str": -1}
_GO123 = {"req_pattern": 232, "req_pat": 264, "pattern_str": 0}  # Request.Pattern exported in 1.23
GO_OFFSETS.update({
    "1.21": dict(_BASE),
    "1.22": {**_BASE, "req_pat": 248, "pattern_str": 0},
    "1.23": {**_BASE, **_GO123},
    "1.24": {**_BASE, **_GO123},
    "1.25": {**_BASE, **_GO123},
    "1.26": {**_BASE, **_GO123},
})

if __name__ == "__main__":
    import sys

    if len(sys.argv) >= 3 and sys.argv[1] == "offsets":
        for b in sys.argv[2:]:
            g = inspect(b)
            print(f"{g.minor}: " + " ".join(f"{k}={v}" for k, v in g.offsets.items()), f"# {g.offsets_from}")
    else:
        for b in sys.argv[1:]:
            print(inspect(b))
