"""Where to link a Go gRPC server's inbound call to the gRPC calls its handler makes (grpc-go), in one
executable: the probe points and the struct offsets the probes read (bpf/go_tls.c, ``uprobe_grpc_*``).

grpc-go reads and writes frames on its own goroutines, so the goroutine of a ``net.Conn`` read or write
says nothing about which call it serves. Two points do run on the handler's goroutine:

- the entry of ``google.golang.org/grpc.(*Server).handleStream(t ServerTransport, stream *Stream, ...)``,
  the first function of the goroutine grpc-go starts for each inbound stream (RCX: ``t``'s data word,
  the ``*http2Server``; RDI: ``stream``): (process, goroutine id) -> inbound (connection, stream id);
- every RET instruction of ``.../internal/transport.(*http2Client).NewStream`` (RAX: the new
  ``*Stream``, whose id was assigned on this goroutine), reached from ``ClientConn.Invoke`` /
  ``NewStream`` on the caller's goroutine: outbound (connection, stream id).

The connection is the data word of ``http2Server.conn`` / ``http2Client.conn`` (a ``net.Conn``): the
``*net.TCPConn`` whose ``net.(*conn).Read/Write`` the h2c probes key connections by (over TLS,
grpc-go's wrapper of the ``*tls.Conn``: not linked, docs/go-tls.md). The goroutine id is
``runtime.g.goid`` (never reused, unlike the ``g``).

Offsets come from DWARF only, and only for the grpc-go versions whose code paths were checked
(GRPC_TESTED): a stripped binary, another grpc-go, or a layout that does not match is not linked,
its reason counted in :data:`REJECTED` (never a guessed link). Results are cached by file identity.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from elftools.elf.elffile import ELFFile

from agent import go_binary, go_tls_binary

log = logging.getLogger(__name__)

FN_HANDLE = "google.golang.org/grpc.(*Server).handleStream"
FN_NEWSTREAM = "google.golang.org/grpc/internal/transport.(*http2Client).NewStream"
_T = "google.golang.org/grpc/internal/transport."
# grpc-go versions whose handleStream / NewStream signatures and Stream layout were read and tested
# (tests/test_go_grpc_link.py builds v1.56.3 and v1.67.1): [low, high).
GRPC_TESTED = ((1, 56), (1, 68))
CACHE_SIZE = 256
DWARF_S_PER_MIN = 20.0  # of DWARF reading for links (go_binary's own reading has a budget of its own)
MAX_FUNC_BYTES = 64 << 10

REJECTED: Counter[str] = Counter()
_lock = threading.Lock()
_cache: OrderedDict[tuple[int, int, int, int], LinkProbes | None] = OrderedDict()
_spent: deque[tuple[float, float]] = deque()  # (monotonic end, seconds) of recent DWARF reads


@dataclass(frozen=True)
class LinkProbes:
    handle: int  # file offset of handleStream's entry
    newstream_rets: tuple[int, ...]  # file offsets of NewStream's RET instructions
    grpc_version: str
    g_goid: int  # runtime.g.goid
    stream_id: int  # transport.Stream.id (uint32)
    stream_ct: int  # transport.Stream.ct: the *http2Client, or the data word of a ClientTransport
    h2s_conn: int  # data word of http2Server.conn (net.Conn)
    h2c_conn: int  # data word of http2Client.conn (net.Conn)


class _NoLink(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def grpc_version(modinfo: str) -> str:
    """The version of google.golang.org/grpc a binary was built with ('' if none), from its module info
    (a ``=>`` replacement's version when it has one)."""
    version = ""
    for line in modinfo.splitlines():
        parts = line.split("\t")
        if parts[0] == "dep" and len(parts) > 2 and parts[1] == "google.golang.org/grpc":
            version = parts[2]
        elif parts[0] == "=>" and version and len(parts) > 2:
            version = parts[2]
    return version


def _tested(version: str) -> bool:
    m = re.match(r"v(\d+)\.(\d+)\.\d+", version)
    return m is not None and GRPC_TESTED[0] <= (int(m[1]), int(m[2])) < GRPC_TESTED[1]


def _members(die: Any) -> dict[str, tuple[int, Any]]:
    return {m.attributes["DW_AT_name"].value.decode("utf-8", "replace"):
            (int(m.attributes["DW_AT_data_member_location"].value), m)
            for m in die.iter_children()
            if m.tag == "DW_TAG_member" and "DW_AT_name" in m.attributes
            and "DW_AT_data_member_location" in m.attributes}


def _type_name(member: Any) -> tuple[str, str]:
    """(tag, name) of a member's type with typedefs followed; an interface is ('iface', its name)."""
    typ: Any = member.get_DIE_from_attribute("DW_AT_type")
    first = typ.attributes.get("DW_AT_name")
    typ = go_binary._resolve_typedefs(typ)
    name = typ.attributes.get("DW_AT_name")
    n = name.value.decode("utf-8", "replace") if name is not None else ""
    if typ.tag == "DW_TAG_structure_type" and n == "runtime.iface":
        return "iface", first.value.decode("utf-8", "replace") if first is not None else ""
    return typ.tag, n


def _offsets(elf: ELFFile) -> dict[str, int]:
    budget = go_binary._Budget(go_binary.BUDGET_S)
    go_binary._check_dwarf_sections(elf)
    want = {"runtime.g", _T + "Stream", _T + "http2Server", _T + "http2Client"}
    structs: dict[str, dict[str, tuple[int, Any]]] = {}
    walked = 0
    for cu in elf.get_dwarf_info().iter_CUs():
        budget.check()
        name = cu.get_top_DIE().attributes.get("DW_AT_name")
        if name is None or name.value != b"runtime":
            continue  # the Go linker puts every type's DIE in (one of) the runtime CUs
        for die in cu.iter_DIEs():
            walked += 1
            if walked & 0xFFF == 0:
                budget.check()
                if walked > go_binary.MAX_DIES:
                    raise _NoLink("dwarf_too_large", f"more than {go_binary.MAX_DIES} DIEs")
            if die.tag != "DW_TAG_structure_type":
                continue
            n = die.attributes.get("DW_AT_name")
            if n is not None and (s := n.value.decode("utf-8", "replace")) in want and s not in structs:
                structs[s] = _members(die)
        if len(structs) == len(want):
            break
    missing = want - set(structs)
    if missing:
        raise _NoLink("layout", f"no DWARF for {sorted(missing)}")

    def field(struct: str, name: str, expect: tuple[str, ...]) -> tuple[int, str]:
        m = structs[struct].get(name)
        if m is None:
            raise _NoLink("layout", f"{struct} has no {name}")
        tag, tname = _type_name(m[1])
        if (tag == "iface" and "iface" not in expect) or (tag != "iface" and tname not in expect):
            raise _NoLink("layout", f"{struct}.{name} is {tname or tag}")
        return m[0], tag

    goid, _ = field("runtime.g", "goid", ("uint64", "int64"))
    sid, _ = field(_T + "Stream", "id", ("uint32",))
    ct, tag = field(_T + "Stream", "ct", ("iface", "*" + _T + "http2Client"))
    srv, _ = field(_T + "http2Server", "conn", ("iface",))
    cli, _ = field(_T + "http2Client", "conn", ("iface",))
    return {"g_goid": goid, "stream_id": sid, "stream_ct": ct + 8 if tag == "iface" else ct,
            "h2s_conn": srv + 8, "h2c_conn": cli + 8}


def _read(path: str) -> LinkProbes:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if elf["e_machine"] != "EM_X86_64":
            raise _NoLink("arch", f"{elf['e_machine']}: the probes read amd64 registers")
        bi = go_binary._section(elf, ".go.buildinfo", go_binary.MAX_BUILDINFO_BYTES)
        parsed = go_binary.parse_buildinfo(bi) if bi else None
        version = grpc_version(parsed[1]) if parsed else ""
        if not version:
            raise _NoLink("no_grpc")
        ranges = go_tls_binary._ranges(elf, (FN_HANDLE, FN_NEWSTREAM))
        if FN_HANDLE not in ranges or FN_NEWSTREAM not in ranges:
            raise _NoLink("no_grpc_server_client", "no handleStream / http2Client.NewStream")
        if not _tested(version):
            raise _NoLink("grpc_version", f"grpc-go {version} (linked: v1.56-v1.67)")
        if not (elf.has_dwarf_info() and elf.get_section_by_name(".debug_info") is not None) and \
                elf.get_section_by_name(".zdebug_info") is None:
            raise _NoLink("no_dwarf", "stripped: grpc-go struct offsets unknown")
        # DWARF reading is slow (~2 s for a small grpc-go program here): at most DWARF_S_PER_MIN
        # seconds of it a minute; a binary first seen while that is spent is not linked (counted).
        t0 = time.monotonic()
        with _lock:
            while _spent and _spent[0][0] < t0 - 60:
                _spent.popleft()
            if sum(sec for _, sec in _spent) >= DWARF_S_PER_MIN:
                raise _NoLink("dwarf_rate_limited", f"over {DWARF_S_PER_MIN:.0f} s of DWARF reading a minute")
        try:
            offsets = _offsets(elf)
        except go_binary.Rejected as e:
            raise _NoLink("dwarf", str(e)) from None
        finally:
            with _lock:
                _spent.append((time.monotonic(), time.monotonic() - t0))
        start, end = ranges[FN_NEWSTREAM]
        if not 0 < end - start <= MAX_FUNC_BYTES:
            raise _NoLink("malformed", f"NewStream is {end - start} bytes")
        off = go_tls_binary._file_offset(elf, start)
        f.seek(off)
        try:
            rets = go_tls_binary.ret_offsets(f.read(end - start), start)
        except go_tls_binary._NoTls as e:
            raise _NoLink("disassembly", str(e)) from None
        if not rets or len(rets) > go_tls_binary.MAX_RETS:
            raise _NoLink("disassembly", f"{len(rets)} RET instructions in NewStream")
        return LinkProbes(go_tls_binary._file_offset(elf, ranges[FN_HANDLE][0]),
                          tuple(off + (r - start) for r in rets), version, **offsets)


def find(path: str) -> LinkProbes | None:
    """The link probes of the Go binary at ``path`` (already accepted by go_binary.inspect), or None
    with the reason counted in REJECTED (no grpc-go, stripped, untested grpc-go, odd layout)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    result: LinkProbes | None = None
    try:
        result = _read(path)
    except _NoLink as e:
        with _lock:
            REJECTED[e.reason] += 1
        if e.reason not in ("no_grpc", "no_grpc_server_client"):
            log.warning("gRPC calls of %s not linked (%s): %s", go_binary.printable(path), e.reason, e)
    except Exception as e:  # pyelftools / struct on odd bytes: counted, never raised
        with _lock:
            REJECTED["malformed"] += 1
        log.warning("gRPC link probes not placed in %s: %s: %s", go_binary.printable(path), type(e).__name__, e)
    with _lock:
        _cache[key] = result
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return result
