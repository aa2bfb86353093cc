"""Secrets: which names hold them, and their values hidden or digested.

A define, default or environment variable whose name matches one of
``settings.secret_names`` (shell-style patterns, case-insensitive; the
defaults below) is a secret.  What is served (``/status/config``) and logged
shows it as ``"<redacted>"``; the event log stores a salted digest instead
(``Digester``), the same for the same value, so a changed secret still shows
as a change on replay and replay stays exact.

A secret's value is also hidden where it was spliced into another value
(``DSN: "postgres://app:{DB_PASSWORD}@db"``), if it is at least
``MIN_SPLICED`` characters long: shorter ones would hide common words and
numbers.

This module must never do IO: the salt arrives from the shell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from taskforce.core.sha import sha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Names that hold secrets unless ``settings.secret_names`` says otherwise.
DEFAULT_SECRET_NAMES = (
    "*PASSWORD*",
    "*PASSWD*",
    "*SECRET*",
    "*TOKEN*",
    "*KEY*",
    "*CREDENTIAL*",
)
REDACTED = "<redacted>"
#: Keys whose names look secret but hold none (a path, the patterns themselves).
NOT_SECRET = frozenset({"secret_names", "token_file"})
#: A secret's value shorter than this is hidden only under its own name.
MIN_SPLICED = 6


def _glob(pattern: str) -> str:
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return "".join(out)


class SecretNames:
    """Matches names against the patterns of ``settings.secret_names``."""

    def __init__(self, patterns: Iterable[str] = DEFAULT_SECRET_NAMES) -> None:
        self.patterns = tuple(patterns)
        joined = "|".join(f"(?:{_glob(p)})" for p in self.patterns) or "(?!)"
        self._regex = re.compile(joined + r"\Z", re.IGNORECASE | re.DOTALL)
        self._known: dict[str, bool] = {}

    def same_as(self, other: SecretNames) -> SecretNames:
        """``other`` if it matches as this does (keep it: it has learnt), else self."""
        return other if other.patterns == self.patterns else self

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> SecretNames:
        settings = config.get("settings") or {}
        patterns = settings.get("secret_names") if isinstance(settings, Mapping) else None
        if patterns is None:
            return cls()
        return cls(tuple(str(p) for p in patterns))

    def __call__(self, name: Any) -> bool:
        if not isinstance(name, str) or name in NOT_SECRET:
            return False
        known = self._known.get(name)
        if known is None:
            if len(self._known) > 100_000:
                self._known.clear()
            known = self._known[name] = self._regex.match(name) is not None
        return known


#: Keys whose mappings hold environment names (config layers, ``Booted.environ``,
#: a spawn's ``env``): only there does a name say that its value is a secret.
ENV_HOLDERS = frozenset({"defines", "role_defines", "defaults", "role_defaults", "environ", "env"})


def secret_values(
    data: Any, is_secret: SecretNames, found: set[str] | None = None, *, env: bool = False
) -> set[str]:
    """Every text found under a secret name anywhere in ``data``."""
    found = set() if found is None else found
    if isinstance(data, Mapping):
        for key, value in data.items():
            if env and is_secret(key):
                _leaves(value, found)
            else:
                secret_values(value, is_secret, found, env=env or key in ENV_HOLDERS)
    elif isinstance(data, (list, tuple)):
        for item in data:
            secret_values(item, is_secret, found, env=env)
    return found


class EntryValues:
    """The secret values of a config's task entries, each entry's found once.

    A config read piece by piece hands an unchanged task the very entry it
    had (``taskforce.config.entries``): its values are not looked for again,
    so learning a reloaded config costs what changed in it.  Only the last
    config's entries are kept: which entry each name had, and the values of
    the few entries that hold any (most hold none, and a set or a record
    per task would cost more than the entry's own mapping).
    """

    def __init__(self) -> None:
        #: the entry each task name had in the last config
        self._entries: Mapping[Any, Any] = {}
        #: the secret values of those entries that hold some
        self._values: dict[Any, frozenset[str]] = {}
        #: the names matcher both were found with
        self._is_secret: SecretNames | None = None

    def of(self, tasks: Mapping[Any, Any], is_secret: SecretNames) -> set[str]:
        """What ``secret_values`` finds under ``tasks`` (a config's)."""
        if is_secret is not self._is_secret:
            self._entries, self._values, self._is_secret = {}, {}, is_secret
        before, known = self._entries, self._values
        found: set[str] = set()
        values: dict[Any, frozenset[str]] = {}
        for name, entry in tasks.items():
            if before.get(name, self) is entry:
                hit = known.get(name)
            else:
                hit = frozenset(secret_values(entry, is_secret, env=name in ENV_HOLDERS)) or None
            if hit:
                values[name] = hit
                found |= hit
        # (``tasks`` itself, not a copy: a config is never changed once loaded)
        self._entries, self._values = tasks, values
        return found


def _leaves(data: Any, found: set[str]) -> None:
    if isinstance(data, str):
        # A {tag} is expanded where it is used: the expanded text is the secret.
        if data and "{" not in data:
            found.add(data)
    elif isinstance(data, Mapping):
        for value in data.values():
            _leaves(value, found)
    elif isinstance(data, (list, tuple)):
        for item in data:
            _leaves(item, found)


class Hider:
    """Replaces secrets in plain data: whole values under a secret name, and
    known secret values (``MIN_SPLICED`` or longer) inside other texts.

    ``replace(value)`` gives what a secret value becomes: ``"<redacted>"``
    for what is shown, a salted digest for the event log.
    """

    def __init__(self, is_secret: SecretNames, replace: Any = None) -> None:
        self.is_secret = is_secret
        self.replace = replace or (lambda value: REDACTED)
        self.values: set[str] = set()
        self._spliced: list[str] = []

    def learn(self, values: Iterable[str]) -> None:
        before = len(self.values)
        self.values.update(values)
        if len(self.values) != before:
            # Longest first, so a secret containing another is hidden whole.
            self._spliced = sorted(
                (v for v in self.values if len(v) >= MIN_SPLICED), key=lambda v: (-len(v), v)
            )

    def hide(self, data: Any, secret: bool = False, env: bool = False) -> Any:
        """``data`` with its secrets replaced (a new structure; ``data`` is
        untouched); ``env``: ``data`` is (inside) a mapping of environment names."""
        if isinstance(data, str):
            if secret or data in self.values and len(data) >= MIN_SPLICED:
                return self.replace(data) if data else data
            for value in self._spliced:
                if value in data:
                    data = data.replace(value, self.replace(value))
            return data
        if isinstance(data, Mapping):
            return {
                key: self.hide(
                    value,
                    secret or (env and self.is_secret(key)),
                    env or key in ENV_HOLDERS,
                )
                for key, value in data.items()
            }
        if isinstance(data, (list, tuple)):
            return [self.hide(item, secret, env) for item in data]
        return data


def digest(salt: str, value: str) -> str:
    """What the event log stores for a secret ``value``."""
    mac = str(sha256(f"{salt}\0{value}".encode("utf-8", "surrogatepass")).hexdigest())
    return f"<secret:{mac[:20]}>"


def redact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as ``/status/config`` shows it: every secret ``"<redacted>"``."""
    hider = Hider(SecretNames.of(config))
    hider.learn(secret_values(config, hider.is_secret))
    shown = hider.hide(config)
    return shown if isinstance(shown, dict) else {}
