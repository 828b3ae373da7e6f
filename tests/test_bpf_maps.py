"""agent/bpf_maps.py on a real kernel map: a batch walk returns exactly the map's entries, and one
made while another thread deletes and re-adds entries (connections closing and opening) ends at once
with no entry twice, where bcc's key-by-key walk starts over at every deleted key it stood on."""

from __future__ import annotations

import threading
import time

import pytest

from agent.bpf_maps import all_keys, lookup_batch

pytestmark = pytest.mark.root

N = 10_000


@pytest.fixture(scope="module")
def table():  # type: ignore[no-untyped-def]
    from bcc import BPF

    b = BPF(text="BPF_HASH(conns, u64, u64, 16384);")
    yield b["conns"]
    b.cleanup()


def _fill(t, keys: range) -> None:  # type: ignore[no-untyped-def]
    for k in keys:
        t[t.Key(k)] = t.Leaf(k * 7)


def test_batch_walk_is_the_whole_map(table) -> None:  # type: ignore[no-untyped-def]
    table.clear()
    _fill(table, range(N))
    got = {k.value: v.value for k, v in lookup_batch(table, chunk=4096)}  # three chunks
    assert got == {k: k * 7 for k in range(N)}
    assert sorted(k.value for k in all_keys(table)) == list(range(N))


def test_batch_walk_under_churn_ends_without_repeats(table) -> None:  # type: ignore[no-untyped-def]
    table.clear()
    _fill(table, range(N))
    stop = threading.Event()

    def churn() -> None:  # delete and re-add entries as fast as it can, as closing connections do
        i = 0
        while not stop.is_set():
            k = table.Key(i % N)
            try:
                del table[k]
            except KeyError:
                pass
            table[k] = table.Leaf((i % N) * 7)
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        time.sleep(0.05)
        for _ in range(20):
            t0 = time.perf_counter()
            keys = [k.value for k, _ in lookup_batch(table)]
            assert time.perf_counter() - t0 < 1.0
            assert len(keys) == len(set(keys)) <= N  # each entry once at most
            assert len(keys) >= N // 2  # and most of them: only those moved meanwhile can be missed
    finally:
        stop.set()
        t.join()
