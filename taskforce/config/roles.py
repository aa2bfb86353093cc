"""The roles file: which roles this host has, and their values.

One role per line, ``name`` or ``name=value``, with ``#`` comments (whole
lines, or after the value); a role listed twice or a name that is not a role
name is an error naming its line.  No roles file (``-r -``) means every task
is in scope; a roles file that is named but missing is an error, never
"every task" (a typo must not make a fleet host run everything).

This module reads the roles file and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from taskforce.config.checker import ROLE_NAME
from taskforce.config.document import read_text
from taskforce.config.errors import ConfigError, raise_all, suggest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_TRAILING_COMMENT = re.compile(r"\s#")


@dataclass(frozen=True)
class Roles:
    """The roles of this host, from the roles file.

    ``names`` None means no roles file: every task is in scope and
    role_defines/role_defaults are ignored.  An empty tuple means a roles
    file with no roles: only tasks without ``roles`` are in scope.
    ``values`` holds the ``name=value`` lines (becoming ``Task_role_<name>``
    in every task's environment); a bare role has no entry.
    """

    names: tuple[str, ...] | None
    values: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    #: 1-based line of each role, for error messages; not part of equality
    #: so that moving a line is not a change of roles.
    lines: dict[str, int] = field(default_factory=dict, compare=False)


def parse_roles(text: str, source: str) -> Roles:
    """The roles in ``text``; raises ConfigError (with ``.errors``)."""
    names: list[str] = []
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    errors: list[ConfigError] = []
    # Lines end at "\n" only: splitlines() would also split at form feeds
    # and Unicode separators and throw the line numbers off.
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = _TRAILING_COMMENT.split(line, maxsplit=1)[0].rstrip()
        name, eq, value = line.partition("=")
        name = name.strip()
        if not ROLE_NAME.match(name):
            hint = "one role per line" if " " in name or "\t" in name else None
            errors.append(
                ConfigError(
                    source,
                    number,
                    "",
                    f"{name!r} is not a role name (letters, digits, '_', '.', '-')",
                    hint,
                )
            )
            continue
        if name in lines:
            errors.append(
                ConfigError(
                    source,
                    number,
                    "",
                    f"role {name!r} is listed twice (first on line {lines[name]})",
                )
            )
            continue
        names.append(name)
        lines[name] = number
        if eq:
            values[name] = value.strip()
    raise_all(errors)
    return Roles(tuple(names), values, source, lines)


class RolesFileMissing(ConfigError):
    """The roles file named is not there.

    Never "every task in scope": at start it is an error (a typo in ``-r``
    must not make a fleet host run everything), and a running taskforce
    keeps the roles it has (the core decides, told by ``ConfigLoaded``).
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, None, "", "roles file not found", 'give "-r -" for no roles file')

    def __reduce__(self) -> tuple[Any, ...]:
        return (RolesFileMissing, (self.file,))


def load_roles(path: str | None) -> Roles:
    """The roles in the file at ``path``; None means no roles file, so no
    role filtering (as in the original).

    A missing file raises ``RolesFileMissing``, and a file that exists but
    cannot be read is an error too: running every task on a host that was
    meant to run a few is worse than keeping what runs.
    """
    if path is None:
        return Roles(None, {}, None)
    try:
        text = read_text(path)
    except ConfigError as exc:
        if exc.message == "file not found":
            raise RolesFileMissing(path) from None
        raise
    return parse_roles(text, path)


def check_roles_against(config: Mapping[str, Any], roles: Roles) -> None:
    """ConfigError if the roles file names a role missing from settings.known_roles."""
    raise_all(roles_errors(config, roles))


def roles_errors(config: Mapping[str, Any], roles: Roles) -> list[ConfigError]:
    declared = (config.get("settings") or {}).get("known_roles")
    if declared is None or roles.names is None:
        return []
    errors = []
    for name in roles.names:
        if name not in declared:
            errors.append(
                ConfigError(
                    roles.source or "<roles>",
                    roles.lines.get(name),
                    "",
                    f"role {name!r} is not in settings.known_roles of "
                    f"{getattr(config, 'source', 'the config')}",
                    suggest(name, declared),
                )
            )
    return errors
