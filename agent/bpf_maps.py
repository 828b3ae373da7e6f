"""Reading a whole BPF hash map while the kernel keeps changing it.

bcc's ``table.items()`` walks keys with ``bpf_get_next_key``; when the key it stands on is deleted
meanwhile (a connection closing), the kernel answers with the *first* key, and the walk starts over.
Under connection churn a snapshot of the open-connections map then ran for seconds, and the
pipeline's loop (which also reads the ring buffers) with it: records were lost in a full ring.
``BPF_MAP_LOOKUP_BATCH`` (kernel 5.6+) walks by bucket instead: a deleted entry is simply not seen,
nothing restarts, and one syscall reads ``chunk`` entries.
"""

from __future__ import annotations

import ctypes as C
import errno
import os
from collections.abc import Iterator
from typing import Any


def lookup_batch(table: Any, chunk: int = 4096) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) of bcc hash map ``table``, ``chunk`` at a time into buffers reused between
    chunks: use (or copy) each pair before asking for the next. Raises OSError when the kernel
    refuses (no batch operations, or a bucket larger than ``chunk``): the caller may walk
    ``table.items()`` instead."""
    from bcc import lib

    keys = (table.Key * chunk)()
    values = (table.Leaf * chunk)()
    token = C.c_uint32(0)
    count = C.c_uint32(0)
    first = True
    while True:
        count.value = chunk
        res = lib.bpf_lookup_batch(table.map_fd, None if first else C.byref(token), C.byref(token),
                                   C.cast(keys, C.c_void_p), C.cast(values, C.c_void_p), C.byref(count))
        err = C.get_errno()
        if res != 0 and err != errno.ENOENT:
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        for i in range(min(count.value, chunk)):
            k, v = keys[i], values[i]  # plain integer types come out of a ctypes array as int
            yield (table.Key(k) if isinstance(k, int) else k), (table.Leaf(v) if isinstance(v, int) else v)
        if res != 0 or count.value == 0:  # ENOENT: the walk is done
            return
        first = False


def all_keys(table: Any) -> list[Any]:
    """Every key of ``table`` (copies), in batches where the kernel allows, else key by key (also for
    anything that only has ``keys()``, as the sources' test doubles of bcc tables)."""
    if not hasattr(table, "map_fd"):
        return list(table.keys())
    try:
        return [type(k).from_buffer_copy(k) for k, _ in lookup_batch(table)]
    except OSError:
        return list(table.keys())
