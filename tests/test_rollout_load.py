"""Change without downtime, checked under load (issue 15's acceptance test).

A pool of three ``examples/httpworker.py`` on a socket held by taskforce,
``ready: notify``, serves a steady stream of loopback requests (new
connection each, ``bench/loadgen.py``) while its code changes on disk, its
config changes, ``tfctl restart`` runs, and a release that exits at
start-up is saved and then fixed.  Not one request may fail, the old
workers must serve throughout the broken release, and after each change
every worker answers with the new version.

The pool tests need ``sockets:``, ``ready:`` and ``rollout:``: they skip
when the config checker refuses those keys.  The worker's own systemd mode
(socket activation, sd_notify, graceful stop) is checked without taskforce
and runs always.

Real processes, real sockets; every wait has a deadline; the ``daemon``
fixture stops everything and replays the recorded run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import USE_PROC, Daemon, socket_count, wait_for

from taskforce import notify

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from loadgen import Load, request  # noqa: E402

WORKERS = 3
WARMUP = "0.3"


def _accepts_rollout() -> bool:
    """Whether this taskforce's config checker takes the rollout keys."""
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"tf-rollout-probe-{os.getpid()}.conf"
    probe.write_text(
        textwrap.dedent(
            """\
            sockets:
              http: {listen: "127.0.0.1:18080", backlog: 16}
            tasks:
              web:
                sockets: [http]
                ready: notify
                ready_timeout: 10
                rollout: {max_surge: 1, max_unavailable: 0}
                commands: {start: [/bin/true]}
            """
        )
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "taskforce", "-C", "-f", str(probe), "-r", "-"],
            capture_output=True,
            timeout=60,
        )
    finally:
        probe.unlink(missing_ok=True)
    return done.returncode == 0


def _abstract_sockets() -> bool:
    """Whether Unix sockets may have abstract names (``@name``: Linux's)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.bind(f"\0tf-test-probe-{os.getpid()}")
    except OSError:
        return False
    return True


#: The daemon's notify socket needs the kernel to say who sent a datagram.
needs_notify = pytest.mark.skipif(not notify.supported(), reason="no SO_PASSCRED here")
#: Which sockets taskforce holds is read from /proc.
needs_proc = pytest.mark.skipif(not USE_PROC, reason="reads taskforce's descriptors in /proc")
needs_abstract = pytest.mark.skipif(not _abstract_sockets(), reason="no abstract socket names")
needs_rollout = pytest.mark.skipif(
    not _accepts_rollout(),
    reason="this taskforce refuses sockets:/ready:/rollout: (issue 15 not merged yet)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_version(folder: Path, version: str, *, broken: bool = False) -> None:
    path = folder / "httpworker_version.py"
    tmp = path.with_name("httpworker_version.tmp")
    tmp.write_text(f'"""The test\'s release."""\n\nVERSION = "{version}"\nBROKEN = {broken}\n')
    os.replace(tmp, path)


class Pool:
    """A taskforce running ``web``: WORKERS httpworkers on a held socket."""

    def __init__(self, daemon: Daemon, port: int, release: str = "a") -> None:
        self.daemon = daemon
        self.port = port
        self.sock = str(daemon.root / "tf.sock")
        self.folder = daemon.root
        shutil.copy(REPO / "examples" / "httpworker.py", self.folder / "httpworker.py")
        write_version(self.folder, "1")
        self.release = release

    def config(self, release: str) -> dict[str, Any]:
        worker = [
            sys.executable,
            "-B",  # no .pyc: a cached one of the same size and second could win
            str(self.folder / "httpworker.py"),
            "--warmup",
            WARMUP,
            "--tag",
            self.daemon.marker,
        ]
        return {
            "settings": {
                "http": [{"listen": self.sock, "allow_control": True}],
                "stable_after": 0.1,
            },
            "sockets": {"http": {"listen": f"127.0.0.1:{self.port}", "backlog": 1024}},
            "tasks": {
                "web": {
                    "control": "wait",
                    "count": WORKERS,
                    "sockets": ["http"],
                    "ready": "notify",
                    "ready_timeout": 10,
                    "rollout": {"max_surge": 1, "max_unavailable": 0},
                    "defines": {"HTTPWORKER_RELEASE": release},
                    "commands": {"start": worker},
                    "events": [{"type": "python", "command": "stop"}],
                }
            },
        }

    def start(self) -> None:
        self.daemon.write_config(self.config(self.release))
        self.daemon.start()
        wait_for(lambda: request("127.0.0.1", self.port, 2.0).outcome == "ok", 30, "a first answer")

    def tfctl(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "taskforce.tfctl", "-s", self.sock, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, f"tfctl {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def pids(self) -> set[int]:
        return self.daemon.pids(str(self.folder / "httpworker.py"))


@pytest.fixture
def pool(daemon: Daemon) -> Iterator[Pool]:
    pool = Pool(daemon, free_port())
    pool.start()
    yield pool


@pytest.fixture
def load(pool: Pool) -> Iterator[Load]:
    running = Load("127.0.0.1", pool.port, clients=4, timeout=10.0).start()
    try:
        assert running.wait_version("1-a", WORKERS, 30), "the pool never answered from 3 workers"
        yield running
    finally:
        running.stop()


def settled(load: Load, version: str, what: str) -> None:
    """Every worker answers with ``version``, and nothing failed so far."""
    done = load.wait_version(version, WORKERS, 60)
    failed = [s for s in load.samples if s.outcome != "ok"]
    assert not failed, f"{what}: {len(failed)} requests failed, first: {failed[:3]}"
    assert done, f"{what}: the pool did not come to answer {version} from {WORKERS} workers"


def fresh(load: Load, old: set[int]) -> bool:
    """The last answers came from WORKERS processes, none of them in ``old``."""
    recent = load.samples[-WORKERS * 10 :]
    pids = {s.pid for s in recent}
    return len(pids) >= WORKERS and not pids & old and all(s.outcome == "ok" for s in recent)


@needs_notify
@pytest.mark.slow
@needs_rollout
@pytest.mark.parametrize("change", ["code", "config", "restart"])
def test_no_request_fails_during_a_change(pool: Pool, load: Load, change: str) -> None:
    before = pool.pids()
    if change == "code":
        write_version(pool.folder, "2")
        version = "2-a"
    elif change == "config":
        pool.daemon.write_config(pool.config("b"))
        version = "1-b"
    else:
        pool.tfctl("restart", "web")
        version = "1-a"
        # The same version: wait until only new processes answer.
        wait_for(lambda: fresh(load, before), 60, "only new workers answering")
    settled(load, version, change)
    wait_for(lambda: not (pool.pids() & before), 30, "the old workers gone")
    wait_for(lambda: len(pool.pids()) == WORKERS, 30, f"{WORKERS} workers")
    result = load.stop()
    assert result.summary()["failed"] == 0, result.failures()
    assert pool.daemon.stop() == 0


@needs_notify
@pytest.mark.slow
@needs_rollout
def test_a_broken_release_halts_and_the_old_workers_serve(pool: Pool, load: Load) -> None:
    old = pool.pids()
    assert len(old) == WORKERS
    write_version(pool.folder, "2", broken=True)
    pool.daemon.wait_log("rollout of web halted", 30)
    halted = time.monotonic()
    # Keep the load on a while after the halt: the pool must keep serving.
    wait_for(lambda: sum(1 for s in load.samples if s.start > halted) > 200, 30, "more requests")
    assert old <= pool.pids(), "an old worker was stopped during the broken release"
    fixed = time.monotonic()
    answered = {s.pid for s in load.samples if s.outcome == "ok" and halted <= s.start < fixed}
    assert answered and answered <= old, f"answers during the halt came from {answered}, not {old}"
    assert all(s.version == "1-a" for s in load.samples if s.outcome == "ok")
    write_version(pool.folder, "3")
    settled(load, "3-a", "the fix")
    wait_for(lambda: not (pool.pids() & old), 30, "the old workers gone after the fix")
    result = load.stop()
    assert result.summary()["failed"] == 0, result.failures()
    assert pool.daemon.stop() == 0


@needs_proc
@needs_notify
@pytest.mark.slow
@needs_rollout
def test_a_systemd_notify_and_socket_activated_program_runs_unchanged(pool: Pool) -> None:
    # The worker has no port of its own here: it serves on what LISTEN_FDS
    # gave it, which is the very socket taskforce holds.
    def held_by_taskforce() -> bool:
        inodes = {
            os.readlink(f"/proc/{pool.daemon.pid}/fd/{fd}")
            for fd in os.listdir(f"/proc/{pool.daemon.pid}/fd")
        }
        workers = pool.pids()
        return len(workers) == WORKERS and all(
            os.readlink(f"/proc/{pid}/fd/3") in inodes
            and os.readlink(f"/proc/{pid}/fd/3").startswith("socket:")
            for pid in workers
        )

    wait_for(held_by_taskforce, 30, "workers serving on taskforce's socket (fd 3)")
    # READY=1 makes the slots ready; STATUS= is shown in the status.
    wait_for(
        lambda: "serving version 1-a" in pool.tfctl("status", "--json"),
        30,
        "the workers' STATUS= in tfctl status",
    )
    answers = {request("127.0.0.1", pool.port, 5.0).pid for _ in range(30)}
    assert answers <= pool.pids()
    assert pool.daemon.stop() == 0


# ------------------------------------------------- the worker on its own

#: Puts the socket on fd 3 and sets LISTEN_PID, then execs the worker: what
#: systemd does between its fork and the program's exec.
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid()) if sys.argv[2] == "mine" else "1"
os.execv(sys.executable, [sys.executable, *sys.argv[3:]])
"""


def _activated_worker(
    listener: socket.socket, notify: str, *, mine: bool
) -> tuple[subprocess.Popen[bytes], int]:
    """httpworker with ``listener`` on fd 3 as systemd passes it, and the
    port it would bind if it did not take that socket."""
    own_port = free_port()
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http", "NOTIFY_SOCKET": notify}
    worker = subprocess.Popen(
        [sys.executable, "-c", ACTIVATE, str(listener.fileno()), "mine" if mine else "other"]
        + ["-B", str(REPO / "examples" / "httpworker.py"), "--port", str(own_port)],
        env=env,
        pass_fds=(listener.fileno(),),
        stdout=subprocess.DEVNULL,
    )
    return worker, own_port


def _sockets(pid: int) -> int:
    return socket_count(pid)


@needs_abstract
def test_httpworker_takes_activated_sockets_notifies_and_stops_gracefully() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"tf-test-notify-{os.getpid()}"
    notify.bind("\0" + name)  # abstract: NOTIFY_SOCKET=@name
    notify.settimeout(15)
    worker, own_port = _activated_worker(listener, "@" + name, mine=True)
    try:
        assert notify.recv(4096).decode().startswith("READY=1\nSTATUS=serving")
        answer = request("127.0.0.1", port, 5.0)
        assert answer.outcome == "ok" and answer.pid == worker.pid
        assert request("127.0.0.1", own_port, 5.0).outcome == "refused", "it bound a port too"
        # A request under way when SIGTERM comes is finished, then exit 0.
        idle = _sockets(worker.pid)
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        slow.sendall(b"GET / HTTP/1.1\r\n")
        wait_for(lambda: _sockets(worker.pid) > idle, 10, "the request accepted")
        worker.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        slow.sendall(b"Host: x\r\n\r\n")
        data = b""
        while chunk := slow.recv(4096):
            data += chunk
        slow.close()
        assert data.startswith(b"HTTP/1.1 200 OK") and str(worker.pid).encode() in data
        assert worker.wait(15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)
        listener.close()
        notify.close()


def test_httpworker_ignores_sockets_meant_for_another_pid(tmp_path: Path) -> None:
    # LISTEN_PID names another process: the variables were inherited, not
    # meant for this one (sd_listen_fds checks it); it binds its own port.
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    notify.bind(path)
    notify.settimeout(15)
    worker, own_port = _activated_worker(listener, path, mine=False)
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        answer = request("127.0.0.1", own_port, 5.0)
        assert answer.outcome == "ok" and answer.pid == worker.pid
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)
        listener.close()
        notify.close()
