"""The notify socket (systemd's sd_notify protocol): real daemons, real
datagrams, real credentials.

What the shell does is tested here: a datagram from a slot's own process
becomes a recorded ``Notified`` event naming the slot and the sender's pid;
one from any other process never does.  What the core makes of it is the
core's tests' business.
"""

from __future__ import annotations

import os
import pwd
import selectors
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, wait_for
from test_nowait import NOBODY, root_with_nobody

from taskforce import notify
from taskforce.core import events as ev
from taskforce.eventlog import Step, read_log
from taskforce.tracking import instance_id

pytestmark = pytest.mark.skipif(
    not notify.supported(), reason="no SO_PASSCRED here (Linux's): no notify socket"
)

#: sd_notify as systemd's library does it: a datagram to $NOTIFY_SOCKET
#: (here also given as argv[1], for a task without ``ready: notify``).
#: Then a grandchild that left the process group says so too.
TALKER = """
import os, socket, sys, time
path = os.environ.get("NOTIFY_SOCKET") or sys.argv[1]
def send(text):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(text.encode(), path)
send("READY=1\\nSTATUS=serving \\u2713")
if os.fork() == 0:
    os.setsid()
    send(f"STATUS=grandchild {os.getpid()}")
    time.sleep(1000)
time.sleep(1000)
"""


def own_socket(daemon: Daemon) -> str:
    """Where the daemon's own user's notify socket is."""
    ident = instance_id(str(daemon.config), None)
    return notify.socket_path(notify.runtime_folder(), ident, os.geteuid())


def recorded(daemon: Daemon, kind: type[ev.Event]) -> list[ev.Event]:
    return [
        step.event
        for path in sorted(daemon.root.glob("events.jsonl*"))
        for step in read_log(str(path))
        if isinstance(step, Step) and isinstance(step.event, kind)
    ]


def started_pids(daemon: Daemon, task: str) -> list[int]:
    return [e.pid for e in recorded(daemon, ev.ProcessStarted) if e.task == task]  # type: ignore[attr-defined]


def send_datagram(path: str, text: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(text.encode(), path)


def test_a_slots_datagrams_become_notified_events(daemon: Daemon) -> None:
    path = own_socket(daemon)
    start = [sys.executable, "-c", TALKER, path, daemon.marker, "talker"]
    daemon.write_config({"tasks": {"talker": {"count": 2, "commands": {"start": start}}}})
    daemon.start()

    def notified() -> list[ev.Notified]:
        return [e for e in recorded(daemon, ev.Notified) if isinstance(e, ev.Notified)]

    wait_for(lambda: len(notified()) >= 4, what="two datagrams from each slot")
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode) and info.st_mode & 0o777 == 0o600
    leaders = {
        e.instance: e.pid  # type: ignore[attr-defined]
        for e in recorded(daemon, ev.ProcessStarted)
        if e.task == "talker"  # type: ignore[attr-defined]
    }
    by_slot: dict[int, list[ev.Notified]] = {}
    for event in notified():
        assert event.task == "talker"
        by_slot.setdefault(event.instance, []).append(event)
    assert sorted(by_slot) == [0, 1]
    for instance, events in by_slot.items():
        ready = [e for e in events if e.message.startswith("READY=1")]
        assert len(ready) == 1 and ready[0].pid == leaders[instance]
        assert ready[0].message == "READY=1\nSTATUS=serving \u2713"
        child = [e for e in events if e.message.startswith("STATUS=grandchild")]
        assert len(child) == 1 and child[0].message == f"STATUS=grandchild {child[0].pid}"
        assert child[0].pid not in leaders.values()  # found by its cgroup or marker
    assert daemon.stop() == 0
    assert not os.path.exists(path), "a plain exit removes the socket"


def test_a_datagram_from_outside_every_slot_is_dropped(daemon: Daemon) -> None:
    path = own_socket(daemon)
    start = [sys.executable, "-c", TALKER, path, daemon.marker, "talker"]
    daemon.write_config({"tasks": {"talker": {"commands": {"start": start}}}})
    daemon.start()
    wait_for(lambda: recorded(daemon, ev.Notified), what="the task's datagrams")
    for _ in range(50):
        send_datagram(path, "READY=1")
    daemon.wait_log(f"dropped a datagram from pid {os.getpid()}: not a process of any slot")
    # Once per sender: fifty datagrams, one line.
    assert daemon.log_text().count(f"from pid {os.getpid()}:") == 1
    # A process that ends before the daemon looks is no slot's either.
    assert all(e.pid != os.getpid() for e in recorded(daemon, ev.Notified))  # type: ignore[attr-defined]
    assert daemon.stop() == 0


def test_the_sockets_path_is_kept_across_a_reset(daemon: Daemon) -> None:
    path = own_socket(daemon)
    start = [sys.executable, "-c", TALKER, path, daemon.marker, "talker"]
    daemon.write_config({"tasks": {"talker": {"commands": {"start": start}}}})
    daemon.start()
    wait_for(lambda: len(recorded(daemon, ev.Notified)) >= 2, what="the first datagrams")
    os.kill(daemon.pid, signal.SIGHUP)  # a reset
    wait_for(lambda: len(started_pids(daemon, "talker")) >= 2, what="the task started again")
    wait_for(lambda: len(recorded(daemon, ev.Notified)) >= 4, what="datagrams after the reset")
    assert daemon.stop() == 0


# ----------------------------------------------- users, without a daemon

# (NOBODY and root_with_nobody come from test_nowait, which needs them too.)


@pytest.fixture
def sockets() -> Iterator[tuple[notify.NotifySockets, list[tuple], dict]]:
    """NotifySockets on a selector of our own; what it reported; the pid ->
    slot map it judges senders by."""
    # (pytest's own folders are root's alone: nobody must reach its socket)
    folder = Path(tempfile.mkdtemp(prefix="tf-notify-", dir="/tmp"))
    folder.chmod(0o711)
    selector = selectors.DefaultSelector()
    reports: list[tuple] = []
    slots: dict[int, tuple[str, int]] = {}
    owned = notify.NotifySockets(
        "test",
        selector,
        slots.get,
        lambda slot, pid, text: reports.append((slot, pid, text)),
        folder=str(folder),
    )
    try:
        yield owned, reports, slots
    finally:
        owned.close()
        selector.close()
        shutil.rmtree(folder, ignore_errors=True)


def pump(owned: notify.NotifySockets, until: object) -> None:
    def turn() -> object:
        for key, _ in owned.selector.select(0.05):
            key.data()
        return until()  # type: ignore[operator]

    wait_for(turn, what="a datagram")


def run_as(uid: int, path: str, text: str) -> tuple[int, int]:
    """Fork a child that takes ``uid`` and sends ``text`` to ``path``: its
    pid, and 0 or the errno of its send."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.setgid(pwd.getpwuid(uid).pw_gid)
            os.setuid(uid)
            send_datagram(path, text)
        except OSError as exc:
            code = exc.errno or 1
        os.write(write, struct.pack("i", code))
        os._exit(0)
    os.close(write)
    code = struct.unpack("i", os.read(read, 4))[0]
    os.close(read)
    os.waitpid(pid, 0)
    return pid, code


@pytest.mark.skipif(not root_with_nobody(), reason="needs root and a user nobody")
def test_a_task_user_gets_a_socket_only_it_and_root_can_send_to(sockets: tuple) -> None:
    owned, reports, slots = sockets
    uid = pwd.getpwnam(NOBODY).pw_uid
    env = owned.environment(("web", 0), NOBODY, {"A": "1"})
    path = env["NOTIFY_SOCKET"]
    assert env["A"] == "1" and path.endswith(f"/{uid}.sock")
    info = os.stat(path)
    assert (info.st_uid, info.st_mode & 0o777) == (uid, 0o600)
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o711

    # A sender of the slot, as nobody: it counts.  (Its pid is known only
    # after the fork: it sends when told to.)
    sender = [0]

    def slot_of(pid: int) -> tuple[str, int] | None:
        return ("web", 0) if pid == sender[0] else None

    owned.sender_slot = slot_of
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.close(write)
        os.read(read, 1)
        os.setgid(pwd.getpwuid(uid).pw_gid)
        os.setuid(uid)
        send_datagram(path, "READY=1")
        os._exit(0)
    os.close(read)
    sender[0] = child
    os.write(write, b"x")
    os.close(write)
    os.waitpid(child, 0)
    pump(owned, lambda: reports)
    assert reports == [(("web", 0), child, "READY=1")]

    # Another user (not root, not nobody) is shut out by the kernel.
    other = next(u.pw_uid for u in pwd.getpwall() if u.pw_uid not in (0, uid))
    _, code = run_as(other, path, "READY=1")
    assert code in (13, 1)  # EACCES (EPERM on some kernels)


def test_datagrams_are_judged_by_their_credentials(sockets: tuple) -> None:
    owned, reports, slots = sockets
    uid = os.geteuid()
    slots[111] = ("web", 0)
    owned.slot_users[("web", 0)] = uid
    assert not owned.take(uid, b"READY=1", None)  # no credentials
    assert not owned.take(uid, b"READY=1", (222, uid, 0))  # no slot's
    assert not owned.take(uid, b"x" * 10, (111, uid, 0), truncated=True)
    assert not owned.take(uid, b"READY=1", (111, uid + 1, 0))  # another user
    assert owned.take(uid, b"STATUS=\xff ok", (111, uid, 0))
    assert reports == [(("web", 0), 111, "STATUS=\ufffd ok")]
    assert owned.drops.total == 4
    if uid == 0:
        # On another user's socket a slot of ours does not count (unless root sends).
        owned.slot_users[("web", 0)] = 4242
        assert owned.take(uid, b"READY=1", (111, 0, 0))


def test_the_real_socket_carries_the_senders_credentials(sockets: tuple) -> None:
    owned, reports, slots = sockets
    path = owned.path(os.geteuid())
    assert path is not None
    slots[os.getpid()] = ("web", 3)
    send_datagram(path, "WATCHDOG=1")
    pump(owned, lambda: reports)
    assert reports == [(("web", 3), os.getpid(), "WATCHDOG=1")]
    # Longer than MAX_DATAGRAM: dropped whole.
    send_datagram(path, "X" * (notify.MAX_DATAGRAM + 10))
    pump(owned, lambda: owned.drops.total)
    assert len(reports) == 1


def test_credential_parsing() -> None:
    creds = struct.pack("iII", 42, 1000, 100)
    anc = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)]
    assert notify.credentials(anc) == (42, 1000, 100)
    assert notify.credentials([]) is None
    assert notify.credentials([(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds[:8])]) is None
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("ii", 7, 9) + b"\0")]
    assert notify.passed_fds(rights + anc) == [7, 9]
    assert notify.credentials(rights + anc) == (42, 1000, 100)


def test_drops_are_logged_rarely(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    drops = notify.Drops(clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="taskforce"):
        for _ in range(100):
            drops.drop("not a process of any slot", 5)  # one sender: one line
        for pid in range(10, 30):
            drops.drop("not a process of any slot", pid)  # many: a few a minute
        now[0] = 61.0
        drops.drop("no credentials", None)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == notify.LOG_LINES_PER_MINUTE + 1
    assert "more not logged" in lines[-1]
    assert drops.total == 121


def ready_key_accepted() -> bool:
    """Whether the config takes ``ready: notify`` yet (the core's half of
    readiness); until then a task cannot ask for NOTIFY_SOCKET."""
    from taskforce.config import ConfigError, load_config_text

    try:
        load_config_text('{"tasks": {"a": {"ready": "notify", "commands": {"start": ["x"]}}}}')
    except ConfigError:
        return False
    return True


#: an interpreter that another user may run (a venv's may sit under /root)
OTHERS_PYTHON = next(
    (path for path in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(path, os.X_OK)),
    None,
)


@pytest.mark.skipif(not root_with_nobody(), reason="needs root and a user nobody")
@pytest.mark.skipif(not ready_key_accepted(), reason="no ready: key in the config yet")
@pytest.mark.skipif(OTHERS_PYTHON is None, reason="no system python3 that nobody may run")
def test_a_task_running_as_another_user_can_notify(daemon: Daemon) -> None:
    assert OTHERS_PYTHON is not None
    start = [OTHERS_PYTHON, "-c", TALKER, "-", daemon.marker, "talker"]
    task = {"user": NOBODY, "cwd": "/", "ready": "notify", "commands": {"start": start}}
    daemon.write_config({"tasks": {"talker": task}})
    daemon.start()
    wait_for(lambda: len(recorded(daemon, ev.Notified)) >= 2, what="nobody's datagrams")
    uid = pwd.getpwnam(NOBODY).pw_uid
    ident = instance_id(str(daemon.config), None)
    path = notify.socket_path(notify.runtime_folder(), ident, uid)
    assert os.stat(path).st_uid == uid
    assert daemon.stop() == 0


def test_one_slot_cannot_flood_the_core(
    sockets: tuple[notify.NotifySockets, list[tuple], dict],
) -> None:
    owned, reports, slots = sockets
    now = [0.0]
    owned.drops.clock = lambda: now[0]
    slots[4242] = ("web", 0)
    slots[4343] = ("db", 0)
    creds = (4242, os.geteuid(), os.getegid())
    taken = sum(owned.take(os.geteuid(), b"WATCHDOG=1", creds) for _ in range(500))
    assert taken == notify.SLOT_RATE, "a burst of SLOT_RATE, then nothing"
    assert owned.take(os.geteuid(), b"READY=1", (4343, os.geteuid(), 0)), "other slots unhurt"
    now[0] = 0.1  # the bucket refills with time
    assert sum(owned.take(os.geteuid(), b"WATCHDOG=1", creds) for _ in range(50)) == 5
    assert owned.drops.counts and len(reports) == notify.SLOT_RATE + 1 + 5
