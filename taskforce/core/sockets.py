"""Sockets held by taskforce, as data: the top-level ``sockets`` map.

A socket is named in the config (``sockets: {web: {listen: ...}}``) and
listed by the tasks that use it (``sockets: [web]``); the shell
(``taskforce.sockets``) opens it once and hands it to each process of those
tasks from fd 3 on, as systemd's socket activation does.  Here a socket is
only a ``SocketSpec``: its name and what it listens on, checked and written
one canonical way, so that two specs are equal exactly when they are the
same socket (which is how a changed address restarts the tasks using it).

The parse functions are the rules the config check applies to what was
written (``taskforce.config``) and the build applies again (``model``).

This module must never do IO: no socket is opened, no name is looked up.
"""

from __future__ import annotations

import posixpath
import re
from collections import namedtuple
from collections.abc import Mapping

from taskforce.core.specs import SpecError
from taskforce.core.values import parse_umask

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

#: The keys of one socket's entry.
SOCKET_KEYS = ("listen", "backlog", "mode", "owner")
#: What a socket may be called: it reaches a process in ``LISTEN_FDNAMES``,
#: where ``:`` separates names (systemd allows at most 255 characters).
SOCKET_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}\Z")
#: The longest Unix socket path (``sun_path`` holds 108 bytes on Linux,
#: 104 on the BSDs and macOS, one of them the ending NUL).
MAX_UNIX_PATH = 103
_PORT = re.compile(r"\d{1,5}\Z")


# mypy reads the NamedTuple; a daemon runs the collections.namedtuple that
# typing.NamedTuple would have made of it (the same class, but for its
# __annotations__), as importing typing costs a daemon 0.45 MiB of memory.
# tests/test_imports.py checks that the two have the same fields and defaults.
if TYPE_CHECKING:

    class SocketSpec(NamedTuple):
        """One socket taskforce holds (a tuple, so events and snapshots carry
        it as plain data).

        ``listen`` is canonical: ``127.0.0.1:8080``, ``[::1]:8080`` or an
        absolute path; ``backlog`` None is the host's ``SOMAXCONN``; ``mode``
        and ``owner`` (``user`` or ``user:group``) are for Unix sockets only.
        """

        name: str
        listen: str
        backlog: int | None = None
        mode: int | None = None
        owner: str | None = None

else:
    SocketSpec = namedtuple(
        "SocketSpec", "name listen backlog mode owner", defaults=(None, None, None)
    )


def family(listen: str) -> str:
    """``unix``, ``inet6`` or ``inet``, of a canonical ``listen``."""
    if listen.startswith("/"):
        return "unix"
    return "inet6" if listen.startswith("[") else "inet"


def split_address(listen: str) -> tuple[str, int]:
    """(host, port) of a canonical TCP ``listen``."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _port(text: str, value: Any) -> int:
    if not _PORT.match(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {value!r}")
    return int(text)


def parse_listen(value: Any) -> str:
    """``listen`` written canonically, or ValueError saying why not.

    ``HOST:PORT`` with an IPv4 address, ``[ADDRESS]:PORT`` with an IPv6
    one, an absolute path (a Unix socket), or a bare port: every IPv4
    address (``0.0.0.0:PORT``).  Host names are refused: an address that a
    name resolves to may change, and nothing here looks one up.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return f"0.0.0.0:{_port(str(value), value)}"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            "expected HOST:PORT, [IPV6]:PORT, a port or an absolute path, got " + repr(value)
        )
    text = value.strip()
    if text.startswith("/"):
        path = posixpath.normpath(text)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if len(path.encode()) > MAX_UNIX_PATH:
            raise ValueError(f"a Unix socket path is at most {MAX_UNIX_PATH} bytes long")
        if "\0" in path:
            raise ValueError("a Unix socket path cannot hold a NUL")
        return path
    if _PORT.match(text):
        return f"0.0.0.0:{_port(text, value)}"
    # (imported here: only configs with network sockets need it)
    import ipaddress

    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPV6]:PORT, got {value!r}")
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        return f"[{address.compressed}]:{_port(port, value)}"
    host, sep, port = text.rpartition(":")
    if not sep:
        hint = "a Unix socket path must be absolute" if "/" in text else "it needs a port"
        raise ValueError(f"expected HOST:PORT, got {value!r} ({hint})")
    if ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port}")
    try:
        address4 = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IPv4 address (host names are not looked up; "
            "write the address, or [ADDRESS] for IPv6)"
        ) from None
    return f"{address4}:{_port(port, value)}"


def parse_backlog(value: Any) -> int:
    """The length of the queue of connections not yet accepted."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"backlog must be a whole number from 1 to 65535, got {value!r}")
    return value


def parse_mode(value: Any) -> int:
    """A Unix socket's permission bits, in octal (``"0660"``, or YAML's 0660)."""
    try:
        return parse_umask(value)
    except ValueError:
        raise ValueError(
            f'expected octal permission bits from 000 to 777, such as "0660", got {value!r}'
        ) from None


def parse_owner(value: Any) -> str:
    """``user`` or ``user:group`` (names or numbers), as written."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected USER or USER:GROUP, got {value!r}")
    user, sep, group = value.partition(":")
    if not user or (sep and not group) or ":" in group or any(c.isspace() for c in value):
        raise ValueError(f"expected USER or USER:GROUP, got {value!r}")
    return value


def socket_spec(name: str, entry: Any) -> SocketSpec:
    """The spec of socket ``name`` from its entry; SpecError (key path
    under ``sockets.NAME``) for a bad one."""
    if not SOCKET_NAME.match(name):
        raise SpecError((), "a socket name is 1 to 255 letters, digits, '_', '.' or '-' (no ':')")
    if not isinstance(entry, Mapping):
        raise SpecError((), "a socket is a mapping with at least listen")
    for key in entry:
        if key not in SOCKET_KEYS:
            raise SpecError((key,), f"unknown socket key {key!r}")
    if entry.get("listen") is None:
        raise SpecError((), "the socket has no listen address")
    values: dict[str, Any] = {}
    for key, parse in (
        ("listen", parse_listen),
        ("backlog", parse_backlog),
        ("mode", parse_mode),
        ("owner", parse_owner),
    ):
        if entry.get(key) is None:
            continue
        try:
            values[key] = parse(entry[key])
        except ValueError as exc:
            raise SpecError((key,), str(exc)) from None
    for key in ("mode", "owner"):
        if key in values and family(values["listen"]) != "unix":
            raise SpecError((key,), f"{key} is only for Unix sockets (a path)")
    return SocketSpec(name=name, **values)


def socket_specs(config: Mapping[str, Any]) -> dict[str, SocketSpec]:
    """Every socket of a config by name; SpecError with its key path."""
    found: dict[str, SocketSpec] = {}
    by_address: dict[str, str] = {}
    entries: Mapping[str, Any] = config.get("sockets") or {}
    for name in sorted(entries):
        try:
            spec = socket_spec(name, entries[name])
        except SpecError as exc:
            raise SpecError(("sockets", name, *exc.path), exc.message) from None
        other = by_address.get(spec.listen)
        if other is not None:
            raise SpecError(
                ("sockets", name, "listen"), f"{spec.listen} is also the address of sockets.{other}"
            )
        by_address[spec.listen] = name
        found[name] = spec
    return found


def task_sockets(value: Any, sockets: Mapping[str, SocketSpec]) -> tuple[SocketSpec, ...]:
    """The specs of the sockets a task lists (``sockets: [NAME, ...]``, or
    one name), in its order; SpecError (under the task's ``sockets``)."""
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise SpecError((), "expected a list of socket names")
    out: list[SocketSpec] = []
    for index, name in enumerate(names):
        if not isinstance(name, str) or name not in sockets:
            raise SpecError((index,), f"no socket {name!r} in the config's sockets")
        if name in names[:index]:
            raise SpecError((index,), f"socket {name!r} is listed twice")
        out.append(sockets[name])
    return tuple(out)
