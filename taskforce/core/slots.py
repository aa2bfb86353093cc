"""What the supervisor keeps per task, per slot, per leftover and per reload.

Plain records with no behaviour beyond reading their own fields: every
decision about them is the supervisor's (``convergence``, ``actions``,
``handlers``).  A snapshot copies every field of ``Slot``, ``TaskState`` and
``Leftover``, ``Rare`` ones included (see ``state.SupervisorState.snapshot``),
so a field added here is saved without further work -- it must hold plain,
JSON-able values.

This module must never do IO, read a clock or draw random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taskforce.core.lifecycle import (
    LIVE_STATES,
    PHASE_DAEMON,
    PHASE_LAUNCHER,
    SLOT_DRAINING,
    SLOT_PROBING,
    SLOT_STARTING,
    SLOT_STOPPED,
    Intent,
    Phase,
    SlotState,
    TimerPurpose,
)
from taskforce.core.model import ProcessSpec, TaskSpec
from taskforce.core.rare import Rare

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _NoTimers(dict):  # type: ignore[type-arg]
    """The timers of a slot that has none: one mapping, shared and always
    empty, so an idle slot holds no dict of its own (most slots, most of
    the time).  Reading and removing work as on an empty dict; the first
    deadline replaces it with a dict of the slot's own (``Timers._set_timer``).
    """

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("a slot's shared empty timers: give the slot a dict of its own")

    def setdefault(self, key: Any, default: Any = None) -> Any:
        raise TypeError("a slot's shared empty timers: give the slot a dict of its own")

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a slot's shared empty timers: give the slot a dict of its own")

    def clear(self) -> None:
        pass


#: A slot's timers while it has none (see ``_NoTimers``).
NO_TIMERS: dict[TimerPurpose, float] = _NoTimers()


def _no_timers() -> dict[TimerPurpose, float]:
    return NO_TIMERS


@dataclass(eq=False, slots=True)
class Slot:
    """One process slot of a task: ``Task_instance`` ``instance``.

    One per process of every task, so what most slots leave at its default
    nearly all the time is a ``Rare`` field (kept in ``rare`` only while it
    differs); what a running slot or one that has restarted holds is a
    field of its own.
    """

    task: str
    instance: int
    state: SlotState = SLOT_STOPPED
    generation: int = 0
    pid: int | None = None
    spec: ProcessSpec | None = None
    started_at: float | None = None
    exited_at: float | None = None
    last_exit: str | None = None
    restarts: int = 0
    #: why it last started, stopped or restarted -- for the operator
    reason: str = ""
    #: deadline by purpose (``NO_TIMERS`` while there is none)
    timers: dict[TimerPurpose, float] = field(default_factory=_no_timers)
    #: when it was last started, oldest first (at most its ``start_limit``
    #: burst of them), since its last fresh attempt (see ``_retry``)
    starts: tuple[float, ...] = ()
    #: the signal its last process died of (None: it exited, or none has)
    exit_signal: str | None = None
    #: when its process became ready (None: it is not)
    ready_at: float | None = None
    #: the ``Rare`` fields below that differ from their defaults
    rare: dict[str, Any] | None = None

    fails = Rare(0)
    #: why the slot is stopping (None: it is not)
    intent = Rare[Intent | None](None)
    waiting_on = Rare[tuple[str, ...]](())
    #: nowait/adopt: how it knows its process (None: its own child)
    phase = Rare[Phase | None](None)
    #: adopt: the pidfile was looked at once since taskforce started
    adopt_checked = Rare(False)
    #: when the current pidfile wait gives up
    pidfile_deadline = Rare(0.0)
    #: the health check running now (its ``RunCommand.run``; None: none)
    check_run = Rare[int | None](None)
    #: health checks of this process that failed in a row
    check_fails = Rare(0)
    #: an extra slot, after the pool's, that a rollout started (``surge``)
    surge = Rare(False)
    #: the readiness probe running now (its run number; None: none)
    probe_run = Rare[int | None](None)
    #: started while its task's rollout is under way and not ready yet: if
    #: it fails, the rollout halts (see ``rollout``)
    trial = Rare(False)
    #: why its process must be replaced by the rollout ("": it need not)
    stale = Rare("")
    #: what its process last said (``STATUS=``), or its last probe's failure
    status = Rare("")
    #: the pid its process named with ``MAINPID=`` (None: none)
    main_pid = Rare[int | None](None)
    #: nowait/adopt: ``READY=1`` came while its start command ran or its
    #: pidfile was awaited; its daemon is ready as soon as it is found
    ready_early = Rare(False)

    @property
    def live(self) -> bool:
        return self.state in _HAS_PROCESS

    @property
    def awaiting_daemon(self) -> bool:
        """nowait/adopt: its start command is done, its daemon not yet known.

        No pid of it is known, but a daemon may run: the slot is open until
        its pidfile names one or ``pidfile_timeout`` passes.
        """
        return self.state is SLOT_PROBING and self.phase == PHASE_LAUNCHER

    @property
    def signal_group(self) -> bool:
        # A daemon found through its pidfile may share a group with others
        # (its launcher's, say): signal the process itself, never the group
        # -- until it is gone and what it left in the slot drains.
        return self.phase != PHASE_DAEMON or self.state is SLOT_DRAINING


#: the watch key suffix (``<task>#failed``) for the start program of a task
#: with a slot in the failed state (event watches are ``<task>#<index>``)
FAILED_WATCH = "failed"

#: states with a process (or one on its way); a tuple, as membership by
#: identity is cheaper than hashing an Enum member
_HAS_PROCESS = (*sorted(LIVE_STATES, key=lambda state: state.name), SLOT_STARTING, SLOT_PROBING)


@dataclass(eq=False, slots=True)
class TaskState:
    """What the supervisor keeps of one task: its spec, its slots, its overrides.

    One per task; as in ``Slot``, what is seldom away from its default (an
    override's time, a rollout under way, failed checks) is a ``Rare`` field.
    """

    spec: TaskSpec
    slots: list[Slot] = field(default_factory=list)
    removed: bool = False
    #: once/event tasks: a run is wanted
    run_requested: bool = False
    #: overrides from the control path: in force until the operator undoes
    #: them, a reload is asked for over the control path, or the task's own
    #: config entry changes (see ``Supervisor._keep_overrides``)
    control_override: str | None = None
    count_override: int | None = None
    waiting_on: tuple[str, ...] = ()
    #: health checks run (for /metrics)
    check_runs: int = 0
    #: a change may have outdated its processes since the last converge
    #: pass looked (its spec was replaced, or ``replace`` marked them): the
    #: pass then looks whether a rollout begins, and only then
    rollout_check: bool = False
    #: the ``Rare`` fields below that differ from their defaults
    rare: dict[str, Any] | None = None

    #: when each override was made (core time)
    control_override_at = Rare[float | None](None)
    count_override_at = Rare[float | None](None)
    #: health checks failed and timed out (for /metrics)
    check_failures = Rare(0)
    check_timeouts = Rare(0)
    #: why its rollout is under way ("": none is)
    rollout = Rare("")
    #: when it began
    rollout_at = Rare[float | None](None)
    #: why it halted ("": it did not)
    rollout_halted = Rare("")
    #: processes of the pool it has replaced so far
    rollout_replaced = Rare(0)
    #: extra (surge) slots it runs
    rollout_surge = Rare(0)

    @property
    def control(self) -> str:
        return self.control_override or self.spec.control

    @property
    def gradual(self) -> bool:
        """Whether a rollout of it is more than a restart of its one process."""
        return self.count > 1 or self.spec.readiness.max_surge > 0

    @property
    def count(self) -> int:
        return self.spec.count if self.count_override is None else self.count_override

    def overrides(self) -> tuple[tuple[str, Any, float | None], ...]:
        """The operator's overrides in force: (key, value, since when), control first."""
        return tuple(
            (key, value, at)
            for key, value, at in (
                ("control", self.control_override, self.control_override_at),
                ("count", self.count_override, self.count_override_at),
            )
            if value is not None
        )


@dataclass(eq=False, slots=True)
class Leftover:
    """Processes of one slot that an earlier taskforce left running, or
    that its start command left without naming a daemon (``stray``)."""

    pids: tuple[int, ...]
    #: asked to stop (SIGTERM sent)
    stopping: bool = False
    #: when SIGKILL follows the SIGTERM (None: not armed, or already sent)
    deadline: float | None = None
    #: its slot adopts: kept while the slot's pidfile is read, and stopped
    #: only if that finds nothing to adopt
    adopting: bool = False
    #: left by the slot's own start command, which named no daemon (not by
    #: an earlier taskforce); pids empty until the sweep's answer
    stray: bool = False


#: Signals that others send to end a process (an operator, a script, the
#: OOM killer): a new process of a rollout that dies of one is replaced like
#: any crash, not held against its release (see ``SlotActions._after_exit``).
OUTSIDE_SIGNALS = frozenset({"SIGKILL", "SIGTERM", "SIGINT", "SIGHUP"})


def describe_exit(exit_code: int | None, signal: str | None) -> str:
    if signal:
        return f"killed by {signal}"
    if exit_code is None:
        return "exited (status unknown: not our child)"
    return "exited ok" if exit_code == 0 else f"exited {exit_code}"


@dataclass
class ReloadNote:
    """What one applied reload changed, for its one summary line."""

    source: str
    changed: list[str]
    added: list[str]
    removed: list[str]
    #: slots restarted, started and stopped by it (counted while it converges)
    counting: bool = False
    restarted: int = 0
    started: int = 0
    stopped: int = 0

    def line(self) -> str:
        def names(items: list[str]) -> str:
            shown = ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")
            return f"({shown})"

        tasks = []
        if self.changed:
            noun = "task" if len(self.changed) == 1 else "tasks"
            tasks.append(f"{len(self.changed)} {noun} changed {names(self.changed)}")
        if self.added:
            tasks.append(f"{len(self.added)} added {names(self.added)}")
        if self.removed:
            tasks.append(f"{len(self.removed)} removed {names(self.removed)}")
        slots = [
            f"{count} {what}"
            for count, what in (
                (self.restarted, "restarted"),
                (self.started, "started"),
                (self.stopped, "stopped"),
            )
            if count
        ]
        if slots:
            noun = "slot" if (self.restarted or self.started or self.stopped) == 1 else "slots"
            first, _, rest = slots[0].partition(" ")
            slots[0] = f"{first} {noun} {rest}"
        done = ", ".join(slots) if slots else "no process started, stopped or restarted"
        what = ", ".join(tasks) if tasks else "no task changed"
        return f"reload ({self.source}): {what}; {done}"
