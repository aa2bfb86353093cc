"""Events: the facts the shell reports to the core.

Every event is a frozen dataclass of plain values (str, int, float, bool,
None, tuples and dicts of those) carrying its own time ``at`` (monotonic
seconds, stamped by the shell).  Everything nondeterministic -- time, pids,
file contents, the environment, the host name -- reaches the core only here,
so a recorded list of events replays exactly.  Equality, hash and repr come
from ``records.Record`` (written once, not generated for each class).

This module must never do IO or read a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taskforce.core.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True, eq=False, repr=False)
class Event(Record):
    """Base of all events; ``at`` is the monotonic time it happened."""

    at: float


@dataclass(frozen=True, eq=False, repr=False)
class Booted(Event):
    """The daemon started (or re-executed itself).

    ``environ`` is the daemon's environment, the base of every task's context;
    ``host``/``fqdn`` the host names; ``pid``/``ppid`` the daemon's own ids.
    """

    environ: dict[str, str] = field(default_factory=dict)
    host: str = "localhost"
    fqdn: str = "localhost"
    pid: int = 0
    ppid: int = 0


@dataclass(frozen=True, eq=False, repr=False)
class ConfigLoaded(Event):
    """A valid config and the current roles were read.

    ``config`` is the validated, normalized config (see ``taskforce.config``);
    ``roles`` the roles file's role names in file order, or ``None`` when there
    is no roles file; ``role_values`` its ``name=value`` lines; ``source`` says
    what prompted the load (``"start"``, ``"config"``, ``"roles"``,
    ``"request"``).  ``roles_missing`` is the path of a roles file that was
    named but was not there (then ``roles`` and ``role_values`` are empty,
    and the config was checked against the core's current roles).
    """

    config: dict[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] | None = None
    role_values: dict[str, str] = field(default_factory=dict)
    source: str = "start"
    roles_missing: str | None = None


@dataclass(frozen=True, eq=False, repr=False)
class ConfigRejected(Event):
    """A config or roles file failed to load; nothing that runs may change.

    ``error`` is the first problem found; ``errors`` every one of them, in
    file order (empty in logs recorded before it was reported: then
    ``error`` is all there is).
    """

    source: str = ""
    error: str = ""
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False, repr=False)
class ProcessStarted(Event):
    """The ``Spawn`` for (task, instance, generation) produced ``pid``.

    Its process group id is ``pid`` (every task leads its own group).
    """

    task: str = ""
    instance: int = 0
    generation: int = 0
    pid: int = 0


@dataclass(frozen=True, eq=False, repr=False)
class SpawnFailed(Event):
    """The ``Spawn`` for (task, instance, generation) failed before exec."""

    task: str = ""
    instance: int = 0
    generation: int = 0
    error: str = ""


@dataclass(frozen=True, eq=False, repr=False)
class ProcessExited(Event):
    """A process the core started was reaped.

    Exactly one of ``exit_code`` and ``signal`` (a name, ``"SIGKILL"``) is
    set.  ``group_alive`` says whether other members of its process group
    were still alive when it was reaped (a shell wrapper's children, say);
    if so a ``GroupEmptied`` for ``pid`` follows once they are gone.
    """

    pid: int = 0
    exit_code: int | None = None
    signal: str | None = None
    group_alive: bool = False
    #: set when the child failed before its exec (bad cwd, unknown user,
    #: no such program): the process never ran
    error: str = ""


@dataclass(frozen=True, eq=False, repr=False)
class PidfileRead(Event):
    """The answer to ``ReadPidfile``: the live pid the file names, and what
    the shell found out about the file and that process.

    ``pid`` is None when there is no live pid to judge, and ``error`` says
    why (no file, no pid in it, no such process).  Otherwise the core decides
    whether ``pid`` is the slot's daemon from the facts that follow (see
    ``Supervisor._pidfile_refusal``).  Their defaults are what an event
    recorded before they were reported meant: a pid the shell had already
    accepted.
    """

    task: str = ""
    instance: int = 0
    generation: int = 0
    pid: int | None = None
    error: str = ""
    #: uid of the pidfile's owner (None: not known)
    owner: int | None = None
    #: someone other than root can write the pidfile: it is owned by another
    #: user, is group- or world-writable, or is reached through a symlink a
    #: user other than root owns
    writable_by_non_root: bool = False
    #: ``pid`` started after the pidfile was last written: a recycled pid
    started_after_file: bool = False
    #: ``pid`` belongs to the slot (it carries the slot's environment marker,
    #: ``Task_name`` and ``Task_instance``: a descendant of its start command)
    in_slot: bool = False


@dataclass(frozen=True, eq=False, repr=False)
class GroupEmptied(Event):
    """The last member of process group ``pgid`` is gone."""

    pgid: int = 0


@dataclass(frozen=True, eq=False, repr=False)
class LeftoversFound(Event):
    """Processes an earlier taskforce with this config left behind.

    Found at start-up (after a crash, an OOM kill, or a re-exec) in the
    slots' cgroups or by the marker in their environment.  ``leftovers``
    holds one ``(task, instance, pids)`` per slot, sorted; ``pids`` sorted.
    """

    leftovers: tuple[tuple[str, int, tuple[int, ...]], ...] = ()


@dataclass(frozen=True, eq=False, repr=False)
class LeftoverGone(Event):
    """Every process of a leftover slot (see ``LeftoversFound``) is gone."""

    task: str = ""
    instance: int = 0


@dataclass(frozen=True, eq=False, repr=False)
class CommandExited(Event):
    """A helper command run by a ``RunCommand`` effect finished.

    ``run`` is the ``RunCommand``'s (0 for commands that have none).
    """

    task: str = ""
    name: str = ""
    pid: int = 0
    exit_code: int | None = None
    signal: str | None = None
    error: str = ""
    instance: int = 0
    run: int = 0


@dataclass(frozen=True, eq=False, repr=False)
class Notified(Event):
    """A datagram on the notify socket (systemd's ``sd_notify`` protocol).

    ``pid`` sent it, as the kernel vouches (``SCM_CREDENTIALS``), and the
    shell found that pid inside the process tree of slot (``task``,
    ``instance``) -- its cgroup, process group or environment marker;
    messages from any other process never become an event.  ``message`` is
    the datagram as text: ``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``,
    ``STOPPING=1``, ``WATCHDOG=1``, ``MAINPID=N``).
    """

    task: str = ""
    instance: int = 0
    pid: int = 0
    message: str = ""


@dataclass(frozen=True, eq=False, repr=False)
class ProbeFinished(Event):
    """A readiness probe asked for by a ``Probe`` effect ended: ``ok`` when
    it passed (a TCP connect accepted, an HTTP answer 2xx), else ``detail``
    says what it found (refused, timed out, HTTP 503...)."""

    task: str = ""
    instance: int = 0
    run: int = 0
    ok: bool = False
    detail: str = ""


#: The keys the shell watches taskforce's own inputs under, and reports
#: their changes with (``FileChanged``): the config file, the roles file, and
#: taskforce's own code.  The core decides what a change of each means.  A
#: task's watch keys always hold a "#", so no task can take one of these.
CONFIG_KEY, ROLES_KEY, CODE_KEY = "@config", "@roles", "@code"


@dataclass(frozen=True, eq=False, repr=False)
class FileChanged(Event):
    """A path watched under ``key`` (see ``Watch``, and ``CONFIG_KEY`` and
    its kin) changed, appeared or went."""

    key: str = ""
    path: str = ""


@dataclass(frozen=True, eq=False, repr=False)
class TimerFired(Event):
    """The time asked for by the last ``ArmTimer`` has come."""


@dataclass(frozen=True, eq=False, repr=False)
class StopRequested(Event):
    """Stop every task and exit (``reset``: then re-execute)."""

    reset: bool = False
    reason: str = ""


@dataclass(frozen=True, eq=False, repr=False)
class ResetAsked(Event):
    """A reset was asked for (SIGHUP, ``-R``, a control request), with no
    facts yet: the core joins a reset under way, or answers ``CheckReset`` to
    learn what the files on disk hold (then ``ResetRequested``).  So a storm
    of requests during a reset reads no file."""

    reason: str = ""


@dataclass(frozen=True, eq=False, repr=False)
class ResetRequested(Event):
    """A reset was asked for (SIGHUP, ``-R``, a control request, a change to
    taskforce's own code): stop every task and re-execute -- if the core
    judges that the re-executed taskforce could start again.

    The shell reports what loading the config and roles files on disk found:
    ``errors``, every problem (empty: they load), and ``roles_missing``, the
    path of a named roles file that was not there.  (Logs recorded before
    this event say ``StopRequested(reset=True)``, after a ``ConfigRejected``
    of source ``reset`` when the shell refused; both still replay.)
    """

    reason: str = ""
    errors: tuple[str, ...] = ()
    roles_missing: str | None = None


@dataclass(frozen=True, eq=False, repr=False)
class ControlRequested(Event):
    """An operator asked for a change through the control path.

    ``action`` names it (``control``, ``count``, ``restart``, ``signal``,
    ``event``, and ``reload``, ``stop``, ``reset``, ``plan``, which the
    shell performs once the core grants them); ``args`` holds its
    parameters; ``request`` is an opaque id echoed in the ``Reply`` effect.
    ``who`` is what the shell could prove about the client and ``allow`` the
    grants of the listener it came through (see ``taskforce.core.access``);
    ``allow`` None means unchecked (logs from before access control).
    """

    request: int = 0
    action: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    who: dict[str, Any] = field(default_factory=dict)
    allow: tuple[str, ...] | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        Booted,
        ConfigLoaded,
        ConfigRejected,
        ProcessStarted,
        SpawnFailed,
        ProcessExited,
        PidfileRead,
        GroupEmptied,
        LeftoversFound,
        LeftoverGone,
        CommandExited,
        FileChanged,
        TimerFired,
        StopRequested,
        ResetAsked,
        ResetRequested,
        ControlRequested,
        Notified,
        ProbeFinished,
    )
}
