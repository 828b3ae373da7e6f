"""contract/batch.py: tables of one kind share a batch, cut by rows and by age, in order."""

from __future__ import annotations

from contract.batch import Batcher
from contract.records import PIPELINE_COUNTER


def counter(i: int) -> dict:
    return {"time": 1_700_000_000_000_000_000 + i, "host": "h", "component": "agent", "counter": "c", "value": i}


def rows(*values: int):  # type: ignore[no-untyped-def]
    return PIPELINE_COUNTER.to_arrow([counter(i) for i in values])


def test_tables_cut_together_in_order() -> None:
    b = Batcher(max_rows=10, max_age_s=60)
    kind = PIPELINE_COUNTER.name
    assert b.add(kind, rows(0)) is None
    assert b.add(kind, rows(*range(1, 5))) is None
    assert b.pending() == 5
    batch = b.add(kind, rows(*range(5, 12)))
    assert batch is not None and batch.num_rows == 12 and b.pending() == 0
    # Every row is there exactly once, in the order added.
    assert [r["value"] for r in PIPELINE_COUNTER.to_rows(batch)] == list(range(12))


def test_age_and_drain_and_empty_tables() -> None:
    b = Batcher(max_rows=1000, max_age_s=0.5)
    kind = PIPELINE_COUNTER.name
    assert b.add(kind, rows()) is None and b.pending() == 0
    b.add(kind, rows(1))
    assert list(b.due(now=0)) == []
    b.add(kind, rows(2))
    ((k, batch),) = list(b.drain())
    assert k == kind and [r["value"] for r in PIPELINE_COUNTER.to_rows(batch)] == [1, 2]
    assert list(b.drain()) == []
