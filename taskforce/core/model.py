"""Building the specs the supervisor runs from a config.

``build(config, facts, roles, role_values)`` turns a validated, normalized
config (see ``taskforce.config``) into one ``TaskSpec`` per task, with one
``ProcessSpec`` per slot (the specs themselves, and the declaration of each
process attribute, are in ``core/specs.py``; they are imported from here
too).  Two slots whose ``ProcessSpec`` are equal would run the same process,
which is how a reload decides what to restart.

This module must never do IO: the environment and host names arrive as data.
"""

from __future__ import annotations

from collections.abc import Mapping

from taskforce.core.context import (
    ContextError,
    as_text,
    expand,
    expand_all,
    resolve,
    resolve_one,
)
from taskforce.core.environment import Environments
from taskforce.core.order import find_cycle, start_order
from taskforce.core.readiness import readiness_of
from taskforce.core.scope import in_scope, task_context
from taskforce.core.sockets import SocketSpec, socket_specs, task_sockets
from taskforce.core.specs import (
    CLEAN_ENVIRONMENT_KEEPS,
    CONTROLS,
    DAEMON_CONTROLS,
    DEFAULT_BACKUPS,
    DEFAULT_CHECK_FAILURES,
    DEFAULT_CHECK_INTERVAL,
    DEFAULT_MAX_BYTES,
    DEFAULT_OUTPUT,
    DEFAULT_SETTINGS,
    DEFAULT_START_LIMIT,
    ENVIRONMENTS,
    LIMIT_NAMES,
    OUTPUT_FILE_KEYS,
    OUTPUT_MODES,
    PER_PROCESS_KEYS,
    PROCESS_ATTRIBUTES,
    SPAWN_FIELDS,
    START_OPTIONS,
    USER_ENV_KEYS,
    Action,
    Attribute,
    EventSpec,
    HostFacts,
    ProcessSpec,
    Readiness,
    Settings,
    SpecError,
    TaskSpec,
    attribute_of,
    settings_of,
    spawn_values,
)
from taskforce.core.values import (
    limit_pair,
    output_path,
    parse_limit,
    parse_size,
    parse_umask,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Re-exported: the specs (core/specs.py) and the values (core/values.py)
#: are read beside the build, and imported from here by the rest of the house.
__all__ = [
    "Action",
    "Attribute",
    "CLEAN_ENVIRONMENT_KEEPS",
    "CONTROLS",
    "DAEMON_CONTROLS",
    "DEFAULT_BACKUPS",
    "DEFAULT_CHECK_FAILURES",
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_OUTPUT",
    "DEFAULT_SETTINGS",
    "DEFAULT_START_LIMIT",
    "ENVIRONMENTS",
    "EventSpec",
    "HostFacts",
    "LIMIT_NAMES",
    "OUTPUT_FILE_KEYS",
    "OUTPUT_MODES",
    "PER_PROCESS_KEYS",
    "PROCESS_ATTRIBUTES",
    "ProcessSpec",
    "SPAWN_FIELDS",
    "START_OPTIONS",
    "Settings",
    "SpecError",
    "TaskSpec",
    "USER_ENV_KEYS",
    "attribute_of",
    "build",
    "find_cycle",
    "in_scope",
    "parse_limit",
    "parse_size",
    "parse_umask",
    "settings_of",
    "spawn_values",
    "start_order",
    "task_context",
]


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


def _argv(value: Any, ctx: Mapping[str, str | None]) -> tuple[str, ...]:
    """The command ``value`` stands for; the config's own tuple when that
    is what it stands for (no tag, nothing conditional): one tuple then
    serves the config, the task's commands and every slot's spec."""
    argv = tuple(expand_all(resolve(value, ctx), ctx))
    return value if type(value) is tuple and value == argv else argv


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


def _output(value: Any, ctx: Mapping[str, str | None]) -> dict[str, Any]:
    """The ``output*`` fields of a ``ProcessSpec`` from an ``output`` value."""
    if isinstance(value, Mapping) and "file" in value:
        paths: dict[str, str | None] = {}
        for key in ("file", "stderr"):
            if key == "stderr" and value.get(key) is None:
                paths[key] = None
                continue
            try:
                paths[key] = output_path(_text_value(value[key], ctx))
            except ValueError as exc:
                raise SpecError(("output", key), str(exc)) from None
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
        stamps = _plain(value.get("timestamps"), ctx)
        if stamps is not None and not isinstance(stamps, bool):
            raise SpecError(
                ("output", "timestamps"), f"timestamps must be true or false, got {stamps!r}"
            )
        return {
            "output": "file",
            "output_file": paths["file"],
            "output_stderr": paths["stderr"],
            "output_max_bytes": max_bytes,
            "output_backups": backups,
            "output_timestamps": bool(stamps),
        }
    mode = as_text(_plain(value, ctx)) or DEFAULT_OUTPUT
    if mode not in OUTPUT_MODES:
        raise SpecError(
            ("output",),
            f"output must be one of {', '.join(OUTPUT_MODES)} or {{file: PATH}}, got {mode!r}",
        )
    return {"output": mode}


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


_ABSENT: Any = object()

#: readiness of a task that says nothing of it
_NO_READINESS = Readiness()


def _process_spec(
    task: Mapping[str, Any],
    ctx: dict[str, str | None],
    settings_output: Any = None,
    sockets: Mapping[str, SocketSpec] | None = None,
    readiness: Readiness = _NO_READINESS,
) -> ProcessSpec:
    argv = _argv(task["commands"]["start"], ctx)
    if not argv:
        raise SpecError(("commands", "start"), "start command is empty")
    env: dict[str, str] = {}
    for key, value in ctx.items():
        if value is not None:
            text = expand(value, ctx)
            if text is not None:
                env[key] = text
    if readiness.watchdog:
        # As systemd tells a service: how often it must say WATCHDOG=1.
        env["WATCHDOG_USEC"] = str(round(readiness.watchdog * 1_000_000))
    output = task.get("output")
    if output is None:
        output = settings_output
    outputs = _output(output, ctx)
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
    try:
        values["sockets"] = task_sockets(task.get("sockets"), sockets or {})
    except SpecError as exc:
        raise SpecError(("sockets", *exc.path), exc.message) from None
    return ProcessSpec(
        argv=argv,
        env=_ENVIRONMENTS.share(env),
        **outputs,
        limits=_limits(task.get("limits"), ctx),
        notify=readiness.kind == "notify",
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
    sockets: Mapping[str, SocketSpec] | None = None,
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
    readiness = readiness_of(task, ctx, uses_sockets=bool(task.get("sockets")))
    processes = []
    settings_output = (config.get("settings") or {}).get("output")
    # A rollout's extra processes take the instances after the pool's: a
    # spec each, so each has its own Task_instance (see core.rollout).
    for instance in range(max(count, 1) + readiness.max_surge):
        slot_ctx = dict(ctx, Task_instance=str(instance))
        processes.append(
            _process_spec(task, slot_ctx, settings_output, sockets=sockets, readiness=readiness)
        )
    first_ctx = dict(ctx, Task_instance="0")
    given = task["commands"]
    commands = {cmd: _argv(argv, first_ctx) for cmd, argv in sorted(given.items())}
    if type(given) is dict and list(given) == list(commands):
        if all(commands[cmd] is argv for cmd, argv in given.items()):
            commands = given  # nothing expanded: the config's own (never changed)
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
        readiness=readiness,
    )


#: The environments of every build share their bases (see ``core.environment``).
_ENVIRONMENTS = Environments()

#: The last two builds, newest first: (their shared inputs, each task's
#: config entry by name, each task's spec by name).  A task's spec is a pure
#: function of its name, its entry and the shared inputs, so a build takes
#: the spec of an equal entry under equal shared inputs instead of building
#: it again: a reload rebuilds only the tasks whose inputs changed, and the
#: shell's validation and the core's build of the same config build each
#: task once.  Two builds are kept (validation, then the core), so reloads
#: never grow it; the entries are the config's own (compared, never copied).
_BUILDS: list[tuple[tuple[Any, ...], Mapping[str, Any], dict[str, TaskSpec]]] = []
#: The specs of the last build whose requires and onexit passed the checks.
_CHECKED: list[dict[str, TaskSpec]] = []


def _links(spec: TaskSpec) -> tuple[Any, ...]:
    return spec.requires, spec.onexit


def _same_links(specs: dict[str, TaskSpec]) -> bool:
    """Whether ``specs`` link tasks as the last checked build did (then the
    checks of requires and onexit would find what they found then)."""
    last = _CHECKED[0] if _CHECKED else None
    if last is None or len(last) != len(specs) or last.keys() != specs.keys():
        return False
    return all(
        spec is last[name] or _links(spec) == _links(last[name]) for name, spec in specs.items()
    )


def build(
    config: Mapping[str, Any],
    facts: HostFacts,
    roles: tuple[str, ...] | None,
    role_values: Mapping[str, str] | None = None,
) -> dict[str, TaskSpec]:
    """One TaskSpec per task; raises SpecError with the key path of a bad value."""
    settings = settings_of(config)
    tasks: Mapping[str, Mapping[str, Any]] = config.get("tasks") or {}
    sockets = socket_specs(config)
    shared = (
        {key: config.get(key) for key in ("defines", "role_defines", "defaults")},
        config.get("role_defaults"),
        config.get("settings"),
        config.get("sockets"),
        facts.environ,
        (facts.host, facts.fqdn, facts.pid),
        roles,
        role_values,
    )
    # Compared once per build, and entry by entry with == (no hashable copy
    # of them is kept): the same entry object (validation, then the core) is
    # found at once, an unchanged one of a reloaded file by one comparison.
    earlier = [(entries, built) for inputs, entries, built in _BUILDS if inputs == shared]
    # Kept as it is, not copied: a config is a value, never changed once built.
    entries = tasks
    specs: dict[str, TaskSpec] = {}
    for name in sorted(tasks):
        entry = tasks[name]
        for known, built in earlier:
            seen = known.get(name, _ABSENT)
            if seen is entry or (seen is not _ABSENT and seen == entry):
                specs[name] = built[name]
                break
        else:
            try:
                specs[name] = _build_task(
                    name, entry, config, settings, facts, roles, role_values or {}, sockets
                )
            except SpecError as exc:
                raise SpecError(("tasks", name, *exc.path), exc.message) from None
            except ContextError as exc:
                raise SpecError(("tasks", name), str(exc)) from None
    for _, built in earlier:
        if len(built) == len(specs) and all(built.get(n) is spec for n, spec in specs.items()):
            # The very specs of an earlier build (the core's build of the
            # config the shell validated): keep that one table, not two.
            specs = built
            break
    _BUILDS[:] = [(shared, entries, specs), *(b for b in _BUILDS if b[2] is not specs)][:2]
    kept, specs = specs, dict(specs)  # the caller's own: the kept one must not change
    if _same_links(specs):
        return specs
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
    _CHECKED[:] = [kept]  # (not the caller's: it may change its own)
    return specs
