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

Contract kept with the core (the shell's contract, made exact):

- a ``Spawn`` is answered by ``ProcessStarted`` (or ``SpawnFailed``, for a
  program listed in ``failing``) before any other event is fed, and so is a
  ``ReadPidfile`` (by ``PidfileRead``, from the fake ``pidfiles``) and a
  ``CheckReset`` (by ``ResetRequested``: the simulated files load, unless
  the roles file was deleted); a ``LoadInputs`` is answered afterwards, by
  what ``load_inputs`` gives;
- the consequences of performing effects (a signal that kills, a command that
  finishes) are fed afterwards, at the same time, in the order they arose;
- a process the core started is reaped: its death becomes ``ProcessExited``
  (``group_alive`` when members of its group remain, then ``GroupEmptied``
  when the last goes); one it did not start is reported only once watched
  (``WatchProcess``);
- a group ``Signal`` reaches every process of the slot, as the shell's
  cgroup (or its environment marker) makes it: a grandchild that left the
  process group (``ESCAPER``) gets it too, and the group is "alive" until
  the last of them is gone;
- a started process's ``env`` is the ``Spawn``'s plus the facts only its
  start knows (``process_facts``: ``Task_pid``, ``Task_uid``, ``Task_gid``,
  ``Task_started``), as the shell adds them;
- after ``crash`` (taskforce SIGKILLed and started again) the processes of
  the old incarnation are reported by ``LeftoversFound`` slot by slot, a
  ``StopLeftover`` signals them, and ``LeftoverGone`` follows the last one;
- a ``RunCommand`` ends ``command_durations`` seconds after it started (at
  once by default; never, for ``HANG``), and ``CommandExited`` says so; a
  ``StopCommand`` kills it at once if it still runs (every run, with when
  it started and ended, is kept in ``runs``);
- readiness (see ``_probe`` and ``_notify_ready``): a slot's process is
  ready ``ready_delays[task]`` seconds after it started (at once by
  default; never for a task in ``never_ready``); a ``Probe`` is answered by
  ``ProbeFinished`` -- ok once it is ready, "connection refused" with no
  live process, "timed out after Ns" when it is not ready within the
  probe's timeout -- and a ``Spawn`` with ``notify`` is followed by that
  process's ``Notified("READY=1")`` when it becomes ready, if still alive;
- there is one timer: each ``ArmTimer`` replaces it, and it is fed back as
  ``TimerFired`` when ``advance`` reaches it (or at once when it is already
  due); ``stall`` lets the clock run on without it, as a busy shell would.

Breaches of the shell contract by the core -- a signal for a process group
with no member left, a second live process in one slot -- are recorded in
``violations`` rather than raised, so a test can report them with the log.

This module must never touch the OS: it imports no ``os``, ``time``,
``subprocess``, ``signal``, ``socket``, ``select``, ``logging`` or ``random``
(``tests/test_core_purity.py`` checks), reads no clock, starts no process and
opens no file.  Everything it does is a function of the calls
made on it, so two runs with the same calls are identical.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.codec import freeze
from taskforce.core.model import PER_PROCESS_KEYS
from taskforce.core.supervisor import Supervisor

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

BEHAVIOURS = (TERM, IGNORE_TERM, WRAPPER, STUBBORN_WRAPPER, DAEMONIZE, ESCAPER)

_STOPPING_SIGNALS = frozenset({"SIGTERM", "SIGINT", "SIGQUIT"})

#: Marks an argument as "leave it as it is".
_KEEP: Any = object()

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
class _Reap:
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


class Simulation:
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
        # --- readiness (issue 15): see _probe and _notify_ready
        #: how long after its start a task's process is ready (default 0)
        self.ready_delays: dict[str, float] = {}
        #: tasks whose processes never become ready
        self.never_ready: set[str] = set()
        #: readiness answers to come, by when: (when, event, the pid it needs alive)
        self._readiness: list[tuple[float, ev.Event, int | None]] = []
        self._next_pid = FIRST_PID
        self._urgent: deque[ev.Event] = deque()
        self._queue: deque[ev.Event | _Reap] = deque()

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

    def add_process(
        self,
        task: str,
        instance: int = 0,
        argv: tuple[str, ...] = ("daemon",),
        pidfile: str | None = None,
        behaviour: str = TERM,
    ) -> int:
        """A process taskforce did not start (one to adopt), in its own session."""
        pid = self._allocate_pid()
        self.processes[pid] = FakeProcess(
            pid=pid,
            pgid=pid,
            task=task,
            instance=instance,
            generation=0,
            argv=argv,
            behaviour=behaviour,
            started_at=self.now,
            child=False,
            marked=False,
        )
        if pidfile is not None:
            self.write_pidfile(pidfile, pid)
        return pid

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

    def add_stranger(self, argv: tuple[str, ...] = ("/usr/sbin/sshd",)) -> int:
        """A process outside every slot (root's, say) that taskforce must
        never signal; it ignores SIGTERM, so a signal to it is seen."""
        pid = self._allocate_pid()
        self.processes[pid] = FakeProcess(
            pid=pid,
            pgid=pid,
            task="",
            instance=-1,
            generation=0,
            argv=argv,
            behaviour=IGNORE_TERM,
            started_at=self.now,
            child=False,
        )
        self.strangers.add(pid)
        return pid

    def write_pidfile(self, path: str, pid: int, owner: int = 0) -> None:
        """``pid`` is written to ``path`` now, by ``owner`` (a uid)."""
        self.pending_pidfiles.pop(path, None)
        self.pidfiles[path] = pid
        self.pidfile_owners[path] = owner
        self.pidfile_written[path] = self.now

    def _write_due_pidfiles(self) -> None:
        for path, (due, pid, owner) in sorted(self.pending_pidfiles.items()):
            if due <= self.now:
                del self.pending_pidfiles[path]
                if not self.processes[pid].alive:
                    continue  # it died before it got to write it
                # (written at its own time: what a later read compares with)
                self.pidfiles[path] = pid
                self.pidfile_owners[path] = owner
                self.pidfile_written[path] = due

    def touch(self, path: str) -> None:
        """``path`` changed: a ``FileChanged`` for every watch covering it."""
        for key in sorted(self.watches):
            if _covers(self.watches[key], path):
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

    def _command_exited(
        self, run: FakeCommand, exit_code: int | None = None, signal: str | None = None
    ) -> ev.CommandExited:
        effect = run.effect
        return ev.CommandExited(
            at=self.now,
            task=effect.task,
            name=effect.name,
            pid=run.pid,
            exit_code=exit_code,
            signal=signal,
            instance=effect.instance,
            run=effect.run,
        )

    def running_commands(self) -> list[FakeCommand]:
        """Commands that have not ended, by pid."""
        return [run for _, run in sorted(self.runs.items()) if run.ended_at is None]

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

    # ------------------------------------------------------------- queries

    def running(self) -> dict[tuple[str, int], int]:
        """Live group leaders by (task, instance)."""
        return {
            (proc.task, proc.instance): proc.pid
            for proc in sorted(self.processes.values(), key=lambda p: p.pid)
            if proc.leader and proc.alive
        }

    def alive(self) -> list[FakeProcess]:
        """Every live process, leaders and grandchildren, by pid."""
        return [p for _, p in sorted(self.processes.items()) if p.alive]

    def groups(self) -> dict[int, tuple[str, int]]:
        """Process groups that still have a member (zombie leaders count)."""
        out: dict[int, tuple[str, int]] = {}
        for _, proc in sorted(self.processes.items()):
            if proc.present:
                out.setdefault(proc.pgid, (proc.task, proc.instance))
        return dict(sorted(out.items()))

    def effects(self, kind: type[fx.Effect] | None = None) -> list[tuple[float, fx.Effect]]:
        """Every effect so far (of type ``kind``), with the time it was given."""
        return [
            (event.at, effect)
            for event, effects in self.log
            for effect in effects
            if kind is None or isinstance(effect, kind)
        ]

    def spawns(self, task: str | None = None) -> list[tuple[float, fx.Spawn]]:
        return [
            (at, e)
            for at, e in self.effects(fx.Spawn)
            if isinstance(e, fx.Spawn) and (task is None or e.task == task)
        ]

    def signals(self, task: str | None = None) -> list[tuple[float, fx.Signal]]:
        return [
            (at, e)
            for at, e in self.effects(fx.Signal)
            if isinstance(e, fx.Signal) and (task is None or e.task == task)
        ]

    def messages(self, level: str | None = None, task: str | None = None) -> list[str]:
        return [
            log.message
            for _, log in self.logs
            if (level is None or log.level == level) and (task is None or log.task == task)
        ]

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
            item: ev.Event | _Reap
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
            event = self._reap(item) if isinstance(item, _Reap) else item
            if event is not None:
                self._feed(event)

    def _reap(self, item: _Reap) -> ev.ProcessExited | None:
        proc = self.processes[item.pid]
        if proc.reaped:
            return None
        proc.reaped = True
        return ev.ProcessExited(
            at=self.now,
            pid=proc.pid,
            exit_code=proc.exit_code,
            signal=proc.signal,
            group_alive=any(m.alive for m in self._members(proc.pgid)),
        )

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

    def _perform(self, event: ev.Event, effect: fx.Effect) -> None:
        if isinstance(effect, fx.Spawn):
            self._spawn(event, effect)
        elif isinstance(effect, fx.Signal):
            self._signal(event, effect)
        elif isinstance(effect, fx.ArmTimer):
            self.timer = effect.at
        elif isinstance(effect, fx.StopLeftover):
            targets = self._leftovers(effect.task, effect.instance)
            if not targets:
                self._queue.append(
                    ev.LeftoverGone(at=self.now, task=effect.task, instance=effect.instance)
                )
            for target in targets:  # the last one to die reports LeftoverGone (_die)
                self._deliver(target.pid, effect.signal, group=True)
        elif isinstance(effect, fx.ReadPidfile):
            self._urgent.append(self._read_pidfile(effect))
        elif isinstance(effect, fx.WatchProcess):
            proc = self.processes.get(effect.pid)
            if proc is None or not proc.alive:
                self._queue.append(ev.ProcessExited(at=self.now, pid=effect.pid))
            else:
                self.watched_pids.add(effect.pid)
        elif isinstance(effect, fx.RunCommand):
            self.commands.append((self.now, effect))
            pid = self._allocate_pid()
            code = self.command_codes.get((effect.task, effect.name), 0)
            duration = self.command_durations.get((effect.task, effect.name), 0.0)
            run = FakeCommand(pid, effect, self.now, self.now + duration, code)
            self.runs[pid] = run
            if duration <= 0:
                run.ended_at = self.now
                self._queue.append(self._command_exited(run, exit_code=code))
        elif isinstance(effect, fx.StopCommand):
            for run in self.running_commands():
                key = (run.effect.task, run.effect.instance, run.effect.run)
                if key == (effect.task, effect.instance, effect.run):
                    # (Every command is killed by any signal here: the core
                    # sends only SIGKILL.)
                    run.ended_at = self.now
                    run.killed_by = effect.signal
                    self._queue.append(self._command_exited(run, signal=effect.signal))
        elif isinstance(effect, fx.Watch):
            self.watches[effect.key] = effect
        elif isinstance(effect, fx.Unwatch):
            self.watches.pop(effect.key, None)
        elif isinstance(effect, fx.Log):
            self.logs.append((self.now, effect))
        elif isinstance(effect, fx.Reply):
            self.replies.append(effect)
        elif isinstance(effect, fx.LoadInputs):
            # The simulated files hold what was last given (``reload``); the
            # read ends after what is already under way, as on a worker.
            self._queue.append(self.load_inputs(effect.source))
        elif isinstance(effect, fx.CheckReset):
            self._urgent.append(self._reset_facts(effect.reason))
        elif isinstance(effect, fx.Probe):
            self._probe(effect)
        elif isinstance(effect, fx.Exit):
            self.finished = effect
            self.timer = None
        else:  # pragma: no cover - a new effect type needs a line here
            raise TypeError(f"the simulator cannot perform {effect!r}")

    def _read_pidfile(self, read: fx.ReadPidfile) -> ev.PidfileRead:
        """What the shell finds out (see ``taskforce.pidwatch.read_pidfile``)."""
        self._write_due_pidfiles()
        pid = self.pidfiles.get(read.path)
        if pid is None:
            error = f"no pidfile {read.path}"
        elif pid not in self.processes or not self.processes[pid].alive:
            error = f"pid {pid} from {read.path} is not running"
        else:
            proc = self.processes[pid]
            owner = self.pidfile_owners.get(read.path, 0)
            return ev.PidfileRead(
                at=self.now,
                task=read.task,
                instance=read.instance,
                generation=read.generation,
                pid=pid,
                owner=owner,
                writable_by_non_root=owner != 0,
                started_after_file=proc.started_at > self.pidfile_written.get(read.path, 0.0),
                in_slot=(proc.task, proc.instance) == (read.task, read.instance),
            )
        return ev.PidfileRead(
            at=self.now,
            task=read.task,
            instance=read.instance,
            generation=read.generation,
            error=error,
        )

    def _allocate_pid(self) -> int:
        pid = self._next_pid
        self._next_pid += 1
        return pid

    def _violation(self, kind: str, event: ev.Event, effect: fx.Effect, message: str) -> None:
        text = f"t={self.now:g} on {type(event).__name__}: {message}"
        self.violations.append(Violation(self.now, kind, event, effect, text))

    def _spawn(self, event: ev.Event, spawn: fx.Spawn) -> None:
        for proc in self.processes.values():
            if proc.present and (proc.task, proc.instance) == (spawn.task, spawn.instance):
                self._violation(
                    "second-process",
                    event,
                    spawn,
                    f"Spawn for {spawn.task}[{spawn.instance}] while pid {proc.pid} "
                    f"(group {proc.pgid}) of that slot is still there",
                )
                break
        if spawn.argv and spawn.argv[0] in self.failing:
            self._urgent.append(
                ev.SpawnFailed(
                    at=self.now,
                    task=spawn.task,
                    instance=spawn.instance,
                    generation=spawn.generation,
                    error=f"{spawn.argv[0]}: No such file or directory",
                )
            )
            return
        behaviour = self.behaviours.get(spawn.task, self.default_behaviour)
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r} for {spawn.task}")
        pid = self._allocate_pid()
        self.processes[pid] = FakeProcess(
            pid=pid,
            pgid=pid,
            task=spawn.task,
            instance=spawn.instance,
            generation=spawn.generation,
            argv=spawn.argv,
            behaviour=behaviour,
            started_at=self.now,
            env={**spawn.env, **process_facts(spawn, pid, self.now)},
        )
        if behaviour == DAEMONIZE:
            self._daemonize(spawn)
            self._die(self.processes[pid], exit_code=0)
        if behaviour in (WRAPPER, STUBBORN_WRAPPER, ESCAPER):
            child = self._allocate_pid()
            # An escaper keeps ``pgid`` as the tree it belongs to; ``escaped``
            # says a plain process-group signal would miss it.
            self.processes[child] = FakeProcess(
                pid=child,
                pgid=pid,
                task=spawn.task,
                instance=spawn.instance,
                generation=spawn.generation,
                argv=spawn.argv[-1:],
                behaviour=behaviour,
                started_at=self.now,
                escaped=behaviour == ESCAPER,
            )
        self._urgent.append(
            ev.ProcessStarted(
                at=self.now,
                task=spawn.task,
                instance=spawn.instance,
                generation=spawn.generation,
                pid=pid,
            )
        )
        if spawn.notify:
            self._notify_ready(self.processes[pid])

    # ------------------------------------------------ readiness (issue 15)

    def _ready_at(self, proc: FakeProcess) -> float | None:
        """When ``proc`` is ready (None: never)."""
        if proc.task in self.never_ready:
            return None
        return proc.started_at + self.ready_delays.get(proc.task, 0.0)

    def _probe(self, probe: fx.Probe) -> None:
        """Answer ``probe`` as the shell's probe of a process that listens
        once it is ready would: exactly one ``ProbeFinished``."""
        pid = self.running().get((probe.task, probe.instance))
        ready_at = None if pid is None else self._ready_at(self.processes[pid])

        def finished(ok: bool, detail: str) -> ev.ProbeFinished:
            return ev.ProbeFinished(
                at=self.now,
                task=probe.task,
                instance=probe.instance,
                run=probe.run,
                ok=ok,
                detail=detail,
            )

        if pid is None:
            self._queue.append(finished(False, "connection refused"))
        elif ready_at is None or ready_at > self.now + probe.timeout:
            late = finished(False, f"timed out after {probe.timeout:g}s")
            self._expect(self.now + probe.timeout, late, None)
        else:
            self._expect(max(self.now, ready_at), finished(True, ""), pid)

    def _notify_ready(self, proc: FakeProcess) -> None:
        """A ``notify`` process sends ``READY=1`` once it is ready."""
        ready_at = self._ready_at(proc)
        if ready_at is not None:
            notified = ev.Notified(
                at=ready_at, task=proc.task, instance=proc.instance, pid=proc.pid, message="READY=1"
            )
            self._expect(ready_at, notified, proc.pid)

    def _expect(self, when: float, event: ev.Event, pid: int | None) -> None:
        """``event`` happens at ``when`` (if process ``pid`` is alive then)."""
        if when <= self.now and pid is None:
            self._queue.append(dataclasses.replace(event, at=self.now))
            return
        self._readiness.append((when, event, pid))
        self._readiness.sort(key=lambda item: item[0])  # (stable: ties keep their order)
        if when <= self.now:
            self._deliver_readiness()

    def _next_happening(self) -> float | None:
        """The next command end or readiness answer, whichever comes first."""
        dues = [self._readiness[0][0]] if self._readiness else []
        ending = self._next_command_end()
        if ending is not None:
            dues.append(ending)
        return min(dues, default=None)

    def _deliver_readiness(self) -> None:
        """Queue the readiness answers that are due, in their order; a
        process that died meanwhile sends nothing, and its probe is refused."""
        while self._readiness and self._readiness[0][0] <= self.now:
            _, event, pid = self._readiness.pop(0)
            if self.finished:
                continue  # the shell stopped: pending probes are dropped
            alive = pid is None or self.processes[pid].alive
            if isinstance(event, ev.ProbeFinished) and not alive:
                event = dataclasses.replace(event, ok=False, detail="connection refused")
            elif not alive:
                continue
            self._queue.append(dataclasses.replace(event, at=self.now))

    def _daemonize(self, spawn: fx.Spawn) -> None:
        """What a ``DAEMONIZE`` launcher does before it exits 0."""
        pidfile = spawn.env.get("Task_pidfile")
        owner = 0 if spawn.user in (None, "", "root") else NOBODY
        if spawn.task in self.forging:
            stranger = min(self.strangers) if self.strangers else self.add_stranger()
            if pidfile is not None:
                self.write_pidfile(pidfile, stranger, NOBODY)
            return
        daemon = self.add_process(spawn.task, spawn.instance, spawn.argv)
        self.processes[daemon].generation = spawn.generation
        self.processes[daemon].marked = True  # it inherited the launcher's environment
        if pidfile is None:
            return
        delay = self.pidfile_delays.get(spawn.task, 0.0)
        if delay > 0:
            self.pending_pidfiles[pidfile] = (self.now + delay, daemon, owner)
        else:
            self.write_pidfile(pidfile, daemon, owner)

    def _signal(self, event: ev.Event, signal: fx.Signal) -> None:
        if signal.group:
            targets = [p for p in self._members(signal.pid) if p.present]
        else:
            proc = self.processes.get(signal.pid)
            targets = [proc] if proc is not None and proc.present else []
        if not targets:
            what = "group" if signal.group else "pid"
            self._violation(
                "signal-to-nothing",
                event,
                signal,
                f"{signal.signal} to {what} {signal.pid} ({signal.task}[{signal.instance}]) "
                "which has no member left",
            )
            return
        for proc in targets:
            self._deliver(proc.pid, signal.signal, group=signal.group)

    def _deliver(self, pid: int, signal: str, *, group: bool) -> None:
        proc = self.processes.get(pid)
        if proc is None or not proc.alive:
            return
        proc.received.append(Delivery(self.now, signal, group))
        if proc.dies_of(signal):
            self._die(proc, signal=signal)

    def _die(
        self, proc: FakeProcess, *, exit_code: int | None = None, signal: str | None = None
    ) -> None:
        proc.alive = False
        proc.exit_code = exit_code
        proc.signal = signal
        if proc.leftover and not self._leftovers(proc.task, proc.instance):
            self._queue.append(ev.LeftoverGone(at=self.now, task=proc.task, instance=proc.instance))
        if not proc.child:
            if proc.pid in self.watched_pids:
                self.watched_pids.discard(proc.pid)
                proc.reaped = True
                self._queue.append(ev.ProcessExited(at=self.now, pid=proc.pid))
            else:
                proc.reaped = True
            return
        if proc.leader:
            self._queue.append(_Reap(proc.pid))
            return
        leader = self.processes[proc.pgid]
        if leader.reaped and not any(m.alive for m in self._members(proc.pgid)):
            # The core was told the group outlived its leader; now it is empty.
            self._queue.append(ev.GroupEmptied(at=self.now, pgid=proc.pgid))

    def _members(self, pgid: int) -> list[FakeProcess]:
        """The process group ``pgid`` and whatever left it but not its slot."""
        return [p for _, p in sorted(self.processes.items()) if p.pgid == pgid]

    def _leftovers(self, task: str, instance: int) -> list[FakeProcess]:
        return [
            p
            for _, p in sorted(self.processes.items())
            if p.leftover and p.alive and (p.task, p.instance) == (task, instance)
        ]


def _covers(watch: fx.Watch, path: str) -> bool:
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
