"""Hypothesis profiles for the fuzz suite, chosen by ADAPTERFLEET_FUZZ:

    (unset)   2,000 examples per target: the CI run, about a minute in all on 2 cores
    long      100,000 examples per target: `ADAPTERFLEET_FUZZ=long pytest tests/fuzz` (hours; run it before a
              release, or after touching a parser)

Tests take the profile as a decorator (``@settings(settings.get_profile(PROFILE))``) rather than loading it
globally, so hypothesis tests elsewhere keep their own settings. No example database: the suite writes nothing
into the working tree; a failure prints its example and a @reproduce_failure blob instead.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = "adapterfleet-fuzz"
EXAMPLES = {"": 2_000, "default": 2_000, "long": 100_000}

_mode = os.environ.get("ADAPTERFLEET_FUZZ", "").strip().lower()
if _mode not in EXAMPLES:
    raise ValueError(f"ADAPTERFLEET_FUZZ={_mode!r}: use 'long' for 100,000 examples per target, or leave it unset")

settings.register_profile(
    PROFILE,
    max_examples=EXAMPLES[_mode],
    deadline=None,  # time is bounded by the tests' own per-call limit, which tolerates a loaded machine
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
