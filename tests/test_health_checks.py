"""Health checks against a real daemon (issue 13): a check that hangs is
killed at its check_timeout and counts as failed; a slot restarts after
check_failures failures in a row; no check outlives taskforce; /metrics
counts them."""

from __future__ import annotations

import re

from daemon_harness import Daemon, task, wait_for
from test_control import call, start_daemon


def hanging_check(marker: str, **keys: object) -> dict[str, object]:
    """A task ``svc`` whose check (``svc-check``, a process of its own) never ends."""
    spec = task(marker, "svc", **keys)
    spec["commands"]["check"] = task(marker, "svc-check")["commands"]["start"]
    return spec


def metric(text: str, name: str) -> int:
    found = re.search(rf'^{name}{{task="svc"}} (\d+)$', text, re.M)
    assert found is not None, f"{name} not in /metrics:\n{text}"
    return int(found.group(1))


def test_a_hung_check_is_killed_and_restarts_after_check_failures(daemon: Daemon) -> None:
    m = daemon.marker
    spec = hanging_check(m, check_interval=0.2, check_timeout=0.3, check_failures=2)
    sock = start_daemon(daemon, {"svc": spec})
    (first,) = daemon.wait_pids("svc", 1)
    daemon.wait_log("svc[0]: health check timed out after 0.3s (1 of 2 failures before a restart)")
    daemon.wait_log(
        f"svc[0] (pid {first}) restarted: health check timed out after 0.3s (2 in a row)"
    )
    wait_for(lambda: daemon.pids("svc") - {first}, what="svc restarted")
    # Each check was killed at its timeout: never two at once.
    assert len(daemon.pids("svc-check")) <= 1
    code, _, text = call(sock, "/metrics")
    assert code == 200
    assert metric(text, "taskforce_task_check_timeouts_total") >= 2
    assert metric(text, "taskforce_task_check_failures_total") >= 2
    assert metric(text, "taskforce_task_check_runs_total") >= 2
    assert "# TYPE taskforce_check_timeouts_total counter" in text


def test_no_check_outlives_taskforce(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config({"tasks": {"svc": hanging_check(m, check_interval=0.1, check_timeout=60)}})
    daemon.start()
    daemon.wait_pids("svc", 1)
    daemon.wait_pids("svc-check", 1)
    assert daemon.stop() == 0
    wait_for(lambda: not daemon.pids("svc-check"), timeout=5, what="the check to be gone")
    assert "svc[0]: health check" not in daemon.log_text()
