"""struct tcp_event, drop_key and drop_count are declared twice (C header, ctypes): compile each header and
compare every field."""

from __future__ import annotations

import ctypes
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


@pytest.mark.parametrize("struct", ["drop_key", "drop_count"])
def test_drop_structs_match_header(tmp_path: Path, struct: str) -> None:
    from agent import _drop_event as dev

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler is needed to check the shared header")
    mirror = {"drop_key": dev.DropKey, "drop_count": dev.DropCount}[struct]
    prints = "\n".join(
        f'printf("{f} %zu %zu\\n", offsetof(struct {struct}, {f}), sizeof(((struct {struct} *)0)->{f}));'
        for f, _ in mirror._fields_
    )
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
        f'#include "{dev.HEADER}"\nint main(void) {{\n{prints}\n'
        f'printf("SIZE %zu 0\\n", sizeof(struct {struct}));\nreturn 0;\n}}\n'
    )
    exe = tmp_path / "layout"
    subprocess.run([cc, "-o", str(exe), str(src)], check=True)
    got = {}
    for line in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines():
        name, off, size = line.split()
        got[name] = (int(off), int(size))
    assert got.pop("SIZE")[0] == ctypes.sizeof(mirror)
    for name, _ in mirror._fields_:
        desc = getattr(mirror, name)
        assert got[name] == (desc.offset, desc.size), name
