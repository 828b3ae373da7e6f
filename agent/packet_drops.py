"""Packet drops, counted in the kernel by bpf/tcp_lifecycle.c (skb:kfree_skb), as ``packet_drops`` rows.

The BPF side keeps cumulative counts per (reason, network namespace) in a per-CPU hash and never
emits a record per drop; this module reads that map (every snapshot interval, and at shutdown) and
turns it into deltas: one row per (reason, netns) that changed, with how many of its drops belonged to
a tracked TCP connection (those are also on the connection's own row). Cost and limits: docs in
bpf/drop_event.h and docs/drops.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from agent import drop_reasons
from agent.btf import BTFUnavailable, FieldRef, enum_values, offset_of

log = logging.getLogger(__name__)

MAX_DROP_KEYS = 4096  # (reason, netns) pairs; beyond: counted source_errors:tcp:kernel_drop_keys_full

# -D name -> kernel field: every struct read of the kfree_skb program.
KERNEL_FIELDS = {
    "BS_OFF_SKB_SK": FieldRef("sk_buff", "sk"),
    "BS_OFF_SKB_DEV": FieldRef("sk_buff", "dev"),
    "BS_OFF_DEV_NET": FieldRef("net_device", "nd_net"),
    "BS_OFF_SK_NET": FieldRef("sock", "__sk_common.skc_net"),
    "BS_OFF_NET_INUM": FieldRef("net", "ns.inum"),
}


def kernel_drops() -> tuple[list[str], drop_reasons.DropTracepoint] | None:
    """-D flags that turn the drop probe on, and the kernel's reasons; None (logged) when this
    kernel cannot tell drop reasons (no skb:kfree_skb reason field, before 5.17) or has no BTF for
    the struct offsets the probe reads (headers may describe another kernel: never guessed)."""
    try:
        btf_names = drop_reasons.names_from_enum(enum_values("skb_drop_reason"))
    except BTFUnavailable:
        btf_names = {}
    tp = drop_reasons.tracepoint(btf_names)
    if tp is None or not tp.has_reason:
        log.warning("skb:kfree_skb has no reason field on this kernel: packet drops not recorded")
        return None
    try:
        offsets = [f"-D{name}={offset_of(ref)}" for name, ref in KERNEL_FIELDS.items()]
    except BTFUnavailable as e:
        log.warning("no BTF for packet drops (%s): packet drops not recorded", e)
        return None
    flags = [
        "-DBS_HAVE_DROP_REASON",
        f"-DBS_DROP_FIRST={tp.first}",
        f"-DBS_DROP_NOT_SPECIFIED={tp.not_specified}",
        f"-DBS_MAX_DROP_KEYS={MAX_DROP_KEYS}",
        *offsets,
    ]
    if tp.has_rx_sk:
        flags.append("-DBS_HAVE_RX_SK")
    log.info("packet drops: %d reasons named (from %s), a drop is reason >= %d, rx_sk %s",
             len(tp.names), "BTF" if btf_names else "tracefs", tp.first, "yes" if tp.has_rx_sk else "no")
    return flags, tp


def map_entries(table: Any) -> list[tuple[int, int, int, int]]:
    """(reason, netns, drops, conn_drops) per entry of the BPF per-CPU hash ``drops``, summed over CPUs."""
    out = []
    for k, per_cpu in table.items():
        out.append((int(k.reason), int(k.netns), sum(int(v.drops) for v in per_cpu),
                    sum(int(v.conn_drops) for v in per_cpu)))
    return out


class DropTally:
    """Cumulative kernel counts -> rows of the drops since the previous call (pure, testable)."""

    def __init__(self, names: Mapping[int, str]) -> None:
        self.names = names
        self._last: dict[tuple[int, int], tuple[int, int]] = {}

    def rows(self, entries: Iterable[tuple[int, int, int, int]], *, host: str, time_ns: int) -> list[dict[str, Any]]:
        out = []
        for reason, netns, drops, conn_drops in entries:
            key = (reason, netns)
            last_drops, last_conn = self._last.get(key, (0, 0))
            self._last[key] = (drops, conn_drops)
            d, c = max(drops - last_drops, 0), max(conn_drops - last_conn, 0)
            if d or c:
                out.append({
                    "time": time_ns,
                    "host": host,
                    "netns": netns,
                    "reason": drop_reasons.reason_name(self.names, reason),
                    "drops": d,
                    "conn_drops": c,
                })
        return out
