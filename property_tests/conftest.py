"""Hypothesis profiles for the property tests; pick one with HYPOTHESIS_PROFILE.

- ``default``: quick enough for every run (the whole property suite in well
  under a minute on a 2-core machine);
- ``ci``: the same budget, without the example database, so CI runs are
  reproducible from the printed seed and leave nothing behind;
- ``soak``: many more and longer runs, for an occasional long hunt
  (``HYPOTHESIS_PROFILE=soak python -m pytest property_tests``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "default",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=_SLOW_IS_FINE,
)
settings.register_profile(
    "ci",
    max_examples=200,
    stateful_step_count=50,
    database=None,
    print_blob=True,
    deadline=None,
    suppress_health_check=_SLOW_IS_FINE,
)
settings.register_profile(
    "soak",
    max_examples=3000,
    stateful_step_count=120,
    deadline=None,
    suppress_health_check=_SLOW_IS_FINE,
)

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
