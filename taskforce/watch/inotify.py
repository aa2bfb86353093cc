"""The Linux watcher: inotify through ctypes, one watch per directory.

Each watched path is followed through its *chain* (``targets.walk``): the
directory holding the file, every directory holding a symlink on the way,
and, for what does not exist yet, the nearest existing ancestor.  Watching
directories rather than files is what makes replacement by rename (vim,
``sed -i``, rsync), deletion and re-creation, files that do not exist yet and
Kubernetes ConfigMap symlink swaps visible.  After any event that may move a
chain, the chain is walked again and the directory watches follow it.

It only reports that a watched path may have changed.  It must never decide
what to restart, and never block: the descriptor is non-blocking and read
only when the daemon's selector says so.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable

from taskforce.watch import DescriptorWatcher
from taskforce.watch.targets import NOWHERE, Chain, settle

log = logging.getLogger("taskforce")

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: What a directory watch listens for.
DIRECTORY_MASK = (
    IN_CREATE
    | IN_DELETE
    | IN_MOVED_TO
    | IN_MOVED_FROM
    | IN_CLOSE_WRITE
    | IN_MODIFY
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_EXCL_UNLINK
)

#: Events that are a change of the file even if its stat looks the same.
STRONG = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE

#: Events that may change where a chain leads.
RESHAPE = IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM

#: Events on the watched directory itself: it went away or moved.
DIRECTORY_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED

_EVENT = struct.Struct("iIII")

#: Enough for hundreds of events per read; one event is at most 16 + 256 bytes.
READ_SIZE = 65536

#: Reads per readiness callback, so a flood cannot starve the daemon's loop.
MAX_READS = 16


class Inotify:
    """The three inotify system calls, found in the running process's libc."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            # Feature, not platform: a libc without it (macOS, the BSDs)
            # means no inotify here.  (ctypes.util brings shutil and
            # subprocess: only this rare path loads it.)
            from ctypes.util import find_library

            name = find_library("c")
            if name is None:
                raise OSError(errno.ENOSYS, "no libc with inotify found")
            libc = ctypes.CDLL(name, use_errno=True)
            if not hasattr(libc, "inotify_init1"):
                raise OSError(errno.ENOSYS, "no inotify in this libc")
        self._init1: Callable[[int], int] = libc.inotify_init1
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        self._add: Callable[[int, bytes, int], int] = libc.inotify_add_watch
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
        self._rm: Callable[[int, int], int] = libc.inotify_rm_watch
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.inotify_rm_watch.restype = ctypes.c_int

    @staticmethod
    def _check(result: int, what: str) -> int:
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")
        return result

    def init(self) -> int:
        return self._check(self._init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")

    def add_watch(self, fd: int, path: str, mask: int) -> int:
        result = self._add(fd, os.fsencode(path), mask)
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return result

    def rm_watch(self, fd: int, wd: int) -> None:
        # EINVAL: the kernel dropped it already (directory gone); fine.
        self._rm(fd, wd)


def parse_events(data: bytes) -> list[tuple[int, int, int, str]]:
    """``(wd, mask, cookie, name)`` for each ``struct inotify_event`` in ``data``."""
    events: list[tuple[int, int, int, str]] = []
    offset = 0
    while offset + _EVENT.size <= len(data):
        wd, mask, cookie, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        raw = data[offset : offset + length]
        offset += length
        events.append((wd, mask, cookie, os.fsdecode(raw.split(b"\0", 1)[0])))
    return events


class InotifyWatcher(DescriptorWatcher):
    """Directory watches through one non-blocking inotify descriptor."""

    backend = "inotify"

    def __init__(self, settle: float = 0.1) -> None:
        super().__init__(settle)
        self._sys = Inotify()
        self._fd = self._sys.init()
        #: watched path -> its current chain
        self._chains: dict[str, Chain] = {}
        #: (directory, entry name) -> watched paths whose chain has it
        self._interest: dict[tuple[str, str], set[str]] = {}
        #: directory -> watched paths with an entry in it
        self._by_dir: dict[str, set[str]] = {}
        self._wd_of: dict[str, int] = {}
        #: one inode seen under two names (a renamed directory) shares a wd
        self._dirs_of: dict[int, set[str]] = {}
        self._failed: set[str] = set()

    def fileno(self) -> int:
        return self._fd

    # ----------------------------------------------------------- interface

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        os.close(self._fd)
        self._wd_of.clear()
        self._dirs_of.clear()
        self._chains.clear()
        self._interest.clear()
        self._by_dir.clear()

    def watch_count(self) -> int:
        """How many inotify watches are held (for tests and status)."""
        return len(self._dirs_of)

    # ------------------------------------------------------ backend hooks

    def _add_paths(self, paths: list[str]) -> None:
        for path in paths:
            self._chains[path] = NOWHERE  # walked by _follow
        self._follow(paths)

    def _remove_paths(self, paths: list[str]) -> None:
        for path in paths:
            self._chains.pop(path, None)
        self._sync()

    # -------------------------------------------------------------- events

    def _read(self) -> None:
        """Read what inotify has queued; note hits, follow moved chains."""
        if self._closed:
            return
        now = time.monotonic()
        reshaped: set[str] = set()
        for _ in range(MAX_READS):
            try:
                data = os.read(self._fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            for wd, mask, _cookie, name in parse_events(data):
                self._dispatch(wd, mask, name, now, reshaped)
            if len(data) < READ_SIZE // 2:
                break
        if reshaped:
            self._follow(sorted(reshaped))

    def _dispatch(self, wd: int, mask: int, name: str, now: float, reshaped: set[str]) -> None:
        if mask & IN_Q_OVERFLOW:
            # Events were lost: every path may have changed, every chain moved.
            # A directory may even have been swapped: watch every one afresh.
            log.warning("inotify queue overflowed; treating every watched path as changed")
            for directory in sorted(self._wd_of):
                self._release(directory)
            self._hit_all(now, strong=True)
            reshaped.update(self._chains)
            return
        directories = self._dirs_of.get(wd)
        if not directories:
            return  # a watch we released; its last events trail behind
        if mask & DIRECTORY_GONE:
            # The kernel dropped the watch (directory removed, unmounted), or
            # the directory was renamed and the watch went with it: forget it,
            # so the re-walk watches whatever carries the name now.
            self._dirs_of.pop(wd, None)
            for directory in directories:
                if self._wd_of.get(directory) == wd:
                    del self._wd_of[directory]
            if not mask & IN_IGNORED:
                self._sys.rm_watch(self._fd, wd)
        for directory in sorted(directories):
            if not name or mask & DIRECTORY_GONE:
                if mask & DIRECTORY_GONE:
                    for path in self._by_dir.get(directory, ()):
                        self._hit(path, now, strong=False)
                        reshaped.add(path)
                continue
            for path in self._interest.get((directory, name), ()):
                final = self._chains[path].final == (directory, name)
                self._hit(path, now, strong=final and bool(mask & STRONG))
                if mask & RESHAPE:
                    reshaped.add(path)

    # ------------------------------------------------------ chain keeping

    def _follow(self, paths: Iterable[str]) -> None:
        settle(self._chains, paths, self._sync)

    def _sync(self) -> None:
        """Make the directory watches exactly those the chains need."""
        interest: dict[tuple[str, str], set[str]] = {}
        by_dir: dict[str, set[str]] = {}
        for path, chain in self._chains.items():
            for entry in chain.entries:
                interest.setdefault(entry, set()).add(path)
                by_dir.setdefault(entry[0], set()).add(path)
        self._interest = interest
        self._by_dir = by_dir
        if self._closed:
            return
        for directory in sorted(set(self._wd_of) - set(by_dir)):
            self._release(directory)
        for directory in sorted(set(by_dir) - set(self._wd_of)):
            self._acquire(directory)

    def _acquire(self, directory: str) -> None:
        try:
            wd = self._sys.add_watch(self._fd, directory, DIRECTORY_MASK)
        except OSError as exc:
            # ENOENT/ENOTDIR: it went away since the walk; the next walk sees
            # that.  Anything else (EACCES, ENOSPC: out of watches) is logged
            # once per directory and retried on the next change.
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR) and directory not in self._failed:
                self._failed.add(directory)
                log.warning("cannot watch directory %s: %s", directory, exc.strerror)
            return
        self._failed.discard(directory)
        self._wd_of[directory] = wd
        self._dirs_of.setdefault(wd, set()).add(directory)

    def _release(self, directory: str) -> None:
        wd = self._wd_of.pop(directory)
        sharing = self._dirs_of.get(wd)
        if sharing is None:
            return
        sharing.discard(directory)
        if not sharing:
            del self._dirs_of[wd]
            self._sys.rm_watch(self._fd, wd)
