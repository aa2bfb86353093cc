"""Task output: where each process's stdout and stderr go (shell side).

Each spawned process gets two pipes, one for its stdout and one for its
stderr, so every line keeps its stream (two descriptors held per process).
Each read end is non-blocking and registered on the daemon's selector; each
readiness reads one chunk (``CHUNK``), writes the complete lines to the sink
and holds a partial last line for the next read.  A pipe belongs to the one
process and stream it was made for: lines of an old process and of its
replacement, or of the two streams, never meet inside a line, and a pipe is
read to EOF (which may come after its process exited, when a grandchild
still holds it) before it is closed.  At EOF a held partial line is written
out, completed with a newline.  Each stream keeps its order; across the two,
lines go out in the order they were read, and the clock is read once per
chunk: the ring, the file stamps and the log all carry that time.

Bounds, so a chatty task can neither stall supervision nor grow memory:

- per pipe at most ``CHUNK`` unwritten bytes plus a partial line shorter than
  ``MAX_LINE``; a longer line is cut into ``MAX_LINE`` pieces, each but the
  last ending with ``LONG_LINE_MARK``;
- per turn of the loop at most one chunk is read from a pipe; complete lines
  still waiting after it was written are a *backlog* (only on the slow log
  path below, at most ``LOG_LINES_PER_TURN`` lines a turn): the pipe is taken
  off the selector (the writer then blocks on its full pipe: backpressure)
  and the loop comes back without sleeping (``busy``) until the backlog is
  written.

Sinks: ``inherit`` (no pipe: the daemon's own stdout and stderr), ``discard``
(``/dev/null``), ``log`` (each line as ``logging.getLogger(
"taskforce.output")`` at info level would write it, prefixed
``task[instance] `` or ``task[instance]:stderr ``), ``file`` (appended to a
file shared by every process that names the same path, stderr to its own
file if the spawn says so, each line stamped with its time and stream if it
says so; when a write would take a file past ``max_bytes`` it is rotated at
a line boundary, PATH -> PATH.1 -> ... -> PATH.backups).

The log is written a chunk at a time (``taskforce.loglines``); only a
handler that is neither taskforce's stream nor its syslog handler (a
program embedding taskforce) gets a record per line, from here.

Recent lines: for every task whose output is captured, the most recent
lines are kept in a ``Recent`` ring for ``tfctl logs`` (``taskforce.recent``);
the ``file`` sink is a ``FileSink`` (``taskforce.filesink``).

This module decides nothing about processes: it never starts, signals or
waits for one.  Failures to write are logged (once until writing works
again) and the lines dropped; they never reach the core.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import logging
import os
import resource
import selectors
import time
from collections.abc import Callable

from taskforce.core.effects import Spawn
from taskforce.filesink import FileSink
from taskforce.loglines import log_chunk
from taskforce.recent import RECENT_BYTES as RECENT_BYTES
from taskforce.recent import RECENT_LINES as RECENT_LINES
from taskforce.recent import Recent as Recent

log = logging.getLogger("taskforce")
output_log = logging.getLogger("taskforce.output")

STDOUT, STDERR = "stdout", "stderr"
#: A pipe's buffer while it holds nothing.
_NOTHING = b""
#: Bytes read from a pipe per readiness.
CHUNK = 64 * 1024
#: A line longer than this is written in pieces of this size.
MAX_LINE = 64 * 1024
#: Ends every piece of a cut line but the last.
LONG_LINE_MARK = b" [taskforce: line continues]\n"
#: Lines logged from one pipe per turn of the loop (``log`` mode).
LOG_LINES_PER_TURN = 64
#: Kernel buffer asked for each pipe (Linux): fewer wake-ups for a fast
#: writer.  It is kernel memory, bounded, and the request may be refused.
PIPE_SIZE = 1024 * 1024
#: A file dropped by rotation is freed this much per turn of the loop:
#: freeing a large file at once can block for a tenth of a second or more.
SHRINK_STEP = 4 * 1024 * 1024
#: taskforce raises its own soft limit of open files no higher than this.
MAX_OPEN_FILES = 1 << 20
#: Rings of tasks without a running process are forgotten, longest idle
#: first, once there are more rings than this.
MAX_RINGS = 1024


class Capture:
    """The read end of one process's stdout or stderr pipe and where its lines go."""

    # Two per captured process, as long as it runs: what every one holds is
    # kept small (its label is made when a line is logged, its buffer when
    # a read leaves bytes in it, and it is its own selector callback).
    __slots__ = (
        "owner",
        "fd",
        "task",
        "sink",
        "recent",
        "instance",
        "stream",
        "stamps",
        "buf",
        "eof",
        "reading",
        "closed",
    )

    def __init__(
        self,
        owner: Output,
        fd: int,
        task: str,
        sink: FileSink | None,
        recent: Recent | None = None,
        instance: int = 0,
        stream: str = STDOUT,
        stamps: bool = False,
    ) -> None:
        self.owner = owner
        self.fd = fd
        self.task = task
        #: None: lines go to the log.
        self.sink = sink
        #: The task's recent lines, which every line written also goes to.
        self.recent = recent
        self.instance = instance
        self.stream = stream
        #: Whether each line in the file starts with its time and stream.
        self.stamps = stamps
        #: Bytes read and not yet written (an empty ``bytes`` while none).
        self.buf: bytes | bytearray = _NOTHING
        self.eof = False
        self.reading = False
        self.closed = False

    @property
    def label(self) -> str:
        """``task[instance]``, and ``:stderr`` after it for stderr."""
        label = f"{self.task}[{self.instance}]"
        return label if self.stream == STDOUT else f"{label}:{self.stream}"

    # -- reading -----------------------------------------------------------

    def start(self) -> None:
        self._set_reading(True)

    def _set_reading(self, on: bool) -> None:
        if on != self.reading:
            if on:
                self.owner.selector.register(self.fd, selectors.EVENT_READ, self)
            else:
                self.owner.selector.unregister(self.fd)
            self.reading = on

    def on_readable(self) -> None:
        self.read_once()
        self.work()

    __call__ = on_readable  # (the selector's callback)

    def read_once(self) -> bool:
        """One read; False when nothing was there (or at EOF)."""
        try:
            data = os.read(self.fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            log.warning("output of %s: read failed: %s", self.label, exc)
            data = b""
        if not data:
            self.eof = True
            return False
        if self.buf:
            self.buf += data  # (a bytearray: extended in place)
        else:
            self.buf = bytearray(data)
        return True

    # -- writing -----------------------------------------------------------

    def work(self, *, budget: bool = True) -> None:
        """Write what is complete; pause, resume or finish the pipe."""
        self._write_lines(budget)
        if self._has_lines():
            self._set_reading(False)
            self.owner.backlog.add(self)
            return
        self.owner.backlog.discard(self)
        if self.eof:
            self.finish()
        else:
            self._set_reading(True)

    def _has_lines(self) -> bool:
        return b"\n" in self.buf or len(self.buf) >= MAX_LINE

    def _write_lines(self, budget: bool) -> None:
        buf = self.buf
        end = buf.rfind(b"\n") + 1
        if end:
            # One clock reading per chunk: the lines were read together.
            now = time.time()
            if self.sink is not None:
                lines = bytes(buf[:end])
                self._to_file(lines, now)
            else:
                lines = bytes(buf[: self._log_lines(end, budget, now)])
            if self.recent is not None:
                self.recent.add(lines, self.instance, self.stream, now)
            del buf[: len(lines)]  # type: ignore[union-attr]
        # A line that never ends is written in pieces, marked as such.
        while len(buf) >= MAX_LINE and b"\n" not in buf:
            piece = bytes(buf[:MAX_LINE]) + LONG_LINE_MARK
            del buf[:MAX_LINE]  # type: ignore[union-attr]
            self._write_one(piece)
        if not buf:
            self.buf = _NOTHING

    def _write_one(self, line: bytes) -> None:
        now = time.time()
        if self.sink is not None:
            self._to_file(line, now)
        elif output_log.isEnabledFor(logging.INFO) and not log_chunk(self.label, line, now):
            self._log_text(line)
        if self.recent is not None:
            self.recent.add(line, self.instance, self.stream, now)

    def _to_file(self, lines: bytes, now: float) -> None:
        assert self.sink is not None
        if self.stamps:
            prefix = stamp(now, self.stream)
            lines = prefix + lines[:-1].replace(b"\n", b"\n" + prefix) + b"\n"
        self.sink.write(lines)

    def _log_lines(self, end: int, budget: bool, now: float) -> int:
        """Log lines of ``buf[:end]``; how many bytes were consumed."""
        buf = self.buf
        if not output_log.isEnabledFor(logging.INFO):
            return end
        if log_chunk(self.label, buf[:end], now):
            return end
        # Another handler than one plain stream (syslog, a test's): a record
        # per line, so many per turn.
        start = 0
        limit = LOG_LINES_PER_TURN if budget else -1
        while start < end and limit != 0:
            stop = buf.index(b"\n", start) + 1
            self._log_text(buf[start:stop])
            start = stop
            limit -= 1
        return start

    def _log_text(self, line: bytes | bytearray) -> None:
        text = bytes(line).decode(errors="replace").rstrip("\n")
        output_log.info("%s %s", self.label, text.removesuffix("\r"))

    def finish(self) -> None:
        """EOF: write all that is left, a partial line with a newline; close."""
        if self.closed:
            return
        self._write_lines(budget=False)
        if self.buf:
            rest = bytes(self.buf) + b"\n"
            self.buf = _NOTHING
            self._write_one(rest)
        self._set_reading(False)
        self.owner.backlog.discard(self)
        os.close(self.fd)
        self.closed = True
        self.owner.release(self)

    def drain(self) -> None:
        """Read what is in the pipe now, write it all, close.

        Bounded: a straggler still writing cannot keep us here.
        """
        for _ in range(PIPE_SIZE // CHUNK + 2):
            if self.eof or not self.read_once():
                break
            self._write_lines(budget=False)
        self.finish()


def stamp(now: float, stream: str) -> bytes:
    """The start of a line in a file with timestamps: ISO 8601 local time
    to the microsecond with its UTC offset, the stream, a space each."""
    moment = datetime.datetime.fromtimestamp(now).astimezone()
    return f"{moment.isoformat(timespec='microseconds')} {stream} ".encode()


class Output:
    """Every capture of a daemon, and the sinks they share."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.backlog: set[Capture] = set()
        self.files: dict[str, FileSink] = {}
        #: Recent lines of each task whose output is captured.
        self.recent: dict[str, Recent] = {}
        #: Unlinked files being freed: [fd, size left].
        self.shrinking: list[list[int]] = []
        self._null: int | None = None
        #: whether a ring may have no users (see ``_recent``)
        self._idle_rings = False

    def prepare(self, spawn: Spawn) -> tuple[int | None, int | None, Callable[[bool], None]]:
        """Before ``spawn``: the fds to give the child as stdout and as
        stderr (None: inherit), and ``done(started)`` to call once the spawn
        succeeded or failed.  Raises OSError (an output file that cannot be
        opened)."""
        task, instance, mode, path = spawn.task, spawn.instance, spawn.output, spawn.output_file
        if mode == "inherit":
            return None, None, _nothing
        if mode == "discard":
            if self._null is None:
                self._null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            return self._null, self._null, _nothing
        if mode not in ("log", "file") or (mode == "file" and not path):
            raise OSError(f"output {mode!r} for {task}[{instance}] is not usable")
        sinks: list[FileSink | None] = [None, None]
        if mode == "file":
            assert path is not None
            paths = (path, spawn.output_stderr or path)
            for index, where in enumerate(paths):
                try:
                    sinks[index] = self._file(where, spawn.output_max_bytes, spawn.output_backups)
                except OSError as exc:
                    raise OSError(f"output file {where}: {exc.strerror or exc}") from None
        # Two pipes, one per stream: a line keeps the stream it was written to.
        pipes: list[tuple[int, int]] = []
        try:
            for _ in range(2):
                pipes.append(_pipe())  # both ends close on exec
        except OSError:
            for read_end, write_end in pipes:
                os.close(read_end)
                os.close(write_end)
            raise
        recent = self._recent(task)
        captures = []
        for (read_end, _), sink, stream in zip(pipes, sinks, (STDOUT, STDERR), strict=True):
            os.set_blocking(read_end, False)
            if hasattr(fcntl, "F_SETPIPE_SZ"):
                with contextlib.suppress(OSError):
                    fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            if sink is not None:
                sink.users += 1
            recent.users += 1
            captures.append(
                Capture(
                    self,
                    read_end,
                    task,
                    sink,
                    recent,
                    instance,
                    stream,
                    spawn.output_timestamps,
                )
            )

        def done(started: bool) -> None:
            for (_, write_end), capture in zip(pipes, captures, strict=True):
                os.close(write_end)  # the child has its copy; EOF when it is gone
                if started:
                    capture.start()
                else:
                    capture.drain()

        return pipes[0][1], pipes[1][1], done

    def _file(self, path: str, max_bytes: int, backups: int) -> FileSink:
        sink = self.files.get(path)
        if sink is None:
            sink = self.files[path] = FileSink(path, max_bytes, backups, self._retire)
        else:
            sink.max_bytes, sink.backups = max(1, max_bytes), max(0, backups)
        return sink

    def _recent(self, task: str) -> Recent:
        recent = self.recent.get(task)
        if recent is None:
            # Looked for only when a ring may have gone idle since the last
            # look: with more captured tasks than rings, every start walked
            # them all (quadratic in the fleet).
            if len(self.recent) >= MAX_RINGS and self._idle_rings:
                idle = [name for name, ring in self.recent.items() if not ring.users]
                idle.sort(key=lambda name: self.recent[name].last_time)
                dropped = idle[: len(self.recent) - MAX_RINGS + 1]
                for name in dropped:
                    del self.recent[name]
                self._idle_rings = len(idle) > len(dropped)
            recent = self.recent[task] = Recent(task)
        return recent

    @property
    def captures(self) -> list[Capture]:
        """Every pipe still open.  Each one is either on the selector (read
        when ready) or in the backlog (paused), so they are found there
        rather than kept in a set of their own (two per captured process)."""
        mapped = self.selector.get_map()
        reading = [key.data for key in mapped.values() if isinstance(key.data, Capture)]
        return [capture for capture in reading if capture.owner is self] + list(self.backlog)

    def release(self, capture: Capture) -> None:
        if capture.recent is not None:
            capture.recent.users -= 1
            self._idle_rings = self._idle_rings or capture.recent.users <= 0
        sink = capture.sink
        if sink is not None:
            sink.users -= 1
            if sink.users <= 0 and self.files.get(sink.path) is sink:
                del self.files[sink.path]
                sink.close()

    def _retire(self, fd: int) -> None:
        try:
            self.shrinking.append([fd, os.fstat(fd).st_size])
        except OSError:
            os.close(fd)

    @property
    def busy(self) -> bool:
        """Lines wait to be written or files to be freed: the loop must not sleep."""
        return bool(self.backlog or self.shrinking)

    def pump(self) -> None:
        """One turn of work for each pipe with a backlog and each dropped file."""
        for capture in list(self.backlog):
            capture.work()
        for entry in list(self.shrinking):
            fd, size = entry
            entry[1] = size = max(0, size - SHRINK_STEP)
            try:
                if size:
                    os.ftruncate(fd, size)
            except OSError:
                size = 0
            if not size:
                os.close(fd)
                self.shrinking.remove(entry)

    def reopen(self) -> None:
        """Reopen every output file by its path (see ``FileSink.reopen``)."""
        for path in sorted(self.files):
            self.files[path].reopen()

    def close(self) -> None:
        """The daemon is leaving: write out everything there is, close all."""
        for capture in list(self.captures):
            capture.drain()
        for sink in list(self.files.values()):
            sink.close()
        self.files.clear()
        for fd, _ in self.shrinking:
            os.close(fd)
        self.shrinking.clear()
        if self._null is not None:
            os.close(self._null)
            self._null = None


def _nothing(started: bool) -> None:
    pass


def _pipe() -> tuple[int, int]:
    """``os.pipe()``; out of descriptors, once more after raising the soft
    limit of open files towards the hard one (each captured process holds
    two).  Raised only when needed, so tasks inherit the limit taskforce was
    given for as long as it suffices."""
    try:
        return os.pipe()
    except OSError as exc:
        if exc.errno != errno.EMFILE or not _raise_open_files():
            raise
    return os.pipe()


def _raise_open_files() -> bool:
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = MAX_OPEN_FILES
        wanted = min(hard, max(soft * 2, 1024), MAX_OPEN_FILES)
        if wanted <= soft:
            return False
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError):
        return False
    log.warning(
        "out of open files (%d): raised taskforce's limit to %d "
        "(each captured process holds two pipes); its tasks inherit it",
        soft,
        wanted,
    )
    return True
