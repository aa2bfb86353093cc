"""The daemon end to end: real processes, real signals, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from daemon_harness import (
    IGNORE_TERM,
    Daemon,
    alias_bomb,
    cpu_seconds,
    ignored_signals,
    proc_table,
    running,
    shell_task,
    task,
    wait_for,
)


def tasks(**defs: dict) -> dict:
    return {"tasks": defs}


def test_restart_after_kill_gets_new_pid(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a"), b=task(m, "b")))
    daemon.start()
    (a,) = daemon.wait_pids("a", 1)
    (b,) = daemon.wait_pids("b", 1)
    os.kill(a, signal.SIGKILL)
    new = wait_for(lambda: (daemon.pids("a") - {a}) or None, what="a replaced")
    assert len(new) == 1
    assert daemon.pids("b") == {b}, "an unrelated task must not be touched"
    assert daemon.stop() == 0


def test_requires_starts_in_order_after_start_delay(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(
        tasks(
            first=task(m, "first", start_delay=0.5),
            second=task(m, "second", requires="first"),
        )
    )
    daemon.start()
    daemon.wait_pids("first", 1)
    daemon.wait_pids("second", 1)
    # A process exists a moment before taskforce logs that it started it.
    daemon.wait_log("second[0] started")
    text = daemon.log_text()
    assert text.index("first[0] started") < text.index("second[0] started")
    assert "second: waiting on first" in text


def test_count_gives_each_slot_its_instance(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(pool=task(m, "pool", args=("slot-{Task_instance}",), count=3)))
    daemon.start()
    pids = daemon.wait_pids("pool", 3)
    slots = sorted(daemon.processes("pool")[pid].split()[-1] for pid in pids)
    assert slots == ["slot-0", "slot-1", "slot-2"]


def test_once_runs_once_and_dependent_waits_for_it(daemon: Daemon) -> None:
    m = daemon.marker
    flag = daemon.root / "once-ran"
    daemon.write_config(
        tasks(
            setup=shell_task(m, "setup", f"echo x >> {flag}; sleep 0.3", control="once"),
            app=task(m, "app", requires="setup"),
        )
    )
    daemon.start()
    daemon.wait_pids("app", 1)
    assert flag.read_text() == "x\n"
    assert not daemon.pids("setup"), "the once task must have finished first"
    (app,) = daemon.pids("app")
    os.kill(app, signal.SIGKILL)
    wait_for(lambda: daemon.pids("app") - {app}, what="app replaced")
    assert flag.read_text() == "x\n", "once must not run again"


def test_off_and_suspend_start_nothing_and_dependents_wait(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(
        tasks(
            dead=task(m, "dead", control="off"),
            paused=task(m, "paused", control="suspend"),
            needs_dead=task(m, "needsdead", requires="dead"),
            needs_paused=task(m, "needspaused", requires="paused"),
        )
    )
    daemon.start()
    daemon.wait_pids("needspaused", 1)
    daemon.wait_log("needs_dead: waiting on dead (off)")
    assert not daemon.pids("dead") and not daemon.pids("paused") and not daemon.pids("needsdead")


def test_time_limit_restarts_wait_task(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(limited=task(m, "limited", time_limit=0.5)))
    daemon.start()
    (first,) = daemon.wait_pids("limited", 1)
    wait_for(lambda: daemon.pids("limited") - {first}, what="time_limit restart")
    assert "time_limit reached" in daemon.log_text()


def test_onexit_runs_a_once_task_again(daemon: Daemon) -> None:
    m = daemon.marker
    count_file = daemon.root / "report-runs"
    daemon.write_config(
        tasks(
            worker=shell_task(
                m, "worker", "sleep 0.2", onexit=[{"type": "start", "task": "report"}]
            ),
            report=shell_task(m, "report", f"echo run >> {count_file}", control="once"),
        )
    )
    daemon.start()
    # report runs once at start, then again each time worker exits.
    wait_for(
        lambda: count_file.exists() and len(count_file.read_text().split()) >= 3,
        what="report re-run by onexit",
    )


def test_stop_escalates_to_sigkill_for_a_task_ignoring_sigterm(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(
        {"settings": {"stop_timeout": 0.5}, **tasks(stubborn=task(m, "stubborn", IGNORE_TERM))}
    )
    daemon.start()
    (pid,) = daemon.wait_pids("stubborn", 1)
    wait_for(lambda: ignores_sigterm(pid), what="the child to ignore SIGTERM")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 5
    assert "did not stop; SIGKILL" in daemon.log_text()
    assert not daemon.pids("stubborn")


def grandchildren(daemon: Daemon) -> set[int]:
    return {
        p for p, cmd in daemon.processes("grandchild").items() if cmd.startswith(sys.executable)
    }


def wait_grandchild(daemon: Daemon) -> set[int]:
    return wait_for(
        lambda: (lambda g: g if len(g) == 1 else None)(grandchildren(daemon)), what="one grandchild"
    )


def test_shutdown_kills_shell_wrapper_grandchildren_and_leaves_no_zombie(daemon: Daemon) -> None:
    m = daemon.marker
    py = sys.executable
    daemon.write_config(
        tasks(
            wrapper=shell_task(
                m, "wrapper", f"{py} -c 'import time; time.sleep(1000)' $0 grandchild & sleep 1000"
            ),
            dependent=task(m, "dependent", requires="wrapper"),
        )
    )
    daemon.start()
    wait_grandchild(daemon)
    daemon.wait_pids("dependent", 1)
    assert daemon.stop() == 0
    assert not daemon.processes()
    text = daemon.log_text()
    assert text.index("dependent[0] (pid") < text.index("wrapper[0] (pid"), "dependents stop first"
    zombies = [
        p for p, (ppid, _, state, _) in proc_table().items() if ppid == daemon.pid and state == "Z"
    ]
    assert not zombies


def test_leader_death_waits_for_group_before_replacing(daemon: Daemon) -> None:
    m = daemon.marker
    py = sys.executable
    daemon.write_config(
        tasks(
            wrapper=shell_task(
                m, "wrapper", f"{py} -c 'import time; time.sleep(1000)' $0 grandchild & wait"
            )
        )
    )
    daemon.start()
    (child,) = wait_grandchild(daemon)
    (sh,) = [p for p, cmd in daemon.processes("wrapper").items() if cmd.startswith("sh ")]
    os.kill(sh, signal.SIGKILL)
    # The orphaned grandchild is killed with its group, then a new pair starts.
    wait_for(lambda: grandchildren(daemon) - {child}, what="new grandchild")
    assert child not in grandchildren(daemon)
    assert "waiting for the rest of its process group" in daemon.log_text()


def test_crash_loop_backs_off_without_spinning(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(crashy=shell_task(m, "crashy", "exit 3")))
    daemon.start()
    daemon.wait_log("failing fast", timeout=10)
    wait_for(lambda: daemon.log_text().count("crashy[0] started") >= 1)
    started = time.monotonic()
    wait_for(lambda: "retry 3" in daemon.log_text(), timeout=10, what="third retry")
    # 0.5 + 1 + 2 s of backoff before the third retry: it cannot come sooner.
    assert time.monotonic() - started > 1.0
    assert daemon.log_text().count("failing fast") == 1, "logged once, not on every try"
    cpu = cpu_seconds(daemon.pid)
    assert cpu < 2.0, f"the daemon spent {cpu:.2f} s of CPU"


def test_sigterm_exits_zero_and_nothing_survives(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a", count=2), b=shell_task(m, "b", "sleep 1000; true")))
    daemon.start()
    daemon.wait_pids("a", 2)
    wait_for(lambda: any("sleep 1000" in c for c in proc_table_cmds(daemon)), what="b's sleep")
    assert daemon.stop() == 0
    assert not daemon.processes()
    assert not any("sleep 1000" in c for c in proc_table_cmds(daemon))


def ignores_sigterm(pid: int) -> bool:
    return signal.SIGTERM in ignored_signals(pid)


def proc_table_cmds(daemon: Daemon) -> list[str]:
    """Command lines of processes in task groups started by this daemon."""
    table = proc_table()
    groups = {pid for pid, (ppid, _, _, _) in table.items() if ppid == daemon.pid}
    return [cmd for pid, (_, pgid, state, cmd) in table.items() if pgid in groups and state != "Z"]


def test_spawn_failure_is_reported_not_fatal(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(
        tasks(
            broken={"commands": {"start": ["/nonexistent/program", m]}},
            nocwd=task(m, "nocwd", cwd="/nonexistent-dir"),
            fine=task(m, "fine"),
        )
    )
    daemon.start()
    daemon.wait_pids("fine", 1)
    daemon.wait_log("broken[0] failed to start: exec '/nonexistent/program': No such file")
    daemon.wait_log("nocwd[0] failed to start: cwd '/nonexistent-dir'")
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_an_exec_report_read_before_the_child_exits_keeps_its_error() -> None:
    # The loop may read a failing child's report between its write and its
    # exit (seen as "exited 127" instead of the cwd error under load).
    from taskforce import process

    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        with pytest.raises(BlockingIOError):
            process.read_report(read_end)  # nothing yet: still running
        os.write(write_end, b"cwd '/nonexistent-dir': No such file or directory")
        assert process.read_report(read_end) == "cwd '/nonexistent-dir': No such file or directory"
    finally:
        os.close(write_end)


def test_procname_sets_argv0_and_context_reaches_environment(daemon: Daemon) -> None:
    m = daemon.marker
    out = daemon.root / "env.txt"
    daemon.write_config(
        {
            "defines": {"greeting": "hello {Task_name}"},
            "tasks": {
                "named": {
                    "procname": f"{m}-named-{{Task_instance}}",
                    "commands": {
                        "start": [
                            sys.executable,
                            "-c",
                            "import os, sys, time; e = os.environ; open(sys.argv[1], 'w').write("
                            "' '.join([e['greeting'], e['Task_instance'], e['Task_pid'],"
                            " str(os.getpid())])); time.sleep(1000)",
                            str(out),
                        ]
                    },
                }
            },
        }
    )
    daemon.start()
    wait_for(lambda: out.exists() and out.read_text().strip(), what="env written")
    greeting, name, instance, task_pid, real_pid = out.read_text().split()
    assert (greeting, name, instance) == ("hello", "named", "0")
    assert task_pid == real_pid
    cmd = wait_for(lambda: [c for c in daemon.processes().values() if c.startswith(f"{m}-named-0")])
    assert cmd


def test_check_config_starts_nothing(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a")))
    result = subprocess.run(daemon.command("-C"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "ok, 1 task" in result.stdout
    assert not daemon.processes()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('{"tasks": {"a": {"control": off, "commands": {"start": ["x"]}}}}', "quote it"),
        ('{"tasks": {"a": {"commands": {"stop": ["x"]}}}}', "start"),
        ('{"tasks": {"a": {"requires": "nope", "commands": {"start": ["x"]}}}}', "nope"),
        ('{"tasks": {"a": {"comands": {"start": ["x"]}}}}', "comands"),
        ('{"tasks": {"a": {"commands": {"start": ["x"]}}', "YAML syntax error"),
    ],
)
def test_check_config_rejects_bad_configs(daemon: Daemon, config: str, expected: str) -> None:
    daemon.write_config(config)
    result = subprocess.run(daemon.command("-C"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert expected in result.stderr
    assert str(daemon.config) in result.stderr


@pytest.mark.parametrize("deep", [False, True], ids=["wide", "deep"])
def test_check_config_refuses_an_alias_bomb_fast(daemon: Daemon, deep: bool) -> None:
    daemon.write_config(alias_bomb(["x"], deep=deep))
    started = time.monotonic()
    result = subprocess.run(daemon.command("-C"), capture_output=True, text=True, timeout=20)
    assert time.monotonic() - started < 5
    assert result.returncode == 1
    assert f"{daemon.config}:" in result.stderr
    assert ": tasks.a.commands.start[1].NOT_SET[" in result.stderr
    assert "aliases expand it to more than 1,000,000 values" in result.stderr


def test_a_roles_file_given_but_missing_is_an_error_for_check_and_start(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a")))
    missing = str(daemon.root / "no-such-roles")
    command = daemon.command()
    command[command.index("-r") + 1] = missing
    for extra in (["-C"], []):
        result = subprocess.run(
            [*command, *extra], capture_output=True, text=True, timeout=30, cwd=daemon.root
        )
        assert result.returncode == 1, result.stderr
        assert f"{missing}: roles file not found" in result.stderr
    assert not daemon.processes()
    # "-r -" still means no roles file: every task in scope.
    command[command.index("-r") + 1] = "-"
    result = subprocess.run([*command, "-C"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_bad_config_at_start_exits_one_and_starts_nothing(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config({"tasks": {"a": {**task(m, "a"), "count": "many"}}})
    result = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "tasks.a.count" in result.stderr
    assert not daemon.processes()


def test_background_pidfile_stop_and_reset(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a")))
    pidfile = str(daemon.pidfile)

    def background() -> int:
        with open(daemon.log, "ab") as log:
            return subprocess.run(
                daemon.command("-b", "-p", pidfile), stdout=log, stderr=log, timeout=30
            ).returncode

    assert background() == 0
    try:
        pid = wait_for(
            lambda: daemon.pidfile.exists() and daemon.pidfile.read_text().strip(), what="pidfile"
        )
        daemon_pid = int(pid)
        (a,) = daemon.wait_pids("a", 1)
        # A second one detaches first, so it reports the clash in the log.
        assert background() == 0
        daemon.wait_log(f"already running as pid {daemon_pid}")
        reset = subprocess.run(
            daemon.command("-R", "-p", pidfile), capture_output=True, text=True, timeout=30
        )
        assert reset.returncode == 0, reset.stderr
        wait_for(lambda: daemon.pids("a") and daemon.pids("a") != {a}, what="a restarted by reset")
        assert (
            wait_for(lambda: daemon.pidfile.exists() and daemon.pidfile.read_text().strip()) == pid
        )
        stop = subprocess.run(
            daemon.command("-S", "-p", pidfile), capture_output=True, text=True, timeout=30
        )
        assert stop.returncode == 0, stop.stderr
        wait_for(lambda: not daemon.pidfile.exists(), what="pidfile removed")
        wait_for(lambda: not daemon.processes(), what="tasks stopped")
        wait_for(lambda: not running(daemon_pid), what="daemon gone")
    finally:
        if daemon.pidfile.exists():
            try:
                os.kill(int(daemon.pidfile.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
    failed = subprocess.run(
        daemon.command("-S", "-p", pidfile), capture_output=True, text=True, timeout=30
    )
    assert failed.returncode == 1
    assert "no pidfile" in failed.stderr


def test_live_pidfile_owner_is_a_clear_error(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a")))
    daemon.start("-p", str(daemon.pidfile))
    daemon.wait_pids("a", 1)
    second = subprocess.run(
        daemon.command("-p", str(daemon.pidfile)), capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 2
    assert f"already running as pid {daemon.pid}" in second.stderr
    assert len(daemon.pids("a")) == 1


def test_stale_pidfile_is_taken_over(daemon: Daemon) -> None:
    m = daemon.marker
    daemon.write_config(tasks(a=task(m, "a")))
    daemon.pidfile.write_text("999999\n")
    daemon.start("-p", str(daemon.pidfile))
    daemon.wait_pids("a", 1)
    assert daemon.pidfile.read_text().strip() == str(daemon.pid)
