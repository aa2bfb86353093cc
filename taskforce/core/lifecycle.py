"""The lifecycle of one process slot, declared once with ``transitions``.

Everything that decides which state a slot may move to lives in TRANSITIONS
below; the supervisor picks *which* trigger to pull (policy), this table says
whether it is allowed and where it leads (mechanism).  A trigger that is not
allowed from the slot's state raises ``transitions.MachineError`` before
anything changes, so a policy bug can never leave a slot half-updated.

One ``Machine``, built from TRANSITIONS, is shared by every slot.  It has no
callbacks: the supervisor records effects itself, so pulling a trigger only
changes ``slot.state``.  Firing uses a (state, trigger) -> state map made
from the same table, with the machine's own ``MachineError`` for a move it
does not allow: the same behaviour at a sixth of the cost, which is a third
of the time of replaying a long log.  So a running daemon never needs the
machine itself: it is built (and ``transitions`` imported) when first asked
for -- by ``table()``, the docs, the tests, which check that it allows
exactly the moves of the map.  This module must never do IO.
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from transitions import Machine


class SlotState(enum.Enum):
    STOPPED = "stopped"  #: no process, and none wanted yet
    WAITING = "waiting"  #: wanted, held back by requirements or start_delay
    STARTING = "starting"  #: spawn asked for, pid not yet known
    #: reading a pidfile: to adopt a process, or a daemon's pid once its start
    #: command exited -- then the slot is open: a stop waits here for the
    #: daemon (up to ``pidfile_timeout``), and so does shutdown
    PROBING = "probing"
    RUNNING = "running"  #: its process is alive, not yet ready
    #: its process is alive and ready: it said so (``READY=1``), its probe
    #: passed, or it ran for its ``start_delay``; what requires it may start
    READY = "ready"
    STOPPING = "stopping"  #: asked to stop, waiting for it to exit
    DRAINING = "draining"  #: leader gone, other group members being killed
    EXITED = "exited"  #: process and group gone; what next is being decided
    BACKOFF = "backoff"  #: failed fast, restart delayed
    DONE = "done"  #: a ``once`` task that has finished; not started again
    #: gave up: it hit its ``start_limit`` (``burst`` starts within
    #: ``interval`` seconds, then it exited again); not started again until an
    #: operator starts it, its config entry changes or its executable does
    FAILED = "failed"


S = SlotState


class _Word(str, enum.Enum):
    """A member of a closed set of words, which *is* its word.

    A ``str`` that equals, hashes, formats and JSON-encodes as its value, so
    what is logged, recorded and snapshotted stays the word it always was.
    """

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


class Intent(_Word):
    """Why a slot is stopping (``Slot.intent``; None: it is not)."""

    STOP = "stop"  #: stay down
    RESTART = "restart"  #: come back at once
    FINISH = "finish"  #: a ``once``/``event`` task's run that is over
    #: a rollout halted on it: stay down (failed) until the next change
    HALT = "halt"


class Phase(_Word):
    """How a nowait/adopt slot knows its process (``Slot.phase``; None: it
    is an ordinary one, its own child)."""

    LAUNCHER = "launcher"  #: its start command runs
    DAEMON = "daemon"  #: its daemon's pid came from the pidfile
    ADOPT = "adopt"  #: probing its pidfile for a process to adopt


class TimerPurpose(_Word):
    """What a slot's deadline is for (``Slot.timers``, the timer heap)."""

    READY = "ready"  #: its ``start_delay`` is over: it is ready
    PROBE = "probe"  #: run its readiness probe (or: the one running took too long)
    READY_TIMEOUT = "ready_timeout"  #: its ``ready_timeout`` is over: not ready
    WATCHDOG = "watchdog"  #: its ``watchdog_sec`` passed without a ``WATCHDOG=1``
    LIMIT = "limit"  #: its ``time_limit`` is reached: stop or restart it
    KILL = "kill"  #: its ``stop_timeout`` is over: SIGKILL
    RETRY = "retry"  #: its backoff is over: start it again
    PIDFILE = "pidfile"  #: read its pidfile again
    CHECK = "check"  #: run its health check
    CHECK_TIMEOUT = "check_timeout"  #: its health check ran too long
    LEFTOVER = "leftover"  #: a leftover's ``stop_timeout`` is over: SIGKILL


class Shutdown(_Word):
    """What taskforce does once every task has stopped (``Supervisor.shutdown``;
    None: it is not shutting down)."""

    STOP = "stop"  #: exit
    RESET = "reset"  #: re-exec itself, and start them all again


# The members again, bound once as module globals for the core's hot paths
# (handlers, convergence, actions, slots, timers): ``Phase.DAEMON`` goes
# through the enum class's attribute lookup (~140 ns), a global costs ~10 ns,
# and a busy supervisor reads them on every event.  Same objects, other names.
SLOT_STOPPED = SlotState.STOPPED
SLOT_WAITING = SlotState.WAITING
SLOT_STARTING = SlotState.STARTING
SLOT_PROBING = SlotState.PROBING
SLOT_RUNNING = SlotState.RUNNING
SLOT_READY = SlotState.READY
SLOT_STOPPING = SlotState.STOPPING
SLOT_DRAINING = SlotState.DRAINING
SLOT_EXITED = SlotState.EXITED
SLOT_BACKOFF = SlotState.BACKOFF
SLOT_DONE = SlotState.DONE
SLOT_FAILED = SlotState.FAILED
INTENT_STOP = Intent.STOP
INTENT_RESTART = Intent.RESTART
INTENT_FINISH = Intent.FINISH
INTENT_HALT = Intent.HALT
PHASE_LAUNCHER = Phase.LAUNCHER
PHASE_DAEMON = Phase.DAEMON
PHASE_ADOPT = Phase.ADOPT
TIMER_READY = TimerPurpose.READY
TIMER_LIMIT = TimerPurpose.LIMIT
TIMER_KILL = TimerPurpose.KILL
TIMER_RETRY = TimerPurpose.RETRY
TIMER_PIDFILE = TimerPurpose.PIDFILE
TIMER_CHECK = TimerPurpose.CHECK
TIMER_CHECK_TIMEOUT = TimerPurpose.CHECK_TIMEOUT
TIMER_LEFTOVER = TimerPurpose.LEFTOVER
TIMER_PROBE = TimerPurpose.PROBE
TIMER_READY_TIMEOUT = TimerPurpose.READY_TIMEOUT
TIMER_WATCHDOG = TimerPurpose.WATCHDOG
SHUTDOWN_STOP = Shutdown.STOP
SHUTDOWN_RESET = Shutdown.RESET


#: The controls whose task runs to its end when asked, rather than being kept
#: running: an exit finishes it (DONE), it is never restarted.
ONE_SHOT_CONTROLS = ("once", "event")

#: (trigger, sources, destination) -- the whole lifecycle.
TRANSITIONS: tuple[tuple[str, tuple[SlotState, ...], SlotState], ...] = (
    ("hold", (S.STOPPED, S.EXITED, S.BACKOFF, S.DONE), S.WAITING),
    ("release", (S.WAITING, S.BACKOFF, S.EXITED, S.DONE, S.FAILED), S.STOPPED),
    ("spawn", (S.STOPPED, S.WAITING, S.BACKOFF, S.EXITED, S.DONE, S.PROBING), S.STARTING),
    ("spawned", (S.STARTING,), S.RUNNING),
    ("ready", (S.RUNNING,), S.READY),
    ("probe", (S.STOPPED, S.WAITING, S.BACKOFF, S.EXITED, S.DONE), S.PROBING),
    ("launched", (S.RUNNING,), S.PROBING),
    ("found", (S.PROBING,), S.RUNNING),
    ("lost", (S.PROBING,), S.EXITED),
    ("abandon", (S.RUNNING, S.READY), S.STOPPED),
    ("spawn_failed", (S.STARTING,), S.EXITED),
    ("stop", (S.RUNNING, S.READY), S.STOPPING),
    ("leader_exited", (S.RUNNING, S.READY, S.STOPPING), S.DRAINING),
    ("exited", (S.RUNNING, S.READY, S.STOPPING, S.DRAINING), S.EXITED),
    ("back_off", (S.EXITED,), S.BACKOFF),
    ("finish", (S.EXITED,), S.DONE),
    ("give_up", (S.EXITED,), S.FAILED),
)

#: States in which the slot has a live process group.
LIVE_STATES = frozenset({S.RUNNING, S.READY, S.STOPPING, S.DRAINING})
#: States in which the slot's process runs and is not being stopped.
UP_STATES = (S.RUNNING, S.READY)


class _Lifecycle:
    """Holds the one shared machine, and the moves it allows."""

    def __init__(self) -> None:
        #: (state, trigger) -> the state it leads to, for every declared move
        self.moves: dict[tuple[SlotState, str], SlotState] = {
            (source, trigger): dest for trigger, sources, dest in TRANSITIONS for source in sources
        }
        self._machine: Machine | None = None

    @property
    def machine(self) -> Machine:
        """The ``transitions`` machine of TRANSITIONS (built on first use)."""
        if self._machine is None:
            self._machine = self._build()
        return self._machine

    @staticmethod
    def _build() -> Machine:
        from transitions import Machine

        return Machine(
            model=None,
            states=list(SlotState),
            transitions=[
                {"trigger": trigger, "source": list(sources), "dest": dest}
                for trigger, sources, dest in TRANSITIONS
            ],
            initial=SlotState.STOPPED,
            auto_transitions=False,
            ignore_invalid_triggers=False,
            model_override=False,
        )

    def attach(self, slot: Any) -> None:
        # Not ``add_model``: that decorates every slot with a method per
        # trigger and state (about 9 KiB each); firing through the machine's
        # events needs only the ``state`` attribute.
        slot.state = SlotState.STOPPED

    def detach(self, slot: Any) -> None:
        """Nothing to undo (see ``attach``); kept so slots have one life cycle."""

    def fire(self, slot: Any, trigger: str) -> None:
        """Move ``slot`` by ``trigger``; raises MachineError if not allowed."""
        dest = self.moves.get((slot.state, trigger))
        if dest is None:
            # (a policy bug, never a normal path: its class loaded only now)
            from transitions import MachineError

            raise MachineError(f"Can't trigger event {trigger} from state {slot.state.name}!")
        slot.state = dest


LIFECYCLE = _Lifecycle()


def table() -> list[tuple[str, str, str]]:
    """The transition table as read back from the machine, for docs and tests."""
    rows = []
    for trigger, event in LIFECYCLE.machine.events.items():
        for source, transitions_from in event.transitions.items():
            for transition in transitions_from:
                rows.append((trigger, source, str(transition.dest)))
    return sorted(rows)
