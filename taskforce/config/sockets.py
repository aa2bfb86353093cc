"""The checks of the top-level ``sockets`` map and of a task's ``sockets``.

Each value is checked by the core's own rule (``taskforce.core.sockets``)
on what was written, so the check and the build never disagree; a socket's
keys are written literally (no tags, no conditional values: the socket is
opened before any task's context exists).  A task's list is checked against
the map once both are read (``socket_references``).

This module reads nothing but the config it is given and never touches
anything that runs: binding is the shell's (``taskforce.sockets``).
"""

from __future__ import annotations

from collections.abc import Mapping

from taskforce.config.checker import Checker
from taskforce.config.document import Parsed
from taskforce.config.errors import suggest
from taskforce.core.codec import freeze
from taskforce.core.sockets import (
    SOCKET_KEYS,
    SOCKET_NAME,
    family,
    parse_backlog,
    parse_listen,
    parse_mode,
    parse_owner,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.config.errors import KeyPath

_PARSERS = {
    "listen": parse_listen,
    "backlog": parse_backlog,
    "mode": parse_mode,
    "owner": parse_owner,
}


class SocketsSchema(Checker):
    """The checks of sockets; ``socket_refs`` collects the names tasks use."""

    def __init__(self, source: str, parsed: Parsed) -> None:
        super().__init__(source, parsed)
        #: Socket names the tasks list, for ``socket_references``.
        self.socket_refs: list[tuple[KeyPath, str]] = []

    def sockets(self, value: Any) -> dict[str, Any]:
        """``sockets: {NAME: {listen: ..., backlog: ..., mode: ..., owner: ...}}``."""
        path: KeyPath = ("sockets",)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.type_error(path, value, "a mapping of socket names to sockets", quote=False)
            return {}
        out: dict[str, Any] = {}
        addresses: dict[str, str] = {}
        for name, entry in value.items():
            sub = (*path, name)
            if not self.string_key(name, sub, "a socket name"):
                continue
            if not SOCKET_NAME.match(name):
                self.error(
                    sub, f"{name!r} is not a socket name (letters, digits, '_', '.', '-'; no ':')"
                )
            if not isinstance(entry, dict):
                self.type_error(sub, entry, "a mapping with at least listen", quote=False)
                continue
            self.keys(entry, sub, SOCKET_KEYS, "socket")
            out[name] = freeze(entry)
            if entry.get("listen") is None:
                self.error(sub, "the socket has no listen address", "add listen: 127.0.0.1:PORT")
            parsed: dict[str, Any] = {}
            for key, parse in _PARSERS.items():
                if entry.get(key) is None:
                    continue
                if key == "mode" and self.decimal_mode(entry[key], (*sub, key)):
                    continue
                try:
                    parsed[key] = parse(entry[key])
                except ValueError as exc:
                    self.error((*sub, key), str(exc))
            listen = parsed.get("listen")
            if listen is None:
                continue
            for key in ("mode", "owner"):
                if entry.get(key) is not None and family(listen) != "unix":
                    self.error((*sub, key), f"{key} is only for Unix sockets (a path)")
            if listen in addresses:
                self.error(
                    (*sub, "listen"), f"{listen} is also the address of sockets.{addresses[listen]}"
                )
            addresses.setdefault(listen, name)
        return out

    def decimal_mode(self, value: Any, path: KeyPath) -> bool:
        """Whether ``mode`` was written as a decimal number (660, which YAML
        does not read as octal: almost never what was meant); said if so."""
        raw = self.raws.get(path)
        if isinstance(value, bool) or not isinstance(value, int) or raw is None:
            return False
        if value == 0 or raw.lstrip("+").startswith("0"):
            return False
        self.error(
            path,
            f"a mode is octal, but YAML reads {raw} as the decimal number {value}",
            f'quote it: "0{raw}"' if raw.isdigit() else None,
        )
        return True

    def socket_names(self, value: Any, path: KeyPath) -> Any:
        """A task's ``sockets: [NAME, ...]`` (one name: a 1-tuple), literally."""
        items = (value,) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            self.type_error(path, value, "a list of socket names", quote=False)
            return freeze(value)
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            sub = (*path, index) if items is value else path
            if not isinstance(item, str):
                self.type_error(sub, item, "a socket name (from the top-level sockets)")
                continue
            if item in seen:
                self.error(sub, f"socket {item!r} is listed twice (first at [{seen[item]}])")
            seen.setdefault(item, index)
            self.socket_refs.append((sub, item))
        return freeze(items)

    def socket_references(self, sockets: Mapping[str, Any]) -> None:
        for path, name in self.socket_refs:
            if name not in sockets:
                self.error(
                    path,
                    f"no socket {name!r} in the top-level sockets",
                    suggest(name, sockets) or "define it under sockets:",
                )
