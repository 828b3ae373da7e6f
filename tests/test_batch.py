"""ingest/batch.py: records and whole tables of one kind share a batch, cut by rows and by age."""

from __future__ import annotations

from blindspot.records import PIPELINE_COUNTER
from ingest.batch import Batcher, batch_len


def counter(i: int) -> dict:
    return {"time": 1_700_000_000_000_000_000 + i, "host": "h", "component": "agent", "counter": "c", "value": i}


def test_rows_and_tables_cut_together_in_order() -> None:
    b = Batcher(max_rows=10, max_age_s=60)
    kind = PIPELINE_COUNTER.name
    assert b.add(kind, counter(0)) is None
    assert b.add_table(kind, PIPELINE_COUNTER.to_arrow([counter(i) for i in range(1, 5)])) is None
    assert b.pending() == 5
    batch = b.add_table(kind, PIPELINE_COUNTER.to_arrow([counter(i) for i in range(5, 12)]))
    assert batch is not None and batch_len(batch) == 12 and b.pending() == 0
    # Tables first, then the records converted: every row is there exactly once.
    assert sorted(r["value"] for r in PIPELINE_COUNTER.to_rows(batch)) == list(range(12))


def test_age_and_drain_and_empty_tables() -> None:
    b = Batcher(max_rows=1000, max_age_s=0.5)
    kind = PIPELINE_COUNTER.name
    assert b.add_table(kind, PIPELINE_COUNTER.to_arrow([])) is None and b.pending() == 0
    b.add(kind, counter(1))
    assert list(b.due(now=0)) == []
    b.add_table(kind, PIPELINE_COUNTER.to_arrow([counter(2)]))
    ((k, batch),) = list(b.drain())
    assert k == kind and [r["value"] for r in PIPELINE_COUNTER.to_rows(batch)] == [2, 1]
    assert list(b.drain()) == []
