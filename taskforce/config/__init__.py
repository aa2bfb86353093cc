"""Loading and checking the config file and the roles file (shell side).

The public face of the package: ``load_config``/``load_config_text``,
``validate_all``, ``check``, ``program_warnings`` and the roles file's
``load_roles``/``parse_roles``.  The parts: ``document`` reads YAML with the
line of every key, ``checker`` checks single values, ``tasks`` and
``settings`` hold the schema as tables of checkers (``TASK_KEYS`` and the
other key lists are derived from them), ``schema`` joins them, ``roles``
reads the roles file, ``errors`` places and words every problem.

This package turns the YAML config into the normalized dict that
``taskforce.core.model.build`` consumes, and the roles file into a ``Roles``
value.  Every problem it finds becomes a ``ConfigError`` naming the file, the
line and the key path (``tasks.ntpd.events[1].path``), with a hint where YAML
1.1 is known to surprise people (``control: off`` is boolean false).

Normalization, so that the core sees one shape only:

- every list becomes a tuple, recursively (the core requires tuples);
- ``requires``, ``roles``, a file_change ``path`` and a command given as one
  string become 1-tuples;
- event signals become canonical names (``hup``, ``1``, ``SIGHUP`` → ``"SIGHUP"``);
- ``settings``, ``sockets``, ``defines``, ``role_defines``, ``defaults``
  and ``role_defaults`` are always present (``{}`` when absent);
- a map in place of a value (a conditional value, keyed by context variable
  names) is kept as a dict for the core to resolve.

Stricter than the original (DESIGN.md section 2), each with a clear error:
unknown keys, wrong types, a key given twice in one mapping (YAML would keep
the last silently), ``yes``/``no``/``on``/``off`` where text is meant, and
numbers whose YAML spelling is not what the process would see (``0755`` is
493, ``1:30`` is 90, ``1.10`` is 1.1).  The roles file gains ``name=value``
lines and trailing comments.

It reads files and the host's names, and does nothing else: it must never
start a process, send a signal, or change any running state.  A config that
fails here is reported and ignored by the caller, so what runs stays as it is.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import socket
from collections.abc import Iterator, Mapping

from taskforce.config.checker import ROLE_NAME, START_LIMIT_KEYS, signal_name
from taskforce.config.document import MAX_NODES, LoadedConfig, read_text
from taskforce.config.errors import ConfigError, format_path, line_of, raise_all
from taskforce.config.roles import (
    Roles,
    RolesFileMissing,
    check_roles_against,
    load_roles,
    parse_roles,
    roles_errors,
)
from taskforce.config.schema import TOP_KEYS, check_text
from taskforce.config.settings import ALLOW_KEYS, HTTP_KEYS, RECORD_KEYS, SETTINGS_KEYS
from taskforce.config.tasks import (
    BUILTIN_COMMANDS,
    EVENT_KEYS,
    EVENT_TYPES,
    ONEXIT_KEYS,
    ONEXIT_TYPES,
    TASK_KEYS,
)
from taskforce.core.model import (
    CONTROLS,
    ENVIRONMENTS,
    LIMIT_NAMES,
    OUTPUT_FILE_KEYS,
    OUTPUT_MODES,
    HostFacts,
    SpecError,
    TaskSpec,
    build,
)
from taskforce.core.sockets import SOCKET_KEYS
from taskforce.core.values import MAX_COUNT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.config.errors import KeyPath

#: What other modules (and tests) import from here.
__all__ = [
    "ALLOW_KEYS",
    "BUILTIN_COMMANDS",
    "CONTROLS",
    "ENVIRONMENTS",
    "EVENT_KEYS",
    "EVENT_TYPES",
    "HTTP_KEYS",
    "LIMIT_NAMES",
    "MAX_COUNT",
    "MAX_NODES",
    "ONEXIT_KEYS",
    "ONEXIT_TYPES",
    "OUTPUT_FILE_KEYS",
    "OUTPUT_MODES",
    "RECORD_KEYS",
    "ROLE_NAME",
    "SCHEMA_ONLY",
    "SETTINGS_KEYS",
    "SOCKET_KEYS",
    "START_LIMIT_KEYS",
    "TASK_KEYS",
    "TOP_KEYS",
    "ConfigError",
    "LoadedConfig",
    "Roles",
    "RolesFileMissing",
    "check",
    "check_roles_against",
    "format_path",
    "host_facts",
    "host_names",
    "line_of",
    "load_config",
    "load_config_text",
    "load_roles",
    "parse_roles",
    "program_warnings",
    "signal_name",
    "validate_all",
]


@functools.lru_cache(maxsize=1)
def host_names() -> tuple[str, str]:
    """This host's name and its fully qualified name."""
    # The lookup may wait on DNS: once per process, not per reload.
    host = socket.gethostname()
    return host, _fully_qualified(host)


def _fully_qualified(host: str) -> str:
    """What ``socket.getfqdn(host)`` answers: the first of the names the
    resolver gives the host that has a dot, else its canonical name, else
    ``host`` itself when it cannot be resolved.

    The name is passed as bytes: given a str, even a plain ASCII one,
    ``gethostbyaddr`` loads the IDNA codec, and with it ``unicodedata`` and
    ``stringprep`` (0.4 MiB the daemon would keep for good).
    """
    try:
        name = host.encode("ascii")
    except UnicodeEncodeError:
        return socket.getfqdn(host)
    try:
        canonical, aliases, _ = socket.gethostbyaddr(name)  # type: ignore[arg-type]  # (bytes: see above)
    except OSError:
        return host
    return next((each for each in (canonical, *aliases) if "." in each), canonical)


def host_facts() -> HostFacts:
    """What the core is told about this host, as at this moment."""
    host, fqdn = host_names()
    return HostFacts(environ=dict(os.environ), host=host, fqdn=fqdn, pid=os.getpid())


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a config is loaded.

    Loading allocates many small objects and none of them cyclic garbage;
    the collector's passes over them roughly doubled the time of a
    1,000-task config.  A pause of well under a second harms nothing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _build_errors(
    config: Mapping[str, Any],
    source: str,
    roles: Roles,
    facts: HostFacts | None,
) -> tuple[dict[str, TaskSpec] | None, list[ConfigError]]:
    try:
        specs = build(config, facts or host_facts(), roles.names, roles.values)
    except SpecError as exc:
        line = line_of(_lines(config), exc.path)
        return None, [ConfigError(source, line, format_path(exc.path), exc.message)]
    except RecursionError:
        # model.find_cycle/start_order recurse once per link of a requires chain.
        return None, [ConfigError(source, None, "", "the chain of requires is too deep to check")]
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # A shape the schema let through but the core cannot use: still a
        # config problem to report, never a crash of the daemon on reload.
        return None, [ConfigError(source, None, "", f"cannot build the config: {exc!r}")]
    return specs, []


def _lines(config: Mapping[str, Any]) -> Mapping[KeyPath, int]:
    """The line of each key path of ``config``, if it knows them (asked for
    only when an error or a warning is to be placed: a ``LoadedConfig``
    reads them again from its text)."""
    lines: Mapping[KeyPath, int] = getattr(config, "lines", {})
    return lines


class _Unset:
    """The default of ``roles``: check the schema only, build nothing."""

    def __repr__(self) -> str:
        return "<schema only>"


SCHEMA_ONLY: Any = _Unset()


def _as_roles(roles: Any, role_values: Mapping[str, str] | None) -> Roles | None:
    """A ``Roles`` from either calling style; None means "schema only"."""
    if isinstance(roles, _Unset):
        return None
    if isinstance(roles, Roles):
        if role_values is None:
            return roles
        return Roles(roles.names, dict(role_values), roles.source, roles.lines)
    return Roles(None if roles is None else tuple(roles), dict(role_values or {}), None)


def _problems(
    text: str, source: str, roles: Roles | None, facts: HostFacts | None
) -> tuple[LoadedConfig, list[ConfigError]]:
    with _collector_paused():
        config, errors = check_text(text, source)
        if not errors and roles is not None:
            errors = roles_errors(config, roles)
            errors += _build_errors(config, source, roles, facts)[1]
    return config, errors


def validate_all(
    text: str,
    source: str,
    roles: Roles | tuple[str, ...] | None = SCHEMA_ONLY,
    role_values: Mapping[str, str] | None = None,
    *,
    facts: HostFacts | None = None,
) -> list[ConfigError]:
    """Every problem found in ``text`` (empty when it is valid), in file order.

    Schema problems are all collected in one pass.  When ``roles`` is given
    (a ``Roles``, or names with ``role_values``; None: no roles file), a
    config free of those is then built by the core, which stops at its first
    problem, and a ``Roles`` is checked against ``settings.known_roles``.
    """
    try:
        errors = _problems(text, source, _as_roles(roles, role_values), facts)[1]
    except ConfigError as exc:
        return list(exc.errors)
    return sorted(errors, key=lambda err: err.line or 0)


def load_config_text(
    text: str,
    source: str = "<config>",
    roles: Roles | tuple[str, ...] | None = SCHEMA_ONLY,
    role_values: Mapping[str, str] | None = None,
    *,
    facts: HostFacts | None = None,
) -> LoadedConfig:
    """The normalized config in ``text``; raises ConfigError (with ``.errors``).

    When ``roles`` is given (see ``validate_all``), also builds it with the
    core so that unknown requires, dependency cycles and conditionals that
    resolve badly are reported too.
    """
    config, errors = _problems(text, source, _as_roles(roles, role_values), facts)
    raise_all(errors)
    return config


#: A config loaded with ``keep`` and what it was loaded from: the next load
#: of the same text with the same roles takes it instead of checking it again.
_kept: list[tuple[tuple[Any, ...], LoadedConfig]] = []


def load_config(
    path: str,
    roles: Roles | tuple[str, ...] | None = SCHEMA_ONLY,
    role_values: Mapping[str, str] | None = None,
    *,
    facts: HostFacts | None = None,
    keep: bool = False,
) -> LoadedConfig:
    """The normalized config in the file at ``path``; see ``load_config_text``.

    ``keep``: the next call for the same text, roles and facts returns this
    config rather than reading and checking it again, once (the command line
    checks the config before the daemon starts, which then loads it: at
    start-up that was the same work twice, a third of the time of a
    10,000-task start).
    """
    text = read_text(path)
    key = (path, text, roles, dict(role_values or {}), facts)
    if _kept:
        (kept_key, kept), _kept[:] = _kept[0], []
        if kept_key == key:
            return kept
    config = load_config_text(text, path, roles, role_values, facts=facts)
    if keep:
        _kept.append((key, config))
    return config


def check(
    config: Mapping[str, Any],
    source: str,
    roles: Roles | tuple[str, ...] | None,
    role_values: Mapping[str, str] | None = None,
    facts: HostFacts | None = None,
) -> dict[str, TaskSpec]:
    """Build a normalized config with the core; SpecError becomes ConfigError.

    ``roles`` is a ``Roles`` or just the names (None: every task in scope).
    The line comes from ``config.lines`` when ``config`` came from
    ``load_config`` (else the error has no line).
    """
    built = _as_roles(roles, role_values)
    specs, errors = _build_errors(config, source, built or Roles(None), facts)
    raise_all(errors)
    assert specs is not None
    return specs


def program_warnings(
    config: Mapping[str, Any],
    source: str,
    roles: Roles | tuple[str, ...] | None,
    role_values: Mapping[str, str] | None = None,
    facts: HostFacts | None = None,
) -> list[ConfigError]:
    """Each task in scope whose ``start`` program is missing here, or not
    executable: found as the spawn finds it (through the task's ``PATH``,
    or from its ``cwd`` for a relative path).  Warnings, not errors: the
    config may be meant for another host, or the program installed later.
    """
    import shutil  # (only ``-C`` asks this: the daemon never loads shutil for it)

    found = []
    for name, spec in sorted(check(config, source, roles, role_values, facts).items()):
        if not spec.in_scope:
            continue
        program = spec.process(0).argv[0]
        path: KeyPath = ("tasks", name, "commands", "start")
        if "/" in program:
            cwd = spec.process(0).cwd
            where = program if os.path.isabs(program) or not cwd else os.path.join(cwd, program)
            if not os.path.isfile(where):
                why = "does not exist"
            elif not os.access(where, os.X_OK):
                why = "is not executable"
            else:
                continue
        elif shutil.which(program, path=spec.search_path or os.defpath) is None:
            why = f"is not found in PATH ({spec.search_path or os.defpath})"
        else:
            continue
        found.append(
            ConfigError(
                source,
                line_of(_lines(config), path),
                format_path(path),
                f"warning: program {program!r} {why} on this host",
            )
        )
    return found
