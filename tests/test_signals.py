"""Signals and inherited descriptors, through the real daemon.

No signal kills taskforce by accident, no storm of them leaves the host
unsupervised, and no descriptor taskforce inherited reaches a task.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from daemon_harness import (
    IGNORE_TERM,
    Daemon,
    ignored_signals,
    proc_table,
    process_state,
    shell_task,
    signal_mask,
    task,
    wait_for,
)

from taskforce import signals

#: Faults of taskforce itself: left at their default on purpose.
FAULTS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}
FAULTS |= {signal.SIGTRAP, signal.SIGSYS}
FAULTS |= {getattr(signal, "SIGEMT", signal.SIGSEGV)}  # the BSDs' and macOS's
#: Signals that stop every task and end taskforce (exit 0) on purpose
#: (SIGPWR is Linux's).
STOPPING = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}
STOPPING |= {getattr(signal, "SIGPWR", signal.SIGTERM)}
#: Every other catchable signal but SIGHUP (a reset) must leave it running.
HARMLESS = sorted(
    set(signal.valid_signals())
    - {signal.SIGKILL, signal.SIGSTOP, signal.SIGHUP}
    - FAULTS
    - STOPPING
)


def tasks(**defs: dict) -> dict:
    return {"tasks": defs}


def alive(daemon: Daemon) -> bool:
    """True while the daemon runs; fails the test at once if it died."""
    assert daemon.proc is not None
    code = daemon.proc.poll()
    assert code is None, f"taskforce died (exit status {code}):\n{daemon.log_text()[-3000:]}"
    assert process_state(daemon.pid) != "T", "taskforce is stopped"
    return True


def pending(pid: int) -> int:
    """Signals pending for ``pid`` (thread and process), as a bit mask."""
    return signal_mask(pid, "pending")


def blocked(pid: int) -> int:
    """Signals ``pid``'s main thread blocks, as a bit mask."""
    return signal_mask(pid, "blocked")


def settled(daemon: Daemon, expected: dict[str, int], old: set[int]) -> bool:
    """Exactly ``expected`` processes run, none of them from ``old``, all
    children of the one taskforce, and no reset is half done."""
    alive(daemon)
    text = daemon.log_text()
    if text.count("re-executing") != text.count("taskforce started as pid") - 1:
        return False
    table = proc_table()
    for name, count in expected.items():
        pids = daemon.pids(name)
        if len(pids) != count or pids & old:
            return False
        if any(table.get(pid, (0,))[0] != daemon.pid for pid in pids):
            return False
    return True


def test_the_table_names_every_catchable_signal() -> None:
    catchable = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
    assert set(signals.TABLE) == catchable
    assert {s for s, a in signals.TABLE.items() if a is signals.Action.FAULT} == FAULTS
    assert {s for s, a in signals.TABLE.items() if a is signals.Action.STOP} == STOPPING
    assert signals.TABLE[signal.SIGHUP] is signals.Action.RESET
    assert set(signals.CHILD_DEFAULTS) == catchable


def test_the_readme_lists_what_each_signal_does() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("\n## Signals\n", 1)[1].split("\n## ", 1)[0]
    said: dict[int, signals.Action] = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("SIG"):
            continue
        for name in cells[0].split(", "):
            if name == "SIGRTMIN…SIGRTMAX":
                numbers = range(signal.SIGRTMIN, signal.SIGRTMAX + 1)
            else:
                numbers = range(getattr(signal, name), getattr(signal, name) + 1)
            said.update(dict.fromkeys(numbers, signals.Action(cells[1])))
    assert said == signals.TABLE


def test_a_storm_of_sighups_ends_with_the_tasks_running_under_one_taskforce(
    daemon: Daemon,
) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a", count=2), b=task(m, "b")))
    daemon.start()
    old = daemon.wait_pids("a", 2) | daemon.wait_pids("b", 1)
    for _ in range(5):  # 5 within 100 ms: pacing, not waiting for anything
        os.kill(daemon.pid, signal.SIGHUP)
        time.sleep(0.02)
    wait_for(lambda: settled(daemon, {"a": 2, "b": 1}, old), what="every task running again")
    # A second storm, now that the first is over: the same outcome.
    old = daemon.pids("a") | daemon.pids("b")
    for _ in range(5):
        os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: settled(daemon, {"a": 2, "b": 1}, old), what="every task running again")
    assert daemon.stop() == 0
    assert not daemon.processes()


def test_sighup_then_sigterm_during_the_reset_stops_everything(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(
        {"settings": {"stop_timeout": 2}, "tasks": {"a": task(m, "a", IGNORE_TERM)}}
    )
    daemon.start()
    daemon.wait_pids("a", 1)
    wait_for(lambda: ignores_sigterm(daemon, "a"), what="a ignoring SIGTERM")
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_log("reset: stopping every task")
    os.kill(daemon.pid, signal.SIGHUP)
    os.kill(daemon.pid, signal.SIGTERM)
    assert daemon.stop() == 0
    assert not daemon.processes()
    assert "re-executing" not in daemon.log_text()
    assert daemon.log_text().count("reset: stopping every task") == 1


def test_sigterm_during_the_reexec_is_honoured(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a")))
    daemon.start()
    daemon.wait_pids("a", 1)
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_log("re-executing")
    os.kill(daemon.pid, signal.SIGHUP)  # part of the reset under way
    os.kill(daemon.pid, signal.SIGTERM)
    assert daemon.stop() == 0
    assert not daemon.processes()
    after = daemon.log_text().rsplit("re-executing", 1)[1]
    assert "reset: stopping" not in after, "the pending SIGHUP was part of the reset"
    assert "stopping every task (got SIGTERM)" in after


def ignores_sigterm(daemon: Daemon, name: str) -> bool:
    return any(signal.SIGTERM in ignored_signals(pid) for pid in daemon.pids(name))


def test_other_signals_leave_taskforce_and_its_tasks_running(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a", count=2)))
    daemon.start()
    before = daemon.wait_pids("a", 2)
    daemon.wait_log("taskforce started as pid")
    for signum in HARMLESS:
        os.kill(daemon.pid, signum)
        bit = 1 << (signum - 1)
        what = f"{signals.name(signum)} delivered"
        wait_for(lambda bit=bit: alive(daemon) and not pending(daemon.pid) & bit, 5, what)
        assert alive(daemon), signals.name(signum)
    assert daemon.pids("a") == before, "no task was touched"
    # And it still supervises: a killed task is replaced.
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(daemon.pids("a") - {victim}) == 2, what="a replaced")
    assert "reset" not in daemon.log_text()
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGQUIT,
        pytest.param(
            getattr(signal, "SIGPWR", 0),
            marks=pytest.mark.skipif(not hasattr(signal, "SIGPWR"), reason="no SIGPWR here"),
        ),
    ],
    ids=["QUIT", "PWR"],
)
def test_sigquit_and_sigpwr_stop_cleanly(daemon: Daemon, signum: int) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a")))
    daemon.start()
    daemon.wait_pids("a", 1)
    os.kill(daemon.pid, signum)
    assert daemon.stop() == 0
    assert not daemon.processes()


def test_tasks_start_with_every_signal_at_its_default(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a"), b=task(m, "b", cwd="/")))  # both spawn paths
    daemon.start()
    for name in ("a", "b"):
        (pid,) = daemon.wait_pids(name, 1)
        assert signal_mask(pid, "blocked") == 0, name
        # A Python task ignores SIGPIPE and SIGXFSZ itself; nothing else
        # (glibc's own signals, 32 and 33 -- not valid_signals() -- are its
        # business: its posix_spawn leaves them ignored in every child).
        ignored = ignored_signals(pid) & set(signal.valid_signals())
        assert ignored <= {signal.SIGPIPE, signal.SIGXFSZ}, (name, ignored)
    assert daemon.stop() == 0


def test_sigusr1_reopens_output_files(daemon: Daemon) -> None:
    m = daemon.marker
    out = daemon.root / "a.out"
    ticker = "while :; do echo tick; sleep 0.05; done"
    daemon.write_config(tasks(a=shell_task(m, "a", ticker, output={"file": str(out)})))
    daemon.start()
    daemon.wait_pids("a", 1)
    wait_for(lambda: out.exists() and "tick" in out.read_text(), what="output in a.out")
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        os.rename(out, daemon.root / "a.out.rotated")  # what logrotate does
        os.kill(daemon.pid, signum)
        wait_for(lambda: out.exists() and "tick" in out.read_text(), what="a new a.out")
        assert alive(daemon)
    assert daemon.stop() == 0


#: Writes the descriptors open in this process to the last argument, then
#: stays (``stay``) or ends.
FD_PROBE = """
import os, sys, time
fds = []
for name in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"):
    try:
        os.fstat(int(name))  # the listing's own descriptor is closed by now
        fds.append(int(name))
    except OSError:
        pass
with open(sys.argv[-1] + ".tmp", "w") as out:
    out.write(" ".join(map(str, sorted(fds))))
os.replace(sys.argv[-1] + ".tmp", sys.argv[-1])
if sys.argv[-2] == "stay":
    time.sleep(1000)
"""


@pytest.mark.parametrize("spawn", ["posix_spawn", "fork"])
def test_inherited_descriptors_reach_no_task(daemon: Daemon, tmp_path: Path, spawn: str) -> None:
    m = daemon.marker
    secret = tmp_path / "secret"
    secret.write_text("only for taskforce's parent\n")
    seen = {what: tmp_path / f"{what}.fds" for what in ("task", "check", "event")}
    touched = tmp_path / "touched"
    touched.write_text("")
    probe = [sys.executable, "-c", FD_PROBE, m]
    daemon.write_config(
        tasks(
            a={
                "commands": {
                    "start": [*probe, "a", "stay", str(seen["task"])],
                    "check": [*probe, "a-check", "end", str(seen["check"])],
                    "probe": [*probe, "a-event", "end", str(seen["event"])],
                },
                "check_interval": 0.2,
                "events": [{"type": "file_change", "path": str(touched), "command": "probe"}],
            }
        )
    )
    fd = os.open(secret, os.O_RDONLY)
    try:
        env = {"TASKFORCE_SPAWN": "fork"} if spawn == "fork" else {}
        daemon.start(env=env, pass_fds=(fd,))
    finally:
        os.close(fd)
    daemon.wait_pids("a", 1)
    wait_for(lambda: seen["task"].exists() and seen["check"].exists(), what="task and check")
    touched.write_text("changed\n")
    wait_for(lambda: seen["event"].exists(), what="the event's command")
    for what, path in seen.items():
        assert path.read_text() == "0 1 2", f"{what} ({spawn}) had {path.read_text()} open"
    # No check may be running when taskforce stops: take the check away and
    # wait for the last one to end.
    daemon.write_config(tasks(a=task(m, "a")))
    daemon.wait_log("config changed")
    wait_for(lambda: not daemon.pids("a-check"), what="the last check to end")
    assert daemon.stop() == 0


def test_a_config_broken_during_the_reset_leaves_taskforce_waiting_not_gone(
    daemon: Daemon,
) -> None:
    m = daemon.marker
    good = {"settings": {"stop_timeout": 2}, "tasks": {"a": task(m, "a", IGNORE_TERM)}}
    daemon.write_config(good)
    daemon.start()
    (old,) = daemon.wait_pids("a", 1)
    wait_for(lambda: ignores_sigterm(daemon, "a"), what="a ignoring SIGTERM")
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_log("reset: stopping every task")
    daemon.write_config("{tasks: {a: {commands: {}}}}")  # while a takes 2 s to stop
    daemon.wait_log("waiting for a config that loads", timeout=20)
    wait_for(lambda: alive(daemon) and not blocked(daemon.pid), what="signals unblocked")
    daemon.wait_log("start: ")  # the core got the error: it runs nothing
    assert not daemon.pids("a")
    daemon.write_config(good)
    (new,) = daemon.wait_pids("a", 1)
    assert new != old
    assert daemon.stop() == 0
