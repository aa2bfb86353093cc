"""Every config error is reported, wherever the config is read (issue 13):
at start, on a live edit, on a reset and over /manage/reload, as ``-C``
does; and a reload that applies says, in one line, what it did."""

from __future__ import annotations

import signal
import subprocess

from daemon_harness import Daemon, task, wait_for
from test_control import call, start_daemon

#: three mistakes, each on its own line
THREE_ERRORS = """\
tasks:
  a:
    commands: {start: [sleep, "100"]}
    count: many
  b:
    commands: {start: [sleep, "100"]}
    contrl: wait
  c:
    commands: {start: [sleep, "100"]}
    stop_timeout: -1
"""


def test_a_start_with_three_errors_prints_all_three_and_fails(daemon: Daemon) -> None:
    daemon.write_config(THREE_ERRORS)
    done = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    where = str(daemon.config)
    for located in (
        f"{where}:4: tasks.a.count: ",
        f"{where}:7: tasks.b.contrl: ",
        f"{where}:10: tasks.c.stop_timeout: ",
    ):
        assert located in done.stderr, done.stderr
    assert not daemon.processes()


def test_a_live_edit_with_two_errors_logs_both_and_changes_nothing(daemon: Daemon) -> None:
    m = daemon.marker
    good = {"a": task(m, "a"), "b": task(m, "b")}
    sock = start_daemon(daemon, good)
    before = {name: daemon.wait_pids(name, 1) for name in good}
    broken = (
        "tasks:\n"
        "  a: {commands: {start: [sleep, '1'], check: [x]}, check_timeout: 0}\n"
        "  b: {commands: {start: [sleep, '1']}, count: -3}\n"
    )
    daemon.write_config(broken)
    daemon.wait_log("config: 2 errors; nothing was changed")
    log = daemon.log_text()
    assert f"config: {daemon.config}:2: tasks.a.check_timeout: must be > 0" in log
    assert f"config: {daemon.config}:3: tasks.b.count: must be >= 0" in log
    # Asked for over the control path: the answer names both.
    code, headers, body = call(sock, "/manage/reload", "POST")
    assert code == 202
    assert headers["x-taskforce-reload"].endswith("(and 1 more)"), headers
    assert "tasks.a.check_timeout" in body and "tasks.b.count" in body
    # A reset is refused for each of them.
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: daemon.log_text().count("reset refused, ") >= 2, what="both reset refusals logged"
    )
    assert {name: daemon.pids(name) for name in good} == before
    assert "reload (" not in daemon.log_text()


def test_a_good_reload_logs_one_line_of_what_it_applied(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(
        {"tasks": {"keep": task(m, "keep"), "edit": task(m, "edit"), "old": task(m, "old")}}
    )
    daemon.start()
    for name in ("keep", "edit", "old"):
        daemon.wait_pids(name, 1)
    edited = task(m, "edit", defines={"LEVEL": "2"})
    daemon.write_config({"tasks": {"keep": task(m, "keep"), "edit": edited, "new": task(m, "new")}})
    summary = (
        "reload (config): 1 task changed (edit), 1 added (new), 1 removed (old); "
        "1 slot restarted, 1 started, 1 stopped"
    )
    daemon.wait_log(summary)
    daemon.wait_pids("new", 1)
    wait_for(lambda: not daemon.pids("old"), what="old stopped")
    lines = [line for line in daemon.log_text().splitlines() if "reload (" in line]
    assert len(lines) == 1, lines
