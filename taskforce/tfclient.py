"""How ``tfctl`` reaches a daemon: one HTTP request over a Unix socket or TCP (TLS).

``Client`` turns a daemon address (a socket path, ``host:port`` or an
``http://``/``https://`` URL) into a connection, sends one request with the
bearer token or client certificate it was given, and returns the status,
headers and body (or, with ``stream``, the server-sent events of an answer
that stays open); ``Unreachable`` says why the daemon could not be reached.
``UnixConnection`` (HTTP over a Unix socket) serves the tests and
benchmarks too.  Split out of ``taskforce.tfctl``, which re-exports them.

Only the standard library is used, so tfctl runs wherever Python does; this
module never prints and never exits.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import stat
from collections.abc import Iterator, Sequence
from urllib.parse import urlencode, urlsplit


class Unreachable(Exception):
    """The daemon cannot be reached; the message says where and why."""


class Usage(Exception):
    """Bad arguments, found after argparse had its say."""


class Refused(Exception):
    """A stream was answered with an error: ``code``, ``headers``, ``body``."""

    def __init__(self, code: int, headers: dict[str, str], body: str) -> None:
        super().__init__(code)
        self.code, self.headers, self.body = code, headers, body


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the tests and benchmarks use it too)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """One daemon address; ``request`` returns (status, headers, body text)."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 10.0,
        cafile: str | None = None,
        insecure: bool = False,
        token: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.cafile = cafile
        self.insecure = insecure
        #: the bearer token sent with every request (TCP control needs one)
        self.token = token
        #: a client certificate (PEM, with its key unless ``key`` names one)
        self.cert = cert
        self.key = key

    def _connection(self) -> http.client.HTTPConnection:
        address = self.address
        if "://" in address:
            parts = urlsplit(address)
            tls = parts.scheme == "https"
            host, port = parts.hostname or "localhost", parts.port
        elif "/" in address or _is_socket_file(address):
            return UnixConnection(address, self.timeout)
        else:
            tls = bool(self.cafile) or self.insecure or bool(self.cert)
            host, port = _host_port(address)
        if port is None:
            port = 8443 if tls else 8080
        if not tls:
            return http.client.HTTPConnection(host, port, timeout=self.timeout)
        context = ssl.create_default_context(cafile=self.cafile)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert:
            try:
                context.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as exc:
                raise Unreachable(f"client certificate {self.cert}: {exc}") from None
        return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=context)

    def request(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        *,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> tuple[int, dict[str, str], str]:
        headers = {"Accept": "application/json, text/plain"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if params and body is None and method == "POST":
            body = urlencode(list(params)).encode()
            content_type = "application/x-www-form-urlencoded"
        elif params:
            path = f"{path}?{urlencode(list(params))}"
        if content_type:
            headers["Content-Type"] = content_type
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except ssl.SSLError as exc:
            raise Unreachable(f"TLS with {self.address} failed: {exc.reason or exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(_why(self.address, exc)) from None
        finally:
            conn.close()
        found = {name.lower(): value for name, value in response.getheaders()}
        return response.status, found, data.decode("utf-8", "replace")

    def stream(
        self,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        *,
        resume: str | None = None,
        idle: float = 90.0,
    ) -> Iterator[tuple[str, str]]:
        """The events ``(type, data)`` of a ``text/event-stream`` answer, as
        they come; ``resume`` goes as ``Last-Event-ID``.  Ends when the server
        closes the stream, or says nothing (not even its keep-alive) for
        ``idle`` seconds; raises ``Refused`` for an error answer."""
        headers = {"Accept": "text/event-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if resume is not None:
            headers["Last-Event-ID"] = resume
        if params:
            path = f"{path}?{urlencode(list(params))}"
        conn = self._connection()
        try:
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
            except ssl.SSLError as exc:
                raise Unreachable(f"TLS with {self.address} failed: {exc.reason or exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                raise Unreachable(_why(self.address, exc)) from None
            found = {name.lower(): value for name, value in response.getheaders()}
            if response.status >= 300:
                body = response.read().decode("utf-8", "replace")
                raise Refused(response.status, found, body)
            if conn.sock is not None:
                conn.sock.settimeout(idle)
            kind, data = "message", list[str]()
            while True:
                try:
                    raw = response.readline()
                except (OSError, http.client.HTTPException):
                    return  # lost, or silent too long: the caller may resume
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if data:
                        yield kind, "\n".join(data)
                    kind, data = "message", []
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    kind = value
                elif field == "data":
                    data.append(value)
        finally:
            conn.close()


def _is_socket_file(address: str) -> bool:
    """Whether ``address`` (no ``/`` in it) names a socket in the current
    folder: ``tfctl -s s.sock`` means that file, not a host called s.sock."""
    try:
        return stat.S_ISSOCK(os.stat(address).st_mode)
    except (OSError, ValueError):
        return False


def _host_port(address: str) -> tuple[str, int | None]:
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    if port and not (port.isascii() and port.isdigit()):
        raise Usage(f"bad port in {address!r}")
    return host or "localhost", int(port) if port else None


def _socket_file_hint(address: str, exc: BaseException) -> str | None:
    """What to say when ``address`` (no ``/`` in it, and no socket file of
    that name here) was more likely meant as a socket file than as a host:
    it names no host and carries no port, or it ends in ``.sock``."""
    if "/" in address or "://" in address or address.startswith("["):
        return None
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    advice = f"give the socket's path (./{address}) or host:port"
    if isinstance(exc, socket.gaierror) and ":" not in address:
        return f"no socket file {address!r} here, and no host of that name: {advice}"
    if address.endswith(".sock"):
        return f"no socket file {address!r} here (as a host: {reason}): {advice}"
    return None


def _why(address: str, exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    hint = ""
    # ``tfctl -s taskforce.sock`` from the wrong folder reads the name as a
    # host; the resolver's "Name or service not known" would mislead.
    socket_hint = _socket_file_hint(address, exc)
    if socket_hint is not None:
        return f"cannot connect to {address}: {socket_hint}"
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        hint = (
            "; is taskforce running with a control socket there "
            "(taskforce -w PATH, or settings.http in its config)?"
        )
    elif isinstance(exc, PermissionError):
        hint = "; the socket is mode 0600: run tfctl as the user taskforce runs as"
    return f"cannot connect to {address}: {reason}{hint}"
