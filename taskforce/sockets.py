"""The listening sockets taskforce holds for its tasks (shell side).

The config's top-level ``sockets`` are opened here once and kept: across
task restarts (each process gets its own copies, from fd 3 on, through
``process.start``), across reloads (a socket whose address is unchanged is
the same socket; a new one is bound before the core sees the config, so a
bind that fails rejects it with nothing changed, but listens only once the
core has taken it: a config the core refuses never had a socket that a
client could connect to, and leaves nothing bound), and across a
reset, where the descriptors stay open through the exec and the new image
adopts them (``pass_on`` and ``Sockets.inherited``) instead of binding
again.  While no process accepts, connections wait in the backlog: a client
is never refused because a task is restarting.

Sockets are kept by address (``listen``): a socket renamed, or given a new
backlog, mode or owner, is the same socket, adjusted in place.

This module decides nothing about tasks: it never starts, stops or signals a
process, and it closes only the sockets it opened or adopted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
import socket
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from taskforce.core.sockets import SocketSpec, family, split_address

#: The environment variable that carries the held sockets to a re-executed
#: taskforce (taken out of the environment before anything reads it).
INHERIT_ENV = "TASKFORCE_SOCKETS"
#: Held sockets are moved to this descriptor or above, clear of 3, 4, ...
#: where a process gets them: posix_spawn then places them with plain dup2s
#: (no number to move out of the way first), so a task with sockets still
#: starts without a fork of taskforce (``process.start``).
HIGH_FD = 256
#: A Unix socket's permissions when the config gives no ``mode`` (as
#: systemd's ``SocketMode=``): who may connect is up to its folder.
DEFAULT_MODE = 0o666


class SocketError(Exception):
    """A socket could not be opened or set up; the message names it.
    ``said``: what was done all the same (``Sockets.commit``), one line each."""

    def __init__(self, message: str, said: list[str] | None = None) -> None:
        super().__init__(message)
        self.said = said or []


@dataclass
class Held:
    """One open listening socket, and what it was opened as."""

    spec: SocketSpec
    sock: socket.socket
    #: (device, inode) of a Unix socket's file, so that only our own file is
    #: ever removed
    file_id: tuple[int, int] | None = None


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        found = os.lstat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if stat.S_ISSOCK(found.st_mode) else None


def _clear_stale(spec: SocketSpec, share: bool) -> None:
    """Remove a Unix socket file left by a process that is gone; refuse
    anything else at that path (a file, or a socket someone listens on,
    unless ``share``: then it is taken over)."""
    path = spec.listen
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise SocketError(f"sockets.{spec.name}.listen: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # nobody listens: a leftover
        return
    except BlockingIOError:
        pass  # listening, its backlog full: in use
    except OSError as exc:
        raise SocketError(f"sockets.{spec.name}.listen: {path}: {_describe(exc)}") from None
    finally:
        probe.close()
    if share:
        # Held by what an earlier taskforce left running: it keeps its own
        # socket until it is stopped; new clients come to ours.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    raise SocketError(
        f"sockets.{spec.name}.listen: {path} is in use by another process (something listens on it)"
    )


def _owner_ids(owner: str) -> tuple[int, int]:
    """(uid, gid) of ``user`` or ``user:group``; -1 leaves one as it is."""
    user, _, group = owner.partition(":")
    uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    gid = -1
    if group:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


def _check_owner(spec: SocketSpec) -> None:
    """SocketError unless ``spec.owner`` names a user (and group) here."""
    if spec.owner is None:
        return
    try:
        _owner_ids(spec.owner)
    except KeyError:
        raise SocketError(
            f"sockets.{spec.name}.owner: no such user or group in {spec.owner!r}"
        ) from None


def _set_file(spec: SocketSpec, file_id: tuple[int, int] | None) -> None:
    """Give a Unix socket's file its ``mode`` and ``owner``, only if the
    path is still the socket ``file_id`` says we bound: whoever may write to
    its folder could have put a link to another file there, and taskforce
    (often root) must never change that file's owner or permissions."""
    try:
        found = os.lstat(spec.listen)
        if not stat.S_ISSOCK(found.st_mode) or (
            file_id is not None and (found.st_dev, found.st_ino) != file_id
        ):
            raise SocketError(
                f"sockets.{spec.name}.listen: {spec.listen} is no longer the socket "
                "taskforce bound (something replaced it); its mode and owner were not set"
            )
        if spec.owner is not None:
            _check_owner(spec)
            os.chown(spec.listen, *_owner_ids(spec.owner), follow_symlinks=False)
        mode = DEFAULT_MODE if spec.mode is None else spec.mode
        try:
            os.chmod(spec.listen, mode, follow_symlinks=False)
        except NotImplementedError:
            # (Linux has no lchmod; the path was a socket, ours, just now.)
            os.chmod(spec.listen, mode)
    except OSError as exc:
        key = "owner" if spec.owner is not None and exc.errno == errno.EPERM else "mode"
        raise SocketError(f"sockets.{spec.name}.{key}: {spec.listen}: {_describe(exc)}") from None


def _backlog(spec: SocketSpec) -> int:
    return socket.SOMAXCONN if spec.backlog is None else spec.backlog


def _tcp_socket(kind: str, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if kind == "inet6" else socket.AF_INET)
    # Bound again at once after taskforce exits, whatever TIME_WAIT says.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if kind == "inet6":
        # [::]:80 is IPv6 only, so it never collides with 0.0.0.0:80.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def open_socket(spec: SocketSpec, *, share: bool = False, listen: bool = True) -> Held:
    """Bind and listen as ``spec`` says; SocketError naming it if not.
    ``listen`` False binds only: nothing can connect until ``Sockets.commit``
    listens.

    A TCP socket is bound with ``SO_REUSEPORT`` (where there is one), so
    that after a crash of taskforce the next one can bind beside the copies
    its leftover processes still hold (``share``); a probe without it first
    makes sure nothing else listens there, so no one else's socket is ever
    shared by accident.
    """
    kind = family(spec.listen)
    where = f"sockets.{spec.name}.listen: cannot listen on {spec.listen}"
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    if kind == "unix":
        _clear_stale(spec, share)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = spec.listen
    else:
        address = split_address(spec.listen)
        if reuse_port and not share:
            with _tcp_socket(kind, reuse_port=False) as probe:
                try:
                    probe.bind(address)
                except OSError as exc:
                    raise SocketError(f"{where}: {_describe(exc)}") from None
        sock = _tcp_socket(kind, reuse_port=reuse_port)
    try:
        try:
            sock.bind(address)
        except OSError as exc:
            raise SocketError(f"{where}: {_describe(exc)}") from None
        held = Held(spec, sock)
        if kind == "unix":
            held.file_id = _file_id(spec.listen)
            try:
                _set_file(spec, held.file_id)
            except SocketError:
                _remove_file(held)
                raise
        # Before listen nothing can connect, so the mode is set in time.
        if listen:
            sock.listen(_backlog(spec))
    except BaseException:
        sock.close()
        raise
    held.sock = _lifted(sock)
    return held


def _lifted(sock: socket.socket) -> socket.socket:
    """``sock`` at a descriptor of ``HIGH_FD`` or above (close-on-exec); as
    it is if the descriptor limit is lower (its tasks then take the fork
    path)."""
    if sock.fileno() >= HIGH_FD:
        return sock
    try:
        fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
    except OSError:
        return sock
    lifted = socket.socket(fileno=fd)
    sock.close()
    return lifted


def _remove_file(held: Held) -> None:
    """Remove a Unix socket's file, if it is still the one we bound."""
    if held.file_id is not None and _file_id(held.spec.listen) == held.file_id:
        with contextlib.suppress(OSError):
            os.unlink(held.spec.listen)


def _address_matches(sock: socket.socket, listen: str) -> bool:
    """Whether an inherited socket listens where ``listen`` says."""
    try:
        bound = sock.getsockname()
        kind = family(listen)
        if kind == "unix":
            return sock.family == socket.AF_UNIX and bound == listen
        wanted = socket.AF_INET6 if kind == "inet6" else socket.AF_INET
        return sock.family == wanted and tuple(bound[:2]) == split_address(listen)
    except OSError:
        return False


class Sockets:
    """The sockets held now, by address."""

    def __init__(self) -> None:
        #: listening, by address
        self.held: dict[str, Held] = {}
        #: bound but not listening, by address: for a config the core has
        #: not taken yet (``bind``, then ``commit`` or ``release``)
        self.bound: dict[str, Held] = {}

    @classmethod
    def inherited(cls) -> Sockets:
        """The sockets an earlier taskforce passed through its re-exec (see
        ``pass_on``), taken out of the environment so no task sees it."""
        found = cls()
        text = os.environ.pop(INHERIT_ENV, None)
        if not text:
            return found
        import json  # (only after a reset that passed sockets on)

        try:
            entries = json.loads(text)
        except ValueError:
            return found
        for entry in entries if isinstance(entries, list) else ():
            try:
                fd = int(entry["fd"])
                spec = SocketSpec(
                    entry["name"], entry["listen"], entry["backlog"], entry["mode"], entry["owner"]
                )
                sock = socket.socket(fileno=fd)
            except (KeyError, TypeError, ValueError, OSError):
                continue  # not (or no longer) a socket: nothing of ours
            sock.set_inheritable(False)
            if not _address_matches(sock, spec.listen):
                sock.close()
                continue
            sock = _lifted(sock)
            file_id = entry.get("file_id")
            found.held[spec.listen] = Held(spec, sock, tuple(file_id) if file_id else None)
        return found

    def update(self, wanted: Mapping[str, SocketSpec], *, share: bool = False) -> list[str]:
        """Hold exactly the sockets ``wanted`` (by name), each as its spec
        says, at once: ``bind`` then ``commit``; what changed, one line each."""
        self.bind(wanted, share=share)
        return self.commit(wanted)

    def bind(self, wanted: Mapping[str, SocketSpec], *, share: bool = False) -> None:
        """Bind, without listening, each address of ``wanted`` not held yet:
        the half of taking a config that can fail, done before the core
        judges it.  Nothing can connect to a socket that does not listen,
        so a config the core then refuses is undone by ``release`` with no
        client ever let in.

        If one address fails, those just bound are closed again and
        SocketError says why, with nothing else changed.  Nothing held is
        touched here.  ``share``: an address in use may be held by processes
        an earlier taskforce left running (see ``open_socket``).
        """
        fresh: dict[str, Held] = {}
        try:
            for name in sorted(wanted):
                spec = wanted[name]
                if spec.listen in self.held:
                    held = self.held[spec.listen]
                    if spec.owner is not None and spec.owner != held.spec.owner:
                        _check_owner(spec)  # so that ``commit`` can give it
                elif spec.listen not in self.bound:
                    fresh[spec.listen] = open_socket(spec, share=share, listen=False)
        except BaseException:
            for held in fresh.values():
                self._close(held, remove=True)
            raise
        self.bound.update(fresh)

    def commit(self, wanted: Mapping[str, SocketSpec]) -> list[str]:
        """The config asking for ``wanted`` was taken: listen on what
        ``bind`` bound for it, adjust the held ones (backlog, mode, owner,
        name), close those no longer wanted (a process keeps its own copy);
        what changed, one line each.

        The config is in force by now, so a socket that fails here is said
        (SocketError, once the rest is done) rather than undone: the tasks
        using it fail to start, saying it is not open.
        """
        addresses = {spec.listen for spec in wanted.values()}
        said: list[str] = []
        failed: list[str] = []
        for listen in sorted(self.bound):
            held = self.bound.pop(listen)
            if listen not in addresses:
                self._close(held, remove=True)
                continue
            try:
                held.sock.listen(_backlog(held.spec))
            except OSError as exc:
                self._close(held, remove=True)
                failed.append(f"sockets.{held.spec.name}.listen: {listen}: {_describe(exc)}")
                continue
            self.held[listen] = held
            said.append(f"socket {held.spec.name}: listening on {listen}")
        if said:
            # ``pass_on`` needs json during a reset: loaded now, while
            # nothing is stopping, and never by a daemon that holds none.
            import json  # noqa: F401
        for listen in sorted(set(self.held) - addresses):
            held = self.held.pop(listen)
            self._close(held, remove=True)
            said.append(f"socket {held.spec.name}: closed ({listen} is not in the config)")
        try:
            said += self._adjust(wanted)
        except SocketError as exc:
            failed.append(str(exc))
        if failed:
            raise SocketError("; ".join(failed), said)
        return said

    def release(self) -> None:
        """The config ``bind`` bound for was refused: close what it bound
        (nothing ever listened there), and leave the held ones as they are."""
        for listen in sorted(self.bound):
            self._close(self.bound.pop(listen), remove=True)

    def _adjust(self, wanted: Mapping[str, SocketSpec]) -> list[str]:
        said = []
        for name in sorted(wanted):
            spec = wanted[name]
            held = self.held.get(spec.listen)
            if held is None or held.spec == spec:
                continue
            if held.spec.backlog != spec.backlog:
                held.sock.listen(_backlog(spec))
            if family(spec.listen) == "unix" and (held.spec.mode, held.spec.owner) != (
                spec.mode,
                spec.owner,
            ):
                _set_file(spec, held.file_id)
            said.append(f"socket {name}: {spec.listen} kept, now {_shown(spec)}")
            held.spec = spec
        return said

    def fds(self, specs: Iterable[SocketSpec]) -> list[tuple[str, int]]:
        """(name, fd) of each socket a process gets, in order; SocketError
        for one not held (its config did not load here)."""
        out = []
        for spec in specs:
            spec = SocketSpec(*spec)
            held = self.held.get(spec.listen)
            if held is None:
                raise SocketError(f"socket {spec.name} ({spec.listen}) is not open")
            out.append((spec.name, held.sock.fileno()))
        return out

    def pass_on(self) -> None:
        """Keep every socket open through the coming exec, and say in the
        environment which descriptor is which (see ``inherited``)."""
        import json  # (loaded by ``update`` when the first socket was opened)

        entries = []
        for listen, held in sorted(self.held.items()):
            held.sock.set_inheritable(True)
            entry = dict(held.spec._asdict(), fd=held.sock.fileno(), listen=listen)
            entries.append(dict(entry, file_id=held.file_id))
        if entries:
            os.environ[INHERIT_ENV] = json.dumps(entries)

    def close(self) -> None:
        """Close every socket and remove the Unix sockets' files (taskforce
        is exiting for good)."""
        self.release()
        for listen in sorted(self.held):
            self._close(self.held[listen], remove=True)
        self.held.clear()

    @staticmethod
    def _close(held: Held, *, remove: bool) -> None:
        if remove:
            _remove_file(held)
        held.sock.close()


def _shown(spec: SocketSpec) -> str:
    parts = [f"name {spec.name}", f"backlog {spec.backlog or 'SOMAXCONN'}"]
    if family(spec.listen) == "unix":
        parts.append(f"mode {DEFAULT_MODE if spec.mode is None else spec.mode:04o}")
        if spec.owner:
            parts.append(f"owner {spec.owner}")
    return ", ".join(parts)
