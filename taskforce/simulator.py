"""A deterministic world for the pure core: fake clock, processes and files.

``Simulation`` drives a real ``taskforce.core.supervisor.Supervisor`` the way
the shell does -- it turns happenings into events, feeds them, and performs
the effects that come back -- but every happening is make-believe: time moves
only when ``advance`` is called, processes are rows in a table, and files
change only when ``touch`` is called.  The property tests and the example
tests use it to run hours of supervision in milliseconds, and every step is
recorded in ``log`` so a run can be replayed (``replay``) against a fresh core.

It is the one fake shell of the test suite: a test that needs the core
driven as the shell drives it uses a ``Simulation`` rather than a driver of
its own.  It is also a ``taskforce.control.shell.Shell``, so the control
server can be run against it in-process (``feed``, ``load_inputs``,
``apply_loaded``, ``request_reset``, ``captured``, ``wake``, ``fed``).

How the fake world answers each effect -- the shell's contract, made
exact -- is written in ``taskforce.simos``; the rows of that world
(``FakeProcess``, ``FakeCommand``) and ``replay`` are in ``taskforce.simworld``.

This module must never touch the OS: it imports no ``os``, ``time``,
``subprocess``, ``signal``, ``socket``, ``select``, ``logging`` or ``random``
(``tests/test_core_purity.py`` checks), reads no clock, starts no process and
opens no file.  Everything it does is a function of the calls
made on it, so two runs with the same calls are identical.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Mapping

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.codec import freeze
from taskforce.core.supervisor import Supervisor
from taskforce.simos import FakeOS
from taskforce.simworld import (
    BEHAVIOURS,
    DAEMON_WITH_WORKER,
    DAEMONIZE,
    ESCAPER,
    FIRST_PID,
    HANG,
    IGNORE_TERM,
    NOBODY,
    STUBBORN_WRAPPER,
    TERM,
    WRAPPER,
    Delivery,
    Divergence,
    EffectObserver,
    FakeCommand,
    FakeProcess,
    Reap,
    Recorder,
    Step,
    Violation,
    covers,
    process_facts,
    replay,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "BEHAVIOURS",
    "DAEMON_WITH_WORKER",
    "DAEMONIZE",
    "ESCAPER",
    "FIRST_PID",
    "HANG",
    "IGNORE_TERM",
    "NOBODY",
    "STUBBORN_WRAPPER",
    "TERM",
    "WRAPPER",
    "Delivery",
    "Divergence",
    "EffectObserver",
    "FakeCommand",
    "FakeProcess",
    "Recorder",
    "Simulation",
    "Step",
    "Violation",
    "process_facts",
    "replay",
]

#: Marks an argument as "leave it as it is".
_KEEP: Any = object()


class Simulation(FakeOS):
    """The core under a fake clock, a fake process table and fake files.

    ``Simulation.latest`` is the most recently made one: after a failing
    property test it holds the (shrunk) run, which the test suite saves as a
    log file to replay and keep as a regression case.

    ``behaviours`` maps a task name to how its processes react to signals
    (``default_behaviour``, ``TERM`` unless given, for the tasks it does
    not name); ``failing`` holds program names (``argv[0]``)
    whose spawn fails.  ``pidfile_delays`` maps a ``DAEMONIZE`` task to how
    long its daemon takes to write its pidfile; ``forging`` holds the
    ``DAEMONIZE`` tasks whose launcher writes a stranger's pid into it (see
    ``add_stranger``).  All may be changed between calls.  ``observers``
    are called with every effect just before it is performed, with the
    world as it is at that moment; ``recorder``, if set, is called with
    every event and the effects the core gave for it, as the daemon's
    ``--record`` is.  The clock reads ``start`` (0.0) at first.
    """

    latest: Simulation | None = None

    def __init__(
        self,
        behaviours: Mapping[str, str] | None = None,
        failing: Iterable[str] = (),
        *,
        start: float = 0.0,
        host: str = "sim",
        fqdn: str = "sim.example.org",
        daemon_pid: int = 1,
        max_steps_per_call: int = 100_000,
        pidfile_delays: Mapping[str, float] | None = None,
        forging: Iterable[str] = (),
        default_behaviour: str = TERM,
    ) -> None:
        self.core = Supervisor()
        Simulation.latest = self
        self.now = start
        self.behaviours: dict[str, str] = dict(behaviours or {})
        self.default_behaviour = default_behaviour
        self.failing: set[str] = set(failing)
        self.host = host
        self.fqdn = fqdn
        self.daemon_pid = daemon_pid
        self.max_steps_per_call = max_steps_per_call
        self.processes: dict[int, FakeProcess] = {}
        self.timer: float | None = None
        self.watches: dict[str, fx.Watch] = {}
        #: the fake file system's pidfiles: path -> the pid written there,
        #: the uid that owns it (0: root, ``NOBODY``) and when it was written
        self.pidfiles: dict[str, int] = {}
        self.pidfile_owners: dict[str, int] = {}
        self.pidfile_written: dict[str, float] = {}
        #: pidfiles a daemon is yet to write: path -> (when, pid, owner)
        self.pending_pidfiles: dict[str, tuple[float, int, int]] = {}
        self.pidfile_delays: dict[str, float] = dict(pidfile_delays or {})
        self.forging: set[str] = set(forging)
        #: pids of processes outside every slot (``add_stranger``)
        self.strangers: set[int] = set()
        #: pids of processes not spawned by the core whose exit is reported
        self.watched_pids: set[int] = set()
        #: exit code of each (task, command name) run by a RunCommand (default 0)
        self.command_codes: dict[tuple[str, str], int] = {}
        #: how long each (task, command name) runs (default 0: it ends at once)
        self.command_durations: dict[tuple[str, str], float] = {}
        #: every command run, by pid
        self.runs: dict[int, FakeCommand] = {}
        self.finished: fx.Exit | None = None
        self.log: list[Step] = []
        self.logs: list[tuple[float, fx.Log]] = []
        self.replies: list[fx.Reply] = []
        self.commands: list[tuple[float, fx.RunCommand]] = []
        self.violations: list[Violation] = []
        self.observers: list[EffectObserver] = []
        self.recorder: Recorder | None = None
        #: how many events the core has been fed, over every incarnation
        self.fed = 0
        self.config: dict[str, Any] = {}
        self.roles: tuple[str, ...] | None = None
        #: the ``name=value`` lines of the roles file
        self.role_values: dict[str, str] = {}
        #: the path of the roles file while it is deleted (see delete_roles)
        self.roles_missing: str | None = None
        # readiness (see taskforce.simready)
        self.ready_delays: dict[str, float] = {}
        self.never_ready: set[str] = set()
        self._readiness: list[tuple[float, ev.Event, int | None]] = []
        self._next_pid = FIRST_PID
        self._urgent: deque[ev.Event] = deque()
        self._queue: deque[ev.Event | Reap] = deque()

    # ------------------------------------------------------------- driving

    def boot(
        self,
        config: Mapping[str, Any],
        roles: Iterable[str] | None = None,
        environ: Mapping[str, str] | None = None,
        role_values: Mapping[str, str] | None = None,
        leftovers: tuple[tuple[str, int, tuple[int, ...]], ...] = (),
    ) -> None:
        """Start the daemon: ``Booted``, ``LeftoversFound`` if there are
        ``leftovers``, then ``ConfigLoaded(source="start")``."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin"} if environ is None else dict(environ)
        self._push(
            ev.Booted(
                at=self.now,
                environ=env,
                host=self.host,
                fqdn=self.fqdn,
                pid=self.daemon_pid,
                ppid=0,
            )
        )
        if leftovers:
            self._push(ev.LeftoversFound(at=self.now, leftovers=leftovers))
        self._load(config, roles, role_values, source="start")

    def reload(
        self,
        config: Mapping[str, Any] | None = None,
        roles: Any = _KEEP,
        role_values: Mapping[str, str] | None = None,
        *,
        requested: bool = False,
    ) -> tuple[fx.Effect, ...]:
        """A new config and/or roles were read; the effects the core gave
        for the ``ConfigLoaded``.

        Omit ``config`` to keep the current one (a roles change); omit
        ``roles`` to keep the current roles (``None`` means no roles file)
        and their values, unless ``role_values`` are given.
        ``requested``: an operator asked for it (``/manage/reload``, the
        original's "revert to the config"), which ends every operator
        override; an edit of the files ends only those of the tasks whose
        own entry changed.
        """
        source = "config" if config is not None else "roles"
        if requested:
            source = "request"
        cfg = self.config if config is None else config
        if roles is not _KEEP:
            self.roles_missing = None  # the roles file is back
        new_roles = self.roles if roles is _KEEP else roles
        if roles is _KEEP and role_values is None:
            role_values = self.role_values
        return self._load(cfg, new_roles, role_values, source=source)

    def delete_roles(self, path: str = "/usr/local/etc/tf_roles.conf") -> None:
        """The roles file at ``path`` was deleted, as the shell reports it:
        ``ConfigLoaded`` with ``roles_missing``, and so on every reload until
        ``reload`` is given roles again (the file is back)."""
        self.roles_missing = path
        self._load(self.config, self.roles, None, source="roles")

    def reject(self, error: str = "bad config", source: str = "config") -> None:
        """A config or roles file failed to load."""
        self._push(ev.ConfigRejected(at=self.now, source=source, error=error))

    def request_stop(self, reset: bool = False, reason: str = "") -> None:
        """SIGTERM/SIGINT (or SIGHUP with ``reset``) reached the daemon."""
        self._push(ev.StopRequested(at=self.now, reset=reset, reason=reason))

    def control(
        self, request: int, action: str, args: Mapping[str, Any] | None = None
    ) -> fx.Reply | None:
        """An operator's request arrived on the control path; the core's
        reply, which is also kept in ``replies``."""
        effects = self.feed(
            ev.ControlRequested(
                at=self.now, request=request, action=action, args=freeze(dict(args or {}))
            )
        )
        return next((e for e in effects if isinstance(e, fx.Reply)), None)

    def feed(self, event: ev.Event) -> tuple[fx.Effect, ...]:
        """Feed ``event`` as the shell would, then everything that follows
        from it; the effects the core gave for ``event`` itself.

        For what no other method makes happen: an event a test makes up,
        or one the control server built (see ``taskforce.control.shell``).
        """
        mark = len(self.log)
        self._push(event)
        # Fed first: between calls nothing else is queued (see ``_drain``).
        return self.log[mark][1]

    def kill(self, pid: int, signal: str = "SIGKILL") -> None:
        """Someone else sends ``signal`` to process ``pid`` alone."""
        self._deliver(pid, signal, group=False)
        self._drain()

    def exit(self, pid: int, code: int = 0, *, signal: str | None = None) -> None:
        """Process ``pid`` exits by itself with ``code`` -- or, given
        ``signal``, dies of it whatever its behaviour (a process that took
        its time over a SIGTERM it was sent, then ended of it)."""
        proc = self.processes[pid]
        if proc.alive:
            if signal is not None:
                self._die(proc, signal=signal)
            else:
                self._die(proc, exit_code=code)
        self._drain()

    def crash(
        self,
        config: Mapping[str, Any] | None = None,
        roles: Any = _KEEP,
        role_values: Mapping[str, str] | None = None,
    ) -> None:
        """taskforce is SIGKILLed (or OOM-killed) and started again.

        Its processes live on, no longer its children (init reaps the dead
        ones); whatever the old shell had queued is lost.  A fresh core
        boots, is told what the old one left, slot by slot, then reads the
        config (``config``/``roles`` as for ``reload``; by default the same).
        ``log`` starts again with the new core, so it replays on its own.
        """
        self.core = Supervisor()
        self.log = []
        self.timer = None
        self.finished = None
        self.watches = {}
        self.watched_pids = set()
        for run in self.runs.values():
            if run.ended_at is None:
                # Not modelled after a crash: init reaps them, no one is told.
                run.ended_at = self.now
        self._urgent.clear()
        self._queue.clear()
        self._readiness.clear()  # the old shell's probes and sockets went with it
        found: dict[tuple[str, int], list[int]] = {}
        for pid, proc in sorted(self.processes.items()):
            if not proc.alive:
                proc.reaped = True
                continue
            proc.child = False
            if proc.marked:
                proc.leftover = True
                # The new incarnation knows nothing of earlier stop signals:
                # its own StopLeftover starts the clock again.
                proc.received.clear()
                found.setdefault((proc.task, proc.instance), []).append(pid)
        cfg = self.config if config is None else config
        new_roles = self.roles if roles is _KEEP else roles
        if roles is _KEEP and role_values is None:
            role_values = self.role_values
        leftovers = tuple((task, instance, tuple(pids)) for (task, instance), pids in found.items())
        self.boot(cfg, new_roles, role_values=role_values, leftovers=leftovers)

    def touch(self, path: str) -> None:
        """``path`` changed: a ``FileChanged`` for every watch covering it."""
        for key in sorted(self.watches):
            if covers(self.watches[key], path):
                self._queue.append(ev.FileChanged(at=self.now, key=key, path=path))
        self._drain()

    def advance(self, seconds: float) -> None:
        """Move the clock on, firing every timer that comes due on the way."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        target = self.now + seconds
        self._drain()
        while True:
            ending = self._next_happening()
            if self.finished or self.timer is None:
                due = ending
            else:
                due = self.timer if ending is None else min(self.timer, ending)
            if due is None or due > target:
                break
            self.now = max(self.now, due)
            if ending is not None and ending <= self.now:
                self._end_commands()
                self._deliver_readiness()
            if self.timer is not None and self.timer <= self.now and not self.finished:
                self.timer = None
                self._queue.append(ev.TimerFired(at=self.now))
            self._drain()
        self.now = target
        self._write_due_pidfiles()

    def _next_happening(self) -> float | None:
        """The next command end or readiness answer, whichever comes first."""
        dues = [
            due for due in (self._next_readiness(), self._next_command_end()) if due is not None
        ]
        return min(dues, default=None)

    def _next_command_end(self) -> float | None:
        ends = [run.ends_at for run in self.runs.values() if run.ended_at is None]
        due = min(ends, default=HANG)
        return None if due == HANG else due

    def _end_commands(self) -> None:
        """Commands whose time has come end by themselves, in pid order."""
        for _, run in sorted(self.runs.items()):
            if run.ended_at is None and run.ends_at <= self.now:
                run.ended_at = self.now
                self._queue.append(self._command_exited(run, exit_code=run.exit_code))

    def stall(self, seconds: float) -> None:
        """The shell is busy: the clock moves on and nothing is delivered.

        Timers that come due meanwhile are overdue; the next call delivers
        its own event first (stamped with the later time), then them --
        which is how a real event loop that was held up behaves.
        """
        if seconds < 0:
            raise ValueError("time only moves forward")
        self.now += seconds

    def settle(self, max_time: float = 600.0) -> bool:
        """Advance until no timer is pending, or ``max_time`` has passed.

        Returns True when the core is quiet (no timer pending) at the end.
        """
        limit = self.now + max_time
        self._drain()
        while True:
            ending = self._next_happening()
            due = self.timer if not self.finished else None
            if ending is not None:
                due = ending if due is None else min(due, ending)
            if due is None:
                return True
            if due > limit:
                self.advance(limit - self.now)
                return False
            self.advance(max(0.0, due - self.now))

    # ------------------------------------- the shell of the control server
    # (``taskforce.control.shell.Shell``; ``core``, ``now``, ``fed`` and
    # ``feed`` are above)

    def load_inputs(self, source: str) -> ev.Event:
        """What reading the config and roles files would give now: the config
        and roles last given (``boot``, ``reload``), or the roles file
        missing (``delete_roles``).  Changes nothing."""
        if self.roles_missing is not None:
            return ev.ConfigLoaded(
                at=self.now, config=self.config, source=source, roles_missing=self.roles_missing
            )
        return ev.ConfigLoaded(
            at=self.now,
            config=self.config,
            roles=self.roles,
            role_values=dict(self.role_values),
            source=source,
        )

    def apply_loaded(self, loaded: ev.Event) -> ev.Event:
        """Feed what ``load_inputs`` gave, stamped now; the event fed."""
        event = dataclasses.replace(loaded, at=self.now)
        self.feed(event)
        return event

    def request_reset(self, reason: str = "", errors: tuple[str, ...] = ()) -> bool:
        """A reset is asked for (SIGHUP, ``-R``, a control request), as the
        daemon reports it: with what loading the files on disk found --
        ``errors`` (none: they load) and the roles file if it is missing
        (``delete_roles``).  True if a reset is under way after it (the core
        refuses one while the files would not load)."""
        self._push(self._reset_facts(reason, errors))
        return self.core.shutdown is not None

    def _reset_facts(self, reason: str, errors: tuple[str, ...] = ()) -> ev.ResetRequested:
        return ev.ResetRequested(
            at=self.now, reason=reason, errors=errors, roles_missing=self.roles_missing
        )

    def captured(self, task: str) -> None:
        """The simulated processes write nothing: no output is captured."""
        return None

    def wake(self) -> None:
        """There is no loop to wake: whoever drives the simulation turns the
        control server (``tick``) itself."""

    # ------------------------------------------------------------ internals

    def _load(
        self,
        config: Mapping[str, Any],
        roles: Iterable[str] | None,
        role_values: Mapping[str, str] | None,
        source: str,
    ) -> tuple[fx.Effect, ...]:
        self.config = freeze(dict(config))
        if self.roles_missing is None:
            self.roles = None if roles is None else tuple(roles)
            self.role_values = dict(role_values or {})
        return self.feed(self.load_inputs(source))

    def _push(self, event: ev.Event) -> None:
        self._queue.append(event)
        self._drain()

    def _drain(self) -> None:
        steps = 0
        while True:
            item: ev.Event | Reap
            if self._urgent:
                item = self._urgent.popleft()
            elif self._queue:
                item = self._queue.popleft()
            elif self.timer is not None and self.timer <= self.now and not self.finished:
                self.timer = None
                item = ev.TimerFired(at=self.now)
            else:
                return
            steps += 1
            if steps > self.max_steps_per_call:
                raise RuntimeError(f"no quiet point after {steps} steps: a livelock?")
            event = self._reap(item) if isinstance(item, Reap) else item
            if event is not None:
                self._feed(event)

    def _feed(self, event: ev.Event) -> tuple[fx.Effect, ...]:
        effects = self.core.handle(event)
        self.fed += 1
        self.log.append((event, effects))
        if self.recorder is not None:
            self.recorder(event, effects)
        for effect in effects:
            for observer in self.observers:
                observer(self, event, effect)
            self._perform(event, effect)
        return effects
