"""Effects: the commands the core gives the shell.

Each is a frozen dataclass of plain values (equality, hash and repr from
``records.Record``, written once, not generated for each class).  The shell performs them in the
order given; results that matter to the core come back as events (a ``Spawn``
is answered by ``ProcessStarted`` or ``SpawnFailed`` before any other event).

This module must never do IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from taskforce.core.records import Record
from taskforce.core.specs import START_OPTIONS, ProcessSpec, spawn_values

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True, eq=False, repr=False)
class Effect(Record):
    """Base of all effects."""


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Spawn(Effect, ProcessSpec):
    """Start one process as its ``ProcessSpec`` says, for slot (task,
    instance), in a new process group.

    Its fields are the spec's (see ``ProcessSpec`` and the ``Attribute`` of
    each) less those the core keeps to itself (``pidfile``, always None
    here), so an attribute added to the spec travels without a change here.
    ``argv[0]`` is the program (searched on ``env['PATH']``); ``env`` is the
    whole environment (the spec's ``Environment``, shared rather than copied
    for each spawn; written as a plain mapping).  The fields
    ``START_OPTIONS`` names are applied in the child before exec
    (``start_options``); ``output`` and its ``output_*``
    say where stdout and stderr go: ``inherit`` (the daemon's), ``discard``,
    ``log`` (taskforce's log, each line prefixed ``task[instance]``, stderr
    lines ``task[instance]:stderr``) or ``file`` (``output_file``, stderr to
    ``output_stderr`` if set, each line stamped with its time and stream if
    ``output_timestamps``, rotated when it would pass ``output_max_bytes``,
    keeping ``output_backups`` old files).
    """

    task: str
    instance: int
    generation: int

    @classmethod
    def of(cls, spec: ProcessSpec, *, task: str, instance: int, generation: int) -> Spawn:
        """The spawn of ``spec`` for slot (``task``, ``instance``)."""
        return cls(task=task, instance=instance, generation=generation, **spawn_values(spec))

    def start_options(self) -> dict[str, Any]:
        """The keyword arguments of the shell's ``process.start``, by name."""
        return {name: getattr(self, name) for name in START_OPTIONS}


@dataclass(frozen=True, eq=False, repr=False)
class Signal(Effect):
    """Send ``signal`` (a name such as ``"SIGTERM"``) to process group ``pid``.

    With ``group=False`` only the process ``pid`` itself gets it (event
    actions such as a reload on SIGHUP are meant for the daemon, not for
    every process of its group).
    """

    task: str
    instance: int
    pid: int
    signal: str
    group: bool = True


@dataclass(frozen=True, eq=False, repr=False)
class StopLeftover(Effect):
    """Send ``signal`` to every process of a leftover slot (``LeftoversFound``).

    Answered by ``LeftoverGone`` once none of them is left.
    """

    task: str
    instance: int
    signal: str


@dataclass(frozen=True, eq=False, repr=False)
class SweepSlot(Effect):
    """Find what is left in a slot none of whose processes is known any
    more: its start command ended and named no daemon (it failed, or its
    pidfile never named a live one), yet may have started something.

    Answered, before anything else, by ``LeftoversFound`` for that slot
    alone (what is there is then stopped as a leftover is, see
    ``StopLeftover``), or ``LeftoverGone`` when nothing is.
    """

    task: str
    instance: int


@dataclass(frozen=True, eq=False, repr=False)
class ReadPidfile(Effect):
    """Read ``path`` for slot (task, instance); answered at once by ``PidfileRead``."""

    task: str
    instance: int
    generation: int
    path: str


@dataclass(frozen=True, eq=False, repr=False)
class WatchProcess(Effect):
    """Report the exit of ``pid`` (not started by a ``Spawn``) as ``ProcessExited``.

    Used for a daemon found through its pidfile: reaped here when it is our
    descendant, otherwise watched (pidfd, or polling where there is none).
    """

    task: str
    instance: int
    pid: int


@dataclass(frozen=True, eq=False, repr=False)
class RunCommand(Effect):
    """Run a task's named command once (an event action, or a health check),
    in a process group of its own; not supervised.

    Answered by ``CommandExited`` (with the same ``run``) when it ends.
    ``run`` numbers a health check's run so that the core can end it
    (``StopCommand``) and know its answer from a late one; 0 for others.
    """

    task: str
    instance: int
    name: str
    argv: tuple[str, ...]
    #: a mapping (the slot's ``Environment``, not a copy)
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    group: str | None = None
    run: int = 0


@dataclass(frozen=True, eq=False, repr=False)
class StopCommand(Effect):
    """Send ``signal`` to the process group of command ``run`` (see
    ``RunCommand``), if it has not ended yet; nothing if it has.

    Its ``CommandExited`` follows as for any command.
    """

    task: str
    instance: int
    run: int
    signal: str = "SIGKILL"


@dataclass(frozen=True, eq=False, repr=False)
class Watch(Effect):
    """Watch ``paths`` and report changes as ``FileChanged(key=key)``.

    ``kind`` is ``"file"`` (the paths as given), ``"executable"`` (the single
    path is a program name to resolve on ``search_path``) or ``"python"``
    (the single path is a script: watch it and every module it imports from
    outside the Python installation).  A new ``Watch`` for a key replaces the
    old one.
    """

    key: str
    kind: str
    paths: tuple[str, ...]
    search_path: str = ""


@dataclass(frozen=True, eq=False, repr=False)
class Unwatch(Effect):
    """Stop watching what was watched under ``key``."""

    key: str


@dataclass(frozen=True, eq=False, repr=False)
class ArmTimer(Effect):
    """Send ``TimerFired`` at monotonic time ``at`` (``None``: no timer due).

    There is one timer: each ``ArmTimer`` replaces the previous one.
    """

    at: float | None


@dataclass(frozen=True, eq=False, repr=False)
class Log(Effect):
    """Log ``message`` at ``level`` (``debug``, ``info``, ``warning``, ``error``)."""

    level: str
    message: str
    task: str | None = None


@dataclass(frozen=True, eq=False, repr=False)
class Reply(Effect):
    """Answer control request ``request`` with an HTTP-like status and body."""

    request: int
    code: int
    body: Any = None


@dataclass(frozen=True, eq=False, repr=False)
class LoadInputs(Effect):
    """Read the config and roles files again, away from the loop, and report
    what was found (``ConfigLoaded`` or ``ConfigRejected``, with ``source``)
    once it is read.  A read asked for while one is running is done after it.
    """

    source: str = "config"


@dataclass(frozen=True, eq=False, repr=False)
class CheckReset(Effect):
    """Read the config and roles files now and answer, before anything else,
    with ``ResetRequested(reason=reason)`` saying what loading them found."""

    reason: str = ""


@dataclass(frozen=True, eq=False, repr=False)
class Probe(Effect):
    """Try once whether slot (``task``, ``instance``) is ready, from the
    loop, and answer with ``ProbeFinished(run=run)`` within ``timeout``
    seconds: ``kind`` ``tcp`` connects to ``target`` (``HOST:PORT``);
    ``http`` sends ``GET`` to ``target`` (a URL) and passes on a 2xx answer.
    (A ``command`` probe is a ``RunCommand`` named ``ready``.)"""

    task: str
    instance: int
    run: int
    kind: str
    target: str
    timeout: float


@dataclass(frozen=True, eq=False, repr=False)
class Exit(Effect):
    """Every task is stopped: exit with ``code``, or re-execute (``reset``)."""

    code: int = 0
    reset: bool = False


EFFECT_TYPES: dict[str, type[Effect]] = {
    cls.__name__: cls
    for cls in (
        Spawn,
        Signal,
        StopLeftover,
        SweepSlot,
        ReadPidfile,
        WatchProcess,
        RunCommand,
        StopCommand,
        Watch,
        Unwatch,
        ArmTimer,
        Log,
        Reply,
        LoadInputs,
        CheckReset,
        Probe,
        Exit,
    )
}
