"""agent/pipeline.py: what sources hand on while they close still reaches the sink, and the kernel's
counters a closed source reports keep their last values (a delta never goes below zero)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

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


class StallingSource:
    """A source whose poll blocks the loop once, for 1.5 s (as a slow inspection or map walk would)."""

    name = "stalling"

    def __init__(self) -> None:
        self.polls = 0

    def open(self) -> None:
        pass

    def poll(self, timeout_ms: int) -> None:
        self.polls += 1
        if self.polls == 2:
            self.stuck_here()

    def stuck_here(self) -> None:
        time.sleep(1.5)

    def counters(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def test_a_stalled_loop_is_counted_and_shows_where(caplog: pytest.LogCaptureFixture) -> None:
    """While one step of the loop runs no ring buffer is drained: a step over 1 s is counted (stored as a
    pipeline counter, per host), timed in blindspot_loop_step_seconds, and its stack logged as it runs."""
    sink = Collect()
    pipeline = Pipeline([StallingSource()], sink, PipelineConfig(poll_ms=10, counters_interval_s=3600), host="h")
    with caplog.at_level(logging.WARNING, logger="agent.pipeline"):
        pipeline.run(threading.Event(), duration_s=1.8)
    assert sink.counters["slow_loop_steps:stalling"] == 1
    assert "slow_loop_steps:snapshot" not in sink.counters
    running = [r.getMessage() for r in caplog.records if "running for" in r.getMessage()]
    assert len(running) == 1 and "loop step stalling running for" in running[0] and "in stuck_here" in running[0]
    assert any("loop step stalling took 1.5" in r.getMessage() for r in caplog.records)
    hist = {s.labels["step"]: s.value for m in pipeline.metrics.loop_step.collect() for s in m.samples
            if s.name == "blindspot_loop_step_seconds_count"}
    assert hist["stalling"] >= 2 and hist["batch"] >= 2
