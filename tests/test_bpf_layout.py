"""struct tcp_event is declared twice (C header, ctypes): compile the header and compare every field."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent import _tcp_event as ev


def test_ctypes_mirror_matches_header(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler is needed to check the shared header")
    fields = [name for name, *_ in ev.TcpEvent._fields_]
    prints = "\n".join(
        f'printf("{f} %zu %zu\\n", offsetof(struct tcp_event, {f}), sizeof(((struct tcp_event *)0)->{f}));'
        for f in fields
    )
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
        f'#include "{ev.HEADER}"\nint main(void) {{\n{prints}\n'
        'printf("SIZE %zu 0\\n", sizeof(struct tcp_event));\nreturn 0;\n}\n'
    )
    exe = tmp_path / "layout"
    subprocess.run([cc, "-o", str(exe), str(src)], check=True)
    got = {}
    for line in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines():
        name, off, size = line.split()
        got[name] = (int(off), int(size))
    assert got.pop("SIZE")[0] == ev.TCP_EVENT_SIZE
    for name, *_ in ev.TcpEvent._fields_:
        desc = getattr(ev.TcpEvent, name)
        assert got[name] == (desc.offset, desc.size), name
