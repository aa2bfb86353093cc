"""Readiness and rollouts against a real daemon, real processes, real sockets.

- a probe (tcp, http, command) or ``READY=1`` makes a slot ``ready``; until
  then it is ``running``, and what requires it waits;
- a process not ready within ``ready_timeout`` is restarted; one whose
  watchdog goes silent too;
- a config change rolls a pool over one process at a time, and a release
  that cannot start halts the rollout with the old processes serving;
  ``tfctl rollout`` and ``tfctl wait`` say so, and ``--resume`` goes on.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, running, task, wait_for
from test_control import start_daemon, tasks_json
from test_tfctl import run

#: a task that listens on the port in argv[3] after argv[4] seconds
LISTENER = """
import socket, sys, time
time.sleep(float(sys.argv[4]))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[3])))
server.listen(16)
while True:
    conn, _ = server.accept()
    conn.recv(1024)
    conn.sendall(b"HTTP/1.0 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok")
    conn.close()
"""

#: says READY=1 after argv[3] seconds (never when it is "never"), then
#: WATCHDOG=1 every argv[4] seconds (never when it is 0)
NOTIFIER = """
import os, socket, sys, time
def send(text):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(text.encode(), os.environ["NOTIFY_SOCKET"])
if sys.argv[3] == "never":
    time.sleep(1000)
time.sleep(float(sys.argv[3]))
send("READY=1\\nSTATUS=serving")
beat = float(sys.argv[4])
while True:
    time.sleep(beat or 1000)
    if beat:
        send("WATCHDOG=1")
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def slots(sock: str, name: str) -> list[dict[str, Any]]:
    return list(tasks_json(sock)[name]["processes"])


def states(sock: str, name: str) -> list[str]:
    return [slot["state"] for slot in slots(sock, name)]


@pytest.mark.parametrize("kind", ["tcp", "http", "command"])
def test_a_probe_makes_a_slot_ready_and_requires_waits_for_it(daemon: Daemon, kind: str) -> None:
    m, port = daemon.marker, free_port()
    probe: dict[str, Any] = {
        "tcp": {"tcp": port},
        "http": {"http": f"http://127.0.0.1:{port}/health"},
        "command": {"command": [sys.executable, "-c", _CONNECT, str(port)]},
    }[kind]
    defs = {
        "db": task(m, "db", LISTENER, args=(str(port), "1.0"), ready=probe, ready_interval=0.2),
        "app": task(m, "app", requires="db"),
    }
    sock = start_daemon(daemon, defs)
    daemon.wait_pids("db", 1)
    assert states(sock, "db") == ["running"]
    assert "db (not ready)" in tasks_json(sock)["app"]["waiting_on"]
    assert not daemon.pids("app")
    wait_for(lambda: states(sock, "db") == ["ready"], what="db ready")
    daemon.wait_pids("app", 1)
    daemon.wait_log("db[0] ready after")
    assert daemon.stop() == 0


_CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)"


def test_notify_ready_status_and_a_silent_watchdog(daemon: Daemon) -> None:
    m = daemon.marker
    defs = {
        "good": task(m, "good", NOTIFIER, args=("0.2", "0.2"), ready="notify", watchdog_sec=1),
        "mute": task(m, "mute", NOTIFIER, args=("0.2", "0"), ready="notify", watchdog_sec=1),
    }
    sock = start_daemon(daemon, defs)
    wait_for(lambda: states(sock, "good") == ["ready"], what="good ready")
    assert slots(sock, "good")[0].get("status") == "serving"
    daemon.wait_log("mute[0]", timeout=10)
    daemon.wait_log("restarted: watchdog (no WATCHDOG=1 for 1s)", timeout=10)
    first = daemon.pids("good")
    assert first and daemon.pids("good") == first, "a process that beats is left alone"
    assert "restarted: watchdog" not in "".join(
        line for line in daemon.log_text().splitlines() if "good[0]" in line
    )
    assert daemon.stop() == 0


#: A self-daemonizing program whose daemon says READY=1 at once, while its
#: launcher still runs (it exits argv[2] seconds later), and writes its
#: pidfile argv[3] seconds after that: taskforce hears READY=1 before it
#: knows the daemon's pid.  It never says it again.
EARLY_NOTIFIER = """
import os, socket, sys, time
pidfile, linger, late = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
if os.fork():
    time.sleep(linger)
    os._exit(0)
os.setsid()
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    sock.sendto(b"READY=1\\nSTATUS=early", os.environ["NOTIFY_SOCKET"])
time.sleep(linger + late)
with open(pidfile + ".tmp", "w") as handle:
    handle.write(f"{os.getpid()}\\n")
os.replace(pidfile + ".tmp", pidfile)
time.sleep(1000)
"""


def _early_notifier(
    daemon: Daemon, control: str, pidfile: Path, ready_timeout: float, *delays: str
) -> dict[str, Any]:
    """A ``notify`` task running ``EARLY_NOTIFIER``: its daemon writes
    ``pidfile`` and says READY=1 after ``delays``."""
    return {
        "control": control,
        "pidfile": str(pidfile),
        "ready": "notify",
        "ready_timeout": ready_timeout,
        "commands": {
            "start": [sys.executable, "-c", EARLY_NOTIFIER, str(pidfile), *delays, daemon.marker]
        },
    }


def test_a_nowait_daemon_that_says_ready_before_its_pidfile_is_ready(daemon: Daemon) -> None:
    """READY=1 sent while the launcher runs, before the pidfile names the
    daemon, is not lost: the slot becomes ready once the daemon is found,
    not restarted at ready_timeout."""
    pidfile = daemon.root / "early.pid"
    early = _early_notifier(daemon, "nowait", pidfile, 5, "0.3", "0.5")
    sock = start_daemon(daemon, {"early": early})
    daemon.wait_log("early[0] daemon running as pid")
    wait_for(lambda: states(sock, "early") == ["ready"], what="early ready")
    daemon.wait_log("early[0] ready after")
    assert "READY=1, sent before its pidfile was read" in daemon.log_text()
    assert slots(sock, "early")[0].get("status") == "early"
    pid = int(pidfile.read_text())
    assert daemon.stop() == 0
    wait_for(lambda: not running(pid), what="the daemon stopped with us")


def test_an_adopted_notify_daemon_is_ready_after_a_reset(daemon: Daemon) -> None:
    """Kept running through a reset, an ``adopt`` daemon said READY=1 to
    the taskforce before, and never says it again: adopted, it is ready
    (not restarted at ready_timeout)."""
    pidfile = daemon.root / "kept.pid"
    kept = _early_notifier(daemon, "adopt", pidfile, 2, "0", "0.1")
    daemon.write_config({"tasks": {"kept": kept}})
    daemon.start("-p", str(daemon.pidfile))
    daemon.wait_log("kept[0] ready after")
    pid = int(pidfile.read_text())
    try:
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_log(f"kept[0] adopted pid {pid}")
        daemon.wait_log("kept[0] ready after 0.00s (adopted: running before taskforce started)")
        assert "restarted: not ready" not in daemon.log_text()
    finally:
        # Shutdown leaves an adopted daemon running: ours to end (restarted,
        # it would have another pid: the pidfile names the last).
        assert daemon.stop() == 0
        for left in {pid, int(pidfile.read_text())}:
            if running(left):
                os.kill(left, signal.SIGKILL)
                wait_for(lambda: not running(left), what=f"daemon {left} gone")  # noqa: B023


def test_a_process_never_ready_is_restarted_after_ready_timeout(daemon: Daemon) -> None:
    m = daemon.marker
    slow = task(m, "slow", NOTIFIER, args=("never", "0"), ready="notify", ready_timeout=0.5)
    defs = {"slow": slow}
    sock = start_daemon(daemon, defs)
    first = daemon.wait_pids("slow", 1)
    daemon.wait_log("slow[0] (pid", timeout=10)
    daemon.wait_log("restarted: not ready after 0.5s", timeout=10)
    wait_for(lambda: daemon.pids("slow") and daemon.pids("slow") != first, what="a new process")
    assert states(sock, "slow") in (["running"], ["stopping"])
    assert daemon.stop() == 0


def test_a_rollout_halts_on_a_broken_release_and_resumes(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    good = "import time; time.sleep(1000)"
    broken = "import sys; sys.exit(3)"

    def pool(code: str, version: str) -> dict[str, Any]:
        return task(m, "web", code, args=(version,), count=3, ready_timeout=5)

    sock = start_daemon(daemon, {"web": pool(good, "v1")})
    old = daemon.wait_pids("web", 3)
    wait_for(lambda: states(sock, "web") == ["ready"] * 3, what="3 ready")
    code, out, _ = run(capsys, "-s", sock, "wait", "--timeout", "10")
    assert code == 0 and out.startswith("ready"), out

    # A release that cannot start: one old process is replaced, the new one
    # fails, and the rollout halts with the other two still serving.
    daemon.write_config({"settings": {"stop_timeout": 2}, "tasks": {"web": pool(broken, "v2")}})
    run(capsys, "-s", sock, "reload")
    daemon.wait_log("rollout of web halted: web[0] (new)", timeout=15)
    assert len(daemon.pids("web") & old) == 2, "the other old processes keep serving"
    code, _, err = run(capsys, "-s", sock, "wait", "--timeout", "5")
    assert code == 1 and "rollout of web halted" in err, err
    code, out, _ = run(capsys, "-s", sock, "rollout", "web")
    assert code == 1 and "halted" in out
    assert "taskforce_rollout_halts_total 1" in _metrics(sock)

    # The fix, saved: the rollout goes on and ends with 3 new processes.
    daemon.write_config({"settings": {"stop_timeout": 2}, "tasks": {"web": pool(good, "v3")}})
    run(capsys, "-s", sock, "reload")
    code, out, err = run(capsys, "-s", sock, "wait", "web", "--timeout", "20")
    assert code == 0, err
    new = daemon.pids("web")
    assert len(new) == 3 and not new & old
    daemon.wait_log("rollout of web done: 3 replaced")

    # An operator's restart rolls too; --resume needs something halted.
    code, out, _ = run(capsys, "-s", sock, "restart", "web")
    assert code == 0 and "restarting (rollout)" in out
    code, _, err = run(capsys, "-s", sock, "wait", "web", "--timeout", "20")
    assert code == 0, err
    code, _, err = run(capsys, "-s", sock, "rollout", "web", "--resume")
    assert code == 1 and "no halted rollout" in err
    assert daemon.stop() == 0


def _metrics(sock: str) -> str:
    from test_control import call

    return call(sock, "/metrics")[2]


def test_what_systemd_tells_taskforce_is_not_passed_on() -> None:
    from taskforce.core.model import HostFacts, build

    environ = {"PATH": "/bin", "NOTIFY_SOCKET": "/run/systemd/notify", "LISTEN_FDS": "1"}
    environ |= {"LISTEN_PID": "1", "WATCHDOG_USEC": "5000000", "KEEP": "me"}
    config = {
        "tasks": {
            "plain": {"commands": {"start": ["/bin/true"]}},
            "dog": {"commands": {"start": ["/bin/true"]}, "ready": "notify", "watchdog_sec": 2},
        }
    }
    specs = build(config, HostFacts(environ=environ), None)
    plain, dog = specs["plain"].process(0), specs["dog"].process(0)
    assert plain.env["KEEP"] == "me" and not plain.notify
    for key in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC"):
        assert key not in plain.env, key
    assert dog.notify and dog.env["WATCHDOG_USEC"] == "2000000"
    assert "NOTIFY_SOCKET" not in dog.env  # (the shell adds taskforce's own)


def test_bad_readiness_and_rollout_keys_are_located(tmp_path: Any) -> None:
    import subprocess

    conf = tmp_path / "bad.yaml"
    conf.write_text(
        "tasks:\n"
        "  a:\n"
        '    ready: {http: "http://[::1"}\n'
        "    rollout: {max_surge: -1, max_unavailable: x}\n"
        "    commands: {start: [sleep, '1']}\n"
        "  b:\n"
        "    ready: notfy\n"
        "    ready_interval: 0\n"
        "    commands: {start: [sleep, '1']}\n"
        "  c:\n"
        "    ready: {command: [], tcp: 1}\n"
        "    commands: {start: [sleep, '1']}\n"
        "  d:\n"
        "    rollout: {max_surge: 0, max_unavailable: 0}\n"
        "    commands: {start: [sleep, '1']}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "taskforce", "-C", "-f", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    for expected in (
        ":3: tasks.a.ready.http: expected an http:// URL with a host",
        ":4: tasks.a.rollout.max_surge: must be >= 0, got -1",
        ":4: tasks.a.rollout.max_unavailable: expected a whole number >= 0",
        ":7: tasks.b.ready: expected notify or a probe",
        ":8: tasks.b.ready_interval: must be > 0",
        ":11: tasks.c.ready: a probe has exactly one of tcp, http, command",
        ":14: tasks.d.rollout: max_surge and max_unavailable are both 0",
    ):
        assert expected in done.stderr, (expected, done.stderr)
