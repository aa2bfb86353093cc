"""What taskforce does where a Linux facility is missing (macOS, the BSDs),
exercised on any host by taking the facility away.

Each fallback is chosen by feature -- a libc call, a ``socket`` or
``signal`` name, ``/proc`` -- so a test removes just that feature and looks
at what is left.  The README's "Platforms" table says the same in words.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from taskforce import pidwatch, process, signals, tracking
from taskforce.control import listen
from taskforce.watch import inotify

# ------------------------------------------------------------------ signals


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks")
def test_pending_signals_are_consumed_without_sigtimedwait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """macOS has no sigtimedwait: a blocked, pending signal is discarded by
    ignoring it for a moment, and the handler in place before stays."""
    noted: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: noted.append(signum))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        # At this thread, which blocks it (another thread of the test run
        # might take a signal sent to the process).
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        assert signal.SIGUSR1 in signal.sigpending()
        monkeypatch.delattr(signal, "sigtimedwait", raising=False)
        assert signals.consume(frozenset({signal.SIGUSR1, signal.SIGUSR2})) == 1
        assert signal.SIGUSR1 not in signal.sigpending()
        assert signals.consume(frozenset({signal.SIGUSR1})) == 0
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    assert noted == [], "consumed, not delivered"
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    assert noted == [signal.SIGUSR1], "the handler is still in place"
    signal.signal(signal.SIGUSR1, previous)


# ------------------------------------------------------- peer credentials


def test_peer_credentials_through_getpeereid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SO_PEERCRED the uid and gid come from libc's getpeereid (the
    BSDs' and macOS's); the pid is not known there (0)."""
    asked: list[int] = []

    def fake_getpeereid(fd: int, uid: Any, gid: Any) -> int:
        asked.append(fd)
        ctypes.cast(uid, ctypes.POINTER(ctypes.c_uint32)).contents.value = 501
        ctypes.cast(gid, ctypes.POINTER(ctypes.c_uint32)).contents.value = 20
        return 0

    monkeypatch.delattr(socket, "SO_PEERCRED", raising=False)
    monkeypatch.setattr(listen, "_libc_getpeereid", lambda: fake_getpeereid)
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert listen.peer_credentials(left) == (0, 501, 20)
        assert asked == [left.fileno()]
        assert listen._peer_pid(left) is None, "no pid: not claimed"
        monkeypatch.setattr(listen, "_libc_getpeereid", lambda: lambda fd, uid, gid: -1)
        assert listen.peer_credentials(left) is None
        monkeypatch.setattr(listen, "_libc_getpeereid", lambda: None)
        assert listen.peer_credentials(left) is None, "neither: no grant by user"


def test_getpeereid_is_looked_up_in_libc() -> None:
    found = listen._libc_getpeereid()
    assert (found is not None) == hasattr(ctypes.CDLL(None), "getpeereid")


# ------------------------------------------------------- libc facilities


class _NoLibc:
    """A C library with none of Linux's calls."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def test_no_prctl_no_subreaper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: _NoLibc())
    assert process.become_subreaper() is False


def test_no_inotify_in_libc_is_an_oserror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: _NoLibc())
    with pytest.raises(OSError, match="inotify"):
        inotify.Inotify()
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(OSError, match="inotify"):
        inotify.Inotify()


# ------------------------------------------------------------ no /proc


@pytest.fixture
def family() -> Any:
    """A process group of two (a leader and a member) and a process that left
    it (its own session), all carrying one slot's marker; killed after."""
    ident = "test-" + os.urandom(4).hex()
    env = {**os.environ, tracking.MARKER: ident, "Task_name": "web", "Task_instance": "0"}
    sleep = [sys.executable, "-c", "import time; time.sleep(1000)"]
    leader = subprocess.Popen(sleep, env=env, preexec_fn=os.setpgrp)
    escaper = subprocess.Popen(sleep, env=env, start_new_session=True)
    try:
        yield ident, leader, escaper
    finally:
        for proc in (leader, escaper):
            proc.kill()
            proc.wait()


def test_without_proc_a_slot_is_its_process_group(
    monkeypatch: pytest.MonkeyPatch, family: Any
) -> None:
    ident, leader, escaper = family
    monkeypatch.setattr(tracking, "PROC", False)
    tracker = tracking.Tracker(ident, lambda slot: None, use_cgroups=False)
    sent: list[tuple[int, str, bool]] = []
    monkeypatch.setattr(
        tracking, "send_signal", lambda pid, name, *, group: sent.append((pid, name, group))
    )
    try:
        slot = ("web", 0)
        assert tracker.alive(slot, leader.pid)
        tracker.signal(slot, leader.pid, "SIGTERM")
        assert sent == [(leader.pid, "SIGTERM", True)], "the group only: no marker search"
        assert tracker.sweep() == {}, "no leftovers can be found"
        assert "process groups alone" in tracker.how and "not found" in tracker.how
    finally:
        tracker.close()
    if os.path.isdir("/proc/self"):
        # Where there is /proc, the marker finds the escaper too.
        monkeypatch.setattr(tracking, "PROC", True)
        found = tracking.Tracker(ident, lambda slot: None, use_cgroups=False)
        try:
            assert escaper.pid in found.sweep().get(("web", 0), [])
        finally:
            found.close()


def test_without_proc_a_pidfile_has_no_start_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No start time: a pidfile's pid is not judged recycled, and liveness
    comes from kill(pid, 0) alone; a process that is no child is polled."""
    monkeypatch.setattr(pidwatch, "_proc_stat", lambda pid: None)
    monkeypatch.setattr(pidwatch, "_boot_time", lambda: None)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    try:
        path = tmp_path / "d.pid"
        path.write_text(f"{child.pid}\n")
        old = 1_000_000_000
        os.utime(path, (old, old))  # a pidfile far older than its process
        facts = pidwatch.read_pidfile(str(path), lambda pid: True)
        assert facts["pid"] == child.pid and facts["started_after_file"] is False
        assert pidwatch.process_start_time(child.pid) is None
        assert pidwatch.alive(child.pid)
        assert pidwatch.is_our_child(child.pid) is False, "not told: watched by polling"
    finally:
        child.kill()
        child.wait()
    assert not pidwatch.alive(child.pid)
