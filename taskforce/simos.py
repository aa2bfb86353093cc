"""The simulated operating system: how the simulator performs each effect.

``FakeOS`` is the half of ``taskforce.simulator.Simulation`` that holds the
fake process table, pidfiles and command runs and answers the core's effects
as the shell would; ``Simulation`` (the other half) drives the core and
offers the test-facing calls.  The split is by concern only: a
``FakeOS`` is never made on its own.

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
  (``WatchProcess``), and with ``group_alive`` too when it leaves members of
  its slot behind (``DAEMON_WITH_WORKER``);
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
  a ``SweepSlot`` is answered at once the same way for that slot alone (a
  ``DAEMON_WITH_WORKER`` daemon that died before its pidfile was read left
  its worker), or by ``LeftoverGone`` when nothing is there;
- a ``RunCommand`` ends ``command_durations`` seconds after it started (at
  once by default; never, for ``HANG``), and ``CommandExited`` says so; a
  ``StopCommand`` kills it at once if it still runs (every run, with when
  it started and ended, is kept in ``runs``);
- readiness (``taskforce.simready``): a process is ready
  ``ready_delays[task]`` seconds after it started (never for a task in
  ``never_ready``); a ``Probe`` gets one ``ProbeFinished``, a ``notify``
  process (a ``DAEMONIZE`` task's daemon, not its launcher) sends
  ``Notified("READY=1")`` once ready;
- there is one timer: each ``ArmTimer`` replaces it, and it is fed back as
  ``TimerFired`` when ``advance`` reaches it (or at once when it is already
  due); ``stall`` lets the clock run on without it, as a busy shell would.

Breaches of the shell contract by the core -- a signal for a process group
with no member left, a second live process in one slot -- are recorded in
``violations`` rather than raised, so a test can report them with the log.

This module must never touch the OS: no ``os``, ``time``, ``subprocess``,
``signal``, ``socket``, ``select``, ``logging`` or ``random``
(``tests/test_core_purity.py`` checks), no clock, no process, no file.
"""

from __future__ import annotations

from collections import deque

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.simready import FakeReadiness
from taskforce.simworld import (
    BEHAVIOURS,
    DAEMON_WITH_WORKER,
    DAEMONIZE,
    ESCAPER,
    IGNORE_TERM,
    NOBODY,
    STUBBORN_WRAPPER,
    TERM,
    WRAPPER,
    Delivery,
    FakeCommand,
    FakeProcess,
    Reap,
    Step,
    Violation,
    process_facts,
)

TYPE_CHECKING = False


class FakeOS(FakeReadiness):
    """The fake process table, files and command runs, and the effects
    performed on them (see the module docstring).  The fields are set by
    ``Simulation.__init__``; they are declared here for the methods below."""

    now: float
    processes: dict[int, FakeProcess]
    timer: float | None
    watches: dict[str, fx.Watch]
    pidfiles: dict[str, int]
    pidfile_owners: dict[str, int]
    pidfile_written: dict[str, float]
    pending_pidfiles: dict[str, tuple[float, int, int]]
    pidfile_delays: dict[str, float]
    forging: set[str]
    strangers: set[int]
    watched_pids: set[int]
    command_codes: dict[tuple[str, str], int]
    command_durations: dict[tuple[str, str], float]
    runs: dict[int, FakeCommand]
    finished: fx.Exit | None
    logs: list[tuple[float, fx.Log]]
    replies: list[fx.Reply]
    commands: list[tuple[float, fx.RunCommand]]
    violations: list[Violation]
    behaviours: dict[str, str]
    default_behaviour: str
    failing: set[str]
    log: list[Step]
    _next_pid: int
    _urgent: deque[ev.Event]
    _queue: deque[ev.Event | Reap]

    if TYPE_CHECKING:  # the driving half, in taskforce.simulator

        def load_inputs(self, source: str) -> ev.Event: ...

        def _reset_facts(self, reason: str, errors: tuple[str, ...] = ()) -> ev.ResetRequested: ...

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

    def add_process(
        self,
        task: str,
        instance: int = 0,
        argv: tuple[str, ...] = ("daemon",),
        pidfile: str | None = None,
        behaviour: str = TERM,
    ) -> int:
        """A process taskforce did not start (one to adopt), in its own session."""
        pid = self._new_process(task, instance, argv, behaviour, child=False, marked=False)
        if pidfile is not None:
            self.write_pidfile(pidfile, pid)
        return pid

    def add_stranger(self, argv: tuple[str, ...] = ("/usr/sbin/sshd",)) -> int:
        """A process outside every slot (root's, say) that taskforce must
        never signal; it ignores SIGTERM, so a signal to it is seen."""
        pid = self._new_process("", -1, argv, IGNORE_TERM, child=False)
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

    def _reap(self, item: Reap) -> ev.ProcessExited | None:
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
        elif isinstance(effect, fx.SweepSlot):
            self._urgent.append(self._sweep(effect))
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

    def _sweep(self, sweep: fx.SweepSlot) -> ev.Event:
        """What the shell finds in a slot whose start command named no
        daemon: every live process of it (the core knows none), from then
        on a leftover (see ``crash``)."""
        found = [
            proc
            for _, proc in sorted(self.processes.items())
            if proc.alive
            and proc.marked
            and (proc.task, proc.instance) == (sweep.task, sweep.instance)
        ]
        if not found:
            return ev.LeftoverGone(at=self.now, task=sweep.task, instance=sweep.instance)
        for proc in found:
            proc.leftover = True
        pids = tuple(proc.pid for proc in found)
        return ev.LeftoversFound(at=self.now, leftovers=((sweep.task, sweep.instance, pids),))

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

    def _new_process(
        self,
        task: str,
        instance: int,
        argv: tuple[str, ...],
        behaviour: str,
        *,
        generation: int = 0,
        leader: int | None = None,
        child: bool = True,
        marked: bool = True,
        escaped: bool = False,
    ) -> int:
        """A new row of the process table, started now; its pid.  ``leader``
        is the group it joins (None: a group of its own)."""
        pid = self._allocate_pid()
        self.processes[pid] = FakeProcess(
            pid=pid,
            pgid=pid if leader is None else leader,
            task=task,
            instance=instance,
            generation=generation,
            argv=argv,
            behaviour=behaviour,
            started_at=self.now,
            child=child,
            marked=marked,
            escaped=escaped,
        )
        return pid

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
        slot = (spawn.task, spawn.instance)
        pid = self._new_process(*slot, spawn.argv, behaviour, generation=spawn.generation)
        self.processes[pid].env = {**spawn.env, **process_facts(spawn, pid, self.now)}
        speaker = pid  # the process that says READY=1 (with ``notify``)
        if behaviour in (DAEMONIZE, DAEMON_WITH_WORKER):
            daemon = self._daemonize(spawn)
            self._die(self.processes[pid], exit_code=0)
            if daemon is not None:
                speaker = daemon  # the daemon, maybe before its pidfile is read
        if behaviour in (WRAPPER, STUBBORN_WRAPPER, ESCAPER):
            # An escaper keeps ``pgid`` as the tree it belongs to; ``escaped``
            # says a plain process-group signal would miss it.
            self._new_process(
                *slot,
                spawn.argv[-1:],
                behaviour,
                generation=spawn.generation,
                leader=pid,
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
            self._notify_ready(self.processes[speaker])

    def _daemonize(self, spawn: fx.Spawn) -> int | None:
        """What a ``DAEMONIZE`` launcher does before it exits 0; the pid of
        the daemon it started (None: it started none)."""
        pidfile = spawn.env.get("Task_pidfile")
        owner = 0 if spawn.user in (None, "", "root") else NOBODY
        if spawn.task in self.forging:
            stranger = min(self.strangers) if self.strangers else self.add_stranger()
            if pidfile is not None:
                self.write_pidfile(pidfile, stranger, NOBODY)
            return None
        daemon = self.add_process(spawn.task, spawn.instance, spawn.argv)
        self.processes[daemon].generation = spawn.generation
        self.processes[daemon].marked = True  # it inherited the launcher's environment
        if self.behaviours.get(spawn.task) == DAEMON_WITH_WORKER:
            # In the daemon's group and slot; once the daemon is gone, an
            # orphan that taskforce (the subreaper) reaps.
            self._new_process(
                spawn.task,
                spawn.instance,
                spawn.argv[-1:],
                IGNORE_TERM,
                generation=spawn.generation,
                leader=daemon,
            )
        if pidfile is None:
            return daemon
        delay = self.pidfile_delays.get(spawn.task, 0.0)
        if delay > 0:
            self.pending_pidfiles[pidfile] = (self.now + delay, daemon, owner)
        else:
            self.write_pidfile(pidfile, daemon, owner)
        return daemon

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
                # What it leaves in its slot drains (``GroupEmptied`` below).
                alive = any(m.alive for m in self._members(proc.pgid))
                self._queue.append(ev.ProcessExited(at=self.now, pid=proc.pid, group_alive=alive))
            else:
                proc.reaped = True
            return
        if proc.leader:
            self._queue.append(Reap(proc.pid))
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
