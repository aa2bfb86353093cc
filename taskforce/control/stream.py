"""Live streams of the control server: server-sent events on the loop.

Two streams, both ``text/event-stream`` responses that stay open:

- ``/status/events``: an ``event: tasks`` whose data is what
  ``/status/tasks`` answers, sent when a client connects and again whenever
  that answer changes (a slot's state, pid, restarts, reason, rollout...),
  at most one every ``SPACING`` seconds (longer for a fleet whose status
  takes long to make: see ``SHARE``) however many events the core is fed
  meanwhile;
- ``/status/logs/follow?task=NAME[&instance=N][&lines=N][&since=SEQ]``: an
  ``event: lines`` with the task's kept lines (as ``/status/logs``), then
  one with the new lines each turn of the loop that captured some.  Its
  ``id`` is the sequence number to resume from (a browser's
  ``Last-Event-ID``).

Nothing here runs on a timer of its own and nothing is polled: the status
stream looks at the core only in a turn that fed it (``Shell.fed``
moved), the log stream is told of new lines by the task's ``Recent`` ring.
With nobody connected there is no deadline at all, so an idle taskforce
still sleeps in one wait.  While a stream is open, a comment is sent every
``BEAT`` seconds (proxies close connections that say nothing), and the
status stream's CPU and memory figures are read afresh then.

Bounded per client: a status stream never queues a second answer behind
one its client has not taken (it sends the newest once the first is out);
a log stream whose unsent bytes would pass ``BUFFER`` is closed (the client
may resume from the last ``id`` it saw), and so is any stream whose client
takes nothing for ``STALL`` seconds.  At most ``MAX_STREAMS`` are open;
they count against the server's connection limit like any connection.

This module decides nothing about tasks and never writes to a socket
itself: ``http.Connection`` frames and sends what it is given.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.control.http import Connection
    from taskforce.control.server import ControlServer
    from taskforce.recent import Block, Recent

log = logging.getLogger("taskforce")

#: Unsent bytes a log stream's client may fall behind by before it is dropped.
BUFFER = 1024 * 1024
#: A stream whose client takes nothing of what waits for this long is closed.
STALL = 30.0
#: Seconds between keep-alive comments (and fresh cost figures) on open streams.
BEAT = 30.0
#: Least time between two status events.
SPACING = 0.1
#: ... and at least this many times what making the last one took, so that
#: a large fleet changing all the time spends at most 1/SHARE of the loop
#: on the page (1,000 tasks: an event every few tenths of a second) ...
SHARE = 20
#: ... but never more than this.
MAX_SPACING = 0.5
#: Streams open at once, over every listener.
MAX_STREAMS = 64
#: What a browser waits before reconnecting a stream that was closed, in ms.
RETRY_MS = 2000


@dataclass(frozen=True)
class Follow:
    """What a log stream follows: ``task`` (all slots, or ``instance``);
    ``since`` and ``lines`` choose the backlog sent first (as ``/status/logs``)."""

    task: str
    instance: int | None = None
    since: int | None = None
    lines: int | None = None
    stream: str | None = None


@dataclass(frozen=True)
class StreamRequest:
    """A request answered with a stream: the task status, or a ``Follow``."""

    follow: Follow | None = None


class _Follower:
    """One log stream: the ring it watches and the lines not yet sent."""

    def __init__(self, streams: Streams, conn: Connection, follow: Follow) -> None:
        self.streams = streams
        self.conn = conn
        self.follow = follow
        self.ring: Recent | None = None
        self.pending: list[dict[str, Any]] = []
        self.pending_bytes = 0
        self.next = 1
        #: fell too far behind: closed in the next turn
        self.behind = False

    def watch(self, block: Block) -> None:
        """A block of lines reached the ring (called from ``Recent.add``)."""
        if self.behind:
            return
        instance = self.follow.instance
        if instance is not None and block.instance != instance:
            self.next = block.first + block.lines
            return
        stream = self.follow.stream
        if stream is not None and block.stream != stream:
            self.next = block.first + block.lines
            return
        pieces = bytes(block.data).split(b"\n")
        pieces.pop()
        for index, piece in enumerate(pieces):
            line: dict[str, Any] = {
                "seq": block.first + index,
                "instance": block.instance,
                "stream": block.stream,
                "time": block.time,
                "text": piece.decode(errors="replace").removesuffix("\r"),
            }
            self.pending.append(line)
        self.pending_bytes += len(block.data) + 64 * len(pieces)
        self.next = block.first + block.lines
        self.streams.lines_arrived(self)


class Streams:
    """Every open stream of one control server."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        #: clients of ``/status/events``
        self.tasks: set[Connection] = set()
        #: status clients still sending an older answer: the newest follows
        self.stale: set[Connection] = set()
        self.followers: dict[Connection, _Follower] = {}
        #: followers with lines waiting to go out in this turn
        self.dirty: set[_Follower] = set()
        #: followers that fell too far behind, closed in the next turn (not
        #: while the ring is calling its watchers)
        self.behind: set[_Follower] = set()
        #: the newest status event, and the feed count it was made at
        self.event = b""
        self.event_fed = -1
        #: when the next status event may be made
        self.event_due = float("-inf")
        self.beat_at: float | None = None
        self.stats = {"opened": 0, "dropped": 0}

    def __len__(self) -> int:
        return len(self.tasks) + len(self.followers)

    # ------------------------------------------------------------ opening

    def open(self, conn: Connection, request: StreamRequest, now: float) -> bool:
        """Start a stream on ``conn``; False when too many are open."""
        if len(self) >= MAX_STREAMS:
            return False
        self.stats["opened"] += 1
        conn.begin_stream()
        conn.push(f"retry: {RETRY_MS}\n\n".encode())
        if self.beat_at is None:
            self.beat_at = now + BEAT
        if request.follow is None:
            # Fresh for the newcomer (its CPU and memory figures too); the
            # others get it as well if it changed.
            self._broadcast(now)
            self.tasks.add(conn)
            conn.push(self.event)
            return True
        follower = self.followers[conn] = _Follower(self, conn, request.follow)
        follower.ring = self.server.shell.captured(request.follow.task)
        self._backlog(follower)
        if follower.ring is not None and not conn.closed:
            follower.ring.watch(follower.watch)
        return True

    def _backlog(self, follower: _Follower) -> None:
        """Send the kept lines asked for: always one event, so that the
        client learns where to resume from."""
        follow, ring = follower.follow, follower.ring
        if ring is None:  # nothing captured yet
            self._send_lines(follower, [], 0)
            return
        since = follow.since
        if since is not None and since > ring.next:
            since = 1  # numbered afresh: taskforce started again
        lines, dropped = ring.read(since, follow.instance, follow.lines, follow.stream)
        follower.next = ring.next
        self._send_lines(follower, [_line(line) for line in lines], dropped)

    # --------------------------------------------------------- the loop

    def next_deadline(self) -> float | None:
        """When ``tick`` has work without socket activity (None: never)."""
        if not (self.tasks or self.followers):
            return None
        due = [self.beat_at] if self.beat_at is not None else []
        if self.tasks and self.event_fed != self.server.shell.fed:
            due.append(self.event_due)
        if self.dirty or self.behind:
            due.append(0.0)
        return min(due) if due else None

    def tick(self, now: float) -> None:
        """Send what changed since the last turn; the keep-alive when due."""
        if not (self.tasks or self.followers):
            self.beat_at = None
            return
        beat = self.beat_at is not None and now >= self.beat_at
        if beat:
            self.beat_at = now + BEAT
        if self.tasks:
            fed = self.server.shell.fed
            if beat or (fed != self.event_fed and now >= self.event_due):
                if not self._broadcast(now) and beat:
                    for conn in list(self.tasks):
                        conn.push(b":\n\n")
        for follower in list(self.behind):
            self.drop(follower.conn, "fell behind")
        self.behind.clear()
        for follower in list(self.followers.values()):
            ring = self.server.shell.captured(follower.follow.task)
            if ring is not follower.ring:
                self._rewatch(follower, ring)
        for follower in list(self.dirty):
            self.dirty.discard(follower)
            if follower.pending:
                self._send_lines(follower, follower.pending, 0)
                follower.pending = []
                follower.pending_bytes = 0
        if beat:
            for follower in list(self.followers.values()):
                follower.conn.push(b":\n\n")

    def costs_in(self) -> None:
        """A fresh sample of the costs came in: the status stream is made
        anew in the next turn (it showed the older figures meanwhile)."""
        if self.tasks:
            self.event_fed = -1
            self.event_due = 0.0

    def _rewatch(self, follower: _Follower, ring: Recent | None) -> None:
        """The task's ring was replaced (or first made): watch the new one."""
        if follower.ring is not None:
            _unwatch(follower.ring, follower)
        follower.ring = ring
        if ring is not None:
            old = follower.follow
            follower.follow = Follow(old.task, old.instance, since=1, stream=old.stream)
            self._backlog(follower)
            if not follower.conn.closed:
                ring.watch(follower.watch)

    def _broadcast(self, now: float) -> bool:
        """Make the status event anew and send it to every status client if
        it changed (to one still taking an older one: once that is out);
        whether it changed."""
        from taskforce.control import api

        self.event_fed = self.server.shell.fed
        started = time.perf_counter()
        body = api.tasks_body(self.server)
        took = time.perf_counter() - started
        self.event_due = now + min(MAX_SPACING, max(SPACING, SHARE * took))
        event = b"event: tasks\ndata: " + body.rstrip(b"\n") + b"\n\n"
        if event == self.event:
            return False
        self.event = event
        for conn in list(self.tasks):
            if conn.out:
                self.stale.add(conn)
            else:
                conn.push(event)
        return True

    def lines_arrived(self, follower: _Follower) -> None:
        """A follower has new lines: send them this turn, or drop a reader
        that has fallen too far behind."""
        if follower.conn.unsent + follower.pending_bytes > BUFFER:
            follower.behind = True
            follower.pending = []
            self.behind.add(follower)
            self.dirty.discard(follower)
            return
        self.dirty.add(follower)

    def _send_lines(self, follower: _Follower, lines: list[dict[str, Any]], dropped: int) -> None:
        conn = follower.conn
        data = {
            "task": follower.follow.task,
            "next": follower.next,
            "lines": lines,
            "dropped": dropped,
        }
        body = json.dumps(data, separators=(",", ":"))
        event = f"id: {follower.next}\nevent: lines\ndata: {body}\n\n".encode()
        if conn.unsent + len(event) > BUFFER and conn.unsent:
            self.drop(conn, "fell behind")
            return
        conn.push(event)

    # ----------------------------------------------------------- closing

    def drained(self, conn: Connection) -> None:
        """Everything queued on ``conn`` went out."""
        if conn in self.stale:
            self.stale.discard(conn)
            conn.push(self.event)

    def drop(self, conn: Connection, why: str) -> None:
        """Close a stream whose client does not keep up."""
        self.stats["dropped"] += 1
        log.info("control: closing a stream whose client %s", why)
        conn.close()

    def forget(self, conn: Connection) -> None:
        """``conn`` closed: stop feeding it."""
        self.tasks.discard(conn)
        self.stale.discard(conn)
        follower = self.followers.pop(conn, None)
        if follower is not None:
            self.dirty.discard(follower)
            self.behind.discard(follower)
            if follower.ring is not None:
                _unwatch(follower.ring, follower)
        if not (self.tasks or self.followers):
            self.beat_at = None


def _unwatch(ring: Recent, follower: _Follower) -> None:
    try:
        ring.unwatch(follower.watch)
    except ValueError:
        pass


def _line(line: Any) -> dict[str, Any]:
    """A kept line (``recent.Line``) as the streams and ``/status/logs`` show
    it: every field it has (the time unrounded: ``tfctl logs`` joins lines
    to those of the output files by it)."""
    return dict(line._asdict())
