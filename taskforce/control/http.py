"""One HTTP/1.1 connection of the control server, over a non-blocking socket.

h11 does all the HTTP: framing, header limits, keep-alive and pipelining
rules.  This module moves bytes between it and the socket (optionally TLS,
with the handshake done without blocking) and keeps the limits that make a
hostile client harmless:

- a request's head is at most ``MAX_HEAD`` bytes (h11 answers 431 beyond);
- a body is at most ``Server.body_limit(path)`` bytes (413 beyond);
- a request must arrive in full within the service's ``timeout`` of the
  connection becoming ready for it, however the bytes trickle in (no
  slowloris); an idle keep-alive connection is closed after ``timeout``;
- a response being written is given ``timeout`` more whenever the client
  takes some of it;
- nothing more is read while a request waits for its answer, so a client
  that pipelines cannot make us buffer without bound;
- a stream (``text/event-stream``, see ``taskforce.control.stream``) is
  given ``stream.STALL`` seconds to take each piece, and what it sends is
  read only to notice that it went away.

It never decides anything: a complete request goes to the server's queue,
and the server hands back a ``Response``.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from taskforce import __version__
from taskforce.control import tls
from taskforce.control.listen import subject_text
from taskforce.control.messages import JSON as JSON
from taskforce.control.messages import REASONS as REASONS
from taskforce.control.messages import Deferred as Deferred
from taskforce.control.messages import Request as Request
from taskforce.control.messages import Response as Response
from taskforce.control.messages import text as text
from taskforce.control.stream import STALL
from taskforce.inspect_later import WithoutSignatures

with WithoutSignatures():  # (h11's one dataclass without a docstring: see there)
    import h11

log = logging.getLogger("taskforce")

if TYPE_CHECKING:
    import ssl

    from taskforce.control.listen import Listener
    from taskforce.control.server import ControlServer

#: Bytes of request line and headers h11 will buffer before giving up (431).
MAX_HEAD = 16 * 1024
#: Bytes read from a socket per wake-up; more waits for the next turn.
READ_SIZE = 64 * 1024
#: How long a closing connection is read (and discarded) so that the client
#: gets our last response before a reset.
LINGER = 1.0
SERVER_HEADER = f"taskforce/{__version__}".encode()


class Connection:
    """One accepted client."""

    def __init__(self, server: ControlServer, sock: socket.socket, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.service = listener.service
        self.timeout = listener.service.timeout
        self.sock: socket.socket = sock
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.out: deque[memoryview] = deque()
        #: bytes queued in ``out``, not yet taken by the client
        self.unsent = 0
        #: the response is a stream that stays open (``begin_stream``)
        self.stream = False
        self.closed = False
        self.handshaking = listener.tls is not None
        self.lingering = False
        #: the last response is queued: read nothing more but to discard it
        self.finished = False
        #: waits for the server to answer (nothing is read meanwhile)
        self.queued = False
        #: no byte of the next request has arrived (an idle keep-alive)
        self.fresh = True
        self.request: Request | None = None
        self._body = bytearray()
        self._body_limit = 0
        #: the selector event a TLS operation is blocked on, when it is not
        #: the obvious one (a read that must write, a write that must read)
        self._block = 0
        self._mask = 0
        self.deadline: float | None = time.monotonic() + self.timeout
        self.fd = sock.fileno()
        #: what the peer proved about itself: its uid on a Unix socket, its
        #: certificate's subject once the TLS handshake checked it
        self.who: dict[str, object] = server.peer(sock, listener.service.is_unix)
        if listener.tls is not None:
            self.sock = listener.tls.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        self._interest()

    # ------------------------------------------------------------ readiness

    def on_ready(self) -> None:
        """The selector says the socket is ready (or a turn asks us to look)."""
        self._guarded(self._on_ready)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run ``step`` on an open connection; a bug in it must cost this
        connection, never the daemon."""
        if self.closed:
            return
        try:
            step()
        except Exception:
            log.exception("control: connection failed; closing it")
            self.close()

    def _on_ready(self) -> None:
        self._block = 0
        if self.handshaking:
            self._handshake()
            if self.handshaking or self.closed:
                self._interest()
                return
        if self.out:
            self._flush()
        if self.lingering:
            self._drain()
        elif self.stream:
            self._read_stream()
        elif not self.closed and not self.out and not self.queued:
            self._read()
        self._interest()

    def _handshake(self) -> None:
        # Only a TLS listener's connections handshake (so ssl is loaded).
        sock = cast("ssl.SSLSocket", self.sock)
        try:
            sock.do_handshake()
        except tls.WantReadError:
            return
        except tls.WantWriteError:
            self._block = selectors.EVENT_WRITE
            return
        except (tls.Error, OSError):
            self.server.stats["rejected"] += 1
            self.close()
            return
        self.handshaking = False
        subject = subject_text(sock.getpeercert())
        if subject is not None:
            self.who = {**self.who, "subject": subject}

    def _recv(self) -> bytes | None:
        """One read: the client's bytes (b"" once it is done), or None when
        nothing waits now (or TLS must write first); a failed read closes
        the connection and gives None too."""
        try:
            return self.sock.recv(READ_SIZE)
        except (BlockingIOError, tls.WantReadError):
            return None
        except tls.WantWriteError:
            self._block = selectors.EVENT_WRITE
            return None
        except (tls.Error, OSError):
            self.close()
            return None

    def _read(self) -> None:
        for _ in range(4):
            data = self._recv()
            if data is None:
                if self.closed:
                    return
                break
            if data:
                self.fresh = False
            self.h11.receive_data(data)
            self._parse()
            if self.closed or self.finished or self.queued or self.out or not data:
                return
        if tls.is_tls(self.sock) and cast("ssl.SSLSocket", self.sock).pending():
            # Decrypted bytes wait inside the TLS layer: no fd will say so.
            self.server.again.add(self)

    def _read_stream(self) -> None:
        """A stream's client sends nothing more we use: only notice it leave."""
        for _ in range(4):
            data = self._recv()
            if data is None:  # nothing now (or the read failed: closed)
                return
            if not data:
                self.close()
                return

    def _parse(self) -> None:
        while not self.closed and not self.finished:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                if not self._begin(event):
                    return
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self._body_limit:
                    self._refuse(413, f"request body larger than {self._body_limit} bytes")
                    return
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.request is None:  # cannot happen: h11 sent a Request first
                    self.close()
                    return
                self.request.body = bytes(self._body)
                self._body = bytearray()
                self.queued = True
                self.deadline = None
                self.server.enqueue(self)
                return
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    def _begin(self, event: h11.Request) -> bool:
        # h11 bounds a head that arrives in pieces; one read can hold a
        # whole oversized head, so measure it here too.
        size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > MAX_HEAD:
            self._refuse(431, f"request head larger than {MAX_HEAD} bytes")
            return False
        target = event.target.decode("latin-1")
        headers: dict[str, str] = {}
        for name, value in event.headers:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        try:
            parts = urlsplit(target)
        except ValueError:
            self._refuse(400, "bad request target")
            return False
        self.request = Request(
            event.method.decode("latin-1"), target, parts.path, parts.query, headers
        )
        self._body = bytearray()
        self._body_limit = self.server.body_limit(parts.path)
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > self._body_limit:
            self._refuse(413, f"request body larger than {self._body_limit} bytes")
            return False
        if self.h11.they_are_waiting_for_100_continue:
            self._queue(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        return True

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        code = exc.error_status_hint if exc.error_status_hint in REASONS else 400
        if code == 431:
            reason = f"request head larger than {MAX_HEAD} bytes"
        else:
            reason = f"malformed request: {exc}"
        self._refuse(code, reason)

    def _refuse(self, code: int, reason: str) -> None:
        """Answer an unusable request, then close."""
        if code != 408:
            self.server.stats["rejected"] += 1
        self.finished = True
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.respond(text(code, reason + "\n", close=True))
        else:
            self.close()

    # ------------------------------------------------------------- writing

    def respond(self, response: Response) -> None:
        """Queue ``response`` to the current request and start sending it."""
        if self.closed:
            return
        self.queued = False
        body = response.body
        head_only = self.request is not None and self.request.method == "HEAD"
        headers = [
            (b"Server", SERVER_HEADER),
            (b"Content-Type", response.content_type.encode()),
            (b"Content-Length", str(len(body)).encode()),
            (b"Cache-Control", b"no-store"),
            (b"X-Content-Type-Options", b"nosniff"),
        ]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if response.close:
            headers.append((b"Connection", b"close"))
        reason = REASONS.get(response.code, "").encode()
        try:
            self._queue(
                self.h11.send(
                    h11.Response(status_code=response.code, headers=headers, reason=reason)
                )
            )
            if body and not head_only:
                for chunk in self.h11.send_with_data_passthrough(h11.Data(data=body)) or ():
                    self._queue(chunk)
            self._queue(self.h11.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            self.close()
            return
        self.deadline = time.monotonic() + self.timeout
        self._flush()
        self._interest()

    def begin_stream(self) -> None:
        """Answer the current request with a stream that stays open: its
        head now, its pieces with ``push``."""
        self.queued = False
        self.stream = True
        self.deadline = None
        headers = [
            (b"Server", SERVER_HEADER),
            (b"Content-Type", b"text/event-stream; charset=utf-8"),
            (b"Cache-Control", b"no-store"),
            (b"X-Content-Type-Options", b"nosniff"),
            # nginx would otherwise hold the events back in its buffer.
            (b"X-Accel-Buffering", b"no"),
        ]
        self._queue(self.h11.send(h11.Response(status_code=200, headers=headers, reason=b"OK")))
        self._flush()
        self._interest()

    def push(self, data: bytes) -> None:
        """Send one piece of a stream (framed by h11: chunked for HTTP/1.1)."""
        if self.closed or not self.stream:
            return
        try:
            self._queue(self.h11.send(h11.Data(data=data)))
        except h11.LocalProtocolError:
            self.close()
            return
        self._flush()
        if self.out and self.deadline is None:
            self.deadline = time.monotonic() + self._patience()
        self._interest()

    def _patience(self) -> float:
        """How long the client may take nothing before it is given up on."""
        return max(self.timeout, STALL) if self.stream else self.timeout

    def _queue(self, data: bytes | bytearray | memoryview | None) -> None:
        if data:
            self.out.append(memoryview(data))
            self.unsent += len(data)

    def _flush(self) -> None:
        while self.out:
            chunk = self.out[0]
            try:
                sent = self.sock.send(chunk)
            except (BlockingIOError, tls.WantWriteError):
                return
            except tls.WantReadError:
                self._block = selectors.EVENT_READ
                return
            except (tls.Error, OSError):
                self.close()
                return
            self.unsent -= sent
            self.deadline = time.monotonic() + (
                max(self.timeout, STALL) if self.stream else self.timeout
            )
            if sent < len(chunk):
                self.out[0] = chunk[sent:]
                return
            self.out.popleft()
        self._sent()

    def _sent(self) -> None:
        """Everything queued went out: next request, or close."""
        if self.stream:
            self.deadline = None
            self.server.streams.drained(self)
            return
        if self.queued:
            return
        if self.finished:
            self._linger()
            return
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            return  # only a 100 Continue went out; the request is still coming
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self.request = None
            self.fresh = True
            self.deadline = time.monotonic() + self.timeout
            # Pipelined bytes may already wait in h11's buffer.
            self._parse()
            return
        self._linger()

    def _linger(self) -> None:
        """Close politely: stop writing, read what the client still sends."""
        if self.lingering or self.closed:
            return
        self.lingering = self.finished = True
        self.deadline = time.monotonic() + LINGER
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()

    def _drain(self) -> None:
        for _ in range(4):
            try:
                data = self.sock.recv(READ_SIZE)
            except (BlockingIOError, tls.WantReadError, tls.WantWriteError):
                return
            except OSError:
                break
            if not data:
                break
        else:
            return
        self.close()

    # ------------------------------------------------------------ plumbing

    def _interest(self) -> None:
        if self.closed:
            return
        if self._block:
            mask = self._block
        elif self.handshaking or self.lingering:
            mask = selectors.EVENT_READ
        elif self.stream:
            # Read too, to notice a client that went away.
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        elif self.out:
            mask = selectors.EVENT_WRITE
        elif self.queued:
            mask = 0  # the server answers in its turn; nothing to wait on
        else:
            mask = selectors.EVENT_READ
        if mask == self._mask:
            return
        selector = self.server.selector
        if self._mask and mask:
            selector.modify(self.fd, mask, self.on_ready)
        elif mask:
            selector.register(self.fd, mask, self.on_ready)
        else:
            selector.unregister(self.fd)
        self._mask = mask

    def expire(self) -> None:
        """The deadline passed: tell a client mid-request, then close."""
        self._guarded(self._expire)

    def _expire(self) -> None:
        if self.stream:
            self.server.streams.drop(self, f"took nothing for {self._patience():g}s")
            return
        if self.lingering or self.handshaking or self.fresh or self.out:
            self.close()
            return
        self.server.stats["timeouts"] += 1
        self._refuse(408, "request not received in time")
        if not self.closed and self.out:
            # The 408 could not leave at once: do not wait on a slow client.
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._mask:
            with contextlib.suppress(KeyError, ValueError):
                self.server.selector.unregister(self.fd)
            self._mask = 0
        with contextlib.suppress(OSError):
            self.sock.close()
        self.out.clear()
        self.unsent = 0
        self.server.forget(self)
