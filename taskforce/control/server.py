"""The control server: listeners, connections and the work queue, all on the
daemon's one event loop.

The daemon calls ``tick(now)`` on every turn of its loop and sleeps no longer
than ``next_deadline()``; sockets are registered on its selector, whose
callbacks only move bytes.  Complete requests wait in a queue and are
answered in ``tick`` within a time budget per turn, so that between two
batches the loop always gets back to reaping children and firing timers: a
flood of requests slows the requests, never the supervision.

Control requests become ``ControlRequested`` events for the core; its
``Reply`` effect is among the effects ``Shell.feed`` returns, so every
request is answered in the same turn.  The server decides nothing about
tasks, and it knows the daemon only as a ``Shell`` (``control.shell``):
what it may ask of it is listed there.

An answer that takes long to compute (``/manage/plan`` reading a posted
config) comes back from ``api.handle`` as a ``Deferred``: its work runs on
one worker thread, which wakes the loop through the daemon's wake-up pipe
when done, and the answer is finished and sent in the next turn.  One runs
at a time; a second such request meanwhile is told to come back (503).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import selectors
import socket
import threading
import time
from collections import deque

from taskforce import costs, files
from taskforce.control import api
from taskforce.control.http import Connection, Deferred, Response, text
from taskforce.control.listen import (
    Listener,
    ListenError,
    Service,
    peer_credentials,
    read_token,
    services,
)
from taskforce.control.options import Options
from taskforce.control.stream import StreamRequest, Streams
from taskforce.core import effects as fx
from taskforce.core import events as ev

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.control.shell import Shell

log = logging.getLogger("taskforce")

#: Most connections open at once, over every listener.  When full, idle
#: keep-alive connections make room; failing that, new ones are turned away.
MAX_CONNECTIONS = 512
#: Connections accepted per listener wake-up.
ACCEPT_BATCH = 128
#: Time spent answering queued requests per turn of the loop (at least one
#: request is always answered).
BUDGET = 0.010
#: A listener that failed (address in use, certificate missing) is retried.
RETRY = 5.0
#: Flushing replies when the daemon exits takes no longer than this.
FLUSH_AT_EXIT = 1.0
#: Request bodies: a posted config for ``/manage/plan``, form data elsewhere.
PLAN_BODY_LIMIT = 4 * 1024 * 1024
BODY_LIMIT = 64 * 1024


class ControlServer:
    """Every listener and connection of the control path."""

    def __init__(
        self,
        shell: Shell,
        selector: selectors.BaseSelector,
        options: Options | None = None,
        *,
        sample_off_loop: bool = False,
    ) -> None:
        self.shell = shell
        self.options = options or Options()
        #: the loop's selector: listeners and connections are registered on it
        self.selector = selector
        self.listeners: list[Listener | None] = []
        self.wanted: list[Service] = []
        self.retry_at: float | None = None
        self.conns: set[Connection] = set()
        self.work: deque[Connection] = deque()
        self.again: set[Connection] = set()
        self.stats = {"requests": 0, "rejected": 0, "timeouts": 0, "turned_away": 0}
        #: requests refused for who asked, by reason (``/metrics``)
        self.refused: dict[str, int] = {}
        #: a Unix peer's names and groups, by (uid, gid): looked up once per config
        self._peers: dict[tuple[int, int], dict[str, object]] = {}
        self.started = time.monotonic()
        #: answers computed from the core, valid until it is next fed
        self._cache: dict[Any, Response] = {}
        self._cache_fed = -1
        #: answers that also show the server's own figures: valid for a turn
        self.turn_cache: dict[Any, Response] = {}
        self._config: object = None
        self._configured = False
        self._next_request = 0
        #: the deferred answer being computed off the loop, if any
        self.job: _Job | None = None
        #: what each slot costs, sampled only when a request asks: off the
        #: loop in the daemon; where whoever drives the server turns it by
        #: hand (the simulator), at once, so that a run stays deterministic
        self.costs = costs.Sampler()
        self.sample_off_loop = sample_off_loop
        #: requests waiting for that sample
        self.sample_waiting: list[Connection] = []
        #: whether the request being answered waited for the sample just in
        self.sample_came = False
        self._after_sample: set[Connection] = set()
        #: the open ``text/event-stream`` responses (status page, ``tfctl logs -f``)
        self.streams = Streams(self)

    # ----------------------------------------------------------- the loop

    def next_deadline(self) -> float | None:
        """When ``tick`` is next due without any socket activity."""
        if self.work or self.again or not self._configured:
            return 0.0
        if self.job is not None and self.job.done.is_set():
            return 0.0
        if self.costs.done:
            return 0.0
        due = [c.deadline for c in self.conns if c.deadline is not None]
        if self.retry_at is not None:
            due.append(self.retry_at)
        stream_due = self.streams.next_deadline()
        if stream_due is not None:
            due.append(stream_due)
        return min(due) if due else None

    def tick(self, now: float) -> None:
        """One turn: follow the config, expire, answer queued requests."""
        self.turn_cache.clear()
        core = self.shell.core
        if not self._configured or core.config is not self._config:
            self._configured = True
            self._config = core.config
            self._configure()
        elif self.retry_at is not None and now >= self.retry_at:
            self._open_missing()
        for conn in list(self.again):
            self.again.discard(conn)
            conn.on_ready()
        for conn in [c for c in self.conns if c.deadline is not None and c.deadline <= now]:
            conn.expire()
        if self.job is not None and self.job.done.is_set():
            self._finish_job(self.job)
        if self.costs.done:
            self._sample_in()
        self._answer()
        self.streams.tick(now)

    def _sample_in(self) -> None:
        """A sample of the slots' costs came in: the requests that waited
        for it are answered first, with it."""
        came = self.costs.collect()
        if isinstance(came, BaseException):
            log.error("control: sampling the slots' costs failed: %r", came)
        self.streams.costs_in()
        waiting, self.sample_waiting = self.sample_waiting, []
        self._after_sample.update(waiting)
        self.work.extendleft(reversed(waiting))

    def _answer(self) -> None:
        start = time.perf_counter()
        first = True
        while self.work and (first or time.perf_counter() - start < BUDGET):
            conn = self.work.popleft()
            if conn.closed or conn.request is None:
                continue
            first = False
            self.stats["requests"] += 1
            self.sample_came = conn in self._after_sample
            if self.sample_came:
                self._after_sample.discard(conn)
            try:
                conn.request.listener = conn.listener
                answer = api.handle(self, conn.request, conn.listener, conn.who)
            except Exception:
                log.exception("control: %s %s failed", conn.request.method, conn.request.target)
                answer = Response(500, close=True)
            finally:
                self.sample_came = False
            if isinstance(answer, api.AwaitSample):
                self.sample_waiting.append(conn)
                continue
            if isinstance(answer, StreamRequest):
                if not self.streams.open(conn, answer, time.monotonic()):
                    conn.respond(
                        text(
                            503,
                            "too many streams open; try again\n",
                            headers=[("Retry-After", "5")],
                        )
                    )
                continue
            if isinstance(answer, Deferred):
                response = self._defer(conn, answer)
                if response is None:
                    continue
            else:
                response = answer
            conn.respond(response)
            if response.after is not None:
                response.after()

    def _defer(self, conn: Connection, deferred: Deferred) -> Response | None:
        """Start ``deferred`` on a worker thread; a 503 if one is already running."""
        if self.job is not None:
            return text(
                503,
                "busy with another request of this kind; try again\n",
                headers=[("Retry-After", "1")],
            )
        self.job = _Job(conn, deferred, self.shell.wake)
        threading.Thread(target=self.job.run, name="taskforce-control", daemon=True).start()
        return None

    def _finish_job(self, job: _Job) -> None:
        self.job = None
        request = job.conn.request
        target = request.target if request is not None else "?"
        if job.failure is not None:
            log.error("control: %s failed: %r", target, job.failure)
            response = Response(500, close=True)
        else:
            try:
                response = job.deferred.finish(job.result)
            except Exception:
                log.exception("control: %s failed", target)
                response = Response(500, close=True)
        job.conn.respond(response)

    def cached(self) -> dict[Any, Response]:
        """The answers computed from the core as it is now (emptied once the
        core has been fed since they were computed)."""
        if self._cache_fed != self.shell.fed:
            self._cache_fed = self.shell.fed
            self._cache.clear()
        return self._cache

    def enqueue(self, conn: Connection) -> None:
        self.work.append(conn)

    def forget(self, conn: Connection) -> None:
        self.conns.discard(conn)
        self._after_sample.discard(conn)
        self.again.discard(conn)
        if conn.stream:
            self.streams.forget(conn)

    def body_limit(self, path: str) -> int:
        return PLAN_BODY_LIMIT if path == "/manage/plan" else BODY_LIMIT

    # --------------------------------------------------------- the core

    def control(
        self,
        action: str,
        args: dict[str, Any],
        who: dict[str, Any] | None = None,
        allow: tuple[str, ...] | None = None,
    ) -> fx.Reply | None:
        """Feed a ``ControlRequested`` to the core, with who asked and what the
        listener allows; its ``Reply`` (None if none came)."""
        self._next_request += 1
        request = self._next_request
        effects = self.shell.feed(
            ev.ControlRequested(
                at=self.shell.now,
                request=request,
                action=action,
                args=args,
                who=dict(who or {}),
                allow=allow,
            )
        )
        replies = (e for e in effects if isinstance(e, fx.Reply) and e.request == request)
        return next(replies, None)

    def refuse(self, reason: str) -> None:
        """Count a request refused for who asked (``reason`` is a metric label)."""
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def peer(self, sock: socket.socket, unix: bool) -> dict[str, object]:
        """What the kernel says about a new connection's peer: on a Unix
        socket its uid and gid (``SO_PEERCRED``) with the user's name and
        groups; on TCP only its address, which proves nothing."""
        if not unix:
            with contextlib.suppress(OSError, IndexError):
                return {"address": str(sock.getpeername()[0])}
            return {}
        creds = _peer_ids(sock)
        if creds is None:
            return {}
        known = self._peers.get(creds)
        if known is None:
            known = self._peers[creds] = _names(*creds)
        return known

    # --------------------------------------------------------- listeners

    def _configure(self) -> None:
        core = self.shell.core
        try:
            wanted = services(core.config, self.options, core.facts, core.roles, core.role_values)
        except ListenError as exc:
            log.error("control: %s; keeping the current listeners", exc)
            return
        self._peers.clear()  # group membership may have changed too
        for listener in self.listeners:
            # A reload re-reads a changed token, as it re-reads the config.
            if listener is not None and listener.service.token_file:
                try:
                    listener.token = read_token(listener.service.token_file)
                except ListenError as exc:
                    log.error("control: %s; keeping the token read before", exc)
        if wanted == self.wanted:
            if self.retry_at is not None:
                self._open_missing()
            return
        old = self.listeners
        self.wanted = wanted
        self.listeners = []
        for index, service in enumerate(wanted):
            keep = old[index] if index < len(old) else None
            if keep is not None and keep.service == service:
                self.listeners.append(keep)
                old[index] = None
            else:
                self.listeners.append(None)
        for listener in old:
            if listener is not None:
                self._close_listener(listener)
        self._open_missing()

    def _open_missing(self) -> None:
        self.retry_at = None
        for index, service in enumerate(self.wanted):
            if self.listeners[index] is not None:
                continue
            try:
                facts = self.shell.core.facts
                listener = Listener(service, (facts.host, facts.fqdn), file_group=files.group_id())
            except (ListenError, OSError) as exc:
                log.error("control: %s; retrying every %gs", exc, RETRY)
                self.retry_at = time.monotonic() + RETRY
                continue
            self.listeners[index] = listener
            self.selector.register(
                listener.sock, selectors.EVENT_READ, lambda lst=listener: self._accept(lst)
            )
            allowed = "control allowed" if service.allow_control else "status only"
            if not service.is_unix and not (listener.loopback or service.public_status):
                allowed += ", status needs a credential"
            log.info("control: listening on %s (%s)", listener.address, allowed)

    def _close_listener(self, listener: Listener) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(listener.sock)
        listener.close()

    def _accept(self, listener: Listener) -> None:
        try:
            self._accept_some(listener)
        except Exception:
            # A bug here must never take supervision down with it.
            log.exception("control: accepting on %s failed", listener.address)

    def _accept_some(self, listener: Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: say so, and let the loop go on.
                log.warning("control: accept on %s failed: %s", listener.address, exc)
                return
            if len(self.conns) >= MAX_CONNECTIONS and not self._make_room():
                self.stats["turned_away"] += 1
                with contextlib.suppress(OSError):
                    if listener.tls is None:
                        sock.setblocking(False)
                        sock.send(
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                            b"Connection: close\r\n\r\n"
                        )
                    sock.close()
                continue
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                conn = Connection(self, sock, listener)
            except (OSError, ValueError) as exc:
                log.warning("control: cannot take a connection on %s: %s", listener.address, exc)
                with contextlib.suppress(OSError):
                    sock.close()
                continue
            self.conns.add(conn)
            conn.on_ready()

    def _make_room(self) -> bool:
        """Close the idle keep-alive connection that has waited longest."""
        idle = [
            c for c in self.conns if c.fresh and not c.queued and not c.out and not c.handshaking
        ]
        if not idle:
            return False
        min(idle, key=lambda c: c.deadline or 0.0).close()
        return True

    # ------------------------------------------------------------ figures

    def figures(self) -> dict[str, float]:
        """The server's own metrics, for ``/metrics``."""
        return {
            "taskforce_uptime_seconds": round(time.monotonic() - self.started, 3),
            "taskforce_http_connections": len(self.conns),
            "taskforce_http_listeners": sum(1 for lst in self.listeners if lst is not None),
            "taskforce_http_requests_total": self.stats["requests"],
            "taskforce_http_rejected_total": self.stats["rejected"],
            "taskforce_http_timeouts_total": self.stats["timeouts"],
            "taskforce_http_turned_away_total": self.stats["turned_away"],
            "taskforce_http_streams": len(self.streams),
            "taskforce_http_streams_dropped_total": self.streams.stats["dropped"],
        }

    # ------------------------------------------------------------ the end

    def close(self) -> None:
        """Send what is queued (briefly), close everything, remove sockets."""
        for listener in self.listeners:
            if listener is not None:
                self._close_listener(listener)
        self.listeners = []
        waiting = list(self.work)
        if self.job is not None:
            # Its thread is left to finish on its own: it only computes.
            waiting.append(self.job.conn)
            self.job = None
        for conn in waiting:
            if not conn.closed:
                conn.respond(text(503, "taskforce is exiting\n", close=True))
        self.work.clear()
        deadline = time.monotonic() + FLUSH_AT_EXIT
        while True:
            pending = [c for c in self.conns if c.out and not c.closed]
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                break
            with selectors.DefaultSelector() as waiter:
                for conn in pending:
                    waiter.register(conn.sock, selectors.EVENT_WRITE, conn)
                for key, _ in waiter.select(min(left, 0.05)):
                    key.data._flush()
        for conn in list(self.conns):
            conn.close()


class _Job:
    """A ``Deferred`` being computed on a worker thread for ``conn``."""

    def __init__(self, conn: Connection, deferred: Deferred, wake: Any) -> None:
        self.conn = conn
        self.deferred = deferred
        self.wake = wake
        self.result: object = None
        self.failure: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.deferred.work()
        except Exception as exc:  # MemoryError included: the loop reports it
            self.failure = exc
        finally:
            self.done.set()
            self.wake()


def _peer_ids(sock: socket.socket) -> tuple[int, int] | None:
    """The peer's (uid, gid) of a Unix socket, from the kernel."""
    creds = peer_credentials(sock)
    return None if creds is None else creds[1:]


def _names(uid: int, gid: int) -> dict[str, object]:
    """A peer as the core's access check reads it: ids, user, groups."""
    who: dict[str, object] = {"uid": uid, "gid": gid}
    gids = {gid}
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        entry = None
    if entry is not None:
        who["user"] = entry.pw_name
        with contextlib.suppress(OSError):
            gids.update(os.getgrouplist(entry.pw_name, gid))
    groups = []
    for each in sorted(gids):
        with contextlib.suppress(KeyError):
            groups.append(grp.getgrgid(each).gr_name)
    who["gids"] = sorted(gids)
    who["groups"] = sorted(groups)
    return who
