"""Hypothesis profiles for the fuzz targets in this folder.

``ci`` (default, what ``make test`` runs): a short bounded pass, the same examples every run.
``fuzz`` (``make fuzz``): a long randomised pass; FUZZ_EXAMPLES sets examples per target.
Each target also replays its corpus (tests/fuzz/corpus/<target>/) every run; a failure prints the
input (and a reproduce blob): save it there (tests/fuzz/corpus.py ``save``) once fixed.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", max_examples=int(os.environ.get("FUZZ_CI_EXAMPLES", "200")), derandomize=True,
                          database=None, print_blob=True, **_common)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")), print_blob=True,
                          **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
