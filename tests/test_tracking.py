"""Nothing outlives its slot, and no slot runs twice: the real daemon.

Each test runs twice where the host allows it: with a cgroup per slot, and
with ``TASKFORCE_CGROUPS=off`` (the process group plus the environment
marker), since both are what some host gets.  A host with neither (no
cgroups, no /proc to find the marker in: macOS, the BSDs) keeps only the
process group, which a ``setsid`` escapes and a crash of taskforce loses:
these tests skip there, by feature.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import (
    FEATURES,
    IGNORE_TERM,
    SLEEP,
    Daemon,
    ignored_signals,
    shell_task,
    task,
    wait_for,
)

from taskforce.tracking import Tracker, instance_id

PY = sys.executable
CHILD_SLEEP = f"'{PY}' -c 'import time; time.sleep(1000)'"

#: The task's own process stays; a grandchild leaves its process group.
SETSID = f'setsid {CHILD_SLEEP} "$0" "$1-setsid" & exec {CHILD_SLEEP} "$0" "$1"'
#: A double fork into a new session: the grandchild is orphaned at once.
DOUBLE_FORK = (
    f'(setsid sh -c "{CHILD_SLEEP} \'$0\' \'$1-double\' &" &); exec {CHILD_SLEEP} "$0" "$1"'
)


MODES = [
    pytest.param(
        "cgroup",
        marks=pytest.mark.skipif(not FEATURES.cgroups, reason="no writable cgroup v2 here"),
    ),
    pytest.param(
        "marker",
        marks=pytest.mark.skipif(
            not FEATURES.proc, reason="no /proc: the environment marker cannot be looked for"
        ),
    ),
]


def _ignores_term(pid: int) -> bool:
    """Whether ``pid`` has got as far as ignoring SIGTERM."""
    try:
        return signal.SIGTERM in ignored_signals(pid)
    except (OSError, StopIteration, subprocess.CalledProcessError):
        return False  # gone meanwhile


def _start(daemon: Daemon, mode: str, *extra: str) -> None:
    daemon.start(*extra, env={"TASKFORCE_CGROUPS": "auto" if mode == "cgroup" else "off"})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("script", [SETSID, DOUBLE_FORK], ids=["setsid", "double-fork"])
def test_an_escaper_does_not_outlive_its_task(daemon: Daemon, mode: str, script: str) -> None:
    m = daemon.marker
    escaped = "esc-setsid" if script is SETSID else "esc-double"
    daemon.write_config({"tasks": {"esc": shell_task(m, "esc", script), "keep": task(m, "keep")}})
    _start(daemon, mode)
    daemon.wait_log("process" if mode == "marker" else "a cgroup per slot")
    first = daemon.wait_pids(escaped, 1)
    daemon.wait_pids("esc", 1)
    keep = daemon.wait_pids("keep", 1)
    # A restart asked for: the old tree goes whole before the new one starts.
    leader = next(iter(daemon.pids("esc")))
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: (lambda now: now and now != first)(daemon.pids(escaped)), what="a new one")
    assert len(daemon.pids(escaped)) == 1, "the old escaper survived its slot's restart"
    assert not daemon.pids(escaped) & first
    # Removed from the config: nothing of it is left.
    daemon.write_config({"tasks": {"keep": task(m, "keep")}})
    wait_for(lambda: not daemon.pids(escaped) and not daemon.pids("esc"), what="esc gone")
    assert daemon.pids("keep") == keep
    # And at shutdown, with the task back: nothing is left either.
    daemon.write_config({"tasks": {"esc": shell_task(m, "esc", script), "keep": task(m, "keep")}})
    daemon.wait_pids(escaped, 1)
    assert daemon.stop() == 0
    assert not daemon.processes(), daemon.processes()


#: Appends a line to the file named by argv[3] for each SIGTERM it gets,
#: and for each its child gets; the child stays in the task's group.
COUNTS_TERM = (
    "import os, signal, sys, time\n"
    "os.fork()\n"
    "signal.signal(signal.SIGTERM, lambda *_: open(sys.argv[3], 'a').write(f'{os.getpid()}\\n'))\n"
    "time.sleep(1000)\n"
)


@pytest.mark.parametrize("mode", MODES)
def test_a_stop_sends_each_process_one_sigterm(daemon: Daemon, mode: str) -> None:
    m = daemon.marker
    counts = daemon.root / "terms.txt"
    counter = task(m, "counter", COUNTS_TERM, args=(str(counts),), stop_timeout=1.5)
    daemon.write_config({"tasks": {"counter": counter}})
    _start(daemon, mode)
    both = daemon.wait_pids("counter", 2)
    assert daemon.stop() == 0  # each ignores SIGTERM (counts it): SIGKILL ends them
    got = counts.read_text().split() if counts.exists() else []
    assert sorted(map(int, got)) == sorted(both), "each process gets the stop signal once"


def test_a_group_member_is_not_signalled_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two SIGTERMs close together may merge in the kernel, so the daemon
    # test above cannot always see a second one: look at what is sent.
    leader = subprocess.Popen([PY, "-c", SLEEP], preexec_fn=os.setpgrp)
    member = subprocess.Popen([PY, "-c", SLEEP], preexec_fn=lambda: os.setpgid(0, leader.pid))
    outsider = subprocess.Popen([PY, "-c", SLEEP], start_new_session=True)
    sent: list[tuple[int, str, bool]] = []
    monkeypatch.setattr(
        "taskforce.tracking.send_signal",
        lambda pid, signame, *, group: sent.append((pid, signame, group)) or True,
    )
    tracker = Tracker("probe-" + os.urandom(4).hex(), lambda slot: None, use_cgroups=False)
    try:
        everyone = [leader.pid, member.pid, outsider.pid]
        monkeypatch.setattr(tracker, "tree", "/nonexistent")
        monkeypatch.setattr(tracker, "_cgroup_pids", lambda slot: everyone)
        tracker.signal(("t", 0), leader.pid, "SIGTERM")
        assert sent == [(leader.pid, "SIGTERM", True), (outsider.pid, "SIGTERM", False)]
    finally:
        tracker.close()
        for proc in (leader, member, outsider):
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("mode", MODES)
def test_a_crash_of_taskforce_runs_nothing_twice(daemon: Daemon, mode: str) -> None:
    m = daemon.marker
    daemon.write_config(
        {
            "settings": {"stop_timeout": 1},
            "tasks": {
                "web": task(m, "web", count=2),
                "esc": shell_task(m, "esc", SETSID),
                "stubborn": task(m, "stubborn", IGNORE_TERM),
            },
        }
    )
    _start(daemon, mode)
    web = daemon.wait_pids("web", 2)
    daemon.wait_pids("esc-setsid", 1)
    stubborn = daemon.wait_pids("stubborn", 1)
    wait_for(lambda: _ignores_term(next(iter(stubborn))), what="SIGTERM ignored")
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.proc.wait(5)  # type: ignore[union-attr]
    # The crashed run's log may end in a torn line; this test replays the next.
    for path in daemon.root.glob("events.jsonl*"):
        path.unlink()
    assert daemon.pids("web") == web, "the tasks live on without their supervisor"
    _start(daemon, mode)
    daemon.wait_log("left running by an earlier taskforce")
    # Everything comes back exactly once: old ones stopped before new ones start.
    wait_for(
        lambda: len(daemon.pids("web")) == 2 and not daemon.pids("web") & web,
        what="web replaced",
    )
    wait_for(lambda: not daemon.pids("stubborn") & stubborn, what="the stubborn leftover gone")
    daemon.wait_pids("stubborn", 1)
    daemon.wait_pids("esc-setsid", 1)
    daemon.wait_pids("esc", 1)
    log = daemon.log_text()
    assert "stopping the leftover before anything starts in its place" in log
    assert "the leftover did not stop; SIGKILL" in log  # stubborn ignored SIGTERM
    assert daemon.stop() == 0
    assert not daemon.processes(), daemon.processes()


@pytest.mark.parametrize("mode", MODES)
def test_a_crash_while_a_stop_escalates_still_ends_the_task(daemon: Daemon, mode: str) -> None:
    """SIGKILL of taskforce between its SIGTERM and its SIGKILL: the next one
    finishes the job instead of leaving the task running for ever."""
    m = daemon.marker
    daemon.write_config(
        {"settings": {"stop_timeout": 30}, "tasks": {"stubborn": task(m, "stubborn", IGNORE_TERM)}}
    )
    _start(daemon, mode)
    old = daemon.wait_pids("stubborn", 1)
    wait_for(lambda: _ignores_term(next(iter(old))), what="SIGTERM ignored")
    daemon.write_config({"settings": {"stop_timeout": 1}, "tasks": {}})
    daemon.wait_log("removed from the config")
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.proc.wait(5)  # type: ignore[union-attr]
    for path in daemon.root.glob("events.jsonl*"):
        path.unlink()
    assert daemon.pids("stubborn") == old
    _start(daemon, mode)
    wait_for(lambda: not daemon.pids("stubborn"), what="the stubborn leftover gone")
    assert daemon.stop() == 0


def test_a_second_taskforce_with_the_same_config_is_refused(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config({"tasks": {"web": task(m, "web", SLEEP)}})
    daemon.start()
    web = daemon.wait_pids("web", 1)
    daemon.wait_log("web[0] started")
    second = subprocess.run(
        daemon.command(), cwd=daemon.root, capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 2, second.stderr
    assert "already supervises this config" in second.stderr
    assert daemon.pids("web") == web, "the refused second taskforce touched the first one's tasks"


def test_the_instance_id_names_config_and_roles() -> None:
    assert instance_id("/etc/a.conf", None) == instance_id("/etc/./a.conf", None)
    assert instance_id("/etc/a.conf", None) != instance_id("/etc/a.conf", "/etc/roles")
    assert instance_id("/etc/a.conf", None) != instance_id("/etc/b.conf", None)


@pytest.mark.skipif(not FEATURES.cgroups, reason="no writable cgroup v2 here")
def test_what_a_gone_taskforce_left_empty_is_removed_and_nothing_else(daemon: Daemon) -> None:
    # Trees beside the one the daemon makes (it runs in this test's cgroup):
    # a SIGKILLed taskforce's, empty, whose config never ran again; one
    # holding a process; one whose lock names a live process (a taskforce
    # that runs, or execs for a reset).
    from taskforce.instancelock import lock_path
    from taskforce.tracking import _own_cgroup

    base, why = _own_cgroup()
    assert base is not None, why
    idents = {kind: os.urandom(8).hex() for kind in ("empty", "populated", "locked")}
    trees = {kind: os.path.join(base, f"taskforce-{ident}") for kind, ident in idents.items()}
    for tree in trees.values():
        for slot in ("web.0", "web.1", "db.0"):
            os.makedirs(os.path.join(tree, slot))
    Path(lock_path(idents["empty"])).write_text("999999999\n")  # no such pid
    Path(lock_path(idents["locked"])).write_text(f"{os.getpid()}\n")
    held = subprocess.Popen(["sleep", "600"])
    try:
        Path(trees["populated"], "db.0", "cgroup.procs").write_text(str(held.pid))
        m = daemon.marker
        daemon.write_config({"tasks": {"web": task(m, "web", SLEEP)}})
        daemon.start()
        daemon.wait_log("removed 1 empty cgroup tree under")
        assert not os.path.exists(trees["empty"])
        for kind in ("populated", "locked"):
            for slot in ("web.0", "web.1", "db.0"):
                assert os.path.isdir(os.path.join(trees[kind], slot)), (kind, slot)
        assert held.poll() is None, "a process of an abandoned tree was touched"
        daemon.wait_pids("web", 1)
        assert daemon.stop() == 0
    finally:
        held.kill()
        held.wait()
        for kind, tree in trees.items():
            for root, dirs, _files in os.walk(tree, topdown=False):
                for name in dirs:
                    os.rmdir(os.path.join(root, name))
            if os.path.isdir(tree):
                os.rmdir(tree)
            Path(lock_path(idents[kind])).unlink(missing_ok=True)
