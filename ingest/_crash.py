"""Test-only seam: ``BLINDSPOT_TEST_CRASH_AT=<step>`` ends the process like kill -9 at that step of a
batch (tests/test_ingest_crash_steps.py kills a worker at each and checks the replay)."""

from __future__ import annotations

import logging
import os

STEPS = ("after_intent", "before_insert", "after_insert", "after_counters", "before_commit")


def crash_point(step: str, when: bool = True) -> None:
    """Die with exit code 137 at ``step`` when BLINDSPOT_TEST_CRASH_AT names it (``decode``: while
    decoding a message whose value starts with ``CRASH``, as a native crash in a decoder would)."""
    if when and os.environ.get("BLINDSPOT_TEST_CRASH_AT") == step:
        logging.getLogger(__name__).warning("BLINDSPOT_TEST_CRASH_AT=%s: exiting", step)
        os._exit(137)
