"""Fuzz target: the Go binary reader (agent/go_binary.parse_file), which reads executables any local
user can run. Seeds are real Go binaries built by the suite (tests/gobuild.py); inputs are those
binaries with patches laid over the bytes the reader trusts most: the ELF header, the section header
table, .go.buildinfo, .gopclntab, .symtab/.strtab, and DWARF. Every input must give a GoBinary or
NotGo (Rejected: a counted reason), fast.

The corpus (tests/fuzz/corpus/go_binary/*.json) holds patch lists, not binaries: each names a program,
a variant and [section, offset, hex bytes] patches to lay over a fresh build.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import go_binary
from tests import gobuild
from tests.fuzz.corpus import ROOT

pytestmark = pytest.mark.go
LONG = os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci"  # make fuzz: as many examples as the profile says
SLOW_S = go_binary.BUDGET_S + 3  # the reader's own wall-clock budget, plus slack for a busy host
TARGETS = ("<elf-header>", "<section-headers>", ".go.buildinfo", ".gopclntab", ".symtab", ".strtab", ".shstrtab",
           ".debug_info", ".debug_abbrev", ".debug_str", ".note.go.buildid")


class Seed:
    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        with path.open("rb") as f:
            elf = ELFFile(f)
            self.spans = {"<elf-header>": (0, 64),
                          "<section-headers>": (elf["e_shoff"], elf["e_shnum"] * elf["e_shentsize"])}
            for s in elf.iter_sections():
                if s.name in TARGETS and s["sh_type"] != "SHT_NOBITS":
                    self.spans[s.name] = (s["sh_offset"], s["sh_size"])

    def patched(self, patches: list[tuple[str, int, bytes]]) -> bytes:
        out = bytearray(self.data)
        for section, offset, patch in patches:
            if section not in self.spans:
                continue
            start, size = self.spans[section]
            at = start + offset % max(size, 1)
            out[at : at + len(patch)] = patch[: max(0, len(out) - at)]
        return bytes(out)


@pytest.fixture(scope="module")
def seeds() -> dict[str, Seed]:
    if not gobuild.go_available():
        pytest.skip("no go command")
    b_strip = gobuild.build(gobuild.GO_VERSIONS[-1], "stripped")
    b_plain = gobuild.build(gobuild.GO_VERSIONS[-1], "plain")
    return {"stripped": Seed(b_strip.bin("client")), "plain": Seed(b_plain.bin("client"))}


def _check(tmp: Path, data: bytes, want_offsets: bool) -> None:
    tmp.write_bytes(data)
    t = time.monotonic()
    try:
        got = go_binary.parse_file(str(tmp), want_offsets)
        assert isinstance(got, go_binary.GoBinary)
    except go_binary.NotGo:
        pass
    assert time.monotonic() - t < SLOW_S


def _corpus() -> list[tuple[str, dict]]:
    folder = ROOT / "go_binary"
    return [(p.name, json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


@pytest.mark.parametrize(("name", "case"), _corpus())
def test_corpus_go_binary(seeds: dict[str, Seed], tmp_path: Path, name: str, case: dict) -> None:
    patches = [(s, o, bytes.fromhex(h)) for s, o, h in case["patches"]]
    _check(tmp_path / "exe", seeds[case["variant"]].patched(patches), case.get("want_offsets", False))


_values = st.one_of(
    st.binary(min_size=1, max_size=32),
    st.sampled_from([0, 1, 0x7F, 0xFF, 0xFFFF, 0xFFFFFFFF, 1 << 31, 1 << 40, (1 << 63) - 1, (1 << 64) - 1]).map(
        lambda v: v.to_bytes(8, "little")),
    st.integers(0, (1 << 32) - 1).map(lambda v: v.to_bytes(4, "little")),
)
_patches = st.lists(st.tuples(st.sampled_from(TARGETS), st.integers(0, 1 << 20), _values), min_size=1, max_size=6)


@settings(max_examples=settings().max_examples if LONG else 60)  # each example reads a whole executable
@given(patches=_patches)
def test_fuzz_stripped_binaries(seeds: dict[str, Seed], tmp_path_factory: pytest.TempPathFactory,
                                patches: list[tuple[str, int, bytes]]) -> None:
    _check(tmp_path_factory.mktemp("exe") / "exe", seeds["stripped"].patched(patches), want_offsets=False)


@settings(max_examples=settings().max_examples // 50 if LONG else 8)  # DWARF is read: seconds per example
@given(patches=_patches)
def test_fuzz_plain_binaries_with_dwarf(seeds: dict[str, Seed], tmp_path_factory: pytest.TempPathFactory,
                                        patches: list[tuple[str, int, bytes]]) -> None:
    _check(tmp_path_factory.mktemp("exe") / "exe", seeds["plain"].patched(patches), want_offsets=True)
