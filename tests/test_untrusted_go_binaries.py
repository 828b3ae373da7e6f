"""Crafted executables that look like Go: each is refused (or read without its DWARF) quickly, with
bounded memory, and counted by reason; a refusal is cached by file identity. Runs without root."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from agent import go_binary
from tests import gobuild

pytestmark = pytest.mark.go

SHT_NOBITS = 8
SHF_COMPRESSED = 0x800
GO = gobuild.GO_VERSIONS[-1]


@pytest.fixture(scope="module")
def binaries() -> dict[str, Path]:
    if not gobuild.go_available():
        pytest.skip("no go command")
    return {"plain": gobuild.build(GO, "plain").bin("server"), "stripped": gobuild.build(GO, "stripped").bin("server")}


def _headers(path: Path) -> tuple[dict[str, tuple[int, dict]], int]:
    """Section name -> (file offset of its header, header), and the file size."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        shoff, entsize = elf["e_shoff"], elf["e_shentsize"]
        out = {s.name: (shoff + i * entsize, dict(s.header)) for i, s in enumerate(elf.iter_sections())}
    return out, path.stat().st_size


def _mutated(src: Path, dst: Path, mutate: Callable[[bytearray, dict[str, tuple[int, dict]]], None]) -> Path:
    data = bytearray(src.read_bytes())
    mutate(data, _headers(src)[0])
    dst.write_bytes(data)
    return dst


def _set(data: bytearray, hdr_off: int, field: str, value: int) -> None:
    # Elf64_Shdr: name u32 @0, type u32 @4, flags u64 @8, addr u64 @16, offset u64 @24, size u64 @32
    off, fmt = {"type": (4, "<I"), "flags": (8, "<Q"), "offset": (24, "<Q"), "size": (32, "<Q")}[field]
    struct.pack_into(fmt, data, hdr_off + off, value)


def _inspect_bounded(path: Path, want_offsets: bool = True) -> tuple[object, float, int]:
    """(result or exception, seconds, peak bytes Python allocated)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        result: object = go_binary.inspect(path, want_offsets=want_offsets)
    except go_binary.NotGo as e:
        result = e
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, elapsed, peak


def _rejected(path: Path, reason: str, want_offsets: bool = False) -> None:
    before = go_binary.REJECTED[reason]
    result, elapsed, peak = _inspect_bounded(path, want_offsets)
    assert isinstance(result, go_binary.Rejected), result
    assert result.reason == reason, result
    assert elapsed < 2.0 and peak < 64 << 20, (elapsed, peak)
    assert go_binary.REJECTED[reason] == before + 1
    assert go_binary.stats()[f"go_binary_rejected:{reason}"] >= 1
    # Cached by file identity: the second look neither parses nor counts again.
    t0 = time.perf_counter()
    with pytest.raises(go_binary.Rejected):
        go_binary.inspect(path, want_offsets=want_offsets)
    assert time.perf_counter() - t0 < 0.01
    assert go_binary.REJECTED[reason] == before + 1


def test_nobits_buildinfo_with_a_huge_size(binaries: dict[str, Path], tmp_path: Path) -> None:
    def m(d: bytearray, h: dict) -> None:
        _set(d, h[".go.buildinfo"][0], "type", SHT_NOBITS)
        _set(d, h[".go.buildinfo"][0], "size", 1 << 40)

    _rejected(_mutated(binaries["stripped"], tmp_path / "nobits", m), "nobits")


def test_buildinfo_larger_than_the_file(binaries: dict[str, Path], tmp_path: Path) -> None:
    def m(d: bytearray, h: dict) -> None:
        _set(d, h[".go.buildinfo"][0], "size", 1 << 19)
        _set(d, h[".go.buildinfo"][0], "offset", len(d) - 1000)

    _rejected(_mutated(binaries["stripped"], tmp_path / "oob", m), "section_bounds")


def test_compressed_buildinfo_is_refused(binaries: dict[str, Path], tmp_path: Path) -> None:
    def m(d: bytearray, h: dict) -> None:
        off, hdr = h[".go.buildinfo"]
        _set(d, off, "flags", hdr["sh_flags"] | SHF_COMPRESSED)
        struct.pack_into("<IIQQ", d, hdr["sh_offset"], 1, 0, 512 << 20, 1)  # Elf64_Chdr: zlib, 512 MiB

    _rejected(_mutated(binaries["stripped"], tmp_path / "zbi", m), "compressed")


def test_dwarf_zlib_bomb_falls_back_to_the_table(binaries: dict[str, Path], tmp_path: Path) -> None:
    """.debug_info replaced by a real zlib stream of 64 MiB of zeros (~64 KiB compressed) that declares
    its size: refused by the ratio bound before anything is inflated; the binary is still traced with
    the offsets table of its Go version."""
    c = zlib.compressobj(9)
    bomb = b"".join(c.compress(bytes(1 << 20)) for _ in range(64)) + c.flush()

    def m(d: bytearray, h: dict) -> None:
        off, hdr = h[".debug_info"]
        assert hdr["sh_size"] >= 24 + len(bomb)
        start = hdr["sh_offset"]
        d[start:start + 24] = struct.pack("<IIQQ", 1, 0, 64 << 20, 1)
        d[start + 24:start + 24 + len(bomb)] = bomb
        _set(d, off, "size", 24 + len(bomb))

    path = _mutated(binaries["plain"], tmp_path / "bomb", m)
    before = go_binary.REJECTED["compressed"]
    result, elapsed, peak = _inspect_bounded(path)
    assert isinstance(result, go_binary.GoBinary)
    assert result.offsets_from == f"table go{result.minor}" and result.functions
    assert elapsed < 2.0 and peak < 64 << 20, (elapsed, peak)
    assert go_binary.REJECTED["compressed"] == before + 1


def test_truncated_file(binaries: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "truncated"
    path.write_bytes(binaries["stripped"].read_bytes()[:35_000])
    _rejected(path, "section_bounds")


def test_garbage_with_go_section_names(binaries: dict[str, Path], tmp_path: Path) -> None:
    """Random bytes in .gopclntab (a real build info left in place), then in every Go section."""
    rng = random.Random(9)

    def pcln(d: bytearray, h: dict) -> None:
        hdr = h[".gopclntab"][1]
        d[hdr["sh_offset"]:hdr["sh_offset"] + hdr["sh_size"]] = rng.randbytes(hdr["sh_size"])

    _rejected(_mutated(binaries["stripped"], tmp_path / "pcln", pcln), "malformed")

    for seed in range(20):
        rng.seed(seed)

        def everything(d: bytearray, h: dict) -> None:
            for name in (".gopclntab", ".go.buildinfo", ".symtab", ".debug_info", ".debug_abbrev"):
                if name in h:
                    hdr = h[name][1]
                    n = min(hdr["sh_size"], 4096)
                    d[hdr["sh_offset"]:hdr["sh_offset"] + n] = rng.randbytes(n)

        result, elapsed, peak = _inspect_bounded(_mutated(binaries["plain"], tmp_path / f"g{seed}", everything))
        assert isinstance(result, go_binary.NotGo | go_binary.GoBinary)  # total: a result or a refusal
        assert elapsed < 2.0 and peak < 64 << 20


def test_names_without_nul_are_not_quadratic() -> None:
    """A .gopclntab of 200,000 functions whose names never end: the old reader scanned to the end of
    the section once per function."""
    nfunc = 200_000
    ptr = 8
    header_len = 8 + 8 * ptr
    names = b"a" * (4 << 20)
    functab_off = header_len + len(names)
    funcdata_off = functab_off + nfunc * 8
    functab = b"".join(struct.pack("<II", k * 16, nfunc * 8 + k * 8) for k in range(nfunc))
    funcs = b"".join(struct.pack("<Ii", 0, (k * 7) % len(names)) for k in range(nfunc))
    words = [nfunc, 0, 0, header_len, 0, 0, 0, functab_off]
    data = struct.pack("<IBBBB", 0xFFFFFFF1, 0, 0, 1, ptr) + struct.pack("<8Q", *words) + names + functab + funcs
    assert funcdata_off == functab_off + len(functab)
    t0 = time.perf_counter()
    assert go_binary.pclntab_functions(data, set(go_binary.FUNCTIONS)) == {}
    assert time.perf_counter() - t0 < 2.0


class _Die:
    """Just enough of a pyelftools DIE for the typedef walk."""

    def __init__(self, offset: int, tag: str) -> None:
        self.offset, self.tag = offset, tag
        self.target: _Die | None = None
        self.attributes: dict = {}

    def get_DIE_from_attribute(self, _name: str) -> _Die:  # pyelftools spells it so
        assert self.target is not None
        return self.target


def test_typedef_loops_end() -> None:
    a, b = _Die(0x10, "DW_TAG_typedef"), _Die(0x20, "DW_TAG_typedef")
    a.target, b.target = b, a  # a -> b -> a: the old loop spun forever
    t0 = time.perf_counter()
    with pytest.raises(go_binary.Rejected, match="typedef"):
        go_binary._resolve_typedefs(a)
    self_ref = _Die(0x30, "DW_TAG_typedef")
    self_ref.target = self_ref
    with pytest.raises(go_binary.Rejected):
        go_binary._resolve_typedefs(self_ref)
    chain = [_Die(i, "DW_TAG_typedef") for i in range(100)]  # no cycle, but deeper than any real type
    for x, y in itertools.pairwise(chain):
        x.target = y
    chain[-1].target = _Die(999, "DW_TAG_structure_type")
    with pytest.raises(go_binary.Rejected):
        go_binary._resolve_typedefs(chain[0])
    short = [_Die(i, "DW_TAG_typedef") for i in range(3)]
    short[0].target, short[1].target, short[2].target = short[1], short[2], _Die(7, "DW_TAG_structure_type")
    assert go_binary._resolve_typedefs(short[0]).offset == 7
    assert time.perf_counter() - t0 < 0.1


def test_real_binaries_still_read_and_negative_results_are_cached(binaries: dict[str, Path], tmp_path: Path) -> None:
    plain = go_binary.inspect(binaries["plain"])
    assert plain.offsets_from == "dwarf" and set(plain.functions) == {go_binary.FN_FINISH_REQUEST}
    stripped = go_binary.inspect(binaries["stripped"])
    assert stripped.functions == plain.functions and stripped.offsets_from.startswith("table")
    # A non-Go executable: the first look opens and parses it, every later one is a stat and a lookup.
    ls = tmp_path / "ls"
    shutil.copy("/bin/ls", ls)
    t0 = time.perf_counter()
    assert not go_binary.is_go_binary(ls)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(100):
        assert not go_binary.is_go_binary(ls)
    cached = (time.perf_counter() - t0) / 100
    assert cached < first and cached < 0.001, (first, cached)
    # A new file identity (rewritten: new mtime/size) is looked at again.
    os.utime(ls, ns=(0, 1))
    assert not go_binary.is_go_binary(ls)


def test_reader_child_is_killed_on_its_limits(binaries: dict[str, Path], tmp_path: Path) -> None:
    """The child that reads binaries for the agent: a file that takes too long or needs too much
    memory is refused (counted by the caller), the child replaced, and the next file read normally."""
    from agent.inspect_worker import InspectWorker

    slow = InspectWorker(timeout_s=0.2)
    try:
        t0 = time.perf_counter()
        with pytest.raises(go_binary.Rejected) as e:
            slow.parse(str(binaries["plain"]), True)  # its DWARF takes ~1.5 s here
        assert e.value.reason == "timeout" and time.perf_counter() - t0 < 2.0
        assert slow.restarts == 1
        slow.timeout_s = 10.0
        assert slow.parse(str(binaries["stripped"]), False).functions  # a new child answers
    finally:
        slow.close()
    small = InspectWorker(memory_bytes=40 << 20)  # idle, the child maps ~21 MB; this DWARF needs ~75
    try:
        with pytest.raises(go_binary.Rejected) as e:
            small.parse(str(binaries["plain"]), True)
        assert e.value.reason in ("memory_limit", "worker_died")
        with pytest.raises(go_binary.NotGo):
            small.parse("/bin/ls", False)
    finally:
        small.close()
    # Through the cache, as the HTTP source uses it: counted once, then a lookup.
    copy = tmp_path / "server"
    shutil.copy(binaries["plain"], copy)
    w = InspectWorker(timeout_s=0.2)
    try:
        before = go_binary.REJECTED["timeout"]
        for _ in range(3):
            with pytest.raises(go_binary.Rejected):
                go_binary.inspect(copy, parse=w.parse)
        assert go_binary.REJECTED["timeout"] == before + 1
    finally:
        w.close()


def test_dwarf_reading_is_rate_limited(binaries: dict[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Many distinct binaries with big DWARF (copies, each a new file identity) cannot keep the reader
    busy: past the allowance per minute, offsets come from the table, counted."""
    monkeypatch.setattr(go_binary, "DWARF_S_PER_MIN", 0.0)
    copy = tmp_path / "server"
    shutil.copy(binaries["plain"], copy)
    before = go_binary.REJECTED["dwarf_rate_limited"]
    t0 = time.perf_counter()
    gb = go_binary.inspect(copy)
    assert time.perf_counter() - t0 < 1.0
    assert gb.offsets_from.startswith("table") and gb.dwarf_refused == "dwarf_rate_limited"
    assert go_binary.REJECTED["dwarf_rate_limited"] == before + 1


def test_reader_child_that_cannot_start_falls_back_to_this_process(binaries: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a child that fails its start-up probe (no file involved) makes the agent read in-process:
    hostile files kill a child after its probe, so they cannot switch the limits off."""
    from agent import inspect_worker

    monkeypatch.setattr(inspect_worker.sys, "executable", "/bin/false")  # a child that never answers
    w = inspect_worker.InspectWorker()
    try:
        for _ in range(2):
            with pytest.raises(go_binary.Rejected, match="did not start"):
                w.parse(str(binaries["stripped"]), False)
        assert w.parse(str(binaries["stripped"]), False).functions and w.broken
    finally:
        w.close()


def test_gnu_zdebug_bomb_falls_back_to_the_table(binaries: dict[str, Path], tmp_path: Path) -> None:
    """A GNU-style .zdebug_info (pyelftools inflates those without any bound): 64 MiB of zeros in
    ~64 KiB; refused after inflating at most 32x its size, the binary read with the table."""
    c = zlib.compressobj(9)
    bomb = b"".join(c.compress(bytes(1 << 20)) for _ in range(64)) + c.flush()
    payload = b"ZLIB" + struct.pack(">Q", 64 << 20) + bomb

    def m(d: bytearray, h: dict) -> None:
        shstr = h[".shstrtab"][1]
        table = bytes(d[shstr["sh_offset"]:shstr["sh_offset"] + shstr["sh_size"]])
        old = b".debug_gdb_scripts\0"
        at = shstr["sh_offset"] + table.index(old)
        d[at:at + len(old)] = b".zdebug_info".ljust(len(old), b"\0")
        off, _ = h[".debug_gdb_scripts"]
        where = h[".debug_info"][1]["sh_offset"]
        assert h[".debug_info"][1]["sh_size"] >= len(payload)
        d[where:where + len(payload)] = payload
        _set(d, off, "offset", where)
        _set(d, off, "size", len(payload))

    path = _mutated(binaries["plain"], tmp_path / "zdebug", m)
    before = go_binary.REJECTED["compressed"]
    result, elapsed, peak = _inspect_bounded(path)
    assert isinstance(result, go_binary.GoBinary), result
    assert result.dwarf_refused == "compressed" and result.offsets_from.startswith("table")
    assert elapsed < 2.0 and peak < 64 << 20, (elapsed, peak)
    assert go_binary.REJECTED["compressed"] == before + 1
