"""Output files shared by path, rotated by size (the ``file`` sink of task output).

A ``FileSink`` is one output file that every process naming the same path
appends to; when a write would take it past ``max_bytes`` it is rotated at a
line boundary (PATH -> PATH.1 -> ... -> PATH.backups), and the file rotation
drops is handed to ``retire`` (the owner frees it a little per turn of the
loop).  ``taskforce.output`` owns the sinks and the pipes that feed them.

This module decides nothing about processes: it never starts, signals or
waits for one.  A failure to write is logged and the lines dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

from taskforce import files

log = logging.getLogger("taskforce")


class FileSink:
    """One output file with size-based rotation, shared by path.

    The file that rotation drops (the oldest backup, or the file itself with
    no backups) is unlinked while an fd still holds it, and that fd is handed
    to ``retire``, which frees it bit by bit.
    """

    def __init__(
        self, path: str, max_bytes: int, backups: int, retire: Callable[[int], None]
    ) -> None:
        self.path = path
        self.retire = retire
        self.max_bytes = max(1, max_bytes)
        self.backups = max(0, backups)
        self.users = 0
        self.failing = False
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        return files.open_private(self.path, flags, keep_existing=True)

    def write(self, data: bytes | bytearray) -> None:
        """Append ``data`` (whole lines); rotate between lines when full."""
        try:
            while data:
                room = self.max_bytes - self.size
                if len(data) <= room:
                    self._write_all(data)
                    break
                cut = data.rfind(b"\n", 0, max(room, 0)) + 1
                if cut == 0 and self.size == 0:
                    # One line longer than max_bytes: it goes whole into a
                    # fresh file rather than being split.
                    cut = data.find(b"\n") + 1 or len(data)
                if cut:
                    self._write_all(data[:cut])
                    data = data[cut:]
                self._rotate()
            if self.failing:
                self.failing = False
                log.info("output file %s: writing again", self.path)
        except OSError as exc:
            if not self.failing:
                self.failing = True
                log.error("output file %s: %s; output is dropped", self.path, exc.strerror or exc)

    def _write_all(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            self.size += written
            view = view[written:]

    def _rotate(self) -> None:
        # PATH may be gone (removed or moved away by hand): then the rotation
        # just starts a new PATH.
        old = self.fd
        if self.backups == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            doomed: int | None = old
        else:
            oldest = f"{self.path}.{self.backups}"
            try:
                doomed = os.open(oldest, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                doomed = None
            else:
                os.unlink(oldest)
            for index in range(self.backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{self.path}.{index}", f"{self.path}.{index + 1}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path, f"{self.path}.1")
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        if doomed != old:
            os.close(old)
        if doomed is not None:
            self.retire(doomed)

    def reopen(self) -> None:
        """Write to whatever is at PATH now: after logrotate moved the file
        away (SIGUSR1/SIGUSR2), a new PATH is created.  If it cannot be
        opened, writing goes on to the file already open."""
        try:
            fd = self._open()
        except OSError as exc:
            log.error("output file %s: cannot reopen: %s", self.path, exc.strerror or exc)
            return
        os.close(self.fd)
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def close(self) -> None:
        os.close(self.fd)
