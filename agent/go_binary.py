"""What the agent needs to know about a Go binary, read from the file itself.

- Go build info (``.go.buildinfo``): tells a Go program from any other, its Go version, main package
  path and module version (the service name and version when nothing else says).
- Function addresses: from ``.symtab`` when present, else from ``.gopclntab``, which every Go binary
  keeps (the runtime needs it for stack traces), ``-ldflags="-s -w"`` or not.
- Struct field offsets the uprobes read: from DWARF when present, else from a table per Go version
  (``GO_OFFSETS``, itself measured from the DWARF of plain builds; tests check it stays true).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from elftools.elf.elffile import ELFFile

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

    @property
    def minor(self) -> str:
        m = re.match(r"go(\d+\.\d+)", self.go_version)
        return m.group(1) if m else ""


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v, i
        shift += 7


def _section(elf: ELFFile, name: str) -> bytes | None:
    s = elf.get_section_by_name(name)
    return s.data() if s is not None else None


def parse_buildinfo(data: bytes) -> tuple[str, str] | None:
    """(Go version, module info text) from a .go.buildinfo section (Go 1.18+ inline format)."""
    i = data.find(BUILDINFO_MAGIC)
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


def pclntab_functions(data: bytes, wanted: set[str], text_addr: int = 0) -> dict[str, int]:
    """Entry addresses of ``wanted`` functions from a Go 1.18+ .gopclntab. Newer linkers (seen on
    Go 1.26) leave the header's text start 0: entries are then relative to ``text_addr`` (.text)."""
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic not in (0xFFFFFFF0, 0xFFFFFFF1):  # 1.18-1.19, 1.20+
        raise ValueError(f"unsupported pclntab magic {magic:#x} (Go < 1.18?)")
    ptr = data[7]
    fmt = "<Q" if ptr == 8 else "<I"

    def word(k: int) -> int:
        return struct.unpack_from(fmt, data, 8 + k * ptr)[0]

    nfunc, text_start = word(0), word(2) or text_addr
    funcname_off, pcln_off = word(3), word(7)
    names = data[funcname_off:]
    functab = data[pcln_off:]
    out: dict[str, int] = {}
    for k in range(nfunc):
        entry_off, func_off = struct.unpack_from("<II", functab, k * 8)
        name_off = struct.unpack_from("<i", functab, func_off + 4)[0]
        end = names.index(b"\0", name_off)
        name = names[name_off:end].decode("utf-8", "replace")
        if name in wanted:
            out[name] = text_start + entry_off
            if len(out) == len(wanted):
                break
    return out


def _dwarf_offsets(elf: ELFFile) -> dict[str, int]:
    """Field offsets for FIELDS from DWARF: walk the struct types we need once."""
    dwarf = elf.get_dwarf_info()
    want_structs = {s for s, _ in FIELDS.values()}
    structs: dict[str, dict[str, tuple[int, object]]] = {}
    for cu in dwarf.iter_CUs():
        top = cu.get_top_DIE()
        cu_name = top.attributes.get("DW_AT_name")
        if cu_name is None or cu_name.value != b"runtime":
            continue  # the Go linker puts every type's DIE in the runtime package's CU
        for die in cu.iter_DIEs():
            if die.tag != "DW_TAG_structure_type":
                continue
            name = die.attributes.get("DW_AT_name")
            if name is None:
                continue
            n = name.value.decode()
            if n in want_structs and n not in structs:
                members: dict[str, tuple[int, object]] = {}
                for m in die.iter_children():
                    if m.tag != "DW_TAG_member" or "DW_AT_name" not in m.attributes:
                        continue
                    loc = m.attributes.get("DW_AT_data_member_location")
                    members[m.attributes["DW_AT_name"].value.decode()] = (
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
            while typ.tag == "DW_TAG_typedef":  # type: ignore[attr-defined]
                typ = typ.get_DIE_from_attribute("DW_AT_type")  # type: ignore[attr-defined]
            tname = typ.attributes.get("DW_AT_name")  # type: ignore[attr-defined]
            members = None
            if tname is not None and typ.tag == "DW_TAG_structure_type":  # type: ignore[attr-defined]
                tn = tname.value.decode()
                if tn not in structs:
                    structs[tn] = {
                        m.attributes["DW_AT_name"].value.decode(): (
                            int(m.attributes["DW_AT_data_member_location"].value),
                            m.get_DIE_from_attribute("DW_AT_type"),
                        )
                        for m in typ.iter_children()  # type: ignore[attr-defined]
                        if m.tag == "DW_TAG_member" and "DW_AT_name" in m.attributes
                    }
                members = structs.get(tn)
        return off

    return {k: member_offset(s, p) for k, (s, p) in FIELDS.items()}


class NotGo(ValueError):
    """The file is not a Go program we can read (no build info, not ELF, Go < 1.18)."""


@lru_cache(maxsize=256)
def _inspect_cached(_key: tuple[int, int, int], path: str, want_offsets: bool) -> GoBinary:
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            raise NotGo(f"{path}: not ELF")
        f.seek(0)
        elf = ELFFile(f)
        bi = _section(elf, ".go.buildinfo")
        parsed = parse_buildinfo(bi) if bi else None
        if parsed is None:
            raise NotGo(f"{path}: no Go build info")
        version, mod = parsed
        main_path, main_version, settings = parse_modinfo(mod)
        gb = GoBinary(path, version, main_path, main_version, settings)
        symtab = elf.get_section_by_name(".symtab")
        gb.stripped = symtab is None
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
                gb.functions.update(pclntab_functions(pcln, wanted - set(gb.functions), text_addr))
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
                gb.offsets = _dwarf_offsets(elf)
                gb.offsets_from = "dwarf"
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


def inspect(path: str | Path, want_offsets: bool = True) -> GoBinary:
    p = Path(path)
    st = p.stat()
    # Keyed by file identity, not path: every /proc/<pid>/exe of one binary shares one inspection.
    return _inspect_cached((st.st_dev, st.st_ino, st.st_mtime_ns), str(p), want_offsets)


def is_go_binary(path: str | Path) -> bool:
    """Cheap check: ELF with a .go.buildinfo section."""
    try:
        inspect(path, want_offsets=False)
        return True
    except (NotGo, OSError, ValueError, KeyError, IndexError):
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
