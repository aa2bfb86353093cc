"""The rows of the simulated world and what a run leaves behind.

``FakeProcess`` and ``FakeCommand`` are the rows of the simulator's process
table, the behaviour names (``TERM``, ``WRAPPER``...) say how a fake process
takes a signal, ``Violation`` and ``Divergence`` report a breach of the shell
contract and a replay that differed, and ``replay`` feeds a recorded log to
a fresh core.  ``taskforce.simulator`` re-exports all of them.

Like the simulator, this module must never touch the OS: no ``os``, ``time``,
``subprocess``, ``signal``, ``socket``, ``select``, ``logging`` or ``random``
(``tests/test_core_purity.py`` checks); it is plain data and pure functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.model import PER_PROCESS_KEYS
from taskforce.core.supervisor import Supervisor

if TYPE_CHECKING:
    from taskforce.simulator import Simulation

#: Exits on SIGTERM, SIGINT, SIGQUIT and SIGKILL; other signals are handled.
TERM = "term"
#: Ignores SIGTERM (and SIGINT, SIGQUIT): only SIGKILL ends it.
IGNORE_TERM = "ignore_term"
#: A shell wrapper: the leader has a grandchild in its process group that
#: outlives the leader unless the whole group is signalled (or it is killed).
WRAPPER = "wrapper"
#: A shell wrapper whose grandchild also ignores SIGTERM: only SIGKILL ends it.
STUBBORN_WRAPPER = "stubborn_wrapper"
#: A launcher (``nowait``/``adopt``): it starts a daemon in a session of its
#: own, writes the daemon's pid to the pidfile (the ``Task_pidfile`` of its
#: environment) and exits 0.  The daemon exits on SIGTERM.  With a delay in
#: ``pidfile_delays`` the daemon writes its pidfile that long after the
#: launcher exited; a task in ``forging`` starts no daemon and writes the pid
#: of a stranger (a process outside every slot) instead.
DAEMONIZE = "daemonize"

#: A shell wrapper whose grandchild called ``setsid``: it left the process
#: group, but not the slot (its cgroup, its environment marker).
ESCAPER = "escaper"

#: A ``DAEMONIZE`` launcher whose daemon forks a worker that ignores
#: SIGTERM: a daemon that dies, or is stopped, leaves it in the slot, where
#: only a SIGKILL to the slot ends it.
DAEMON_WITH_WORKER = "daemon_with_worker"

BEHAVIOURS = (
    TERM,
    IGNORE_TERM,
    WRAPPER,
    STUBBORN_WRAPPER,
    DAEMONIZE,
    ESCAPER,
    DAEMON_WITH_WORKER,
)

_STOPPING_SIGNALS = frozenset({"SIGTERM", "SIGINT", "SIGQUIT"})

FIRST_PID = 1000
#: The uid a pidfile written by a task with a ``user`` (or a forged one) has.
NOBODY = 65534


#: A command duration that never ends by itself: only a ``StopCommand`` ends it.
HANG = float("inf")


@dataclass
class FakeCommand:
    """One run of a task's command (``RunCommand``): its pid, when it
    started, when it will end by itself (``HANG``: never), and when it did
    end (None: it still runs) and how (``killed_by``)."""

    pid: int
    effect: fx.RunCommand
    started_at: float
    ends_at: float
    exit_code: int
    ended_at: float | None = None
    killed_by: str | None = None


class Delivery(NamedTuple):
    """A signal a fake process received: when, which, and whether group-wide."""

    at: float
    signal: str
    group: bool


@dataclass
class FakeProcess:
    """One row of the fake process table.

    ``pgid`` is the pid of the group leader (the process the core spawned);
    grandchildren of a wrapper share it.  ``alive`` turns False when the
    process dies; ``reaped`` turns True when the core has been told (a
    leader's ``ProcessExited``) -- until then a dead leader is a zombie and
    still holds its process group.  ``received`` lists a ``Delivery`` for
    every signal the process got, from the core or from the test.  ``child``
    is False for a process the core did not spawn (a daemon found through
    its pidfile): its exit is reported only when watched (``WatchProcess``),
    and without an exit status.
    """

    pid: int
    pgid: int
    task: str
    instance: int
    generation: int
    argv: tuple[str, ...]
    behaviour: str
    started_at: float
    alive: bool = True
    reaped: bool = False
    exit_code: int | None = None
    signal: str | None = None
    received: list[Delivery] = field(default_factory=list)
    child: bool = True
    #: left its process group (``setsid``) but not its slot
    escaped: bool = False
    #: started by a taskforce (it carries the slot's marker)
    marked: bool = True
    #: left running by a taskforce that crashed (see ``crash``)
    leftover: bool = False
    #: its environment as the shell gives it: the ``Spawn``'s, plus the facts
    #: of this one process (``model.PER_PROCESS_KEYS``, see ``process_facts``)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def leader(self) -> bool:
        return self.pid == self.pgid and not self.escaped

    @property
    def present(self) -> bool:
        """Still in the process table: alive, or a leader not yet reaped."""
        return self.alive or (self.leader and not self.reaped)

    def dies_of(self, signal: str) -> bool:
        if signal == "SIGKILL":
            return True
        if signal not in _STOPPING_SIGNALS:
            return False  # handled (SIGHUP reloads, SIGUSR1...)
        if self.behaviour == IGNORE_TERM:
            return False
        if self.behaviour == STUBBORN_WRAPPER and not self.leader:
            return False
        return True


def process_facts(spawn: fx.Spawn, pid: int, now: float) -> dict[str, str]:
    """The built-ins the shell adds as it starts a process (``process.start``):
    its pid, the ids it runs as (root, or ``NOBODY`` for another user or
    group) and when it started (the fake clock stands for the epoch's)."""
    uid = 0 if spawn.user in (None, "", "root", "0") else NOBODY
    gid = 0 if spawn.group in (None, "", "root", "0") and uid == 0 else NOBODY
    values = (str(pid), str(uid), str(gid), f"{now:.6f}")
    return dict(zip(PER_PROCESS_KEYS, values, strict=True))


@dataclass(frozen=True)
class Reap:
    """Queued: tell the core that leader ``pid`` died (built when fed)."""

    pid: int


class Violation(NamedTuple):
    """The core broke the shell contract while handling ``event``.

    ``kind`` is ``"signal-to-nothing"`` (a ``Signal`` for a pid or group with
    no member left) or ``"second-process"`` (a ``Spawn`` for a slot whose
    previous process group is still there).
    """

    at: float
    kind: str
    event: ev.Event
    effect: fx.Effect
    message: str

    def __str__(self) -> str:
        return self.message


class Divergence(NamedTuple):
    """Where a replay first differed from the recording: ``log[step]``."""

    step: int
    event: ev.Event
    recorded: tuple[fx.Effect, ...]
    replayed: tuple[fx.Effect, ...]


Step = tuple[ev.Event, tuple[fx.Effect, ...]]
EffectObserver = Callable[["Simulation", ev.Event, fx.Effect], None]
Recorder = Callable[[ev.Event, tuple[fx.Effect, ...]], None]


def covers(watch: fx.Watch, path: str) -> bool:
    for watched in watch.paths:
        if path == watched or path.startswith(watched.rstrip("/") + "/"):
            return True
        if watch.kind == "executable" and "/" not in watched:
            folder, _, base = path.rpartition("/")
            if base == watched and folder in watch.search_path.split(":"):
                return True
    return False


def replay(log: Iterable[Step]) -> Divergence | None:
    """Feed the recorded events to a fresh core; the first step that differs."""
    core = Supervisor()
    for step, (event, recorded) in enumerate(log):
        replayed = core.handle(event)
        if replayed != recorded:
            return Divergence(step, event, recorded, replayed)
    return None
