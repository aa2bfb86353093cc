"""The ``taskforce`` command line around the daemon: where it logs without
``-e``, and what a second taskforce does with a control socket a live one
holds.  Every test runs a real daemon."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import Daemon, shell_task, task, wait_for
from test_control import answers, short_dir, start_daemon


def start_with_syslog(daemon: Daemon, syslog: tuple[str, ...], *extra: str) -> None:
    """Start ``daemon`` without ``-e``, with ``syslog`` as the places syslog
    may listen (instead of /dev/log and /var/run/log)."""
    prelude = (
        "import sys, taskforce.cli as cli, taskforce.logsetup as logsetup; "
        f"logsetup.SYSLOG_SOCKETS = {syslog!r}; sys.exit(cli.main(sys.argv[1:]))"
    )
    command = [
        sys.executable,
        "-c",
        prelude,
        "-v",
        "-f",
        str(daemon.config),
        "-r",
        "-",
        "--expires",
        "300",
        "--record",
        str(daemon.events),
        *extra,
    ]
    with open(daemon.log, "ab") as log:
        daemon.proc = subprocess.Popen(
            command, stdout=log, stderr=log, cwd=daemon.root, start_new_session=True
        )


def test_without_syslog_it_logs_to_stderr_with_one_warning(daemon: Daemon) -> None:
    """A host without /dev/log (a container): /var/run/log may be a folder,
    which is no syslog; every line goes to stderr, none is a traceback."""
    folder = daemon.root / "run-log"
    folder.mkdir()
    hello = task(daemon.marker, "a", "print('hello', flush=True); import time; time.sleep(1000)")
    daemon.write_config({"tasks": {"a": hello}})
    start_with_syslog(daemon, (str(daemon.root / "no-such-log"), str(folder)))
    daemon.wait_log("a[0] hello")
    (pid,) = daemon.wait_pids("a", 1)
    os.kill(pid, signal.SIGKILL)
    daemon.wait_log("killed by SIGKILL")
    assert daemon.stop() == 0
    text = daemon.log_text()
    assert "Logging error" not in text and "Traceback" not in text
    warnings = [line for line in text.splitlines() if "no syslog socket" in line]
    assert len(warnings) == 1, text
    assert "logging to stderr" in warnings[0]
    assert "taskforce started" in text and "exiting" in text


def test_a_syslog_that_goes_away_loses_no_line(daemon: Daemon) -> None:
    """Lines that syslog cannot take go to stderr (one warning says so), and
    to syslog again once it is back."""
    where = str(short_dir(daemon.root) / "log")
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(where)
    syslog.settimeout(0.05)
    received: list[str] = []

    def heard(text: str) -> bool:
        try:
            while True:
                received.append(syslog.recv(65536).decode(errors="replace"))
        except (TimeoutError, BlockingIOError):
            pass
        return any(text in line for line in received)

    try:
        daemon.write_config({"tasks": {"a": task(daemon.marker, "a")}})
        start_with_syslog(daemon, (where,))
        (first,) = daemon.wait_pids("a", 1)
        wait_for(lambda: heard("a[0] started as pid"), what="the start line in syslog")
        assert "taskforce[" in received[0], "logged under its name, with its pid"
        # syslog goes away (stopped, or restarted with a new socket).
        syslog.close()
        os.unlink(where)
        os.kill(first, signal.SIGKILL)
        daemon.wait_log(f"(pid {first}) killed by SIGKILL")
        (second,) = daemon.wait_pids("a", 1)
        daemon.wait_log(f"a[0] started as pid {second}")
        # ... and comes back.
        syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        syslog.bind(where)
        syslog.settimeout(0.05)
        received.clear()
        os.kill(second, signal.SIGKILL)
        wait_for(lambda: heard(f"(pid {second}) killed by SIGKILL"), what="syslog again")
        assert daemon.stop() == 0
    finally:
        syslog.close()
    text = daemon.log_text()
    assert "Logging error" not in text and "Traceback" not in text
    assert text.count(f"cannot log to syslog at {where}") == 1, text
    assert f"syslog at {where} works again" in text


def test_a_control_socket_held_by_a_live_taskforce_is_refused_at_once(
    daemon: Daemon, tmp_path: Path
) -> None:
    """The quick start run twice, or another config on the same socket: the
    second taskforce says who holds the socket and starts nothing."""
    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a")})
    daemon.wait_pids("a", 1)
    other = Daemon(tmp_path / "other", f"{m}-other")
    other.root.mkdir()
    ran = other.root / "ran"
    other.write_config(
        {
            "settings": {"http": [{"listen": sock, "allow_control": True}]},
            "tasks": {"b": shell_task(m, "b", f"touch {ran}; exec sleep 1000")},
        }
    )
    try:
        done = subprocess.run(
            other.command(), capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        other.cleanup()
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines == [
        f"taskforce: the control socket {sock} is held by taskforce (pid {daemon.pid}); "
        "stop that one first, or listen elsewhere (-w PATH)"
    ], done.stderr
    assert not ran.exists(), "the second taskforce started nothing"
    assert answers(sock), "the first one still answers"


def test_the_socket_of_a_killed_taskforce_is_taken_over(daemon: Daemon) -> None:
    m = daemon.marker
    sock = start_daemon(daemon, {"a": task(m, "a")})
    daemon.wait_pids("a", 1)
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(10)
    assert os.path.exists(sock) and not answers(sock), "a stale socket is left"
    daemon.start("-w", sock, "-A")
    wait_for(lambda: answers(sock), what="the new taskforce on the old socket")
    daemon.wait_pids("a", 1)
    assert daemon.stop() == 0


def test_a_plain_file_or_nothing_at_the_socket_path_is_no_holder(tmp_path: Path) -> None:
    from taskforce.control.listen import holder

    plain = tmp_path / "plain"
    plain.write_text("x")
    assert holder(str(plain)) is None
    assert holder(str(tmp_path / "missing")) is None


def test_help_lists_the_other_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskforce", "-h"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for usage in (
        "taskforce replay [-h] [--timeline] [-j JOBS] LOG",
        "taskforce simulate [-h] -f CONFIG [-r ROLES] [SCRIPT]",
        "taskforce plan [-h] -f CONFIG [-r ROLES] [--against LOG]",
    ):
        assert usage in done.stdout


def test_simulate_says_why_a_slot_is_not_running(tmp_path: Path) -> None:
    """The README's first simulate example once failed on the demo with only
    "'web[0] is not running'"; the error now says why."""
    script = tmp_path / "script.yaml"
    script.write_text('[{at: 5, kill: "web:0"}]\n')
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "taskforce", "simulate", "-f", "examples/demo.conf"]
        + ["-r", "examples/demo.roles", str(script)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "web:0 is not running at 5s (waiting on migrate (not finished))" in done.stdout


@pytest.mark.parametrize("columns", [None, "", "0", "-3", "abc", "40", "200"])
def test_the_help_is_as_wide_as_shutil_would_make_it(
    monkeypatch: pytest.MonkeyPatch, columns: str | None
) -> None:
    # The daemon's parser reads the terminal's width itself (no shutil).
    import shutil

    from taskforce.cli import _terminal_columns

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert _terminal_columns() == shutil.get_terminal_size().columns
