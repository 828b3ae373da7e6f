"""Kernel struct field offsets from the running kernel's BTF.

bcc compiles against whatever headers it finds, and on hosts without the running kernel's headers those
describe another kernel: a field read through them lands on the wrong bytes. BTF
(/sys/kernel/btf/vmlinux) describes the kernel that is actually running, so every offset the BPF
programs use comes from here, passed to the compiler as a define. ``bpftool`` (Debian: bpftool) does the
BTF parsing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")


class BTFUnavailable(RuntimeError):
    """No BTF for the running kernel, or no bpftool to read it."""


@dataclass(frozen=True)
class FieldRef:
    """A field of a kernel struct: ``struct`` then a dotted path through nested members."""

    struct: str
    path: str


@cache
def _struct_index(btf_path: Path = VMLINUX_BTF) -> dict[str, dict]:
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not btf_path.exists():
        raise BTFUnavailable(f"{btf_path} not found: kernel built without CONFIG_DEBUG_INFO_BTF")
    if not Path(bpftool).exists():
        raise BTFUnavailable("bpftool not found (Debian package: bpftool)")
    out = subprocess.run(
        [bpftool, "-j", "btf", "dump", "file", str(btf_path)], check=True, capture_output=True
    ).stdout
    types = json.loads(out)["types"]
    by_id = {t["id"]: t for t in types}
    structs: dict[str, dict] = {}
    for t in types:
        if t["kind"] in ("STRUCT", "UNION") and t.get("name") and t["name"] not in structs:
            structs[t["name"]] = t
    structs["__by_id__"] = by_id  # type: ignore[assignment]
    return structs


def _resolve(type_id: int, by_id: dict[int, dict]) -> dict:
    """Follow typedefs and qualifiers down to the struct/union/int behind a member."""
    t = by_id[type_id]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        t = by_id[t["type_id"]]
    return t


def _find_member(t: dict, name: str, by_id: dict[int, dict]) -> tuple[int, dict] | None:
    """Bit offset and type of ``name`` in ``t``, looking through anonymous struct/union members."""
    for m in t.get("members", []):
        if m["name"] == name:
            return m["bits_offset"], _resolve(m["type_id"], by_id)
        if m["name"] in ("", "(anon)"):
            inner = _resolve(m["type_id"], by_id)
            found = _find_member(inner, name, by_id)
            if found:
                return m["bits_offset"] + found[0], found[1]
    return None


def offset_of(ref: FieldRef, btf_path: Path = VMLINUX_BTF) -> int:
    """Byte offset of ``ref`` from the start of ``struct ref.struct`` on the running kernel."""
    structs = _struct_index(btf_path)
    by_id = structs["__by_id__"]
    if ref.struct not in structs:
        raise BTFUnavailable(f"struct {ref.struct} not in BTF")
    t, bits = structs[ref.struct], 0
    for name in ref.path.split("."):
        found = _find_member(t, name, by_id)  # type: ignore[arg-type]
        if found is None:
            raise BTFUnavailable(f"struct {ref.struct} has no field {ref.path}")
        bits += found[0]
        t = found[1]
    if bits % 8:
        raise BTFUnavailable(f"{ref.struct}.{ref.path} is a bitfield")
    return bits // 8


def struct_size(name: str, btf_path: Path = VMLINUX_BTF) -> int:
    structs = _struct_index(btf_path)
    if name not in structs:
        raise BTFUnavailable(f"struct {name} not in BTF")
    return int(structs[name]["size"])


def enum_values(name: str, btf_path: Path = VMLINUX_BTF) -> dict[str, int]:
    """Names and values of ``enum name`` on the running kernel (e.g. ``skb_drop_reason``)."""
    by_id = _struct_index(btf_path)["__by_id__"]
    for t in by_id.values():  # type: ignore[union-attr]
        if t["kind"] in ("ENUM", "ENUM64") and t.get("name") == name:
            return {v["name"]: int(v["val"]) for v in t.get("values", [])}
    raise BTFUnavailable(f"enum {name} not in BTF")
