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

import pytest
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


# A failing property test leaves its shrunk run behind as an event log, so it
# can be replayed (``taskforce replay FILE --timeline``) and then kept under
# tests/logs/ as a regression case.
FAILURES = os.path.join(os.path.dirname(__file__), "failures")


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    if call.when != "call" or call.excinfo is None:
        return
    from taskforce.eventlog import write_steps
    from taskforce.simulator import Simulation

    sim = Simulation.latest
    if sim is None or not sim.log:
        return
    os.makedirs(FAILURES, exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.nodeid.split("::")[-1])
    path = os.path.join(FAILURES, f"{name}.jsonl")
    write_steps(path, sim.log, note=f"failing run of {item.nodeid}")
    item.add_report_section("call", "failing run", f"saved as {path}")
