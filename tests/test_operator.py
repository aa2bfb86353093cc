"""Kind to the operator, through the real daemon (issue 13): an operator's
stop sticks until the operator, a reload request or the task's own entry
undoes it, and a crash loop gives up in a ``failed`` state that status and
metrics show, from which ``tfctl start`` tries again.  Also: ``-C`` warns of
a start program that is not on this host.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from daemon_harness import Daemon, task, wait_for
from test_control import FAST, call, start_daemon
from test_tfctl import run

MISSING = "/nonexistent/tf-missing-binary"


def _yaml(defs: dict[str, Any], settings: dict[str, Any], comment: str = "") -> str:
    return json.dumps({"settings": settings, "tasks": defs}, indent=1) + comment + "\n"


def test_an_operators_stop_sticks(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    m = daemon.marker
    defs = {"web": task(m, "web"), "db": task(m, "db")}
    sock = start_daemon(daemon, defs)
    daemon.wait_pids("web", 1)
    daemon.wait_pids("db", 1)
    s = ("-s", sock)
    assert run(capsys, *s, "stop", "web")[:2] == (0, "web\tok\n")
    wait_for(lambda: not daemon.pids("web"), what="web stopped")

    # An unrelated edit (a comment) keeps the stop, and the log says why.
    daemon.write_config(_yaml(defs, FAST, "# an unrelated comment"))
    daemon.wait_log("web: operator override control=off")
    assert "kept" in daemon.log_text().split("web: operator override control=off", 1)[1]
    # (db's own entry edited: still kept)
    edited = {**defs, "db": task(m, "db", stop_timeout=3)}
    daemon.write_config(_yaml(edited, FAST))
    wait_for(lambda: daemon.log_text().count("kept: its config entry did not change") >= 2)
    assert not daemon.pids("web")
    code, out, _ = run(capsys, *s, "status", "web")
    assert "override control=off (config: wait) for " in out
    shown = json.loads(call(sock, "/status/tasks")[2])["web"]
    assert shown["overrides"] == {"control": "off"} and shown["state"] == "off"
    assert set(shown["overrides_since"]) == {"control"}

    # tfctl start undoes it.
    assert run(capsys, *s, "start", "web")[:2] == (0, "web\tok (control wait)\n")
    daemon.wait_pids("web", 1)
    assert json.loads(call(sock, "/status/tasks")[2])["web"]["overrides"] == {}

    # A reload asked for over the control path drops it.
    assert run(capsys, *s, "stop", "web")[0] == 0
    wait_for(lambda: not daemon.pids("web"), what="web stopped again")
    assert run(capsys, *s, "reload")[0] == 0
    daemon.wait_pids("web", 1)
    daemon.wait_log("dropped: a reload was asked for")

    # A change of the task's own entry drops it.
    assert run(capsys, *s, "stop", "web")[0] == 0
    wait_for(lambda: not daemon.pids("web"), what="web stopped a third time")
    edited = {**edited, "web": task(m, "web", stop_timeout=4)}
    daemon.write_config(_yaml(edited, FAST))
    daemon.wait_pids("web", 1)
    daemon.wait_log("dropped: its config entry changed")


def test_a_crash_loop_fails_and_tfctl_start_tries_again(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    quick = {"backoff_initial": 0.05, "backoff_max": 0.2}
    defs = {"web": {"commands": {"start": [MISSING, m]}}, "ok": task(m, "ok")}
    sock = start_daemon(daemon, defs, settings=quick)
    daemon.wait_log("start limit hit: 5 starts in 10 s, last: failed to start")
    s = ("-s", sock)
    shown = json.loads(call(sock, "/status/tasks")[2])["web"]
    assert shown["state"] == "failed"
    assert shown["processes"][0]["state"] == "failed"
    assert shown["processes"][0]["reason"].startswith("start limit hit: 5 starts in 10 s")
    code, out, _ = run(capsys, *s, "status", "web")
    assert code == 0 and "web[0]  failed" in out and "start limit hit" in out
    metrics = call(sock, "/metrics")[2]
    assert 'taskforce_slots{state="failed"} 1' in metrics
    assert 'taskforce_task_failed{task="web"} 1' in metrics
    assert "taskforce_start_limit_hits_total 1" in metrics
    code, out, _ = run(capsys, *s, "health")
    assert code == 1 and "web[0]: failed (start limit hit" in out
    spawns = daemon.log_text().count("failed to start")

    # Nothing tries again by itself.
    assert daemon.log_text().count("failed to start") == spawns
    # tfctl start does.
    code, out, _ = run(capsys, *s, "start", "web")
    assert (code, out) == (0, "web\tok (trying again: web[0] failed)\n")
    daemon.wait_log("web[0]: failed state cleared: started by control request")
    wait_for(lambda: daemon.log_text().count("start limit hit") == 2, what="failed again")
    # So does a change of its config entry.
    defs["web"] = {**defs["web"], "start_limit": {"burst": 2, "interval": 10}}
    daemon.write_config(_yaml(defs, {**FAST, **quick}))
    daemon.wait_log("web[0]: failed state cleared: its config entry changed")
    wait_for(lambda: "start limit hit: 2 starts in 10 s" in daemon.log_text(), what="burst 2")
    assert daemon.pids("ok"), "the other task runs on"


def test_a_failed_task_tries_again_when_its_program_is_installed(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    program = daemon.root / "bin" / "tf-late"
    program.parent.mkdir()
    quick = {"backoff_initial": 0.05, "backoff_max": 0.2}
    defs = {"late": {"commands": {"start": [str(program), m, "late"]}}}
    sock = start_daemon(daemon, defs, settings=quick)
    daemon.wait_log("start limit hit: 5 starts in 10 s, last: failed to start")
    assert json.loads(call(sock, "/status/tasks")[2])["late"]["state"] == "failed"

    # Installed (written elsewhere, then renamed into place, as packages do).
    staged = daemon.root / "tf-late.new"
    staged.write_text("#!/bin/sh\nwhile :; do sleep 1; done\n")
    staged.chmod(0o755)
    staged.rename(program)
    daemon.wait_log(f"late[0]: failed state cleared: its executable {program} changed")
    daemon.wait_pids("late", 1)
    wait_for(
        lambda: json.loads(call(sock, "/status/tasks")[2])["late"]["state"] == "running",
        what="late running",
    )


def test_check_config_warns_of_a_missing_program(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(
        '{"tasks": {\n'
        ' "ok": {"commands": {"start": ["sh", "-c", "true"]}},\n'
        f' "web": {{"commands": {{"start": ["{MISSING}", "{m}"]}}}},\n'
        ' "lost": {"commands": {"start": ["tf-no-such-program-here"]}}\n'
        "}}\n"
    )
    result = subprocess.run(daemon.command("-C"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "ok, 3 tasks" in result.stdout
    config = str(daemon.config)
    assert (
        f"{config}:3: tasks.web.commands.start: warning: program {MISSING!r} does not exist"
        in result.stderr
    )
    lost = f"{config}:4: tasks.lost.commands.start: warning: program 'tf-no-such-program-here'"
    assert f"{lost} is not found in PATH" in result.stderr
    assert "tasks.ok" not in result.stderr
    assert not daemon.processes()


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        ("{burst: -1}", "tasks.web.start_limit.burst", "must be >= 0"),
        ("{burst: 2.5}", "tasks.web.start_limit.burst", "expected a whole number"),
        ("{interval: soon}", "tasks.web.start_limit.interval", "expected a number"),
        ("{brust: 3}", "tasks.web.start_limit.brust", "unknown start_limit key"),
        ("5", "tasks.web.start_limit", "expected {burst: N, interval: SECONDS}"),
    ],
)
def test_a_bad_start_limit_is_located(value: str, path: str, message: str) -> None:
    from taskforce.config import ConfigError, load_config_text

    text = f"tasks:\n  web:\n    commands: {{start: [web]}}\n    start_limit: {value}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "t.yaml", roles=None)
    assert f"t.yaml:4: {path}: {message}" in str(caught.value)


def test_a_bad_settings_start_limit_is_located() -> None:
    from taskforce.config import ConfigError, load_config_text

    text = "settings:\n  start_limit: {interval: -3}\ntasks: {web: {commands: {start: [web]}}}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "t.yaml", roles=None)
    assert "t.yaml:2: settings.start_limit.interval: must be >= 0" in str(caught.value)
