"""The notify socket: systemd's ``sd_notify`` protocol, received for the core.

A program written for systemd's ``Type=notify`` sends datagrams such as
``READY=1`` or ``STATUS=listening`` to the Unix socket named by the
``NOTIFY_SOCKET`` variable of its environment.  This module owns those
sockets, reads what arrives, asks the kernel who sent it
(``SO_PASSCRED``: every datagram carries ``SCM_CREDENTIALS`` -- pid, uid,
gid -- that the sender cannot forge without ``CAP_SYS_ADMIN``), and hands
the datagrams of a slot's own processes to the daemon, which feeds them to
the core as ``Notified``.  Everything else is dropped here, counted, and
logged at most once per sender and a few times a minute, so a hostile local
process can flood neither the log nor the event log.

Who may send: **one socket per user that tasks run as**, never a socket
open to everyone.  Each is ``<folder>/<ident>/<uid>.sock``, owned by that
uid with mode 0600, in folders root owns with mode 0711 (they can be
traversed, not listed or written); a non-root taskforce runs every task as
itself and keeps them in a private (0700) folder.  So the kernel lets only
root and that user connect.  Because a socket's owner could loosen its mode,
the credentials are checked too: a datagram counts only when it comes from
root or from the socket's own user, from a process inside a slot (its
cgroup, process group, or environment marker: see ``sender_slot``) -- and,
for a slot taskforce started, on the socket of the user that slot runs as.
One socket for everyone with credentials alone was the alternative; it
would let any local user reach the loop and, without cgroups, claim a slot
by forging the environment marker.

The socket of taskforce's own user is made at start, those of other users
when the first process that needs them starts; each is one more fd in the
selector, so an idle taskforce still never wakes up.  The paths depend only
on the config and roles files (the ``ident``) and the uid, so they stay the
same across a reset: the re-executed taskforce binds every socket the last
one had again at the same path (``resume``), and processes that outlive the
reset keep a valid ``NOTIFY_SOCKET``.  Datagrams sent while no taskforce
listens are lost (``sd_notify`` ignores the error), as under systemd.

This module reports facts; it never decides what a message means (that is
the core's) and never raises an OS failure into the loop: a socket that
cannot be made is logged and the process starts without ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import pwd
import selectors
import socket
import struct
import time
from collections.abc import Callable, Container, Mapping, Sequence

from taskforce import tracking

log = logging.getLogger("taskforce")

#: The largest datagram taken; a longer one is dropped (systemd's messages
#: are a few short lines).
MAX_DATAGRAM = 4096
#: Datagrams read per turn of the loop at most, so a flood cannot hold the
#: loop: the rest wait in the socket for the next turn.
BATCH = 64
#: ``struct ucred``: pid, uid, gid.
UCRED = struct.Struct("iII")
#: Room for the credentials and a few passed fds (closed at once: taskforce
#: keeps no fd store).
_ANCILLARY = socket.CMSG_SPACE(UCRED.size) + socket.CMSG_SPACE(16 * 4)
#: At most this many "dropped" lines per minute.
LOG_LINES_PER_MINUTE = 5

Slot = tracking.Slot
#: what the daemon is told of a datagram that counts: (slot, pid, text)
Report = Callable[[Slot, int, str], None]


#: Linux's (None elsewhere; looked up by name so that mypy for darwin sees
#: the feature test, not a missing attribute).
_SO_PASSCRED: int | None = getattr(socket, "SO_PASSCRED", None)
_SCM_CREDENTIALS: int | None = getattr(socket, "SCM_CREDENTIALS", None)


def supported() -> bool:
    """Whether the kernel can tell who sent a datagram (Linux)."""
    return _SO_PASSCRED is not None and _SCM_CREDENTIALS is not None


def runtime_folder() -> str:
    """Where this user's taskforces keep their notify sockets (made if need be):
    ``/run/taskforce-notify`` (root, mode 0711), else a private folder in
    the temporary directory."""
    euid = os.geteuid()
    if euid == 0 and os.path.isdir("/run"):
        folder, mode = "/run/taskforce-notify", 0o711
    else:
        import tempfile  # (not for root: it brings shutil and random)

        folder = os.path.join(tempfile.gettempdir(), f"taskforce-notify-{euid}")
        mode = 0o711 if euid == 0 else 0o700
    _own_folder(folder, mode)
    return folder


def _own_folder(folder: str, mode: int) -> None:
    """Make ``folder`` ours with ``mode``, or refuse one someone else could
    have prepared (owned by another user, writable by others, a link)."""
    try:
        os.mkdir(folder, mode)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if not os.path.isdir(folder) or os.path.islink(folder) or info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, "not a folder of this user", folder)
    if info.st_mode & 0o777 != mode:
        os.chmod(folder, mode)


def socket_path(folder: str, ident: str, uid: int) -> str:
    """The notify socket of the processes running as ``uid``."""
    return os.path.join(folder, ident, f"{uid}.sock")


def credentials(ancillary: Sequence[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    """(pid, uid, gid) from ``recvmsg``'s ancillary data; None without them."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SCM_CREDENTIALS:
            if len(data) >= UCRED.size:
                pid, uid, gid = UCRED.unpack_from(data)
                return pid, uid, gid
    return None


def passed_fds(ancillary: Sequence[tuple[int, int, bytes]]) -> list[int]:
    """File descriptors a sender passed (``SCM_RIGHTS``), now open in us."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            whole = len(data) - len(data) % 4
            fds.extend(array.array("i", data[:whole]))
    return fds


def user_uid(user: str | None) -> int | None:
    """The uid a process with ``user`` runs as (None: an unknown user, whose
    start fails anyway)."""
    if user is None or user == "":
        return os.geteuid()
    try:
        return pwd.getpwuid(int(user)).pw_uid if user.isdigit() else pwd.getpwnam(user).pw_uid
    except (KeyError, OverflowError):
        return None


#: Datagrams a second one slot's processes may send (a burst of as many is
#: fine); more are dropped.  systemd has no such limit, but it does not
#: record every message; a program pinging its watchdog sends a few a minute.
SLOT_RATE = 50


class Drops:
    """Counts dropped datagrams and says so in the log rarely: once per
    sender pid, and no more than ``LOG_LINES_PER_MINUTE`` lines a minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: datagrams dropped since start, by reason
        self.counts: dict[str, int] = {}
        self._told: set[int] = set()
        self._window = -60.0
        self._lines = 0
        self._quiet = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def drop(self, reason: str, pid: int | None) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if pid is not None:
            if pid in self._told:
                return
            if len(self._told) >= 4096:
                self._told.clear()  # bounded: an old sender may be told of again
            self._told.add(pid)
        now = self.clock()
        if now - self._window >= 60.0:
            self._window, self._lines = now, 0
        if self._lines >= LOG_LINES_PER_MINUTE:
            self._quiet += 1
            return
        self._lines += 1
        more = f" ({self._quiet} more not logged)" if self._quiet else ""
        self._quiet = 0
        sender = f"pid {pid}" if pid is not None else "a sender"
        log.warning("notify socket: dropped a datagram from %s: %s%s", sender, reason, more)


class NotifySockets:
    """The notify sockets of one taskforce (``ident``), on ``selector``.

    ``sender_slot(pid)`` names the slot whose process tree holds ``pid``
    (None: none); ``report(slot, pid, text)`` is called for each datagram
    that counts.  ``slot_users`` remembers which uid each slot taskforce
    started runs as (set by ``environment``).
    """

    def __init__(
        self,
        ident: str,
        selector: selectors.BaseSelector,
        sender_slot: Callable[[int], Slot | None],
        report: Report,
        *,
        folder: str | None = None,
    ) -> None:
        self.ident = ident
        self.selector = selector
        self.sender_slot = sender_slot
        self.report = report
        self._base = folder
        self._dir: str | None = None
        self.sockets: dict[int, socket.socket] = {}
        self.slot_users: dict[Slot, int] = {}
        self.drops = Drops()
        self._failed: set[int] = set()
        #: per slot: (datagrams it may still send now, when that was reckoned)
        self._rates: dict[Slot, tuple[float, float]] = {}

    @property
    def folder(self) -> str:
        """This taskforce's own folder of sockets (made if need be)."""
        if self._dir is None:
            base = self._base if self._base is not None else runtime_folder()
            path = os.path.join(base, self.ident)
            _own_folder(path, 0o711 if os.geteuid() == 0 else 0o700)
            self._base, self._dir = base, path
        return self._dir

    def _path(self, uid: int) -> str:
        return os.path.join(self.folder, f"{uid}.sock")

    # ------------------------------------------------------------ sockets

    def start(self) -> None:
        """Bind again every socket the taskforce before a reset had, and the
        one of our own user."""
        if not supported():
            log.info("no notify socket: this kernel cannot tell who sends (no SO_PASSCRED)")
            return
        uids = {os.geteuid()}
        try:
            names = os.listdir(self.folder)
        except OSError as exc:
            log.error("no notify socket: %s", exc)
            return
        for name in names:
            stem, dot, ext = name.partition(".")
            if ext == "sock" and stem.isdigit():
                uids.add(int(stem))
        for uid in sorted(uids):
            self.path(uid)

    def path(self, uid: int) -> str | None:
        """The path of ``uid``'s socket, bound now if it is not yet; None if
        it cannot be (logged once per uid)."""
        if uid in self.sockets:
            return self._path(uid)
        if not supported() or uid in self._failed:
            return None
        try:
            path = self._path(uid)
            self.sockets[uid] = self._bind(path, uid)
        except OSError as exc:
            self._failed.add(uid)
            log.error("cannot make the notify socket of uid %d: %s", uid, exc)
            return None
        log.debug("notify socket of uid %d: %s", uid, path)
        return path

    def _bind(self, path: str, uid: int) -> socket.socket:
        try:
            os.unlink(path)  # the last taskforce's (a reset), or a stale one
        except FileNotFoundError:
            pass
        assert _SO_PASSCRED is not None  # bound only where supported()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec (PEP 446)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
            old = os.umask(0o177)  # never open to all, not even for a moment
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            if uid != os.geteuid():
                os.chown(path, uid, -1)
            os.chmod(path, 0o600)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, lambda: self._receive(sock, uid))
        except OSError:
            sock.close()
            raise
        return sock

    def environment(self, slot: Slot, user: str | None, env: dict[str, str]) -> dict[str, str]:
        """``env`` with ``NOTIFY_SOCKET`` for a process of ``slot`` running as
        ``user`` (unchanged when there can be no socket)."""
        uid = user_uid(user)
        if uid is None:
            return env
        self.slot_users[slot] = uid
        path = self.path(uid)
        return env if path is None else {**env, "NOTIFY_SOCKET": path}

    # ---------------------------------------------------------- receiving

    def _receive(self, sock: socket.socket, uid: int) -> None:
        for _ in range(BATCH):
            try:
                data, ancillary, flags, _ = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("notify socket of uid %d: %s", uid, exc)
                return
            for fd in passed_fds(ancillary):
                os.close(fd)
            self.take(uid, data, credentials(ancillary), truncated=bool(flags & socket.MSG_TRUNC))

    def take(
        self,
        uid: int,
        data: bytes,
        creds: tuple[int, int, int] | None,
        *,
        truncated: bool = False,
    ) -> bool:
        """Judge one datagram that came in on ``uid``'s socket; whether it
        was reported."""
        if creds is None:
            self.drops.drop("no credentials", None)
            return False
        pid, sender_uid, _ = creds
        if truncated:
            self.drops.drop(f"longer than {MAX_DATAGRAM} bytes", pid)
            return False
        if sender_uid not in (0, uid):
            self.drops.drop(f"uid {sender_uid} sent on the socket of uid {uid}", pid)
            return False
        slot = self.sender_slot(pid)
        if slot is None:
            self.drops.drop("not a process of any slot", pid)
            return False
        expected = self.slot_users.get(slot)
        if expected is not None and expected != uid and sender_uid != 0:
            self.drops.drop(f"{slot[0]}[{slot[1]}] runs as uid {expected}, not {uid}", pid)
            return False
        if not self._within_rate(slot):
            self.drops.drop(
                f"{slot[0]}[{slot[1]}] sent more than {SLOT_RATE} datagrams a second", pid
            )
            return False
        text = data.decode("utf-8", errors="replace")
        log.debug("%s[%d]: notify from pid %d: %r", slot[0], slot[1], pid, text)
        self.report(slot, pid, text)
        return True

    def _within_rate(self, slot: Slot) -> bool:
        """A slot's own processes may send at most ``SLOT_RATE`` datagrams in
        any second: each one is an event, recorded with the run, so one
        process in a tight ``WATCHDOG=1`` loop must not fill the event log
        or keep the loop busy.  (A token bucket, refilled by the clock.)"""
        now = self.drops.clock()
        tokens, at = self._rates.get(slot, (float(SLOT_RATE), now))
        tokens = min(float(SLOT_RATE), tokens + (now - at) * SLOT_RATE)
        if tokens < 1.0:
            self._rates[slot] = (tokens, now)
            return False
        if len(self._rates) >= 65536:
            self._rates.clear()  # bounded: a forgotten slot starts with a full bucket
        self._rates[slot] = (tokens - 1.0, now)
        return True

    # -------------------------------------------------------------- close

    def close(self, *, keep: bool = False) -> None:
        """Close the sockets; remove them unless ``keep`` (a reset: the next
        taskforce binds them again at the same paths)."""
        for uid, sock in sorted(self.sockets.items()):
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
            if not keep and self._dir is not None:
                try:
                    os.unlink(self._path(uid))
                except OSError:
                    pass
        self.sockets.clear()
        if not keep and self._dir is not None:
            try:
                os.rmdir(self._dir)
            except OSError:
                pass


def sender_slot(
    pid: int,
    tracker: tracking.Tracker,
    leaders: Mapping[int, Slot],
    draining: Mapping[int, Slot],
    commands: Container[int],
) -> Slot | None:
    """The slot whose process tree holds ``pid``: a slot's leader, a member
    of its process group, or (``Tracker.slot_of``) a process in its cgroup
    or carrying this taskforce's marker for it.  Commands (``RunCommand``:
    ``stop``, ``ready``...) are not the slot's processes."""
    if pid in leaders:
        return leaders[pid]
    if pid in commands:
        return None
    try:
        pgid = os.getpgid(pid)
    except OSError:
        return None  # gone already: too late to say whose it was
    if pgid in commands:
        return None
    if pgid in leaders:
        return leaders[pgid]
    if pgid in draining:
        return draining[pgid]
    return tracker.slot_of(pid)
