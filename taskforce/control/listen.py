"""Where the control server listens: services from the config and the
command line, and the listening sockets for them.

A listen value with a ``/`` is a Unix-domain socket path; anything else is
``[host][:port]`` for TCP (IPv6 literals in brackets, an empty host meaning
every interface, the port 8080 by default or 8443 with a certificate), as in
the original taskforce.

A Unix socket is created with mode 0600, replaces a stale socket (one that
nobody answers on) and is removed when it is closed -- but only if it is
still the socket we made.  A file that is not a socket is never removed, and
a socket that a live server answers on is never taken over.  It is bound
under a staging name beside its path and renamed into place once it listens;
a staging socket that a killed taskforce left there is removed at the next
start, with the same care (``clear_stale_staging``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import ipaddress
import logging
import os
import re
import socket
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from taskforce.control import tls
from taskforce.control.options import Options
from taskforce.core import access
from taskforce.core.context import ContextError, as_text, expand, resolve_one
from taskforce.core.model import HostFacts, task_context

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Any

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
    """One HTTP service: where it listens and what it allows.

    ``allow_status``/``allow_control`` are the config's ``allow:`` lists as
    grants (see ``taskforce.core.access``), None when not configured;
    ``token_file``, ``cafile``/``client_subject`` are the credentials TCP
    control needs; ``server_names`` the names a ``Host`` header may carry
    besides an address; ``public_status`` opens status on TCP beyond
    loopback to clients without a credential.
    """

    listen: str
    certfile: str | None = None
    allow_control: bool = False
    timeout: float = DEFAULT_TIMEOUT
    allow_status_to: tuple[str, ...] | None = None
    allow_control_to: tuple[str, ...] | None = None
    token_file: str | None = None
    cafile: str | None = None
    client_subject: tuple[str, ...] = ()
    server_names: tuple[str, ...] = ()
    public_status: bool = False

    @property
    def is_unix(self) -> bool:
        return "/" in self.listen

    @property
    def has_credentials(self) -> bool:
        """Whether TCP control can be granted at all (a token or client certs)."""
        return bool(self.token_file) or bool(self.cafile and self.certfile)


def auth_problems(found: list[Service]) -> list[str]:
    """Why these services must not run: control over TCP with nothing that
    proves who asks (``-A`` or ``allow_control`` without ``token_file`` or
    ``cafile``), or a ``cafile`` without a server certificate."""
    problems = []
    for index, service in enumerate(found):
        where = f"settings.http[{index}] (listen {service.listen!r})"
        if service.is_unix:
            continue
        if service.cafile and not service.certfile:
            problems.append(f"{where}: cafile needs certfile (client certificates need TLS)")
        if service.allow_control and not service.has_credentials:
            problems.append(
                f"{where}: control over TCP needs token_file or cafile (client certificates); "
                "refusing to let anyone who can connect control taskforce"
            )
    return problems


def _texts(value: Any, ctx: Mapping[str, str | None]) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else (value,)
    return tuple(str(_value(item, ctx)) for item in items)


def _allow(entry: Mapping[str, Any], ctx: Mapping[str, str | None]) -> tuple[Any, Any]:
    allow = entry.get("allow")
    if not isinstance(allow, Mapping):
        return None, None
    lists: list[tuple[str, ...] | None] = []
    for key in ("status", "control"):
        if allow.get(key) is None:
            lists.append(None)
        else:
            lists.append(tuple(access.grant_of(name) for name in _texts(allow[key], ctx)))
    return lists[0], lists[1]


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
            allow_status, allow_control = _allow(entry, ctx)
            service = Service(
                listen,
                certfile,
                allow,
                timeout if timeout > 0 else DEFAULT_TIMEOUT,
                allow_status_to=allow_status,
                allow_control_to=allow_control,
                token_file=as_text(_value(entry.get("token_file"), ctx)) or None,
                cafile=as_text(_value(entry.get("cafile"), ctx)) or None,
                client_subject=_texts(entry.get("client_subject"), ctx),
                server_names=tuple(n.lower() for n in _texts(entry.get("server_names"), ctx)),
                public_status=bool(_value(entry.get("public_status"), ctx)),
            )
        except (ContextError, TypeError, ValueError) as exc:
            raise ListenError(f"settings.http[{index}]: {exc}") from None
        out.append(service)
    if out:
        first = out[0]
        out[0] = dataclasses.replace(
            first,
            listen=options.listen if options.listen is not None else first.listen,
            certfile=options.certfile if options.certfile is not None else first.certfile,
            allow_control=first.allow_control or options.allow_control,
        )
    elif options.listen is not None:
        out.append(Service(options.listen, options.certfile, options.allow_control))
    return [dataclasses.replace(s, listen=s.listen or DEFAULT_LISTEN) for s in out]


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


def tls_context(certfile: str, cafile: str | None = None) -> ssl.SSLContext:
    """A server context for a PEM file holding the certificate and its key;
    with ``cafile``, client certificates are asked for and checked against
    it (optional at the handshake: a client without one may still get
    status where status is open, and is refused control).  The first TLS
    listener is what loads ``ssl`` (see ``tls``)."""
    tls.load()
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile)
    except FileNotFoundError:
        raise ListenError(f"certfile {certfile}: not found") from None
    except (OSError, ssl.SSLError) as exc:
        raise ListenError(f"certfile {certfile}: {exc}") from None
    if cafile:
        try:
            context.load_verify_locations(cafile)
        except FileNotFoundError:
            raise ListenError(f"cafile {cafile}: not found") from None
        except (OSError, ssl.SSLError) as exc:
            raise ListenError(f"cafile {cafile}: {exc}") from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def read_token(path: str) -> bytes:
    """The bearer token in ``path`` (surrounding white space dropped)."""
    try:
        with open(path, "rb") as handle:
            token = handle.read(4096).strip()
    except OSError as exc:
        raise ListenError(f"token_file {path}: {exc.strerror or exc}") from None
    if len(token) < 16:
        raise ListenError(f"token_file {path}: a token needs at least 16 characters")
    return token


def subject_text(cert: Mapping[str, Any] | None) -> str | None:
    """A verified peer certificate's subject as ``CN=ops,O=acme``."""
    if not cert:
        return None
    parts = []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            short = _SUBJECT_KEYS.get(key, key)
            parts.append(f"{short}={value}")
    return ",".join(parts) or None


_SUBJECT_KEYS = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "emailAddress": "emailAddress",
}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_name(header: str) -> str:
    """The name in a ``Host`` header, lower case, without port or brackets."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class Listener:
    """A listening socket for one service."""

    def __init__(
        self, service: Service, names: tuple[str, ...] = (), file_group: int | None = None
    ) -> None:
        """``names``: this host's names, which a ``Host`` header may carry;
        ``file_group``: the group a Unix socket is opened to (mode 0660)."""
        self.service = service
        self.tls = (
            tls_context(service.certfile, service.cafile if service.cafile else None)
            if service.certfile
            else None
        )
        self.token = read_token(service.token_file) if service.token_file else None
        self._unix_id: tuple[int, int] | None = None
        self.loopback = False
        if service.is_unix:
            self.sock = self._open_unix(service.listen, file_group)
            self.address = f"unix:{service.listen}"
        else:
            self.sock = self._open_tcp(service.listen)
            host, port = self.sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.address = f"{'https' if self.tls else 'http'}://{shown}:{port}"
            self.loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
        self.sock.setblocking(False)
        self.control_grants, self.status_grants = self._grants()
        self.host_names = self._host_names(names)

    def _grants(self) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        """Who may control, and who may read status (None: whoever connects)."""
        service = self.service
        if service.is_unix:
            control = service.allow_control_to
            if control is None:
                # Root and taskforce's own user, as systemd's root-only bus.
                control = tuple(sorted({"uid:0", f"uid:{os.geteuid()}"}))
            if self.token is not None:
                # Where the kernel does not say who connects (not read on
                # macOS/BSD yet), a token still can.
                control = (*control, access.TOKEN)
            return control, service.allow_status_to
        grants: list[str] = []
        if self.token is not None:
            grants.append(access.TOKEN)
        if self.tls is not None and service.cafile:
            if service.client_subject:
                grants += [f"subject:{subject}" for subject in service.client_subject]
            else:
                grants.append(access.CERT)
        status = None if (service.public_status or self.loopback) else tuple(grants)
        return tuple(grants), status

    def _host_names(self, names: tuple[str, ...]) -> frozenset[str]:
        if self.service.is_unix:
            return frozenset()
        wanted = {"localhost", *self.service.server_names, *(n.lower() for n in names if n)}
        host = parse_tcp(self.service.listen, self.tls is not None)[0].lower()
        if host:
            wanted.add(host)
        return frozenset(wanted)

    def host_ok(self, header: str | None) -> bool:
        """Whether a request's ``Host`` names this listener: an address (which
        DNS rebinding cannot forge), or one of its names.  A request without
        one (HTTP/1.0) comes from no browser, and passes."""
        if self.service.is_unix or header is None:
            return True
        name = host_name(header)
        return name in self.host_names or _is_ip(name.split("%")[0])

    def token_ok(self, header: str | None) -> bool | None:
        """None without an ``Authorization: Bearer`` header, else whether it
        holds this listener's token (compared in constant time)."""
        if header is None:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        if self.token is None:
            return False
        import hmac  # (only a request with a token: hmac loads OpenSSL's libcrypto)

        return hmac.compare_digest(value.strip().encode("latin-1", "replace"), self.token)

    def _open_unix(self, path: str, file_group: int | None) -> socket.socket:
        _clear_stale(path)
        # Made ready under a name of its own, then renamed into place: a
        # client that sees ``path`` can connect (between bind and listen it
        # would be refused), and a socket whose set-up failed never shows.
        folder = os.path.dirname(path)
        staging = os.path.join(folder, _staging_name(os.getpid()))
        if len(os.fsencode(staging)) >= _UNIX_PATH_MAX:
            staging = path  # no room for the longer name: bind in place
        else:
            clear_stale_staging(folder or ".")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Bind under a tight umask so the socket is never briefly open to all.
            old = os.umask(0o177)
            try:
                with contextlib.suppress(FileNotFoundError):
                    if staging != path:
                        os.unlink(staging)  # left by a taskforce of this pid that was killed
                sock.bind(staging)
            finally:
                os.umask(old)
            if file_group is not None:
                # Connecting needs write permission: the group gets rw.
                os.chown(staging, -1, file_group)
                os.chmod(staging, 0o660)
            else:
                os.chmod(staging, 0o600)
            sock.listen(BACKLOG)
            if staging != path:
                os.rename(staging, path)
            info = os.stat(path)
            self._unix_id = (info.st_dev, info.st_ino)
        except OSError as exc:
            sock.close()
            if staging != path:
                with contextlib.suppress(OSError):
                    os.unlink(staging)
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


#: The smallest ``sun_path`` of the platforms we run on (macOS and the BSDs;
#: Linux has 108): a staging name that may not fit is not used.
_UNIX_PATH_MAX = 104


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


def _staging_name(pid: int) -> str:
    """The name a Unix control socket is bound under before it is renamed
    into place (see ``Listener._open_unix``)."""
    return f".taskforce-{pid}.sock"


#: Exactly the staging names ``_staging_name`` makes: a pid in plain digits.
_STAGING = re.compile(r"\.taskforce-([1-9][0-9]*)\.sock")
#: The largest pid (``pid_t`` is 32 bits): a bigger number is no pid, so the
#: name is none of ours (and ``os.kill`` could not even be asked about it).
_PID_MAX = 2**31 - 1


def clear_stale_staging(folder: str) -> list[str]:
    """Remove the staging sockets in ``folder`` that a killed taskforce left
    between bind and rename; the names removed.

    Only a name of exactly the staging pattern, of another pid than ours,
    that is a socket itself (a symlink is never followed, and never removed),
    owned by our effective uid, whose pid is no live taskforce, and on which
    nobody listens (a connect is refused) is removed.  A live taskforce's
    staging socket may not listen yet (it is between bind and listen), so a
    refused connect alone is not enough.  Anything else is left alone, and a
    folder that cannot be read is not an error here: binding will say so.
    """
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return removed
    for name in entries:
        found = _STAGING.fullmatch(name)
        if found is None:
            continue
        pid = int(found.group(1))
        if pid == os.getpid() or pid > _PID_MAX:
            continue
        where = os.path.join(folder, name)
        try:
            info = os.lstat(where)
        except OSError:
            continue
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.geteuid():
            continue
        if _may_be_live_taskforce(pid) or not _refuses(where):
            continue
        try:
            again = os.lstat(where)
            if (again.st_dev, again.st_ino) != (info.st_dev, info.st_ino):
                continue  # replaced while we looked: not the file we judged
            os.unlink(where)
        except OSError:
            continue
        log.info("removed %s, the staging socket of a taskforce (pid %d) that is gone", where, pid)
        removed.append(name)
    return removed


def _may_be_live_taskforce(pid: int) -> bool:
    """Whether ``pid`` may be a running taskforce: it is alive and is a
    taskforce, or alive where we cannot tell what it runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # alive (EPERM: another user's)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return True  # no /proc here (macOS, BSD), or it just ended: keep it
    return any(b"taskforce" in arg for arg in argv)


def _refuses(path: str) -> bool:
    """Whether a connect to the Unix socket at ``path`` is refused: nobody
    listens there."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except OSError as exc:
        return exc.errno == errno.ECONNREFUSED
    else:
        return False
    finally:
        probe.close()


def holder(path: str, timeout: float = 2.0) -> str | None:
    """Who listens on the Unix socket at ``path``, in a few words
    (``taskforce (pid 123)``), or None when nobody answers there: no file,
    not a socket, or a stale socket (left by a taskforce that was killed),
    which a listener takes over.

    A socket we may not connect to is left for the listener to report.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError, PermissionError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.EACCES):
            return None
        return "a live server (it does not accept connections now)"
    try:
        pid = _peer_pid(probe)
    finally:
        probe.close()
    if pid is None:
        return "a live server"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return f"pid {pid}"
    if any(b"taskforce" in arg for arg in argv):
        return f"taskforce (pid {pid})"
    return f"pid {pid} ({os.fsdecode(argv[0])})"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """The (pid, uid, gid) of the process at the other end of a Unix
    socket, from the kernel: ``SO_PEERCRED`` (Linux), else ``getpeereid``
    (macOS, the BSDs: no pid there, given as 0); None where neither is."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return _getpeereid(sock)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _getpeereid(sock: socket.socket) -> tuple[int, int, int] | None:
    """(0, uid, gid) from libc's ``getpeereid``, where libc has one."""
    import ctypes

    call = _libc_getpeereid()
    if call is None:
        return None  # no such call here (glibc has none): no grant by user
    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    if call(sock.fileno(), ctypes.byref(uid), ctypes.byref(gid)) != 0:
        return None
    return 0, uid.value, gid.value


@functools.cache
def _libc_getpeereid() -> Any:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).getpeereid
    except (OSError, AttributeError):
        return None


def _peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process that listens at the other end (Linux)."""
    creds = peer_credentials(sock)
    return creds[0] if creds is not None and creds[0] > 0 else None
