"""Go TLS / HTTP/2 capture without the kernel: the exchange builder and the probe finder are total
(any calls, any file), and the RET finder sees every RET of real Go code."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from agent import go_tls_binary


def test_exchanges_total_on_any_calls() -> None:
    """The exchange builder takes any calls in any order without raising (unit, no kernel)."""
    from agent.go_tls_source import Call, Exchanges, records

    rnd = random.Random(7)
    x = Exchanges(head_max=256, max_conns=4)
    pieces = [b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", b"G", b"ET /x HTTP/1.1\r\nHost: a\r\n\r\n",
              b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"", b"\xff" * 300, b"POST /a HTTP/1.1\r\n"]
    for i in range(5000):
        data = rnd.choice(pieces)
        x.feed(Call(pid=rnd.randint(1, 3), tid=1, fd=rnd.randint(-1, 5), ts_ns=i, conn=rnd.randint(1, 9),
                    goroutine=0, length=len(data) + rnd.randint(0, 2), is_write=rnd.random() < 0.5, data=data,
                    has_addr=rnd.random() < 0.5, sport=rnd.randint(0, 3)))
        if i % 500 == 0:
            x.expire(i, 100)
    x.expire(10**12, 0, {1, 2, 3})
    done = x.take()
    assert done and not x.conns
    ev = records(done, 256)
    assert len(ev) == len(done)


def test_probe_finder_total_on_any_file(tmp_path: Path) -> None:
    rnd = random.Random(5)
    exe = Path(os.path.realpath("/proc/self/exe"))  # a real ELF without Go's crypto/tls
    blobs = [b"", b"\x7fELF", os.urandom(4096), exe.read_bytes()[:5000]]
    for i, blob in enumerate(blobs):
        f = tmp_path / f"f{i}"
        f.write_bytes(blob)
        assert go_tls_binary.find(str(f)) is None
    mangled = bytearray(exe.read_bytes()[: 1 << 20])
    for _ in range(200):
        mangled[rnd.randrange(len(mangled))] = rnd.randrange(256)
    f = tmp_path / "mangled"
    f.write_bytes(bytes(mangled))
    assert go_tls_binary.find(str(f)) is None
    assert go_tls_binary.find(str(tmp_path / "absent")) is None


def test_ret_offsets() -> None:
    # push rbp; mov rbp,rsp; ret; nop; ret
    code = bytes([0x55, 0x48, 0x89, 0xE5, 0xC3, 0x90, 0xC3])
    assert go_tls_binary.ret_offsets(code, 0x1000) == [0x1004, 0x1006]
    # a 0xC3 byte inside another instruction is not a RET: mov eax, 0xc3
    assert go_tls_binary.ret_offsets(bytes([0xB8, 0xC3, 0, 0, 0, 0xC3]), 0) == [5]


def test_real_go_binary_probes() -> None:
    go = shutil.which("go")
    if go is None:
        return
    exe = Path(os.path.realpath(go))
    # the go command uses crypto/tls (module downloads): its Read has RETs and both entries are in text
    p = go_tls_binary.find(str(exe))
    assert p is not None and p.read_rets and p.read < p.read_rets[0] and p.write > 0
