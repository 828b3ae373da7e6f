"""The running kernel's packet-drop reasons: numbers of ``enum skb_drop_reason`` to names.

The enum changes between kernel versions (reasons are added in the middle, 5.17 numbered
NOT_SPECIFIED 0, later kernels put NOT_DROPPED_YET and CONSUMED before it), so names never come from
headers: from BTF (``/sys/kernel/btf/vmlinux``) when the kernel has it, else from the tracepoint's own
``print fmt`` in tracefs (``__print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, ...)``).

What counts as a drop (bpf/drop_event.h): reasons numbered at or above NOT_SPECIFIED. Below it sit
SKB_NOT_DROPPED_YET and SKB_CONSUMED, which are frees, not drops (on 6.x kernels a CONSUMED free fires
skb:consume_skb instead; filtered anyway for the kernels that still send it here). Pure functions: no
BPF needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
NOT_SPECIFIED = "NOT_SPECIFIED"
_FIELD = re.compile(r"^\s*field:(.+?)\s+(\w+)(?:\[\d*\])?;", re.M)
_SYMBOL = re.compile(r"\{\s*(\d+)\s*,\s*\"([A-Za-z0-9_]+)\"\s*\}")
_NOT_REASONS = ("SKB_DROP_REASON_MAX", "SKB_DROP_REASON_SUBSYS_MASK")


@dataclass(frozen=True)
class DropTracepoint:
    """What the running kernel's skb:kfree_skb offers."""

    fields: frozenset[str]  # its fields (reason, rx_sk, ...)
    names: Mapping[int, str]  # reason number -> name without the SKB_DROP_REASON_ prefix
    first: int  # the smallest reason number that is a drop (NOT_SPECIFIED's)
    not_specified: int  # NOT_SPECIFIED's number: counted per host, never on a connection

    @property
    def has_reason(self) -> bool:
        return "reason" in self.fields

    @property
    def has_rx_sk(self) -> bool:
        return "rx_sk" in self.fields


def parse_format(text: str) -> tuple[frozenset[str], dict[int, str]]:
    """Field names, and the reason names of the ``print fmt``, of a tracefs ``format`` file."""
    fields = frozenset(m.group(2) for m in _FIELD.finditer(text))
    fmt = text.split("print fmt:", 1)[1] if "print fmt:" in text else ""
    names = {int(m.group(1)): m.group(2) for m in _SYMBOL.finditer(fmt)}
    return fields, names


def names_from_enum(values: Mapping[str, int]) -> dict[int, str]:
    """``enum skb_drop_reason`` as BTF lists it -> number to short name (NO_SOCKET, CONSUMED, ...)."""
    out: dict[int, str] = {}
    for name, value in values.items():
        if name in _NOT_REASONS:
            continue
        # SKB_DROP_REASON_SKB_CSUM is SKB_CSUM (as the print fmt names it); SKB_CONSUMED is CONSUMED.
        short = name[len("SKB_DROP_REASON_"):] if name.startswith("SKB_DROP_REASON_") else name.removeprefix("SKB_")
        out.setdefault(value, short)
    return out


def reason_name(names: Mapping[int, str], code: int) -> str:
    """The name of reason ``code``; a reason this kernel does not name (a subsystem's own enum, in
    the high 16 bits, or a number beyond the table) keeps its number."""
    name = names.get(code)
    if name is not None:
        return name
    if code >> 16:
        return f"SUBSYS_{code >> 16}_{code & 0xFFFF}"
    return f"REASON_{code}"


def tracepoint(btf_names: Mapping[int, str] | None = None) -> DropTracepoint | None:
    """skb:kfree_skb of the running kernel, or None when it has no such tracepoint. Names from
    ``btf_names`` (the BTF enum) when given, else from the tracepoint's print fmt."""
    for d in TRACEFS_DIRS:
        path = d / "events" / "skb" / "kfree_skb" / "format"
        try:
            text = path.read_text()
        except OSError:
            continue
        fields, fmt_names = parse_format(text)
        names = dict(btf_names) if btf_names else fmt_names
        by_name = {v: k for k, v in names.items()}
        not_specified = by_name.get(NOT_SPECIFIED, 0)
        return DropTracepoint(fields, names, first=not_specified, not_specified=not_specified)
    return None
