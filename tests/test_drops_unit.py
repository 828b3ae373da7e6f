"""Packet drops without BPF: the kernel's reason names (BTF enum, tracefs print fmt), what counts as a
drop, the deltas the agent reports, and a connection's drops on its rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import _tcp_event as ev
from agent import drop_reasons as dr
from agent.clock import Clock
from agent.packet_drops import DropTally
from agent.tcp_decode import decode_closed, decode_open
from tests.fuzz.corpus import tcp_record

# This project's kernel (6.18) as tracefs shows it, shortened; 5.17 numbered NOT_SPECIFIED 0.
FORMAT_6_18 = """name: kfree_skb
ID: 2310
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->rx_sk, \
REC->protocol, REC->location, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, \
{ 12, "NETFILTER_DROP" }, { 40, "TCP_LISTEN_OVERFLOW" }, { 128, "MAX" })
"""
FORMAT_5_17 = """format:
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:28;\tsize:4;\tsigned:0;

print fmt: "reason: %s", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" })
"""


def test_format_fields_and_names() -> None:
    fields, names = dr.parse_format(FORMAT_6_18)
    assert {"skbaddr", "location", "rx_sk", "protocol", "reason"} <= fields
    assert names == {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 12: "NETFILTER_DROP", 40: "TCP_LISTEN_OVERFLOW",
                     128: "MAX"}
    fields, names = dr.parse_format(FORMAT_5_17)
    assert "rx_sk" not in fields and names == {0: "NOT_SPECIFIED", 1: "NO_SOCKET"}


def test_btf_enum_names() -> None:
    values = {"SKB_NOT_DROPPED_YET": 0, "SKB_CONSUMED": 1, "SKB_DROP_REASON_NOT_SPECIFIED": 2,
              "SKB_DROP_REASON_NO_SOCKET": 3, "SKB_DROP_REASON_MAX": 128,
              "SKB_DROP_REASON_SUBSYS_MASK": 0xFFFF0000}
    assert dr.names_from_enum(values) == {0: "NOT_DROPPED_YET", 1: "CONSUMED", 2: "NOT_SPECIFIED", 3: "NO_SOCKET"}


def test_what_counts_as_a_drop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reasons from NOT_SPECIFIED's number up: below it are NOT_DROPPED_YET and CONSUMED (6.x), or
    nothing (5.17, where NOT_SPECIFIED is 0)."""
    for text, first, rx_sk in ((FORMAT_6_18, 2, True), (FORMAT_5_17, 0, False)):
        fmt = tmp_path / "events" / "skb" / "kfree_skb" / "format"
        fmt.parent.mkdir(parents=True, exist_ok=True)
        fmt.write_text(text)
        monkeypatch.setattr(dr, "TRACEFS_DIRS", (tmp_path / "absent", tmp_path))
        tp = dr.tracepoint()
        assert tp is not None and tp.has_reason and tp.has_rx_sk == rx_sk
        assert (tp.first, tp.not_specified) == (first, first)
    monkeypatch.setattr(dr, "TRACEFS_DIRS", (tmp_path / "absent",))
    assert dr.tracepoint() is None


def test_running_kernel_names_match_tracefs() -> None:
    """BTF and the tracepoint's own print fmt agree on this kernel (both are the running kernel's)."""
    from agent.btf import BTFUnavailable, enum_values

    try:
        btf = dr.names_from_enum(enum_values("skb_drop_reason"))
    except BTFUnavailable as e:
        pytest.skip(f"no BTF: {e}")
    tp = dr.tracepoint()
    if tp is None:
        pytest.skip("no tracefs skb:kfree_skb")
    _, fmt = dr.parse_format(next(p for d in dr.TRACEFS_DIRS
                                  if (p := d / "events/skb/kfree_skb/format").exists()).read_text())
    assert {k: v for k, v in btf.items() if k in fmt} == {k: v for k, v in fmt.items() if k in btf}
    assert btf[dr.tracepoint(btf).first] == "NOT_SPECIFIED"  # type: ignore[union-attr]


def test_unnamed_reasons_keep_their_number() -> None:
    names = {3: "NO_SOCKET"}
    assert dr.reason_name(names, 3) == "NO_SOCKET"
    assert dr.reason_name(names, 500) == "REASON_500"
    assert dr.reason_name(names, (2 << 16) | 7) == "SUBSYS_2_7"  # a subsystem's own enum (mac80211, ovs)


def test_tally_reports_deltas_only() -> None:
    t = DropTally({3: "NO_SOCKET", 12: "NETFILTER_DROP"})
    rows = t.rows([(3, 4026531840, 5, 0), (12, 4026531840, 2, 2)], host="h", time_ns=10)
    assert rows == [
        {"time": 10, "host": "h", "netns": 4026531840, "reason": "NO_SOCKET", "drops": 5, "conn_drops": 0},
        {"time": 10, "host": "h", "netns": 4026531840, "reason": "NETFILTER_DROP", "drops": 2, "conn_drops": 2},
    ]
    assert t.rows([(3, 4026531840, 5, 0), (12, 4026531840, 2, 2)], host="h", time_ns=20) == []
    rows = t.rows([(3, 4026531840, 8, 0), (12, 4026531840, 2, 2), (3, 7, 1, 1)], host="h", time_ns=30)
    assert [(r["reason"], r["netns"], r["drops"], r["conn_drops"]) for r in rows] == [
        ("NO_SOCKET", 4026531840, 3, 0), ("NO_SOCKET", 7, 1, 1)]


def test_connection_rows_carry_drops() -> None:
    names = {12: "NETFILTER_DROP"}
    common = {"clock": Clock(0), "host": "h", "boot_id": "b", "agent_start_ns": 1}
    e = ev.unpack(tcp_record(start_ns=1_000, established_ns=2_000, end_ns=9_000, flags=ev.F_ESTABLISHED,
                             drops=3, drop_reason=12, drop_votes=3))
    row = decode_closed(e, app_bytes=True, drop_names=names, **common)  # type: ignore[arg-type]
    assert (row["drops"], row["drop_reason"]) == (3, "NETFILTER_DROP")
    open_row = decode_open(e._replace(flags=ev.F_ESTABLISHED), snapshot_ns=5, drop_names=names,
                           **common)  # type: ignore[arg-type]
    assert open_row is not None and (open_row["drops"], open_row["drop_reason"]) == (3, "NETFILTER_DROP")
    quiet = ev.unpack(tcp_record(flags=ev.F_ESTABLISHED, drop_reason=12))  # no drops: no reason
    assert decode_closed(quiet, app_bytes=True, drop_names=names, **common)["drop_reason"] == ""  # type: ignore[arg-type]
