#!/usr/bin/env python3
"""A small HTTP/1.1 worker for rolling-replacement tests and benchmarks.

``GET /`` answers ``200`` with ``VERSION PID`` (the version comes from
``httpworker_version.py`` next to this file, so editing that module is a
code change; ``$HTTPWORKER_RELEASE``, when set, is appended as
``VERSION-RELEASE``, so a config change shows too).  Every answer closes its
connection.

Where the listening sockets come from, first that applies:

- ``--fd N`` (repeatable): sockets inherited on those descriptors (circus's
  ``$(circus.sockets.NAME)``);
- socket activation as systemd does it: ``LISTEN_FDS`` sockets from fd 3 on,
  taken only when ``LISTEN_PID`` is this process (as ``sd_listen_fds()``
  checks: the variables may have been inherited by a process they were not
  meant for);
- else it binds ``--host``:``--port`` itself with ``SO_REUSEPORT``, so that
  several workers share the port.

Readiness: when ``NOTIFY_SOCKET`` is set it sends ``READY=1`` and
``STATUS=serving`` (the sd_notify datagram, abstract ``@`` names included)
once it accepts, and ``STOPPING=1`` when asked to stop.  ``--warmup S``
sleeps before that, so that readiness matters.

SIGTERM or SIGINT: it stops accepting, finishes the requests under way
(``--grace`` seconds at most), and exits 0.  A socket it bound itself is
drained first (the connections already queued on it are served): closing a
``SO_REUSEPORT`` listener resets whatever waits in its queue.  Inherited
sockets are left to the processes that still accept on them.

``BROKEN = True`` in the version module, or ``HTTPWORKER_BROKEN=1`` in the
environment, makes it exit 1 at start-up, after the warm-up: a broken
release.

Standard library only.  It must never write to stdout per request (the
output would cost more than the request) and never exit non-zero on a
graceful stop.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpworker_version  # noqa: E402

SD_LISTEN_FDS_START = 3


def listen_fds() -> list[socket.socket]:
    """The sockets passed by socket activation, or none (``sd_listen_fds``)."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if pid != os.getpid() or count <= 0:
        return []
    # Not meant for our children: they would see a LISTEN_PID that is not
    # theirs anyway, but the descriptors must not leak into them.
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        out.append(socket.socket(fileno=fd))
    return out


def sd_notify(message: str) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET``; False when unset or refused."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    elif not address.startswith("/"):
        return False  # vsock and other kinds: not supported here
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        print(f"httpworker: sd_notify {message!r}: {exc}", file=sys.stderr, flush=True)
        return False
    return True


def version() -> str:
    """The module's VERSION, with ``-$HTTPWORKER_RELEASE`` when that is set:
    a config change (a define) shows in the answers as a code change does."""
    release = os.environ.get("HTTPWORKER_RELEASE", "")
    return f"{httpworker_version.VERSION}-{release}" if release else httpworker_version.VERSION


def bind_own(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


class Worker:
    def __init__(self, listeners: list[socket.socket], own: bool, grace: float) -> None:
        self.listeners = listeners
        self.own = own
        self.grace = grace
        self.body = f"{version()} {os.getpid()}\n".encode()
        self.busy = 0
        self.lock = threading.Condition()

    def serve(self, stop: threading.Event) -> None:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        selector = selectors.DefaultSelector()
        for sock in self.listeners:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        sd_notify(f"READY=1\nSTATUS=serving version {version()}")
        while not stop.is_set():
            # A signal lands on the wake-up socket, so this select returns.
            for key, _ in selector.select():
                if key.fileobj is wake_r:
                    try:
                        wake_r.recv(512)
                    except BlockingIOError:
                        pass
                    continue
                self.accept(key.fileobj, 1)  # type: ignore[arg-type]
        sd_notify("STOPPING=1")
        for sock in self.listeners:
            selector.unregister(sock)
            if self.own:
                self.accept(sock, None)  # drain the queue before the close resets it
            sock.close()
        self.finish()

    def accept(self, listener: socket.socket, limit: int | None) -> None:
        taken = 0
        while limit is None or taken < limit:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ECONNABORTED and the like: the client gave up
            taken += 1
            with self.lock:
                self.busy += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            line = data.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0] in (b"GET", b"HEAD") and line[1] == b"/":
                status, body = b"200 OK", self.body
            else:
                status, body = b"404 Not Found", b"not found\n"
            head = (
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
            )
            conn.sendall(head + (body if line and line[0] != b"HEAD" else b""))
        except OSError:
            pass
        finally:
            conn.close()
            with self.lock:
                self.busy -= 1
                self.lock.notify_all()

    def finish(self) -> None:
        deadline = time.monotonic() + self.grace
        with self.lock:
            while self.busy and time.monotonic() < deadline:
                self.lock.wait(deadline - time.monotonic())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HTTP worker: GET / answers VERSION PID")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--fd", type=int, action="append", default=[], help="inherited socket")
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds before serving")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to finish requests")
    parser.add_argument("--tag", help="any text, ignored: tells processes apart in ps")
    options = parser.parse_args(argv)
    stop = threading.Event()

    def on_stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if options.warmup > 0 and stop.wait(options.warmup):
        return 0  # stopped while warming up: nothing to finish
    if httpworker_version.BROKEN or os.environ.get("HTTPWORKER_BROKEN") == "1":
        print(f"httpworker {httpworker_version.VERSION}: broken release", file=sys.stderr)
        return 1
    own = False
    if options.fd:
        listeners = [socket.socket(fileno=fd) for fd in options.fd]
    else:
        listeners = listen_fds()
    if not listeners:
        listeners = [bind_own(options.host, options.port, options.backlog)]
        own = True
    Worker(listeners, own, options.grace).serve(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
