"""What a task and each of its processes is: the specs the supervisor runs.

One ``TaskSpec`` per task, with one ``ProcessSpec`` per slot; two slots whose
``ProcessSpec`` are equal would run the same process, which is how a reload
decides what to restart.  Each ``ProcessSpec`` field declares, in its
``Attribute``, the config key it comes from, how that is checked and parsed,
and where it goes (the ``Spawn`` effect, the keyword arguments of the
shell's ``process.start``, the restart reason): everything else is derived
from that one declaration.  ``model.build`` makes these from a config.

This module must never do IO.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

from taskforce.core.context import as_text
from taskforce.core.environment import Environment, as_dict
from taskforce.core.values import Whole, parse_umask

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.core.sockets import SocketSpec

CONTROLS = ("wait", "once", "event", "nowait", "adopt", "suspend", "off")
#: Controls whose slots run until stopped and are restarted when they exit.
DAEMON_CONTROLS = frozenset({"wait", "nowait", "adopt"})

#: Where a task's stdout and stderr go, besides ``{file: PATH, ...}``.
OUTPUT_MODES = ("inherit", "discard", "log")
#: ``output`` when neither the task nor ``settings.output`` says.
DEFAULT_OUTPUT = "log"
OUTPUT_FILE_KEYS = ("file", "stderr", "max_bytes", "backups", "timestamps")
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
    config schema's task key and its check (``taskforce.config.tasks``),
    the build of the value (``model._process_spec``), the ``Spawn`` effect,
    the restart reason (``ProcessSpec.diff``) and the keyword arguments of
    the shell's ``process.start`` (``START_OPTIONS``).
    """

    #: the task key it is read from (None: built from other keys, by hand)
    key: str | None = None
    #: the config schema's checker of that key, by name; "" with ``parse``:
    #: the generic one, which runs ``parse`` on values written literally
    check: str = ""
    #: the value (conditionals resolved, tags expanded) as the field's, or
    #: ValueError saying why not; None: built by hand in ``model._process_spec``
    parse: Callable[[Any], Any] | None = None
    #: whether ``Spawn`` carries it to the shell (``pidfile`` stays in the core)
    spawn: bool = True
    #: whether it is a keyword argument of the shell's ``process.start``
    start: bool = False
    #: the word a restart reason names it by (several fields may share one)
    reason: str = ""


def _attr(**declared: Any) -> dict[str, Attribute]:
    return {_ATTRIBUTE: Attribute(**declared)}


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """Everything that makes one slot's process what it is.

    Each field declares, in its ``Attribute``, where it comes from in the
    config and where it goes; adding an attribute is adding a field here
    (and what the shell does with it in ``process.start``).  There is one
    per slot of every task, so it has ``__slots__`` and its environment is
    an ``Environment``: the names where it differs from one shared base.
    """

    argv: tuple[str, ...] = field(metadata=_attr())
    #: any mapping may be given; a spec keeps it as an ``Environment``
    env: Mapping[str, str] = field(default_factory=Environment, metadata=_attr())
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
    #: and stderr to ``output_stderr`` if set, else to ``output_file`` too;
    #: rotated at ``output_max_bytes`` keeping ``output_backups`` old files;
    #: each line stamped with its time and stream if ``output_timestamps``).
    #: The dataclass default is no capture; a config's default is ``log``.
    output: str = field(default="inherit", metadata=_attr(key="output", check="output"))
    output_file: str | None = field(default=None, metadata=_attr(reason="output"))
    output_max_bytes: int = field(default=DEFAULT_MAX_BYTES, metadata=_attr(reason="output"))
    output_backups: int = field(default=DEFAULT_BACKUPS, metadata=_attr(reason="output"))
    output_stderr: str | None = field(default=None, metadata=_attr(reason="output"))
    output_timestamps: bool = field(default=False, metadata=_attr(reason="output"))
    #: the niceness it runs at (-20..19; None: taskforce's own), set in the
    #: child before the privilege drop, so root may give a task a lower one
    nice: int | None = field(
        default=None, metadata=_attr(key="nice", parse=Whole(-20, 19), start=True)
    )
    #: the sockets taskforce holds that it gets from fd 3 on (``LISTEN_FDS``),
    #: in the task's order, each with its address: a changed address is a
    #: different process (built by hand: it needs the config's ``sockets``)
    sockets: tuple[SocketSpec, ...] = field(
        default=(), metadata=_attr(key="sockets", check="sockets", start=True)
    )

    #: whether it gets ``NOTIFY_SOCKET`` (its task has ``ready: notify``):
    #: the shell adds the path of the socket it owns to the environment
    notify: bool = field(default=False, metadata=_attr(reason="ready"))

    def __post_init__(self) -> None:
        if type(self.env) is not Environment:
            object.__setattr__(self, "env", Environment.of(self.env))

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
            old, now = as_dict(self.env), as_dict(new.env)
            keys = sorted(key for key in old.keys() | now.keys() if old.get(key) != now.get(key))
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
    """What a ``Spawn`` of ``spec`` carries, by field (the environment as it
    is: immutable, and shared by the spec and every spawn of it)."""
    return {name: getattr(spec, name) for name in SPAWN_FIELDS}


@dataclass(frozen=True, slots=True)
class Action:
    """An event's action: run a named command, or send a signal."""

    command: str | None = None
    signal: str | None = None

    def describe(self) -> str:
        return f"command {self.command!r}" if self.command else f"signal {self.signal}"


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A watched happening (``self``, ``file_change``, ``python``, ``external``)."""

    index: int
    type: str
    action: Action
    paths: tuple[str, ...] = ()
    name: str | None = None  # external events


@dataclass(frozen=True, slots=True)
class Readiness:
    """How a task's processes show they are ready, and how a change
    replaces them (see ``core.readiness`` for the keys it is built from)."""

    #: ``delay`` (ready once running for ``start_delay``), ``notify``
    #: (``READY=1`` on the notify socket), or a probe: ``tcp``, ``http``,
    #: ``command``
    kind: str = "delay"
    #: a probe's ``HOST:PORT`` (tcp) or URL (http)
    target: str = ""
    #: a command probe's argv
    argv: tuple[str, ...] = ()
    #: seconds between probes
    interval: float = 1.0
    #: seconds a new process has to become ready (None: no limit)
    timeout: float | None = None
    #: ``watchdog_sec``: a notify process that sends no ``WATCHDOG=1`` for
    #: this long is restarted (None: no watchdog)
    watchdog: float | None = None
    #: extra processes a rollout may start beyond ``count``
    max_surge: int = 0
    #: ready processes a rollout may take away below ``count``
    max_unavailable: int = 1


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of the config, built and checked: what its slots run and how."""

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
    #: readiness and rollout
    readiness: Readiness = Readiness()

    def process(self, instance: int) -> ProcessSpec:
        """The spec of slot ``instance`` (slots beyond the built ones reuse the last)."""
        return self.processes[min(instance, len(self.processes) - 1)]

    def not_run_here(self) -> str | None:
        """Why no process of this task runs on this host whatever happens:
        ``"off"`` or ``"out of scope"`` (its roles are not the host's); None
        when it may run.  A task that requires it waits (``_unsatisfied``),
        and ``taskforce plan`` says so in the same terms."""
        if self.in_scope:
            return None
        return "off" if self.control == "off" else "out of scope"


@dataclass(frozen=True)
class Settings:
    """The config's ``settings``, with every default filled in."""

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
