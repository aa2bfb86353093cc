"""Shared fixtures: a real daemon in a temporary folder, cleaned up always."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemon_harness import Daemon  # noqa: E402


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    marker = f"tfmark-{uuid.uuid4().hex[:12]}"
    instance = Daemon(tmp_path, marker)
    try:
        yield instance
    finally:
        leftovers = instance.cleanup()
    assert not leftovers, f"left running after the test: {leftovers}"
    problems = instance.replay_problems()
    assert not problems, f"the recorded run did not replay: {problems}"
