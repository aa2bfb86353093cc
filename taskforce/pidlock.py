"""The daemon's own pidfile, claimed under a lock, and detaching from the terminal.

``Pidfile`` holds taskforce's pidfile with an exclusive lock, so a stale one
is taken over safely and a live owner is always found (``lock_and_write_pid``,
which ``taskforce.instancelock`` uses too); ``daemonize`` is the double fork
of ``-b``.  Split out of ``taskforce.cli``.

This module decides nothing about tasks; it never signals or starts one.
"""

from __future__ import annotations

import errno
import fcntl
import os


def lock_and_write_pid(path: str, flags: int, mode: int) -> tuple[int | None, str | None]:
    """Open ``path``, take its exclusive lock and write our pid in it: the
    fd and None.  When a live process holds the lock: None and the pid it
    wrote there (``"?"`` if unreadable).  Other errors are raised."""
    fd = os.open(path, flags, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        try:
            with open(path) as handle:
                return None, handle.read().strip() or "?"
        except OSError:
            return None, "?"
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd, None


class PidfileHeld(Exception):
    pass


class Pidfile:
    """A pidfile claimed with an exclusive lock, so a stale one is taken over
    safely and a live owner is always detected."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def claim(self) -> None:
        fd, owner = lock_and_write_pid(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if owner is not None:
            raise PidfileHeld(f"taskforce is already running as pid {owner} (pidfile {self.path})")
        self.fd = fd

    def release(self, *, remove: bool) -> None:
        if self.fd is None:
            return
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = None


def daemonize(keep_stderr: bool) -> None:
    """Detach from the terminal: double fork, new session, / as cwd.

    With ``-e`` the caller asked for logs on stderr, so stderr is kept.
    """
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
