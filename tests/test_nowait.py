"""Self-daemonizing programs: ``nowait`` finds them by pidfile and restarts
them when they die; ``adopt`` also takes over one that is already running."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import FEATURES, Daemon, running, wait_for

from taskforce.eventlog import Step, read_log

# A pidfile a user other than root can write is trusted only if the pid it
# names is one of the slot's, told by the marker in the process's
# environment; where the daemon cannot read that (no /proc: macOS, the BSDs)
# such a pidfile is refused, so these tests need /proc, or root (whose
# pidfiles in a root-owned folder need no such proof).
pytestmark = pytest.mark.skipif(
    not (FEATURES.proc or os.geteuid() == 0),
    reason="no /proc to read a process's environment: non-root pidfiles are refused",
)
#: Start times (a recycled pid) are read from /proc.
needs_proc = pytest.mark.skipif(not FEATURES.proc, reason="no /proc: no process start times")

#: Forks twice, detaches, writes its pidfile, lives on; the launcher exits 0.
SELF_DAEMONIZING = """
import os, sys, time
pidfile = sys.argv[1]
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
time.sleep(0.05)  # the launcher is long gone before the pidfile appears
with open(pidfile + ".tmp", "w") as handle:
    handle.write(f"{os.getpid()}\\n")
os.replace(pidfile + ".tmp", pidfile)
time.sleep(1000)
"""


def config(daemon: Daemon, control: str, pidfile: Path) -> dict:
    return {
        "tasks": {
            "forker": {
                "control": control,
                "pidfile": str(pidfile),
                "commands": {
                    "start": [sys.executable, "-c", SELF_DAEMONIZING, str(pidfile), daemon.marker]
                },
            }
        }
    }


def pidfile_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if running(pid) else None


def kill_quietly(pid: int | None) -> None:
    """SIGKILL ``pid`` (not our child: init reaps it) and wait until it is gone."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return

    wait_for(lambda: not running(pid), what=f"pid {pid} to die")


def test_nowait_daemon_is_found_and_restarted_when_it_dies(daemon: Daemon) -> None:
    pidfile = daemon.root / "forker.pid"
    daemon.write_config(config(daemon, "nowait", pidfile))
    daemon.start()
    first = wait_for(lambda: pidfile_pid(pidfile), what="the daemon's pidfile")
    daemon.wait_log(f"forker[0] daemon running as pid {first}")
    os.kill(first, signal.SIGKILL)
    second = wait_for(
        lambda: (lambda p: p if p and p != first else None)(pidfile_pid(pidfile)),
        what="a new daemon",
    )
    daemon.wait_log(f"forker[0] daemon running as pid {second}")
    assert daemon.stop() == 0
    wait_for(lambda: not running(second), what="the daemon stopped with us")


def test_nowait_start_command_failing_is_a_failed_start(daemon: Daemon) -> None:
    daemon.write_config(
        {
            "tasks": {
                "bad": {
                    "control": "nowait",
                    "pidfile": str(daemon.root / "never.pid"),
                    "commands": {"start": ["sh", "-c", "exit 4", daemon.marker]},
                }
            }
        }
    )
    daemon.start()
    daemon.wait_log("bad[0] (pid")
    daemon.wait_log("failing fast")


def test_adopt_keeps_the_same_pid_across_a_reset(daemon: Daemon) -> None:
    pidfile = daemon.root / "forker.pid"
    daemon.write_config(config(daemon, "adopt", pidfile))
    daemon.start("-p", str(daemon.pidfile))
    pid = wait_for(lambda: pidfile_pid(pidfile), what="the daemon's pidfile")
    daemon.wait_log(f"daemon running as pid {pid}")
    os.kill(daemon.pid, signal.SIGHUP)
    daemon.wait_log("left running for adoption")
    daemon.wait_log(f"forker[0] adopted pid {pid}")
    assert pidfile_pid(pidfile) == pid
    # Shutdown leaves an adopted daemon running, for the next taskforce.
    assert daemon.stop() == 0
    try:
        assert running(pid)
        daemon.proc = None
        daemon.start()
        wait_for(
            lambda: daemon.log_text().count(f"forker[0] adopted pid {pid}") == 2,
            what="the new taskforce adopting it",
        )
    finally:
        daemon.stop()
        kill_quietly(pid)


@needs_proc
def test_a_recycled_pid_is_not_adopted(daemon: Daemon) -> None:
    pidfile = daemon.root / "forker.pid"
    pidfile.write_text("1\n")
    old = time.time() - 3600
    # A live process younger than the pidfile: the pid was reused.
    impostor = subprocess.Popen(["sleep", "1000"])
    try:
        pidfile.write_text(f"{impostor.pid}\n")
        os.utime(pidfile, (old, old))
        daemon.write_config(config(daemon, "adopt", pidfile))
        daemon.start()
        daemon.wait_log("started after the pidfile was written (a reused pid)")
        new = wait_for(
            lambda: (lambda p: p if p and p != impostor.pid else None)(pidfile_pid(pidfile)),
            what="a daemon of our own",
        )
        daemon.wait_log(f"daemon running as pid {new}")
        assert impostor.poll() is None, "the impostor must be left alone"
        daemon.stop()  # an adopt daemon is left running: ours to clean up
    finally:
        impostor.kill()
        impostor.wait()
        if pidfile_pid(pidfile) != impostor.pid:
            kill_quietly(pidfile_pid(pidfile))


def test_a_failing_health_check_restarts_a_nowait_daemon(daemon: Daemon) -> None:
    pidfile = daemon.root / "forker.pid"
    sick = daemon.root / "sick"
    cfg = config(daemon, "nowait", pidfile)
    cfg["tasks"]["forker"]["commands"]["check"] = ["sh", "-c", f"! test -e {sick}"]
    cfg["tasks"]["forker"]["check_interval"] = 0.3
    daemon.write_config(cfg)
    daemon.start()
    first = wait_for(lambda: pidfile_pid(pidfile), what="the daemon's pidfile")
    daemon.wait_log(f"daemon running as pid {first}")
    sick.write_text("")
    daemon.wait_log("restarted: health check exited 1")
    sick.unlink()
    second = wait_for(
        lambda: (lambda p: p if p and p != first else None)(pidfile_pid(pidfile)),
        what="a new daemon",
    )
    daemon.wait_log(f"daemon running as pid {second}")


#: As SELF_DAEMONIZING, but the daemon writes its pidfile only after
#: ``sys.argv[2]`` seconds: long after its launcher has exited.
LATE_PIDFILE = SELF_DAEMONIZING.replace("time.sleep(0.05)", "time.sleep(float(sys.argv[2]))")


def log_index(text: str, needle: str) -> int:
    assert needle in text, f"{needle!r} not in the log:\n{text}"
    return text.index(needle)


@pytest.mark.parametrize("control", ["nowait", "adopt"])
def test_a_shutdown_before_the_pidfile_names_the_daemon_waits_for_it(
    daemon: Daemon, control: str
) -> None:
    """Issue 11: SIGTERM after the start command exited but before the
    pidfile named the daemon said "every task has stopped" and left the
    daemon running.  Now the daemon is found, then stopped (adopt: left
    running, as at every shutdown), and only then does taskforce exit."""
    pidfile = daemon.root / "late.pid"
    daemon.write_config(
        {
            "tasks": {
                "late": {
                    "control": control,
                    "pidfile": str(pidfile),
                    "commands": {
                        "start": [sys.executable, "-c", LATE_PIDFILE, str(pidfile), "1.5"]
                        + [daemon.marker]
                    },
                }
            }
        }
    )
    daemon.start()
    daemon.wait_log("late[0]: start command done; reading its pidfile")
    assert not pidfile.exists()
    started = time.monotonic()
    assert daemon.stop() == 0
    pid = pidfile_pid(pidfile) if control == "adopt" else None
    try:
        text = daemon.log_text()
        waiting = log_index(text, "late[0]: waiting for its pidfile to name its daemon")
        found = log_index(text, "late[0] daemon running as pid")
        done = log_index(text, "every task has stopped")
        assert waiting < found < done
        assert time.monotonic() - started < 10
        if control == "nowait":
            assert log_index(text, "stopped: taskforce is exiting") < done
            assert not daemon.processes(), "the daemon must not outlive taskforce"
        else:
            assert pid is not None, "an adopt daemon is left running"
            assert log_index(text, f"late[0] (pid {pid}) left running for adoption") < done
    finally:
        kill_quietly(pid)


NOBODY = "nobody"


def root_with_nobody() -> bool:
    try:
        pwd.getpwnam(NOBODY)
    except KeyError:
        return False
    return os.geteuid() == 0


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder ``nobody`` may write in (pytest's own is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="tf-nowait-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(not root_with_nobody(), reason="needs root and a user nobody")
def test_a_pidfile_forged_by_nobody_is_refused_and_its_pid_never_signalled(
    daemon: Daemon, shared_dir: Path
) -> None:
    """A nowait task running as nobody writes the pid of a root process (a
    sleep this test started) into its pidfile: taskforce refuses it, says
    where and why, and signals it neither when the task stops nor when it
    exits."""
    victim = subprocess.Popen(["sleep", "1000"])
    try:
        pidfile = shared_dir / "liar.pid"
        liar = {
            "control": "nowait",
            "user": NOBODY,
            "cwd": "/",
            "pidfile": str(pidfile),
            "commands": {
                "start": ["sh", "-c", 'echo "$1" > "$Task_pidfile"', daemon.marker]
                + [str(victim.pid)]
            },
        }
        keeper = {
            "commands": {
                "start": [sys.executable, "-c", "import time; time.sleep(1000)"]
                + [daemon.marker, "keeper"]
            }
        }
        daemon.write_config(
            {"settings": {"pidfile_timeout": 1}, "tasks": {"liar": liar, "keeper": keeper}}
        )
        daemon.start()
        uid = pwd.getpwnam(NOBODY).pw_uid
        daemon.wait_log(
            f"liar[0]: refused: pidfile {pidfile} (owned by uid {uid}, writable by a user "
            f"other than root) names pid {victim.pid}, which is not a process of liar[0]; "
            "it is not signalled"
        )
        daemon.wait_log("failing fast, restarting with backoff")
        # The task is stopped (removed from the config), then taskforce exits.
        daemon.write_config({"tasks": {"keeper": keeper}})
        daemon.wait_log("liar: removed from the config; stopping")
        assert daemon.stop() == 0
        assert victim.poll() is None, "the forged pid must never be signalled"
        signalled = [
            effect
            for path in sorted(daemon.root.glob("events.jsonl*"))
            for step in read_log(str(path))
            if isinstance(step, Step)
            for effect in step.effects
            if effect["type"] == "Signal" and effect["pid"] == victim.pid
        ]
        assert not signalled
    finally:
        victim.kill()
        victim.wait()


def test_a_task_removed_before_its_pidfile_names_the_daemon_stops_the_daemon(
    daemon: Daemon,
) -> None:
    """The same race as above with a stop that is not a shutdown."""
    pidfile = daemon.root / "late.pid"
    start = [sys.executable, "-c", LATE_PIDFILE, str(pidfile), "1.5", daemon.marker]
    keeper = {"commands": {"start": [sys.executable, "-c", "import time; time.sleep(1000)"]}}
    daemon.write_config(
        {
            "tasks": {
                "late": {
                    "control": "nowait",
                    "pidfile": str(pidfile),
                    "commands": {"start": start},
                },
                "keeper": keeper,
            }
        }
    )
    daemon.start()
    daemon.wait_log("late[0]: start command done; reading its pidfile")
    daemon.write_config({"tasks": {"keeper": keeper}})
    daemon.wait_log("late[0]: waiting for its pidfile to name its daemon, to stop it")
    daemon.wait_log("late[0] daemon running as pid")
    pid = int(pidfile.read_text())
    daemon.wait_log(f"late[0] (pid {pid}) stopped: removed from the config")
    wait_for(lambda: not daemon.processes(), what="the daemon to be stopped")
    assert daemon.stop() == 0


#: A daemon that leaves part of itself in its slot when it goes.  argv:
#: pidfile, shape.  ``worker``: the daemon (reparented to taskforce, the
#: subreaper) forks a worker that ignores SIGTERM.  ``keeper``: a process
#: that ignores SIGTERM forks the daemon and never reaps it, so the daemon
#: is not taskforce's child and is watched by pid.
LEAVES_A_PROCESS = """
import os, signal, sys, time
pidfile, shape = sys.argv[1], sys.argv[2]
if os.fork():
    os._exit(0)
os.setsid()
if shape == "keeper":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork():
        time.sleep(1000)
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
elif os.fork():
    os._exit(0)
elif os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(1000)
    os._exit(0)
with open(pidfile + ".tmp", "w") as handle:
    handle.write(f"{os.getpid()}\\n")
os.replace(pidfile + ".tmp", pidfile)
time.sleep(1000)
"""


@needs_proc
@pytest.mark.parametrize("shape", ["worker", "keeper"])
def test_what_a_daemon_leaves_in_its_slot_goes_with_it(daemon: Daemon, shape: str) -> None:
    """Whether the daemon dies on its own or is stopped, the rest of its
    slot (which ignores SIGTERM) is killed before a new one starts, and
    nothing of it outlives taskforce."""
    pidfile = daemon.root / "leaver.pid"
    start = [sys.executable, "-c", LEAVES_A_PROCESS, str(pidfile), shape, daemon.marker]
    daemon.write_config(
        {
            "tasks": {
                "leaver": {
                    "control": "nowait",
                    "pidfile": str(pidfile),
                    "stop_timeout": 1,
                    "commands": {"start": start},
                }
            }
        }
    )
    daemon.start()
    first = wait_for(lambda: pidfile_pid(pidfile), what="the daemon's pidfile")
    daemon.wait_log(f"leaver[0] daemon running as pid {first}")
    others = wait_for(
        lambda: set(daemon.processes()) - {first} or None, what="the daemon's other process"
    )
    os.kill(first, signal.SIGKILL)
    daemon.wait_log("waiting for the rest of its process group")
    second = wait_for(
        lambda: (lambda p: p if p and p != first else None)(pidfile_pid(pidfile)),
        what="a new daemon",
    )
    assert not any(running(pid) for pid in others), "the old daemon's process outlived it"
    daemon.wait_log(f"leaver[0] daemon running as pid {second}")
    wait_for(lambda: set(daemon.processes()) - {second} or None, what="the new daemon's other")
    assert daemon.stop() == 0
    assert not daemon.processes(), "a process of the slot outlived taskforce"


#: A start command that names no daemon but leaves processes in its slot
#: (each ignores SIGTERM).  argv: pidfile, shape.  ``died``: the daemon
#: forks a worker and dies before writing its pidfile; ``failed``: the
#: start command exits 1 after starting a daemon.
LEAVES_NO_DAEMON = """
import os, signal, sys, time
pidfile, shape = sys.argv[1], sys.argv[2]
if os.fork():
    if shape == "failed":
        time.sleep(0.2)
        os._exit(1)
    os._exit(0)
os.setsid()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if shape == "died":
    if os.fork() == 0:
        time.sleep(1000)
        os._exit(0)
    time.sleep(0.2)
    os._exit(3)
time.sleep(1000)
"""


@needs_proc
@pytest.mark.parametrize("shape", ["died", "failed"])
def test_what_a_start_command_leaves_without_a_daemon_is_stopped(
    daemon: Daemon, shape: str
) -> None:
    """Nothing of a failed start outlives it: what is left in the slot is
    found, stopped (SIGKILL after ``stop_timeout``) before the slot starts
    again, and at shutdown."""
    pidfile = daemon.root / "stray.pid"
    start = [sys.executable, "-c", LEAVES_NO_DAEMON, str(pidfile), shape, daemon.marker]
    daemon.write_config(
        {
            "settings": {"pidfile_timeout": 1},
            "tasks": {
                "stray": {
                    "control": "nowait",
                    "pidfile": str(pidfile),
                    "stop_timeout": 1,
                    "commands": {"start": start},
                }
            },
        }
    )
    daemon.start()
    daemon.wait_log("left by its start command, which named no daemon")
    left = set(daemon.processes())
    assert left, "nothing was left to find"
    daemon.wait_log("stray[0]: what its start command left is gone")
    assert not any(running(pid) for pid in left), "a process of the failed start outlived it"
    assert daemon.stop() == 0
    assert not daemon.processes(), "a process of the slot outlived taskforce"


@needs_proc
def test_the_facts_of_a_pidfile_read(tmp_path: Path) -> None:
    """What the shell reports for the core to judge (see PidfileRead)."""
    from taskforce import pidwatch
    from taskforce.tracking import MARKER, Tracker

    tracker = Tracker("test-" + os.urandom(4).hex(), lambda slot: None, use_cgroups=False)
    env = {**os.environ, "Task_name": "web", "Task_instance": "1", MARKER: tracker.ident}
    ours = subprocess.Popen(["sleep", "1000"], env=env)
    stranger = subprocess.Popen(["sleep", "1000"])

    def read(path: object, task: str, instance: int) -> dict[str, object]:
        return pidwatch.read_pidfile(str(path), lambda pid: tracker.holds((task, instance), pid))

    try:
        pidfile = tmp_path / "web.pid"
        pidfile.write_text(f"{ours.pid}\n")
        pidfile.chmod(0o644)
        facts = read(pidfile, "web", 1)
        assert facts["pid"] == ours.pid and facts["in_slot"]
        assert facts["owner"] == os.geteuid() and not facts["started_after_file"]
        assert facts["writable_by_non_root"] is (os.geteuid() != 0)
        assert not read(pidfile, "web", 0)["in_slot"]
        pidfile.write_text(f"{stranger.pid}\n")
        assert not read(pidfile, "web", 1)["in_slot"]
        pidfile.chmod(0o664)
        assert read(pidfile, "web", 1)["writable_by_non_root"]
        assert read(tmp_path / "none.pid", "web", 1) == {
            "error": f"no pidfile {tmp_path / 'none.pid'}"
        }
        if os.geteuid() == 0 and root_with_nobody():
            pidfile.chmod(0o644)
            link = tmp_path / "link.pid"
            link.symlink_to(pidfile)
            assert not read(link, "web", 1)["writable_by_non_root"]
            os.lchown(link, pwd.getpwnam(NOBODY).pw_uid, -1)
            assert read(link, "web", 1)["writable_by_non_root"]
    finally:
        for proc in (ours, stranger):
            proc.kill()
            proc.wait()
