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

    cflags = [f"-I{ev.BPF_DIR}", "-DBS_MAX_CONNS=1024", "-DBS_RINGBUF_PAGES=16", "-DBS_HAVE_SOCK_LENGTH"]
    if use_btf:
        cflags += kernel_field_defines()
        assert len(cflags) == 4 + len(KERNEL_FIELDS)
    b = BPF(src_file=str(ev.BPF_DIR / "tcp_lifecycle.c").encode(), cflags=cflags)
    try:
        assert b.num_open_tracepoints() >= 3  # bcc attached the TRACEPOINT_PROBEs
    finally:
        b.cleanup()


def test_btf_offsets_are_inside_their_structs() -> None:
    for ref in KERNEL_FIELDS.values():
        assert 0 < offset_of(ref) < struct_size(ref.struct)
    # Named in the field notes for this machine's kernel; a different kernel may differ.
    assert offset_of(FieldRef("tcp_sock", "srtt_us")) % 4 == 0
