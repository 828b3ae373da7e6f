"""agent/pipeline.py: what sources hand on while they close still reaches the sink, and the kernel's
counters a closed source reports keep their last values (a delta never goes below zero)."""

from __future__ import annotations

import threading
from typing import Any

from agent.pipeline import Pipeline, PipelineConfig
from contract.batch import Batch
from contract.records import PIPELINE_COUNTER, RecordKind


class Collect:
    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.counters: dict[str, int] = {}

    def write(self, kind: RecordKind, rows: Batch) -> None:
        self.rows[kind.name] = self.rows.get(kind.name, 0) + rows.num_rows
        if kind is PIPELINE_COUNTER:
            for r in PIPELINE_COUNTER.to_rows(rows):
                self.counters[r["counter"]] = self.counters.get(r["counter"], 0) + r["value"]


class HoldingSource:
    """Like the HTTP source: decodes in batches, so it still holds records when asked to close."""

    name = "holding"

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.lost = 0
        self.open_ = False

    def open(self) -> None:
        self.open_ = True
        self.lost = 3

    def poll(self, timeout_ms: int) -> None:
        pass

    def counters(self) -> dict[str, int]:
        return {"lost_ringbuf": self.lost}  # the last values, also once closed

    def close(self) -> None:
        rows = [{"time": 1_800_000_000_000_000_000 + i, "host": "h", "component": "t", "counter": "held",
                 "value": 1} for i in range(5)]
        self.pipeline.emit(PIPELINE_COUNTER.name, PIPELINE_COUNTER.to_arrow(rows))
        self.open_ = False


def test_records_handed_on_at_close_reach_the_sink() -> None:
    sink = Collect()
    pipeline = Pipeline([], sink, PipelineConfig(poll_ms=10, counters_interval_s=3600), host="h")
    src = HoldingSource(pipeline)
    pipeline.sources = [src]
    pipeline.run(threading.Event(), duration_s=0.1)
    assert not src.open_
    assert sink.counters["held"] == 5  # the five rows emitted during close()
    assert sink.counters["lost_ringbuf"] == 3 and sink.counters["captured"] == 5
    counts: dict[str, Any] = pipeline.all_counters()
    assert counts["rows_written"] == sink.rows[PIPELINE_COUNTER.name]
