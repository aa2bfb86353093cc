"""Readiness probes, performed on the daemon's selector without blocking it.

The core asks with a ``Probe`` effect and gets exactly one
``ProbeFinished`` back for it, within the probe's ``timeout``:

- ``tcp``: a non-blocking connect to ``HOST:PORT`` (``[v6]:PORT``; a bare
  ``PORT`` means 127.0.0.1); it passes when the connection is accepted.
- ``http``: the same connect to the URL's host and port, then
  ``GET path HTTP/1.0`` with a ``Host`` header; it passes on a 2xx status
  line (``detail`` says ``HTTP 503`` otherwise).  Plain ``http://`` only.

A refused connection says ``connection refused``; one that does not end in
time says ``timed out after Ns``.  Numeric addresses and ``localhost`` are
used as they are; any other host name is looked up on a short-lived worker
thread (a lookup can block for seconds), which wakes the loop when done.
Probes still under way when the daemon stops or resets are dropped with it.

This module only reports what it found; whether a slot is ready, and when
to try again, is the core's call.  It never raises into the loop: every
failure becomes the ``detail`` of a ``ProbeFinished``.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable

from taskforce.core import effects as fx
from taskforce.core import events as ev

log = logging.getLogger("taskforce")

#: The most of an HTTP answer read for its status line.
MAX_STATUS_LINE = 1024

Address = tuple[int, tuple[str, int]]  # (family, (host, port))


class BadTarget(ValueError):
    """A probe target that cannot be tried (what is wrong with it)."""


def parse_tcp(target: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` as (host, port)."""
    text = target.strip()
    if text.isdigit():
        host, port = "127.0.0.1", text
    elif text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadTarget(f"not PORT, HOST:PORT or [V6]:PORT: {target!r}")
    return host, int(port)


def parse_http(target: str) -> tuple[str, int, bytes]:
    """An ``http://`` URL as (host, port, request bytes)."""
    # (imported here, as ipaddress in ``numeric``: only a daemon whose tasks
    # are probed needs them; a probe runs in the main loop, never in a
    # signal handler or a shutdown)
    from urllib.parse import urlsplit

    try:
        url = urlsplit(target.strip())
        port = url.port or 80
    except ValueError as exc:
        raise BadTarget(f"not a URL: {target!r} ({exc})") from None
    if url.scheme != "http" or not url.hostname:
        raise BadTarget(f"not an http:// URL: {target!r}")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    host = url.netloc.rpartition("@")[2]  # never send credentials in Host
    request = (
        f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: taskforce-probe\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    )
    return url.hostname, port, request.encode("latin-1", "replace")


def status_detail(head: bytes) -> tuple[bool, str]:
    """Whether an HTTP answer starting with ``head`` passes, and what it said."""
    line = head.split(b"\n", 1)[0].strip().decode("latin-1")
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f"not an HTTP answer: {line[:60]!r}" if line else "no answer"
    code = int(parts[1])
    return 200 <= code < 300, f"HTTP {code}"


def numeric(host: str, port: int) -> list[Address] | None:
    """The addresses of ``host`` without a lookup, if it needs none."""
    if host == "localhost":
        return [(socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", port))]
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return [(family, (host, port))]


def lookup(host: str, port: int) -> list[Address] | str:
    """The addresses of ``host`` (blocking: run on a worker), or why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    found: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            found.append((family, (str(sockaddr[0]), int(sockaddr[1]))))
    return found or f"cannot resolve {host}: no address"


def _error(code: int) -> str:
    if code == errno.ECONNREFUSED:
        return "connection refused"
    return os.strerror(code).lower()


class _Run:
    """One probe under way."""

    def __init__(self, effect: fx.Probe, deadline: float) -> None:
        self.effect = effect
        self.deadline = deadline
        self.addresses: list[Address] = []
        self.request = b""
        self.sock: socket.socket | None = None
        self.answer = b""
        self.first_error = ""
        self.done = False


class Probes:
    """The probes under way, on ``selector``; ``wake()`` makes the loop take
    a turn (a host name lookup ended).  The daemon asks ``next_deadline``
    for its select timeout and feeds what ``take`` returns."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.selector = selector
        self.wake = wake
        self.clock = clock
        self.runs: list[_Run] = []
        #: probes that ended, not yet taken: (effect, ok, detail)
        self._results: list[tuple[fx.Probe, bool, str]] = []
        self._looked_up: list[tuple[_Run, list[Address] | str]] = []
        self._lock = threading.Lock()

    def start(self, effect: fx.Probe) -> ev.ProbeFinished | None:
        """Begin ``effect``; its ``ProbeFinished`` if that is known at once."""
        run = _Run(effect, self.clock() + max(0.0, effect.timeout))
        self.runs.append(run)
        try:
            if effect.kind == "tcp":
                host, port = parse_tcp(effect.target)
            elif effect.kind == "http":
                host, port, run.request = parse_http(effect.target)
            else:
                raise BadTarget(f"unknown probe kind {effect.kind!r}")
        except BadTarget as exc:
            self._finish(run, False, str(exc))
        else:
            addresses = numeric(host, port)
            if addresses is None:
                worker = threading.Thread(
                    target=self._lookup, args=(run, host, port), daemon=True, name="probe-lookup"
                )
                worker.start()
            else:
                run.addresses = addresses
                self._connect(run)
        return self._event(*self._results.pop()) if run.done else None

    def next_deadline(self) -> float | None:
        """When ``take`` has something to do: now, with results waiting."""
        if self._results or self._looked_up:
            return self.clock()
        return min((run.deadline for run in self.runs), default=None)

    def take(self) -> list[ev.ProbeFinished]:
        """The probes that ended, timed out ones included, in that order."""
        with self._lock:
            looked_up, self._looked_up = self._looked_up, []
        for run, found in looked_up:
            if run.done:
                continue
            if isinstance(found, str):
                self._finish(run, False, found)
            else:
                run.addresses = found
                self._connect(run)
        now = self.clock()
        for run in list(self.runs):
            if not run.done and now >= run.deadline:
                self._finish(run, False, f"timed out after {run.effect.timeout:g}s")
        results, self._results = self._results, []
        # Stamped now, as they reach the core: never earlier than what was fed before.
        return [self._event(*result) for result in results]

    def close(self) -> None:
        """Drop every probe under way (shutdown, reset): no answer follows."""
        for run in list(self.runs):
            self._drop(run)
            run.done = True
        self.runs.clear()
        self._results.clear()

    # ------------------------------------------------------------ steps

    def _lookup(self, run: _Run, host: str, port: int) -> None:
        found = lookup(host, port)  # on the worker
        with self._lock:
            self._looked_up.append((run, found))
        self.wake()

    def _connect(self, run: _Run) -> None:
        """Try the next address; finish when none is left."""
        while run.addresses and not run.done:
            family, address = run.addresses.pop(0)
            try:
                # (Python's sockets are close-on-exec already; SOCK_CLOEXEC
                # is Linux's and the BSDs', not macOS's.)
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                run.first_error = run.first_error or _error(exc.errno or 0)
                continue
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code in (0, errno.EINPROGRESS, errno.EAGAIN):
                run.sock = sock
                self.selector.register(sock, selectors.EVENT_WRITE, lambda: self._writable(run))
                return
            sock.close()
            run.first_error = run.first_error or _error(code)
        if not run.done:
            self._finish(run, False, run.first_error or "no address to connect to")

    def _writable(self, run: _Run) -> None:
        if run.done or run.sock is None:
            return
        sock = run.sock
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._drop(run)
            run.first_error = run.first_error or _error(code)
            self._connect(run)
            return
        if run.effect.kind == "tcp":
            self._finish(run, True, "")
            return
        try:
            sent = sock.send(run.request)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(run, False, _error(exc.errno or 0))
            return
        run.request = run.request[sent:]
        if not run.request:
            self.selector.modify(sock, selectors.EVENT_READ, lambda: self._readable(run))

    def _readable(self, run: _Run) -> None:
        if run.done or run.sock is None:
            return
        try:
            chunk = run.sock.recv(MAX_STATUS_LINE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(run, False, _error(exc.errno or 0))
            return
        run.answer += chunk
        if chunk and b"\n" not in run.answer and len(run.answer) < MAX_STATUS_LINE:
            return  # the status line is not complete yet
        if not run.answer:
            self._finish(run, False, "connection closed without an answer")
            return
        self._finish(run, *status_detail(run.answer))

    def _drop(self, run: _Run) -> None:
        if run.sock is not None:
            try:
                self.selector.unregister(run.sock)
            except (KeyError, ValueError):
                pass
            run.sock.close()
            run.sock = None

    def _finish(self, run: _Run, ok: bool, detail: str) -> None:
        self._drop(run)
        run.done = True
        if run in self.runs:
            self.runs.remove(run)
        self._results.append((run.effect, ok, detail))

    def _event(self, effect: fx.Probe, ok: bool, detail: str) -> ev.ProbeFinished:
        return ev.ProbeFinished(
            at=self.clock(),
            task=effect.task,
            instance=effect.instance,
            run=effect.run,
            ok=ok,
            detail=detail,
        )
