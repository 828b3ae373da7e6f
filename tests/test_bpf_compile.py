"""The BPF program builds and passes the verifier both ways: offsets from BTF (the default) and,
for hosts without BTF, from the kernel headers' own offsetof."""

from __future__ import annotations

import pytest

from agent import _tcp_event as ev
from agent.btf import FieldRef, offset_of, struct_size
from agent.tcp_source import KERNEL_FIELDS, kernel_field_defines

pytestmark = pytest.mark.root


@pytest.mark.parametrize("use_btf", [True, False], ids=["btf-offsets", "header-offsets"])
def test_program_loads(use_btf: bool) -> None:
    from bcc import BPF

    cflags = [f"-I{ev.BPF_DIR}", "-DBS_MAX_CONNS=1024", "-DBS_RINGBUF_PAGES=16", "-DBS_RESCUE_RINGBUF_PAGES=1",
              "-DBS_HAVE_SOCK_LENGTH"]
    if use_btf:
        cflags += kernel_field_defines()
        assert len(cflags) == 5 + len(KERNEL_FIELDS)
    b = BPF(src_file=str(ev.BPF_DIR / "tcp_lifecycle.c").encode(), cflags=cflags)
    try:
        # bcc attached every RAW_TRACEPOINT_PROBE (the twins are attached by agent/tcp_source.py), and no
        # classic tracepoint: the kernel would skip those whenever another probe program runs on the CPU
        assert sorted(b.raw_tracepoint_fds) == [b"inet_sock_set_state", b"sock_recv_length", b"sock_send_length",
                                                b"tcp_destroy_sock", b"tcp_receive_reset", b"tcp_send_reset"]
        assert b.num_open_tracepoints() == 0
    finally:
        b.cleanup()


def test_btf_offsets_are_inside_their_structs() -> None:
    for ref in KERNEL_FIELDS.values():  # (skc_daddr is the first field of struct sock_common)
        assert 0 <= offset_of(ref) < struct_size(ref.struct)
    # Named in the field notes for this machine's kernel; a different kernel may differ.
    assert offset_of(FieldRef("tcp_sock", "srtt_us")) % 4 == 0


@pytest.mark.parametrize("rx_sk", [True, False], ids=["rx_sk", "no-rx_sk"])
def test_program_loads_with_packet_drops(rx_sk: bool) -> None:
    """With the drop probe: as this kernel has it (rx_sk, 6.11+) and as 5.17-6.10 have it (no rx_sk:
    the socket comes from skb->sk alone)."""
    from bcc import BPF

    from agent.packet_drops import kernel_drops

    found = kernel_drops()
    assert found is not None, "this kernel has skb:kfree_skb with a reason and BTF"
    drop_flags, tp = found
    assert tp.has_rx_sk and tp.names[tp.first] == "NOT_SPECIFIED"
    if not rx_sk:
        drop_flags = [f for f in drop_flags if f != "-DBS_HAVE_RX_SK"]
    cflags = [f"-I{ev.BPF_DIR}", "-DBS_MAX_CONNS=1024", "-DBS_RINGBUF_PAGES=16", "-DBS_RESCUE_RINGBUF_PAGES=1",
              *kernel_field_defines(), *drop_flags]
    b = BPF(src_file=str(ev.BPF_DIR / "tcp_lifecycle.c").encode(), cflags=cflags)
    try:
        assert b.get_table(b"drops") is not None
    finally:
        b.cleanup()


def test_drop_offsets_are_inside_their_structs() -> None:
    from agent.packet_drops import KERNEL_FIELDS as DROP_FIELDS

    for ref in DROP_FIELDS.values():
        assert 0 <= offset_of(ref) < struct_size(ref.struct)
