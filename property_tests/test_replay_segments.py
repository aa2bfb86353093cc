"""Properties of replay in segments: wherever a log is cut, the segments
between checkpoints cover every step exactly once, each checks the
checkpoint it ends at, and together they say what one replay says.

The segments run in this process (``tools.replay_segment``), so hypothesis
can try many cuts; the pool that runs them side by side is tested in
``tests/test_checkpoints.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st
from test_reload_properties import booted, configs, role_sets

from taskforce import tools
from taskforce.core.snapshot import snapshot
from taskforce.core.supervisor import Supervisor
from taskforce.eventlog import Checkpoints, Marker, Step, read_log, write_steps

happenings = st.lists(
    st.tuples(st.sampled_from(("kill", "exit", "advance")), st.integers(0, 5)),
    min_size=1,
    max_size=40,
)


def record(config: dict[str, Any], roles: Any, script: list[tuple[str, int]], every: int) -> Path:
    sim = booted(config, roles)
    for what, number in script:
        running = sorted(sim.running().items())
        if what == "advance" or not running:
            sim.advance(0.5 + number)
        elif what == "kill":
            sim.kill(running[number % len(running)][1])
        else:
            sim.exit(running[number % len(running)][1], number)
    core = Supervisor()

    def steps() -> Any:
        for happened, _ in sim.log:
            yield happened, core.handle(happened)

    path = Path(tempfile.mkdtemp(prefix="tfseg-")) / "run.jsonl"
    write_steps(
        str(path), steps(), snapshot=lambda: snapshot(core), checkpoints=Checkpoints(every, ratio=0)
    )
    return path


@given(
    configs(),
    role_sets,
    happenings,
    st.integers(300, 3000),
    st.lists(st.floats(0, 1, exclude_min=True, exclude_max=True), max_size=6),
)
def test_segments_cover_each_step_once_and_check_each_checkpoint(
    config: dict[str, Any],
    roles: Any,
    script: list[tuple[str, int]],
    every: int,
    cuts: list[float],
) -> None:
    path = record(config, roles, script, every)
    try:
        items = list(read_log(str(path)))
        steps = sum(isinstance(item, Step) for item in items)
        checkpoints = sum(isinstance(item, Marker) and item.kind == "snapshot" for item in items)
        size = path.stat().st_size
        bounds = sorted({0, *(int(size * cut) for cut in cuts)}) + [size]
        results = [
            tools.replay_segment(str(path), begin, end)
            for begin, end in zip(bounds, bounds[1:], strict=False)
        ]
        assert all(result["rc"] == 0 for result in results), results
        assert sum(result["steps"] for result in results) == steps
        # Each checkpoint is checked once: by the segment that passes it or
        # ends there (the next one starts from it, without checking it).
        assert sum(result["checkpoints"] for result in results) == checkpoints
        event(f"checkpoints: {min(checkpoints, 3)}+, segments: {len(results)}")
    finally:
        path.unlink()
        path.parent.rmdir()
