"""Where the control server listens: services from the config and the
command line, and the listening sockets for them.

A listen value with a ``/`` is a Unix-domain socket path; anything else is
``[host][:port]`` for TCP (IPv6 literals in brackets, an empty host meaning
every interface, the port 8080 by default or 8443 with a certificate), as in
the original taskforce.

A Unix socket is created with mode 0600, replaces a stale socket (one that
nobody answers on) and is removed when it is closed -- but only if it is
still the socket we made.  A file that is not a socket is never removed, and
a socket that a live server answers on is never taken over.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskforce.control.options import Options
from taskforce.core.context import ContextError, as_text, expand, resolve_one
from taskforce.core.model import HostFacts, task_context

log = logging.getLogger("taskforce")

#: The control socket when ``listen`` is empty (as the original's ``-w`` help says).
DEFAULT_LISTEN = "/var/run/s.taskforce"
DEFAULT_PORT = 8080
DEFAULT_TLS_PORT = 8443
#: The original's per-connection I/O timeout.
DEFAULT_TIMEOUT = 3.0
BACKLOG = 1024


class ListenError(Exception):
    """A service that cannot be set up; the message says why, in one line."""


@dataclass(frozen=True)
class Service:
    """One HTTP service: where it listens and what it allows."""

    listen: str
    certfile: str | None = None
    allow_control: bool = False
    timeout: float = DEFAULT_TIMEOUT

    @property
    def is_unix(self) -> bool:
        return "/" in self.listen


def _value(value: Any, ctx: Mapping[str, str | None]) -> Any:
    raw = resolve_one(value, ctx, None)
    if isinstance(raw, str):
        return expand(raw, ctx)
    return raw


def services(
    config: Mapping[str, Any],
    options: Options,
    facts: HostFacts,
    roles: tuple[str, ...] | None,
    role_values: Mapping[str, str],
) -> list[Service]:
    """The services to run, from ``settings.http`` and the command line.

    As in the original: the command line overrides entry 0, and builds the
    only service when the config has none but ``-w`` was given.  Values may
    be conditional and hold ``{tags}``, resolved in the top-level context.
    Raises ListenError for an entry that does not resolve.
    """
    raw = (config.get("settings") or {}).get("http") or ()
    ctx = task_context("", {}, config, facts, roles, role_values)
    out: list[Service] = []
    for index, entry in enumerate(raw):
        try:
            listen = as_text(_value(entry.get("listen"), ctx)) or ""
            certfile = as_text(_value(entry.get("certfile"), ctx)) or None
            allow = bool(_value(entry.get("allow_control"), ctx))
            timeout_raw = _value(entry.get("timeout"), ctx)
            timeout = float(timeout_raw) if timeout_raw is not None else DEFAULT_TIMEOUT
        except (ContextError, TypeError, ValueError) as exc:
            raise ListenError(f"settings.http[{index}]: {exc}") from None
        out.append(Service(listen, certfile, allow, timeout if timeout > 0 else DEFAULT_TIMEOUT))
    if out:
        first = out[0]
        out[0] = Service(
            options.listen if options.listen is not None else first.listen,
            options.certfile if options.certfile is not None else first.certfile,
            first.allow_control or options.allow_control,
            first.timeout,
        )
    elif options.listen is not None:
        out.append(Service(options.listen, options.certfile, options.allow_control))
    return [
        Service(s.listen or DEFAULT_LISTEN, s.certfile, s.allow_control, s.timeout) for s in out
    ]


def parse_tcp(listen: str, tls: bool) -> tuple[str, int]:
    """``(host, port)`` of a TCP listen value; raises ListenError."""
    text = listen.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ListenError(f"bad listen address {listen!r}: no closing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ListenError(f"bad listen address {listen!r}: expected ':port' after ']'")
        port_text = rest[1:]
    elif text.count(":") > 1:
        raise ListenError(f"bad listen address {listen!r}: write IPv6 addresses in brackets")
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return host, DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    if not (port_text.isascii() and port_text.isdigit()):
        raise ListenError(f"bad listen address {listen!r}: TCP listen port must be an integer")
    port = int(port_text)
    if port > 65535:
        raise ListenError(f"bad listen address {listen!r}: port {port} is out of range")
    return host, port


def tls_context(certfile: str) -> ssl.SSLContext:
    """A server context for a PEM file holding the certificate and its key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile)
    except FileNotFoundError:
        raise ListenError(f"certfile {certfile}: not found") from None
    except (OSError, ssl.SSLError) as exc:
        raise ListenError(f"certfile {certfile}: {exc}") from None
    return context


class Listener:
    """A listening socket for one service."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.tls = tls_context(service.certfile) if service.certfile else None
        self._unix_id: tuple[int, int] | None = None
        if service.is_unix:
            self.sock = self._open_unix(service.listen)
            self.address = f"unix:{service.listen}"
        else:
            self.sock = self._open_tcp(service.listen)
            host, port = self.sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.address = f"{'https' if self.tls else 'http'}://{shown}:{port}"
        self.sock.setblocking(False)

    def _open_unix(self, path: str) -> socket.socket:
        _clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Bind under a tight umask so the socket is never briefly open to all.
            old = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            info = os.stat(path)
            self._unix_id = (info.st_dev, info.st_ino)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise ListenError(f"{path}: cannot listen: {exc.strerror or exc}") from None
        return sock

    def _open_tcp(self, listen: str) -> socket.socket:
        host, port = parse_tcp(listen, self.tls is not None)
        try:
            if not host and socket.has_dualstack_ipv6():
                return socket.create_server(
                    ("", port), family=socket.AF_INET6, backlog=BACKLOG, dualstack_ipv6=True
                )
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if host and ":" not in host:
                # A host name (or IPv4 literal): take its first address.
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                family, _, _, _, sockaddr = infos[0]
                host = str(sockaddr[0])
            return socket.create_server((host, port), family=family, backlog=BACKLOG)
        except socket.gaierror as exc:
            raise ListenError(f"{listen}: unknown host: {exc.strerror or exc}") from None
        except OSError as exc:
            raise ListenError(f"{listen}: cannot listen: {exc.strerror or exc}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._unix_id is None:
            return
        path = self.service.listen
        try:
            info = os.lstat(path)
            if (info.st_dev, info.st_ino) == self._unix_id:
                os.unlink(path)
        except OSError:
            pass
        self._unix_id = None


def _clear_stale(path: str) -> None:
    """Remove a socket at ``path`` that nobody answers on; refuse anything else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ListenError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: nobody listens
    except BlockingIOError:
        raise ListenError(f"{path}: another server is listening there") from None
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ListenError(f"{path}: cannot check the old socket: {exc.strerror}") from None
    else:
        raise ListenError(f"{path}: another server is listening there")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ListenError(f"{path}: cannot remove the stale socket: {exc.strerror}") from None
