"""The BSD and macOS watcher: kqueue ``EVFILT_VNODE`` on files and directories.

kqueue watches open descriptors, not names.  Each watched path is followed
through its *chain* (``targets.walk``); the directories on it are opened (an
entry created, removed or renamed there is a ``NOTE_WRITE`` on the
directory, which is how replacement by rename, re-creation, files that do not
exist yet and symlink swaps are seen) and so is the file it resolves to (a
write in place is a ``NOTE_WRITE``/``NOTE_EXTEND`` on the file).  After a
rename or delete the chain is walked again and whatever now sits at a name
is opened afresh.

It only reports that a watched path may have changed.  It must never decide
what to restart, and never block.  On Linux it imports cleanly and provides a
``KqueueWatcher`` that refuses to start; ``mypy --platform darwin`` checks the
real one.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import sys
import time
from collections.abc import Iterable

from taskforce.watch import DescriptorWatcher, Watcher
from taskforce.watch.targets import NOWHERE, Chain, settle

log = logging.getLogger("taskforce")

#: kevents fetched per read, and reads per readiness callback.
BATCH = 256
MAX_READS = 16

#: Whether this system has kqueue at all.
AVAILABLE = hasattr(select, "kqueue")

# The one platform test in taskforce, for the type checker only: mypy narrows
# on sys.platform, so the real class is checked by ``mypy --platform darwin``
# and not flagged on Linux, whose ``select`` has no KQ_* names.  Whether the
# backend can run is the feature test, ``AVAILABLE``.
if sys.platform != "linux" and sys.platform != "win32":
    #: What a vnode filter listens for.
    VNODE_MASK = (
        select.KQ_NOTE_WRITE
        | select.KQ_NOTE_DELETE
        | select.KQ_NOTE_RENAME
        | select.KQ_NOTE_EXTEND
        | select.KQ_NOTE_ATTRIB
        | select.KQ_NOTE_REVOKE
    )
    #: Changes of a file's content or identity: reported whatever stat says.
    STRONG = (
        select.KQ_NOTE_WRITE | select.KQ_NOTE_EXTEND | select.KQ_NOTE_DELETE | select.KQ_NOTE_RENAME
    )
    #: The node is gone from its name: walk again, reopen what is there now.
    GONE = select.KQ_NOTE_DELETE | select.KQ_NOTE_RENAME | select.KQ_NOTE_REVOKE

    #: macOS: a descriptor for events only, which does not keep a volume busy.
    _OPEN_FLAGS: int = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | int(getattr(os, "O_EVTONLY", 0))

    class KqueueWatcher(DescriptorWatcher):
        """One kqueue; one descriptor per watched directory and file."""

        backend = "kqueue"

        def __init__(self, settle: float = 0.1) -> None:
            if not AVAILABLE:
                raise OSError(errno.ENOSYS, "kqueue is not available on this system")
            super().__init__(settle)
            self._kq = select.kqueue()
            #: watched path -> its current chain
            self._chains: dict[str, Chain] = {}
            #: node (directory or file path) -> open descriptor
            self._fd_of: dict[str, int] = {}
            #: node -> (st_dev, st_ino) of what the descriptor has open
            self._id_of: dict[str, tuple[int, int]] = {}
            #: descriptor -> node
            self._node_of: dict[int, str] = {}
            #: node -> watched paths that need it
            self._users: dict[str, set[str]] = {}
            self._failed: set[str] = set()

        def fileno(self) -> int:
            return self._kq.fileno()

        # ------------------------------------------------------- interface

        def close(self) -> None:
            if self._closed:
                return
            super().close()
            for fd in self._node_of:
                os.close(fd)
            self._fd_of.clear()
            self._id_of.clear()
            self._node_of.clear()
            self._users.clear()
            self._chains.clear()
            self._kq.close()

        # --------------------------------------------------- backend hooks

        def _add_paths(self, paths: list[str]) -> None:
            for path in paths:
                self._chains[path] = NOWHERE  # walked by _follow
            self._follow(paths, set())

        def _remove_paths(self, paths: list[str]) -> None:
            for path in paths:
                self._chains.pop(path, None)
            self._sync(set())

        # ---------------------------------------------------------- events

        def _read(self) -> None:
            if self._closed:
                return
            now = time.monotonic()
            reshaped: set[str] = set()
            recheck: set[str] = set()
            for _ in range(MAX_READS):
                events = self._kq.control(None, BATCH, 0)
                for event in events:
                    self._dispatch(int(event.ident), int(event.fflags), now, reshaped, recheck)
                if len(events) < BATCH:
                    break
            if reshaped:
                self._follow(sorted(reshaped), recheck)

        def _dispatch(
            self, fd: int, fflags: int, now: float, reshaped: set[str], recheck: set[str]
        ) -> None:
            node = self._node_of.get(fd)
            if node is None:
                return
            for path in sorted(self._users.get(node, ())):
                final = self._chains[path].final
                if final is not None and os.path.join(*final) == node:
                    self._hit(path, now, strong=bool(fflags & STRONG))
                    if fflags & GONE:
                        reshaped.add(path)
                        recheck.add(node)
                else:
                    # Something in a directory on the chain was created,
                    # removed or renamed: maybe our file, maybe a link on the
                    # way.  The signature check decides; the chain is re-walked
                    # and the file reopened if another one now has its name.
                    self._hit(path, now, strong=False)
                    reshaped.add(path)
                    recheck.update(self._nodes(self._chains[path]))
                    if fflags & GONE:
                        recheck.add(node)

        # -------------------------------------------------- chain keeping

        @staticmethod
        def _nodes(chain: Chain) -> set[str]:
            nodes = set(chain.directories)
            if chain.final is not None:
                nodes.add(os.path.join(*chain.final))
            return nodes

        def _follow(self, paths: Iterable[str], recheck: set[str]) -> None:
            # The first sync re-opens what events said may have changed.
            rechecks = iter([recheck])
            settle(self._chains, paths, lambda: self._sync(next(rechecks, set())))

        def _sync(self, recheck: set[str]) -> None:
            """Hold exactly the descriptors the chains need, on current inodes."""
            users: dict[str, set[str]] = {}
            for path, chain in self._chains.items():
                for node in self._nodes(chain):
                    users.setdefault(node, set()).add(path)
            self._users = users
            if self._closed:
                return
            for node in sorted(set(self._fd_of) - set(users)):
                self._drop(node)
            for node in sorted(recheck & set(self._fd_of)):
                try:
                    info = os.stat(node)
                    same = (info.st_dev, info.st_ino) == self._id_of.get(node)
                except OSError:
                    same = False
                if not same:
                    self._drop(node)
            for node in sorted(set(users) - set(self._fd_of)):
                self._open(node)

        def _open(self, node: str) -> None:
            try:
                fd = os.open(node, _OPEN_FLAGS)
            except OSError as exc:
                # Missing: the walk said it would be, or it just went; the
                # directory watch above it sees it come back.
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR) and node not in self._failed:
                    self._failed.add(node)
                    log.warning("cannot watch %s: %s", node, exc.strerror)
                return
            try:
                info = os.fstat(fd)
                change = select.kevent(
                    fd,
                    filter=select.KQ_FILTER_VNODE,
                    flags=select.KQ_EV_ADD | select.KQ_EV_CLEAR,
                    fflags=VNODE_MASK,
                )
                self._kq.control([change], 0, 0)
            except OSError as exc:
                os.close(fd)
                if node not in self._failed:
                    self._failed.add(node)
                    log.warning("cannot watch %s: %s", node, exc.strerror)
                return
            self._failed.discard(node)
            self._fd_of[node] = fd
            self._id_of[node] = (info.st_dev, info.st_ino)
            self._node_of[fd] = node

        def _drop(self, node: str) -> None:
            fd = self._fd_of.pop(node)
            self._id_of.pop(node, None)
            self._node_of.pop(fd, None)
            # Closing the descriptor removes its kevent as well.
            os.close(fd)

else:

    class KqueueWatcher(Watcher):
        """Stands in on systems without kqueue: refuses to start."""

        backend = "kqueue"

        def __init__(self, settle: float = 0.1) -> None:
            raise OSError(errno.ENOSYS, "kqueue is not available on this system")
