"""The recent lines of a task's captured output, kept for ``tfctl logs``.

For every task whose output is captured (``log`` and ``file``), the most
recent lines (at most ``RECENT_LINES`` and ``RECENT_BYTES``) are kept in a
``Recent`` ring, each with a sequence number, its instance, its stream
(``stdout`` or ``stderr``) and the wall-clock time it was read.  Lines of
one stream keep their order; across streams (two pipes) the order is that
of reading, and the time says when.  The ring holds the blocks of lines as they
were written (one per write, so a fast writer costs one append per chunk,
not one per line) and drops the oldest when the newer ones alone fill it:
its memory stays under ``RECENT_BYTES`` plus one block.
``taskforce.output`` fills the rings; the control server reads them.

This module only holds bytes in memory: it never reads a pipe, writes a
file or touches a process.
"""

from __future__ import annotations

import time
from collections import deque, namedtuple
from collections.abc import Callable, Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

#: Recent lines kept per task for ``tfctl logs``: this many lines at most,
#: and no more than this many bytes of them, whichever is reached first.
RECENT_LINES = 1000
RECENT_BYTES = 256 * 1024


# mypy reads the NamedTuples; a daemon runs the collections.namedtuples that
# typing.NamedTuple would have made of them (the same classes, but for their
# __annotations__), as importing typing costs a daemon 0.45 MiB of memory.
# tests/test_imports.py checks that the two have the same fields.
if TYPE_CHECKING:

    class Block(NamedTuple):
        """Whole lines written at once by one process: ``data`` ends with a newline."""

        first: int  # sequence number of its first line
        lines: int
        instance: int
        stream: str  # "stdout" or "stderr"
        time: float  # wall clock, when they were read
        data: bytes | bytearray

    class Line(NamedTuple):
        seq: int
        instance: int
        stream: str
        time: float
        text: str

else:
    Block = namedtuple("Block", "first lines instance stream time data")
    Line = namedtuple("Line", "seq instance stream time text")


class Recent:
    """The most recent captured lines of one task, numbered from 1.

    There is one per task whose output is captured, most of which never
    print a line: it holds no storage until its first lines come.
    """

    __slots__ = ("task", "blocks", "next", "lines", "bytes", "users", "watchers")

    def __init__(self, task: str = "") -> None:
        #: The task whose lines these are.
        self.task = task
        #: The blocks kept, oldest first (an empty tuple until the first).
        self.blocks: deque[Block] | tuple[()] = ()
        #: Sequence number of the next line to come.
        self.next = 1
        self.lines = 0
        self.bytes = 0
        #: Captures (pipes) feeding this ring now.
        self.users = 0
        #: Called with every block added (the control server's live log
        #: streams); each must be quick and must not add to the ring.
        #: Added and removed through ``watch`` and ``unwatch``.
        self.watchers: tuple[Callable[[Block], None], ...] = ()

    def watch(self, watcher: Callable[[Block], None]) -> None:
        """Call ``watcher`` with every block added from now on."""
        self.watchers = (*self.watchers, watcher)

    def unwatch(self, watcher: Callable[[Block], None]) -> None:
        """Stop calling ``watcher`` (ValueError if it was not watching)."""
        watchers = list(self.watchers)
        watchers.remove(watcher)
        self.watchers = tuple(watchers)

    def add(
        self,
        data: bytes | bytearray,
        instance: int,
        stream: str = "stdout",
        now: float | None = None,
    ) -> None:
        """Keep ``data``, whole lines each ending with a newline, as it is:
        the caller must not change it afterwards.  ``now``: when they were
        read (wall clock; now if not given)."""
        count = data.count(b"\n")
        if not count:
            return
        block = Block(self.next, count, instance, stream, time.time() if now is None else now, data)
        self.next += count
        self.lines += count
        self.bytes += len(block.data)
        blocks = self.blocks
        if not blocks:
            blocks = self.blocks = deque()
        blocks.append(block)
        for watch in self.watchers:
            watch(block)
        # Drop the oldest block while the newer ones alone fill the ring.
        while len(blocks) > 1:
            oldest = blocks[0]
            if (
                self.lines - oldest.lines < RECENT_LINES
                and self.bytes - len(oldest.data) < RECENT_BYTES
            ):
                break
            blocks.popleft()
            self.lines -= oldest.lines
            self.bytes -= len(oldest.data)

    @property
    def last_time(self) -> float:
        return self.blocks[-1].time if self.blocks else 0.0

    def _newest_first(self) -> Iterator[Line]:
        """The lines kept, newest first (at most RECENT_LINES and RECENT_BYTES)."""
        count = size = 0
        for block in reversed(self.blocks):
            pieces = block.data.split(b"\n")
            pieces.pop()  # after the last newline: nothing
            for index in range(len(pieces) - 1, -1, -1):
                piece = pieces[index]
                count += 1
                size += len(piece) + 1
                if count > RECENT_LINES or (size > RECENT_BYTES and count > 1):
                    return
                text = piece.decode(errors="replace").removesuffix("\r")
                yield Line(block.first + index, block.instance, block.stream, block.time, text)

    def read(
        self,
        since: int | None = None,
        instance: int | None = None,
        limit: int | None = None,
        stream: str | None = None,
    ) -> tuple[list[Line], int]:
        """Lines from ``since`` on (all kept lines without it), of ``instance``
        and of ``stream`` only if given, at most the last ``limit``; oldest
        first.  Also how many lines from ``since`` on are no longer kept (0
        without ``since``); with ``instance`` or ``stream`` that count is of
        every instance's and stream's lines."""
        found: list[Line] = []
        oldest = self.next
        for line in self._newest_first():
            if since is not None and line.seq < since:
                oldest = since
                break
            oldest = line.seq
            if limit is not None and len(found) >= limit:
                if since is None:
                    break
                continue
            if (instance is None or line.instance == instance) and (
                stream is None or line.stream == stream
            ):
                found.append(line)
        found.reverse()
        dropped = 0 if since is None else max(0, oldest - max(since, 1))
        return found, dropped
