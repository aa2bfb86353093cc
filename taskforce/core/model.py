"""What each task is, once its context is built: the specs the supervisor runs.

``build(config, facts, roles, role_values)`` turns a validated, normalized
config (see ``taskforce.config``) into one ``TaskSpec`` per task, with one
``ProcessSpec`` per slot.  Two slots whose ``ProcessSpec`` are equal would run
the same process, which is how a reload decides what to restart.

Context precedence (later wins): the daemon's environment (less any inherited
``Task_*``), the built-ins, top-level ``defines``, top-level ``role_defines``
of each active role, the task's ``defines``, the task's ``role_defines``.
Then defaults fill only names still absent: the task's ``role_defaults``, the
task's ``defaults``, top-level ``role_defaults``, top-level ``defaults``.
Active roles apply in roles-file order, so a later role wins.

Roles reach the context as the original defines them: a ``name=value`` line
sets ``Task_role_<name>`` to its value in every task's context, and so in
every process's environment.  A bare role is in the context too, but not set
(None): a conditional keyed on it applies, yet it is never exported, so
adding or removing a bare role changes no environment and restarts nothing
that stays in scope.  ``Task_pid``, ``Task_uid``, ``Task_gid`` and
``Task_started`` are facts of one process: not set here, the shell sets them
as it starts it, so they never make two specs differ.

This module must never do IO: the environment and host names arrive as data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from taskforce.core.context import (
    ContextError,
    as_text,
    expand,
    expand_all,
    resolve,
    resolve_one,
)
from taskforce.core.values import (
    Whole,
    limit_pair,
    output_path,
    parse_limit,
    parse_size,
    parse_umask,
)

__all__ = ["parse_limit", "parse_size", "parse_umask"]  # re-exported: read beside the specs

CONTROLS = ("wait", "once", "event", "nowait", "adopt", "suspend", "off")
#: Controls whose slots run until stopped and are restarted when they exit.
DAEMON_CONTROLS = frozenset({"wait", "nowait", "adopt"})

#: Where a task's stdout and stderr go, besides ``{file: PATH, ...}``.
OUTPUT_MODES = ("inherit", "discard", "log")
#: ``output`` when neither the task nor ``settings.output`` says.
DEFAULT_OUTPUT = "log"
OUTPUT_FILE_KEYS = ("file", "max_bytes", "backups")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
#: Resource limits a task may set (``RLIMIT_<NAME>``).
LIMIT_NAMES = ("as", "core", "cpu", "fsize", "memlock", "nofile", "nproc", "stack")
ENVIRONMENTS = ("inherit", "clean")
#: What a task with ``user:`` takes from that user's passwd entry, not from
#: taskforce's environment (unless its config defines them).
USER_ENV_KEYS = ("HOME", "USER", "LOGNAME", "SHELL")
#: What a ``clean`` environment keeps of the daemon's.
CLEAN_ENVIRONMENT_KEEPS = ("PATH",)

#: Seconds between health checks when a task has ``commands.check``.
DEFAULT_CHECK_INTERVAL = 30.0
#: Failed health checks in a row that restart a slot (1: the first one).
DEFAULT_CHECK_FAILURES = 1

#: Built-ins that only the shell knows, per process, when it starts one (see
#: ``process.start``): never part of a spec, so they never cause a restart.
PER_PROCESS_KEYS = ("Task_pid", "Task_uid", "Task_gid", "Task_started")

DEFAULT_SETTINGS: dict[str, Any] = {
    "all_roles": False,
    "stop_timeout": 5.0,
    "stable_after": 1.0,
    "backoff_initial": 0.5,
    "backoff_max": 30.0,
    "pidfile_timeout": 5.0,
}
#: ``start_limit`` when neither the task nor ``settings.start_limit`` says:
#: systemd's ``StartLimitBurst=5`` in ``StartLimitIntervalSec=10``.
DEFAULT_START_LIMIT = {"burst": 5, "interval": 10.0}


class SpecError(ValueError):
    """A config value that cannot be built; ``path`` locates it."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class HostFacts:
    """What the core knows of the host, from the ``Booted`` event."""

    environ: Mapping[str, str] = field(default_factory=dict)
    host: str = "localhost"
    fqdn: str = "localhost"
    pid: int = 0


#: ``Attribute`` of each ``ProcessSpec`` field, in its ``field(metadata=...)``.
_ATTRIBUTE = "attribute"


@dataclass(frozen=True)
class Attribute:
    """How one ``ProcessSpec`` field is configured, checked, built and used.

    Declared once, beside the field; everything else is derived from it: the
    config schema's task key and its check (``taskforce.config.schema``),
    the build of the value (``_process_spec``), the ``Spawn`` effect, the
    restart reason (``spec_diff``) and the keyword arguments of the shell's
    ``process.start`` (``START_OPTIONS``).
    """

    #: the task key it is read from (None: built from other keys, by hand)
    key: str | None = None
    #: the config schema's checker of that key, by name; "" with ``parse``:
    #: the generic one, which runs ``parse`` on values written literally
    check: str = ""
    #: the value (conditionals resolved, tags expanded) as the field's, or
    #: ValueError saying why not; None: built by hand in ``_process_spec``
    parse: Callable[[Any], Any] | None = None
    #: whether ``Spawn`` carries it to the shell (``pidfile`` stays in the core)
    spawn: bool = True
    #: whether it is a keyword argument of the shell's ``process.start``
    start: bool = False
    #: the word a restart reason names it by (several fields may share one)
    reason: str = ""


def _attr(**declared: Any) -> dict[str, Attribute]:
    return {_ATTRIBUTE: Attribute(**declared)}


@dataclass(frozen=True)
class ProcessSpec:
    """Everything that makes one slot's process what it is.

    Each field declares, in its ``Attribute``, where it comes from in the
    config and where it goes; adding an attribute is adding a field here
    (and what the shell does with it in ``process.start``).
    """

    argv: tuple[str, ...] = field(metadata=_attr(reason="argv"))
    env: dict[str, str] = field(default_factory=dict, metadata=_attr())
    cwd: str | None = field(
        default=None, metadata=_attr(key="cwd", check="path", parse=as_text, start=True)
    )
    user: str | None = field(
        default=None, metadata=_attr(key="user", check="text", parse=as_text, start=True)
    )
    group: str | None = field(
        default=None, metadata=_attr(key="group", check="text", parse=as_text, start=True)
    )
    procname: str | None = field(
        default=None, metadata=_attr(key="procname", check="path", parse=as_text, start=True)
    )
    pidfile: str | None = field(
        default=None, metadata=_attr(key="pidfile", check="path", parse=as_text, spawn=False)
    )
    umask: int | None = field(
        default=None, metadata=_attr(key="umask", check="umask", parse=parse_umask, start=True)
    )
    #: (name, soft, hard), sorted by name; None is unlimited.
    limits: tuple[tuple[str, int | None, int | None], ...] = field(
        default=(), metadata=_attr(key="limits", check="limits", start=True)
    )
    #: ``inherit``, ``discard``, ``log`` or ``file`` (then ``output_file``,
    #: rotated at ``output_max_bytes`` keeping ``output_backups`` old files).
    #: The dataclass default is no capture; a config's default is ``log``.
    output: str = field(default="inherit", metadata=_attr(key="output", check="output"))
    output_file: str | None = field(default=None, metadata=_attr(reason="output"))
    output_max_bytes: int = field(default=DEFAULT_MAX_BYTES, metadata=_attr(reason="output"))
    output_backups: int = field(default=DEFAULT_BACKUPS, metadata=_attr(reason="output"))
    #: the niceness it runs at (-20..19; None: taskforce's own), set in the
    #: child before the privilege drop, so root may give a task a lower one
    nice: int | None = field(
        default=None, metadata=_attr(key="nice", parse=Whole(-20, 19), start=True)
    )

    def diff(self, new: ProcessSpec) -> str:
        """Which parts differ from ``new``, for the reason of a restart.

        Parts are named in declaration order (by their ``reason`` word), the
        environment last, with the first few of its names that differ.
        """
        parts: list[str] = []
        for name, attr in PROCESS_ATTRIBUTES:
            if name != "env" and getattr(self, name) != getattr(new, name):
                word = attr.reason or name
                if word not in parts:
                    parts.append(word)
        if self.env != new.env:
            keys = sorted(
                key for key in set(self.env) | set(new.env) if self.env.get(key) != new.env.get(key)
            )
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            parts.append(f"environment ({shown})")
        return ", ".join(parts) or "spec"


def attribute_of(spec_field: Any) -> Attribute:
    """The ``Attribute`` a ``ProcessSpec`` field declares."""
    found: Attribute = spec_field.metadata[_ATTRIBUTE]
    return found


#: (field name, its Attribute) of every ``ProcessSpec`` field, in order.
PROCESS_ATTRIBUTES: tuple[tuple[str, Attribute], ...] = tuple(
    (spec_field.name, attribute_of(spec_field)) for spec_field in fields(ProcessSpec)
)
#: Fields the ``Spawn`` effect carries (the others stay in the core).
SPAWN_FIELDS = tuple(name for name, attr in PROCESS_ATTRIBUTES if attr.spawn)
#: Keyword arguments of the shell's ``process.start`` that a ``Spawn`` sets.
START_OPTIONS = tuple(name for name, attr in PROCESS_ATTRIBUTES if attr.start)


def spawn_values(spec: ProcessSpec) -> dict[str, Any]:
    """What a ``Spawn`` of ``spec`` carries, by field (the environment a copy)."""
    values = {name: getattr(spec, name) for name in SPAWN_FIELDS}
    values["env"] = dict(spec.env)
    return values


@dataclass(frozen=True)
class Action:
    """An event's action: run a named command, or send a signal."""

    command: str | None = None
    signal: str | None = None

    def describe(self) -> str:
        return f"command {self.command!r}" if self.command else f"signal {self.signal}"


@dataclass(frozen=True)
class EventSpec:
    """A watched happening (``self``, ``file_change``, ``python``, ``external``)."""

    index: int
    type: str
    action: Action
    paths: tuple[str, ...] = ()
    name: str | None = None  # external events


@dataclass(frozen=True)
class TaskSpec:
    name: str
    control: str
    count: int
    in_scope: bool
    requires: tuple[str, ...]
    start_delay: float
    time_limit: float | None
    stop_timeout: float
    #: seconds between runs of ``commands.check`` while a slot runs (None: no check)
    check_interval: float | None
    processes: tuple[ProcessSpec, ...]
    commands: Mapping[str, tuple[str, ...]]
    events: tuple[EventSpec, ...]
    stop_action: Action | None
    restart_action: Action | None
    onexit: tuple[tuple[str, str], ...]
    search_path: str = ""
    #: seconds a health check may run before it is killed and counted as
    #: failed (by default its ``check_interval``: it never runs into the next)
    check_timeout: float | None = None
    #: failed health checks in a row that restart the slot
    check_failures: int = DEFAULT_CHECK_FAILURES
    #: (burst, interval): a slot started ``burst`` times within ``interval``
    #: seconds that exits again is not restarted (it fails); 0 turns it off
    start_limit: tuple[int, float] = (5, 10.0)

    def process(self, instance: int) -> ProcessSpec:
        """The spec of slot ``instance`` (slots beyond the built ones reuse the last)."""
        return self.processes[min(instance, len(self.processes) - 1)]


@dataclass(frozen=True)
class Settings:
    #: a task with ``roles`` needs all of them on this host, not just one
    all_roles: bool
    stop_timeout: float
    stable_after: float
    backoff_initial: float
    backoff_max: float
    pidfile_timeout: float
    #: the default ``start_limit`` of every task: (burst, interval)
    start_limit: tuple[int, float] = (5, 10.0)


def settings_of(config: Mapping[str, Any]) -> Settings:
    raw = {**DEFAULT_SETTINGS, **(config.get("settings") or {})}
    limit = {**DEFAULT_START_LIMIT, **(raw.get("start_limit") or {})}
    return Settings(
        all_roles=raw["all_roles"] is True,
        stop_timeout=float(raw["stop_timeout"]),
        stable_after=float(raw["stable_after"]),
        backoff_initial=float(raw["backoff_initial"]),
        backoff_max=float(raw["backoff_max"]),
        pidfile_timeout=float(raw["pidfile_timeout"]),
        start_limit=(int(limit["burst"]), float(limit["interval"])),
    )


def _start_limit(
    value: Any, ctx: Mapping[str, str | None], default: tuple[int, float]
) -> tuple[int, float]:
    """A task's ``start_limit: {burst: N, interval: SECONDS}``; a key left
    out takes the default's (``settings.start_limit``)."""
    if value is None:
        return default
    if not isinstance(value, Mapping):
        raise SpecError(("start_limit",), "start_limit must be {burst: N, interval: SECONDS}")
    try:
        burst = _number(value.get("burst"), ctx, default[0])
    except ContextError as exc:
        raise SpecError(("start_limit", "burst"), str(exc)) from None
    if burst is None or burst < 0 or burst != int(burst):
        raise SpecError(
            ("start_limit", "burst"), f"burst must be a whole number >= 0, got {burst!r}"
        )
    try:
        interval = _number(value.get("interval"), ctx, default[1])
    except ContextError as exc:
        raise SpecError(("start_limit", "interval"), str(exc)) from None
    if interval is None or not interval >= 0 or interval == float("inf"):
        raise SpecError(
            ("start_limit", "interval"), f"interval must be a number >= 0, got {interval!r}"
        )
    return int(burst), float(interval)


def in_scope(
    task: Mapping[str, Any],
    roles: tuple[str, ...] | None,
    ctx: Mapping[str, Any],
    all_roles: bool = False,
) -> bool:
    """Whether a task belongs on this host: no roles file, no ``roles`` of
    its own, or a role shared with the host (with ``all_roles``: every one
    of its roles, as in the original's ``settings.all_roles: true``)."""
    if roles is None:
        return True
    wanted = [as_text(r) for r in resolve(task.get("roles"), ctx)]
    if not wanted:
        return True
    if all_roles:
        return all(role in roles for role in wanted)
    return any(role in roles for role in wanted)


def _layer(ctx: dict[str, Any], values: Mapping[str, Any] | None, *, fill: bool) -> None:
    for key, value in (values or {}).items():
        if not fill or key not in ctx:
            ctx[key] = as_text(value)


def _role_layers(
    by_role: Mapping[str, Mapping[str, Any]] | None, roles: tuple[str, ...] | None
) -> list[Mapping[str, Any]]:
    if not roles or not by_role:
        return []
    return [by_role[role] for role in roles if role in by_role]


def task_context(
    name: str,
    task: Mapping[str, Any],
    config: Mapping[str, Any],
    facts: HostFacts,
    roles: tuple[str, ...] | None,
    role_values: Mapping[str, str],
) -> dict[str, str | None]:
    """The context of ``task`` before ``Task_instance`` is set.

    With ``environment: clean`` the daemon's environment contributes only
    ``CLEAN_ENVIRONMENT_KEEPS``.  The choice may itself be conditional, so it
    is read from the full context, which is then built again without it.
    """
    ctx = _context(name, task, config, facts.environ, facts, roles, role_values)
    if task.get("environment") is None:
        return ctx
    try:
        choice = expand(as_text(resolve_one(task["environment"], ctx, "inherit")) or "", ctx)
    except ContextError as exc:
        raise SpecError(("environment",), str(exc)) from None
    if choice not in ENVIRONMENTS:
        raise SpecError(
            ("environment",),
            f"environment must be one of {', '.join(ENVIRONMENTS)}, got {choice!r}",
        )
    if choice == "inherit":
        return ctx
    kept = {key: facts.environ[key] for key in CLEAN_ENVIRONMENT_KEEPS if key in facts.environ}
    return _context(name, task, config, kept, facts, roles, role_values)


def _context(
    name: str,
    task: Mapping[str, Any],
    config: Mapping[str, Any],
    environ: Mapping[str, str],
    facts: HostFacts,
    roles: tuple[str, ...] | None,
    role_values: Mapping[str, str],
) -> dict[str, str | None]:
    # A task run as another user gets that user's HOME, USER, LOGNAME and
    # SHELL (from its passwd entry, in the shell), not taskforce's own; the
    # config may still define them.
    skipped = USER_ENV_KEYS if task.get("user") is not None else ()
    ctx: dict[str, str | None] = {
        key: value
        for key, value in environ.items()
        if not key.startswith("Task_") and key not in skipped
    }
    ctx.update(
        Task_name=name,
        Task_host=facts.host,
        Task_fqdn=facts.fqdn,
        Task_ppid=str(facts.pid),
        Task_instance=None,
    )
    ctx.update(dict.fromkeys(PER_PROCESS_KEYS))
    for role in roles or ():
        # A bare role is None: present for conditionals, never exported.
        ctx[f"Task_role_{role}"] = role_values.get(role)
    for key in ("user", "group", "pidfile", "cwd", "procname"):
        if task.get(key) is not None:
            ctx[f"Task_{key}"] = as_text(resolve_one(task[key], ctx, None))
    _layer(ctx, config.get("defines"), fill=False)
    for layer in _role_layers(config.get("role_defines"), roles):
        _layer(ctx, layer, fill=False)
    _layer(ctx, task.get("defines"), fill=False)
    for layer in _role_layers(task.get("role_defines"), roles):
        _layer(ctx, layer, fill=False)
    for layer in reversed(_role_layers(task.get("role_defaults"), roles)):
        _layer(ctx, layer, fill=True)
    _layer(ctx, task.get("defaults"), fill=True)
    for layer in reversed(_role_layers(config.get("role_defaults"), roles)):
        _layer(ctx, layer, fill=True)
    _layer(ctx, config.get("defaults"), fill=True)
    return ctx


def _text_value(value: Any, ctx: Mapping[str, str | None]) -> str | None:
    raw = resolve_one(value, ctx, None)
    return None if raw is None else expand(as_text(raw) or "", ctx)


def _number(value: Any, ctx: Mapping[str, str | None], default: float | None) -> float | None:
    raw = resolve_one(value, ctx, default)
    if raw is None or isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return None if raw is None else float(raw)
    text = expand(as_text(raw) or "", ctx)
    try:
        return None if text is None else float(text)
    except ValueError:
        raise ContextError(f"expected a number, got {text!r}") from None


def _whole(value: Any, ctx: Mapping[str, str | None], default: int) -> int:
    raw = resolve_one(value, ctx, default)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    text = expand(as_text(raw) or "", ctx) or ""
    try:
        return int(text.strip())
    except ValueError:
        raise ContextError(f"expected a whole number, got {text!r}") from None


def _plain(value: Any, ctx: Mapping[str, str | None]) -> Any:
    """A possibly conditional scalar; text has its tags expanded."""
    raw = resolve_one(value, ctx, None)
    return expand(raw, ctx) if isinstance(raw, str) else raw


def _output(value: Any, ctx: Mapping[str, str | None]) -> tuple[str, str | None, int, int]:
    """(mode, file, max_bytes, backups) of an ``output`` value."""
    if isinstance(value, Mapping) and "file" in value:
        try:
            path = output_path(_text_value(value["file"], ctx))
        except ValueError as exc:
            raise SpecError(("output", "file"), str(exc)) from None
        max_bytes = _plain(value.get("max_bytes"), ctx)
        try:
            max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else parse_size(max_bytes)
        except ValueError as exc:
            raise SpecError(("output", "max_bytes"), str(exc)) from None
        if max_bytes < 1:
            raise SpecError(("output", "max_bytes"), "max_bytes must be > 0")
        backups = _plain(value.get("backups"), ctx)
        try:
            backups = DEFAULT_BACKUPS if backups is None else parse_size(backups)
        except ValueError as exc:
            raise SpecError(("output", "backups"), str(exc)) from None
        return "file", path, max_bytes, backups
    mode = as_text(_plain(value, ctx)) or DEFAULT_OUTPUT
    if mode not in OUTPUT_MODES:
        raise SpecError(
            ("output",),
            f"output must be one of {', '.join(OUTPUT_MODES)} or {{file: PATH}}, got {mode!r}",
        )
    return mode, None, DEFAULT_MAX_BYTES, DEFAULT_BACKUPS


def _limits(
    value: Any, ctx: Mapping[str, str | None]
) -> tuple[tuple[str, int | None, int | None], ...]:
    if not value:
        return ()
    if not isinstance(value, Mapping):
        raise SpecError(("limits",), "limits must be a mapping of resource names to values")
    out = []
    for name in sorted(value):
        if name not in LIMIT_NAMES:
            raise SpecError(("limits", name), f"unknown resource limit {name!r}")
        item = value[name]
        try:
            if isinstance(item, Mapping) and ("soft" in item or "hard" in item):
                bounds = _plain(item.get("soft"), ctx), _plain(item.get("hard"), ctx)
                soft, hard = limit_pair(*bounds)
            else:
                soft = hard = parse_limit(_plain(item, ctx))
        except (ValueError, ContextError) as exc:
            raise SpecError(("limits", name), str(exc)) from None
        out.append((name, soft, hard))
    return tuple(out)


def _action(event: Mapping[str, Any], ctx: Mapping[str, str | None]) -> Action:
    command = resolve_one(event.get("command"), ctx)
    signal = resolve_one(event.get("signal"), ctx)
    return Action(command=as_text(command), signal=as_text(signal))


def _process_spec(
    task: Mapping[str, Any], ctx: dict[str, str | None], settings_output: Any = None
) -> ProcessSpec:
    argv = tuple(expand_all(resolve(task["commands"]["start"], ctx), ctx))
    if not argv:
        raise SpecError(("commands", "start"), "start command is empty")
    env: dict[str, str] = {}
    for key, value in ctx.items():
        if value is not None:
            text = expand(value, ctx)
            if text is not None:
                env[key] = text
    output = task.get("output")
    if output is None:
        output = settings_output
    mode, output_file, max_bytes, backups = _output(output, ctx)
    values: dict[str, Any] = {}
    for name, attr in PROCESS_ATTRIBUTES:
        # The simple attributes, each read as it declares.
        if attr.key is None or attr.parse is None or task.get(attr.key) is None:
            continue
        # A tag that cannot be expanded is the task's problem, as for any key.
        raw = _plain(task[attr.key], ctx)
        try:
            if raw is not None:
                values[name] = attr.parse(raw)
        except ValueError as exc:
            raise SpecError((attr.key,), str(exc)) from None
    return ProcessSpec(
        argv=argv,
        env=env,
        output=mode,
        output_file=output_file,
        output_max_bytes=max_bytes,
        output_backups=backups,
        limits=_limits(task.get("limits"), ctx),
        **values,
    )


def _build_task(
    name: str,
    task: Mapping[str, Any],
    config: Mapping[str, Any],
    settings: Settings,
    facts: HostFacts,
    roles: tuple[str, ...] | None,
    role_values: Mapping[str, str],
) -> TaskSpec:
    ctx = task_context(name, task, config, facts, roles, role_values)
    control = as_text(resolve_one(task.get("control"), ctx, "wait")) or "wait"
    if control not in CONTROLS:
        raise SpecError(("control",), f"unknown control {control!r}")
    if control in ("nowait", "adopt") and task.get("pidfile") is None:
        raise SpecError(("control",), f"control {control!r} needs a pidfile to find the daemon by")
    count = resolve_one(task.get("count"), ctx, 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise SpecError(("count",), f"count must be a whole number >= 0, got {count!r}")
    scoped = control != "off" and in_scope(task, roles, ctx, settings.all_roles)
    requires = tuple(expand_all(resolve(task.get("requires"), ctx), ctx))
    start_delay = _number(task.get("start_delay"), ctx, 0.0) or 0.0
    time_limit = _number(task.get("time_limit"), ctx, None) or None
    stop_timeout = _number(task.get("stop_timeout"), ctx, settings.stop_timeout)
    check_interval = check_timeout = None
    check_failures = DEFAULT_CHECK_FAILURES
    if "check" in task["commands"]:
        check_interval = _number(task.get("check_interval"), ctx, DEFAULT_CHECK_INTERVAL)
        try:
            check_timeout = _number(task.get("check_timeout"), ctx, check_interval)
        except ContextError as exc:
            raise SpecError(("check_timeout",), str(exc)) from None
        try:
            check_failures = _whole(task.get("check_failures"), ctx, DEFAULT_CHECK_FAILURES)
        except ContextError as exc:
            raise SpecError(("check_failures",), str(exc)) from None
        if check_failures < 1:
            raise SpecError(("check_failures",), f"must be at least 1, got {check_failures}")
    processes = []
    settings_output = (config.get("settings") or {}).get("output")
    for instance in range(max(count, 1)):
        slot_ctx = dict(ctx, Task_instance=str(instance))
        processes.append(_process_spec(task, slot_ctx, settings_output))
    first_ctx = dict(ctx, Task_instance="0")
    commands = {
        cmd: tuple(expand_all(resolve(argv, first_ctx), first_ctx))
        for cmd, argv in sorted(task["commands"].items())
    }
    events: list[EventSpec] = []
    stop_action = restart_action = None
    for index, event in enumerate(task.get("events") or ()):
        try:
            kind = as_text(resolve_one(event.get("type"), ctx)) or ""
        except ContextError as exc:
            raise SpecError(("events", index, "type"), str(exc)) from None
        try:
            action = _action(event, ctx)
        except ContextError as exc:
            raise SpecError(("events", index), str(exc)) from None
        if kind == "stop":
            stop_action = action
        elif kind == "restart":
            restart_action = action
        elif kind == "file_change":
            paths = tuple(expand_all(resolve(event.get("path"), first_ctx), first_ctx))
            events.append(EventSpec(index, kind, action, paths=paths))
        elif kind in ("self", "python"):
            events.append(EventSpec(index, kind, action, paths=processes[0].argv))
        elif kind == "external":
            events.append(EventSpec(index, kind, action, name=as_text(event.get("name"))))
        else:
            raise SpecError(("events", index, "type"), f"unknown event type {kind!r}")
    onexit = []
    for index, item in enumerate(task.get("onexit") or ()):
        kind = as_text(resolve_one(item.get("type"), ctx, "start")) or "start"
        target = as_text(resolve_one(item.get("task"), ctx)) or ""
        if kind != "start":
            raise SpecError(("onexit", index, "type"), f"unknown onexit type {kind!r}")
        onexit.append((kind, target))
    return TaskSpec(
        name=name,
        control=control,
        count=count,
        in_scope=scoped,
        requires=requires,
        start_delay=start_delay,
        time_limit=time_limit,
        stop_timeout=stop_timeout if stop_timeout is not None else settings.stop_timeout,
        check_interval=check_interval or None,
        processes=tuple(processes),
        commands=commands,
        events=tuple(events),
        stop_action=stop_action,
        restart_action=restart_action,
        onexit=tuple(onexit),
        search_path=processes[0].env.get("PATH", ""),
        check_timeout=check_timeout or None,
        check_failures=check_failures,
        start_limit=_start_limit(task.get("start_limit"), ctx, settings.start_limit),
    )


class _Hashed:
    """A hashable value whose hash is computed once (it is big: the whole
    environment, and it takes part in every task's cache key)."""

    __slots__ = ("value", "hash")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.hash = hash(value)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Hashed) and (
            self is other or (self.hash == other.hash and self.value == other.value)
        )


def _hashable(value: Any) -> Any:
    """``value`` as nested tuples, usable as a dictionary key."""
    if value is None or isinstance(value, (str, int, float)):
        return value  # most values are leaves: spare them the Mapping (ABC) test
    if isinstance(value, Mapping):
        return ("{", tuple(sorted((key, _hashable(item)) for key, item in value.items())))
    if isinstance(value, (list, tuple)):
        return ("[", tuple(_hashable(item) for item in value))
    return value


#: Specs already built, by (name, the task's config, everything shared).  A
#: task's spec is a pure function of those, so a reload rebuilds only the
#: tasks whose inputs changed, and the shell's validation and the core's
#: build of the same config build each task once.  Only the specs of the last
#: two builds are kept (validation, then the core), so reloads never grow it.
_BUILT: dict[tuple[str, Any, Any], TaskSpec] = {}
_PREVIOUS: dict[tuple[str, Any, Any], TaskSpec] = {}


def build(
    config: Mapping[str, Any],
    facts: HostFacts,
    roles: tuple[str, ...] | None,
    role_values: Mapping[str, str] | None = None,
) -> dict[str, TaskSpec]:
    """One TaskSpec per task; raises SpecError with the key path of a bad value."""
    settings = settings_of(config)
    tasks: Mapping[str, Mapping[str, Any]] = config.get("tasks") or {}
    global _BUILT, _PREVIOUS
    shared = _Hashed(
        _hashable(
            (
                {key: config.get(key) for key in ("defines", "role_defines", "defaults")},
                config.get("role_defaults"),
                config.get("settings"),
                facts.environ,
                (facts.host, facts.fqdn, facts.pid),
                roles,
                role_values,
            )
        )
    )
    built: dict[tuple[str, Any, Any], TaskSpec] = {}
    specs: dict[str, TaskSpec] = {}
    for name in sorted(tasks):
        key = (name, _hashable(tasks[name]), shared)
        cached = _BUILT.get(key) or _PREVIOUS.get(key)
        if cached is not None:
            specs[name] = built[key] = cached
            continue
        try:
            specs[name] = built[key] = _build_task(
                name, tasks[name], config, settings, facts, roles, role_values or {}
            )
        except SpecError as exc:
            raise SpecError(("tasks", name, *exc.path), exc.message) from None
        except ContextError as exc:
            raise SpecError(("tasks", name), str(exc)) from None
    _PREVIOUS, _BUILT = _BUILT, built
    for name, spec in specs.items():
        for index, required in enumerate(spec.requires):
            if required not in specs:
                raise SpecError(
                    ("tasks", name, "requires", index), f"requires unknown task {required!r}"
                )
            if required == name:
                raise SpecError(("tasks", name, "requires", index), "a task cannot require itself")
        for index, (_, target) in enumerate(spec.onexit):
            if target not in specs:
                raise SpecError(
                    ("tasks", name, "onexit", index, "task"), f"unknown task {target!r}"
                )
    cycle = find_cycle(specs)
    if cycle:
        raise SpecError(("tasks", cycle[0], "requires"), "dependency cycle: " + " -> ".join(cycle))
    return specs


def find_cycle(specs: Mapping[str, TaskSpec]) -> list[str] | None:
    """A requires cycle as a list of names (first repeated last), or None.

    Iterative, so a chain of thousands of tasks cannot exhaust the stack.
    """
    done: set[str] = set()
    for root in sorted(specs):
        if root in done:
            continue
        trail: list[str] = [root]
        on_trail = {root}
        todo = [iter(specs[root].requires)]
        while todo:
            required = next(todo[-1], None)
            if required is None:
                todo.pop()
                finished = trail.pop()
                on_trail.discard(finished)
                done.add(finished)
                continue
            if required not in specs or required in done:
                continue
            if required in on_trail:
                return trail[trail.index(required) :] + [required]
            trail.append(required)
            on_trail.add(required)
            todo.append(iter(specs[required].requires))
    return None


def start_order(specs: Mapping[str, TaskSpec]) -> list[str]:
    """Names with every task after the tasks it requires; ties by name.

    Assumes no cycle (``build`` rejects them); iterative like ``find_cycle``.
    """
    order: list[str] = []
    placed: set[str] = set()
    for root in sorted(specs):
        if root in placed:
            continue
        placed.add(root)
        stack = [(root, iter(sorted(specs[root].requires)))]
        while stack:
            name, pending = stack[-1]
            required = next(pending, None)
            if required is None:
                stack.pop()
                order.append(name)
            elif required in specs and required not in placed:
                placed.add(required)
                stack.append((required, iter(sorted(specs[required].requires))))
    return order
