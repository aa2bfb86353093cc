"""The supervisor: every decision taskforce makes, as a pure function of events.

``Supervisor.handle(event)`` returns the effects the shell must perform.  The
supervisor reads no clock (time is ``event.at``), touches no process and no
file, and iterates in sorted order, so the same events always give the same
effects -- which is what lets a recorded run be replayed and a simulated one
be trusted.

How it decides: every event updates facts (a process exited, a config
arrived, a timer came due), then ``_converge`` walks the tasks in dependency
order and moves each slot towards what its task wants (run ``count``
processes, or none), through the lifecycle declared in ``lifecycle``.  Being
level-triggered rather than edge-triggered is what makes it hard to lose a
process: whatever happened, the next pass compares want with have.

This module must never do IO, read a clock or draw unseeded random numbers.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.control import handle_control, refresh_spec
from taskforce.core.lifecycle import LIFECYCLE, LIVE_STATES, SlotState
from taskforce.core.model import (
    DAEMON_CONTROLS,
    Action,
    HostFacts,
    ProcessSpec,
    Settings,
    SpecError,
    TaskSpec,
    build,
    settings_of,
    start_order,
)

S = SlotState


@dataclass(eq=False)
class Slot:
    """One process slot of a task: ``Task_instance`` ``instance``."""

    task: str
    instance: int
    state: SlotState = S.STOPPED
    generation: int = 0
    pid: int | None = None
    spec: ProcessSpec | None = None
    started_at: float | None = None
    exited_at: float | None = None
    last_exit: str | None = None
    restarts: int = 0
    fails: int = 0
    #: why the slot is stopping: "stop" (stay down), "restart" (come back)
    #: or "finish" (a once task that is done)
    intent: str | None = None
    #: why it last started, stopped or restarted -- for the operator
    reason: str = ""
    waiting_on: tuple[str, ...] = ()
    #: deadline by purpose ("ready", "limit", "kill", "retry", "pidfile")
    timers: dict[str, float] = field(default_factory=dict)
    #: nowait/adopt: "launcher" (its start command runs), "daemon" (the pid
    #: came from the pidfile), "adopt" (probing for a process to adopt)
    phase: str | None = None
    #: adopt: the pidfile was looked at once since taskforce started
    adopt_checked: bool = False
    #: when the current pidfile wait gives up
    pidfile_deadline: float = 0.0
    #: the health check running now (its ``RunCommand.run``; None: none)
    check_run: int | None = None
    #: health checks of this process that failed in a row
    check_fails: int = 0
    #: when it was last started, oldest first (at most its ``start_limit``
    #: burst of them), since its last fresh attempt (see ``_retry``)
    starts: tuple[float, ...] = ()

    @property
    def live(self) -> bool:
        return self.state in _HAS_PROCESS

    @property
    def awaiting_daemon(self) -> bool:
        """nowait/adopt: its start command is done, its daemon not yet known.

        No pid of it is known, but a daemon may run: the slot is open until
        its pidfile names one or ``pidfile_timeout`` passes.
        """
        return self.state is S.PROBING and self.phase == "launcher"

    @property
    def signal_group(self) -> bool:
        # A daemon found through its pidfile may share a group with others
        # (its launcher's, say): signal the process itself, never the group.
        return self.phase != "daemon"


#: the watch key suffix (``<task>#failed``) for the start program of a task
#: with a slot in the failed state (event watches are ``<task>#<index>``)
FAILED_WATCH = "failed"

#: states with a process (or one on its way); a tuple, as membership by
#: identity is cheaper than hashing an Enum member
_HAS_PROCESS = (*sorted(LIVE_STATES, key=lambda state: state.name), S.STARTING, S.PROBING)


@dataclass(eq=False)
class TaskState:
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
    #: when each override was made (core time)
    control_override_at: float | None = None
    count_override_at: float | None = None
    waiting_on: tuple[str, ...] = ()
    #: health checks run, failed and timed out (for /metrics)
    check_runs: int = 0
    check_failures: int = 0
    check_timeouts: int = 0

    @property
    def control(self) -> str:
        return self.control_override or self.spec.control

    @property
    def count(self) -> int:
        return self.spec.count if self.count_override is None else self.count_override


@dataclass(eq=False)
class Leftover:
    """Processes of one slot that an earlier taskforce left running."""

    pids: tuple[int, ...]
    #: asked to stop (SIGTERM sent)
    stopping: bool = False
    #: when SIGKILL follows the SIGTERM (None: not armed, or already sent)
    deadline: float | None = None
    #: its slot adopts: kept while the slot's pidfile is read, and stopped
    #: only if that finds nothing to adopt
    adopting: bool = False


def describe_exit(exit_code: int | None, signal: str | None) -> str:
    if signal:
        return f"killed by {signal}"
    if exit_code is None:
        return "exited (status unknown: not our child)"
    return "exited ok" if exit_code == 0 else f"exited {exit_code}"


def _spec_diff(old: ProcessSpec, new: ProcessSpec) -> str:
    """Which parts of a process spec differ, for the restart reason."""
    return old.diff(new)


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


class Supervisor:
    """The pure core.  Feed it events with ``handle``; perform what it returns."""

    def __init__(self) -> None:
        self.now = 0.0
        self.facts = HostFacts()
        self.config: dict[str, Any] = {}
        self.roles: tuple[str, ...] | None = None
        self.role_values: dict[str, str] = {}
        self.settings: Settings = settings_of({})
        self.tasks: dict[str, TaskState] = {}
        self.order: list[str] = []
        self._rank: dict[str, int] = {}
        self.dependents: dict[str, tuple[str, ...]] = {}
        self.shutdown: str | None = None  # None, "stop" or "reset"
        self.exited = False
        self.counters: dict[str, int] = {
            "starts": 0,
            "restarts": 0,
            "exits": 0,
            "spawn_failures": 0,
            "reloads": 0,
            "reload_errors": 0,
            "check_runs": 0,
            "check_failures": 0,
            "check_timeouts": 0,
            "start_limit_hits": 0,
        }
        #: what an earlier taskforce left running, by (task, instance); a
        #: slot with a leftover waits until it is gone
        self.leftovers: dict[tuple[str, int], Leftover] = {}
        self._by_pid: dict[int, Slot] = {}
        self._watches: dict[str, fx.Watch] = {}
        self._heap: list[tuple[float, int, str, int, int, str]] = []
        self._seq = 0
        self._generation = 0
        #: the last health check run number given out
        self._runs = 0
        self._armed: float | None = None
        self._out: list[fx.Effect] = []
        self._dirty: set[str] = set()
        self._all_dirty = True
        #: the reload being applied by the current event (see ``handle``)
        self._reload: ReloadNote | None = None

    # ------------------------------------------------------------------ API

    def handle(self, event: ev.Event) -> tuple[fx.Effect, ...]:
        """Take one event; return the effects to perform, in order."""
        self._out = []
        if event.at > self.now:
            self.now = event.at
        if not self.exited:
            # The event first: it is the newest fact.  A timer that came due
            # while the shell was busy must not act on a process this very
            # event reports gone (a SIGKILL to a reaped, maybe reused, pid).
            self._touch_for(event)
            _HANDLERS[type(event)](self, event)
            self._run_due_timers()
            reload = self._reload
            if reload is not None:
                reload.counting = True
            self._converge()
            if reload is not None:
                # One line for what a reload did, from what converging on it did.
                self._reload = None
                self._log("info", reload.line())
            self._arm_timer()
        out, self._out = tuple(self._out), []
        return out

    def next_deadline(self) -> float | None:
        """When the core next needs a ``TimerFired`` (None: never)."""
        self._drop_stale_timers()
        return self._heap[0][0] if self._heap else None

    def slot(self, task: str, instance: int) -> Slot | None:
        state = self.tasks.get(task)
        if state is None or instance >= len(state.slots):
            return None
        return state.slots[instance]

    def live_pids(self) -> dict[int, tuple[str, int]]:
        """Every live process group leader the core knows, by pid."""
        return {pid: (slot.task, slot.instance) for pid, slot in sorted(self._by_pid.items())}

    # --------------------------------------------------------------- events

    def _on_Booted(self, event: ev.Booted) -> None:
        self.facts = HostFacts(
            environ=dict(event.environ), host=event.host, fqdn=event.fqdn, pid=event.pid
        )
        self._log("info", f"taskforce started as pid {event.pid} on {event.host}")

    def _on_ConfigLoaded(self, event: ev.ConfigLoaded) -> None:
        roles = tuple(event.roles) if event.roles is not None else None
        role_values = event.role_values
        first = not self.tasks and not self.config
        if event.roles_missing is not None:
            # A roles file that vanishes (deleted, or between two writes)
            # must not put the whole fleet config in scope: a db host would
            # start the web tier.  Keep the roles, as for a broken file.
            # Only a start with no roles file named at all runs every task.
            if first:
                self.counters["reload_errors"] += 1
                self._log(
                    "error",
                    f"{event.source}: roles file {event.roles_missing} not found; "
                    "nothing was started",
                )
                return
            roles, role_values = self.roles, self.role_values
            kept = ", ".join(roles) if roles else ("none" if roles == () else "every task in scope")
            self._log(
                "warning",
                f"roles file {event.roles_missing} is missing; keeping the current roles ({kept})",
            )
        try:
            specs = build(event.config, self.facts, roles, role_values)
        except SpecError as exc:
            # The shell validates before sending; this guards replayed logs.
            self.counters["reload_errors"] += 1
            path = ".".join(str(p) for p in exc.path)
            self._log("error", f"config rejected: {path}: {exc.message}")
            return
        if not first:
            self.counters["reloads"] += 1
        roles_changed = roles != self.roles
        before = {name: task.spec for name, task in self.tasks.items() if not task.removed}
        entries = self.config.get("tasks") or {}
        self.config = dict(event.config)
        self.roles = roles
        self.role_values = dict(role_values)
        self.settings = settings_of(self.config)
        self._apply_specs(
            specs, roles_changed=roles_changed and not first, source=event.source, entries=entries
        )
        if not first:
            self._reload = ReloadNote(
                event.source,
                changed=sorted(n for n in specs if n in before and before[n] != specs[n]),
                added=sorted(n for n in specs if n not in before),
                removed=sorted(n for n in before if n not in specs),
            )

    def _on_ConfigRejected(self, event: ev.ConfigRejected) -> None:
        self.counters["reload_errors"] += 1
        errors = event.errors or (event.error,)
        if len(errors) == 1:
            self._log("error", f"{event.source}: {errors[0]}; nothing was changed")
            return
        # Every problem, one line each (as -C prints them), so one edit
        # fixes them all; then what became of it.
        for error in errors:
            self._log("error", f"{event.source}: {error}")
        self._log("error", f"{event.source}: {len(errors)} errors; nothing was changed")

    def _on_ProcessStarted(self, event: ev.ProcessStarted) -> None:
        slot = self.slot(event.task, event.instance)
        if slot is None or slot.generation != event.generation or slot.state is not S.STARTING:
            # Cannot happen under the spawn contract; never lose the process.
            self._log("error", f"unexpected process {event.pid} for {event.task}; killing it")
            self._emit(fx.Signal(event.task, event.instance, event.pid, "SIGKILL"))
            return
        LIFECYCLE.fire(slot, "spawned")
        slot.pid = event.pid
        slot.started_at = self.now
        self._by_pid[event.pid] = slot
        task = self.tasks[event.task]
        self.counters["starts"] += 1
        self._arm_running_timers(task, slot)
        level = "debug" if slot.fails > 1 else "info"
        why = f" ({slot.reason})" if slot.reason != "started" else ""
        self._log(level, f"{self._name(slot)} started as pid {event.pid}{why}", slot.task)

    def _on_SpawnFailed(self, event: ev.SpawnFailed) -> None:
        slot = self.slot(event.task, event.instance)
        if slot is None or slot.generation != event.generation or slot.state is not S.STARTING:
            return
        LIFECYCLE.fire(slot, "spawn_failed")
        self.counters["spawn_failures"] += 1
        slot.last_exit = f"failed to start: {event.error}"
        slot.exited_at = self.now
        slot.started_at = self.now
        self._after_exit(slot, failed=True)

    def _on_ProcessExited(self, event: ev.ProcessExited) -> None:
        slot = self._by_pid.get(event.pid)
        if slot is None:
            return
        slot.last_exit = describe_exit(event.exit_code, event.signal)
        if event.error:
            slot.last_exit = f"failed to start: {event.error}"
            self.counters["spawn_failures"] += 1
        slot.exited_at = self.now
        if slot.phase == "launcher" and slot.state is S.RUNNING and not event.error:
            self._launcher_exited(slot, event)
            return
        self.counters["exits"] += 1
        self._end_check(slot)
        if event.group_alive:
            LIFECYCLE.fire(slot, "leader_exited")
            if "kill" not in slot.timers:
                # The leader died on its own and left members behind: they
                # must be gone before a replacement may start.
                self._emit(fx.Signal(slot.task, slot.instance, event.pid, "SIGTERM"))
                self._set_timer(slot, "kill", self.now + self.tasks[slot.task].spec.stop_timeout)
            self._log(
                "info",
                f"{self._name(slot)} (pid {event.pid}) {slot.last_exit}; "
                "waiting for the rest of its process group",
                slot.task,
            )
            return
        self._process_gone(slot, failed=bool(event.error))

    def _launcher_exited(self, slot: Slot, event: ev.ProcessExited) -> None:
        """A nowait/adopt start command ended: on success, find its daemon."""
        self._by_pid.pop(event.pid, None)
        slot.pid = None
        if event.exit_code != 0:
            # Members it left in its group are its own business to clean up;
            # we never saw a daemon, so this is a failed start.
            LIFECYCLE.fire(slot, "exited")
            slot.timers.clear()
            slot.phase = None
            self._after_exit(slot, failed=True, pid=event.pid)
            return
        LIFECYCLE.fire(slot, "launched")
        self._log(
            "debug", f"{self._name(slot)}: start command done; reading its pidfile", slot.task
        )
        slot.timers.pop("limit", None)
        slot.timers.pop("ready", None)
        slot.pidfile_deadline = self.now + self.settings.pidfile_timeout
        self._read_pidfile(slot)

    def _pidfile_path(self, slot: Slot) -> str:
        return self.tasks[slot.task].spec.process(slot.instance).pidfile or ""

    def _read_pidfile(self, slot: Slot) -> None:
        path = self._pidfile_path(slot)
        self._emit(fx.ReadPidfile(slot.task, slot.instance, slot.generation, path))

    def _pidfile_refusal(self, slot: Slot, event: ev.PidfileRead) -> tuple[str, bool]:
        """Why ``event.pid`` is not the slot's daemon ("" when it is), and
        whether the pidfile names a process outside the slot (forged).

        systemd's rule: a pid is accepted if it belongs to the slot; one that
        does not is accepted only from a pidfile that no one but root can
        have written.  Otherwise a task running as ``nobody`` could have
        taskforce (root) supervise, and at stop kill, any process it likes.
        Either way, a process younger than the file holds a recycled pid.
        """
        path = self._pidfile_path(slot)
        if event.pid is None:
            return event.error or f"no pid in {path}", False
        if event.started_after_file:
            why = "started after the pidfile was written (a reused pid)"
            return f"pid {event.pid} from {path} {why}", False
        if event.writable_by_non_root and not event.in_slot:
            owner = "an unknown owner" if event.owner is None else f"uid {event.owner}"
            return (
                f"pidfile {path} (owned by {owner}, writable by a user other than root) "
                f"names pid {event.pid}, which is not a process of {self._name(slot)}"
            ), True
        return "", False

    def _on_PidfileRead(self, event: ev.PidfileRead) -> None:
        slot = self.slot(event.task, event.instance)
        if slot is None or slot.generation != event.generation or slot.state is not S.PROBING:
            return
        task = self.tasks[slot.task]
        name = self._name(slot)
        refusal, forged = self._pidfile_refusal(slot, event)
        if forged:
            # Located, and at warning level every time: it is either a
            # broken daemon or someone trying to make us signal a stranger.
            self._log("warning", f"{name}: refused: {refusal}; it is not signalled", slot.task)
        if not refusal and event.pid is not None:
            LIFECYCLE.fire(slot, "found")
            adopted = slot.phase == "adopt"
            slot.phase = "daemon"
            # Whether it is still wanted is decided afresh (a stop that came
            # while the pidfile was awaited stops it now; see _keep_stopped).
            slot.intent = None
            slot.pid = event.pid
            slot.started_at = self.now
            slot.timers.pop("pidfile", None)
            self._by_pid[event.pid] = slot
            self._emit(fx.WatchProcess(slot.task, slot.instance, event.pid))
            if adopted:
                slot.reason = "adopted: running before taskforce started"
                # What the last taskforce left here is this daemon's own.
                self.leftovers.pop((slot.task, slot.instance), None)
            else:
                self.counters["starts"] += 1
            self._arm_running_timers(task, slot)
            what = "adopted" if adopted else "daemon running as"
            self._log("info", f"{name} {what} pid {event.pid}", slot.task)
            return
        if slot.phase == "adopt":
            leftover = self.leftovers.get((slot.task, slot.instance))
            if leftover is not None:
                # Its pidfile names none of what the last taskforce left in
                # this slot: that goes first, then the slot starts afresh.
                self._log("info", f"{name}: nothing to adopt ({refusal})", slot.task)
                LIFECYCLE.fire(slot, "lost")
                slot.phase = None
                leftover.adopting = False
                self._settle_leftovers()
                return
            self._log("info", f"{name}: nothing to adopt ({refusal}); starting it", slot.task)
            slot.phase = None
            self._spawn(task, slot, task.spec.process(slot.instance))
            return
        if self.now < slot.pidfile_deadline and not forged:
            # Not written yet, or still the last daemon's: look again soon.
            self._set_timer(slot, "pidfile", min(self.now + 0.1, slot.pidfile_deadline))
            return
        # A forged pidfile is not waited out: the file is there and names a
        # live process, just not ours.  Lost: the usual backoff applies.
        LIFECYCLE.fire(slot, "lost")
        slot.exited_at = self.now
        slot.phase = None
        slot.timers.pop("pidfile", None)
        if forged:  # (the warning above said where and why)
            refusal = f"its pidfile was refused (pid {event.pid} is not a process of the task)"
        slot.last_exit = f"no daemon after its start command: {refusal}"
        self._after_exit(slot, failed=True)

    def _on_LeftoversFound(self, event: ev.LeftoversFound) -> None:
        for task, instance, pids in event.leftovers:
            known = self.leftovers.get((task, instance))
            merged = tuple(sorted(set(pids) | set(known.pids if known else ())))
            if known is None:
                self.leftovers[(task, instance)] = Leftover(merged)
            else:
                known.pids = merged
            shown = ", ".join(str(pid) for pid in merged)
            self._log(
                "warning",
                f"{task}[{instance}]: found process{'es' if len(merged) > 1 else ''} "
                f"{shown} left running by an earlier taskforce",
                task,
            )
        if self.tasks or self.config:
            self._settle_leftovers()

    def _on_LeftoverGone(self, event: ev.LeftoverGone) -> None:
        if self.leftovers.pop((event.task, event.instance), None) is not None:
            self._log(
                "info",
                f"{event.task}[{event.instance}]: what the earlier taskforce left is gone",
                event.task,
            )
            if self.leftovers and (self.tasks or self.config):
                self._settle_leftovers()

    def _settle_leftovers(self) -> None:
        """Decide, once the config is known, what becomes of each leftover:
        kept when its slot adopts (``adopt``), otherwise stopped before the
        slot may start again, so no slot ever runs twice."""
        for key in sorted(self.leftovers):
            leftover = self.leftovers[key]
            name, instance = key
            if leftover.stopping or self._has_live_dependents(name, leftovers_only=True):
                continue  # (dependents' leftovers go first, as at a shutdown)
            task = self.tasks.get(name)
            if (
                task is not None
                and not self.shutdown
                and self._wants_run(task)
                and task.control == "adopt"
                and instance < task.count
                and not leftover.adopting
            ):
                slot = self.slot(name, instance)
                if slot is None or not slot.adopt_checked:
                    self._log(
                        "info",
                        f"{name}[{instance}]: leftover kept; its pidfile decides what is adopted",
                        name,
                    )
                    leftover.adopting = True
                    continue
            if leftover.adopting and not self.shutdown:
                continue
            leftover.stopping = True
            timeout = task.spec.stop_timeout if task is not None else self.settings.stop_timeout
            self._log(
                "info",
                f"{name}[{instance}]: stopping the leftover before anything starts in its place",
                name,
            )
            self._emit(fx.StopLeftover(name, instance, "SIGTERM"))
            leftover.deadline = self.now + timeout
            self._seq += 1
            heapq.heappush(
                self._heap, (leftover.deadline, self._seq, name, instance, -1, "leftover")
            )

    def _on_GroupEmptied(self, event: ev.GroupEmptied) -> None:
        slot = self._by_pid.get(event.pgid)
        if slot is not None and slot.state is S.DRAINING:
            self._process_gone(slot)

    def _arm_running_timers(self, task: TaskState, slot: Slot) -> None:
        """Deadlines of a slot whose process (or daemon) now runs."""
        spec = task.spec
        if spec.start_delay > 0:
            self._set_timer(slot, "ready", self.now + spec.start_delay)
        if spec.time_limit:
            self._set_timer(slot, "limit", self.now + spec.start_delay + spec.time_limit)
        if spec.check_interval and slot.phase != "launcher":
            self._set_timer(slot, "check", self.now + spec.check_interval)

    def _on_CommandExited(self, event: ev.CommandExited) -> None:
        outcome = event.error or describe_exit(event.exit_code, event.signal)
        failed = bool(event.error) or event.exit_code != 0
        if event.name == "check":
            self._check_done(event, failed, outcome)
            return
        level = "warning" if failed else "info"
        self._log(level, f"{event.task}: command {event.name!r} {outcome}", event.task)

    def _check_done(self, event: ev.CommandExited, failed: bool, outcome: str) -> None:
        """A health check ended by itself: judge it."""
        slot = self.slot(event.task, event.instance)
        task = self.tasks.get(event.task)
        if slot is None or task is None or slot.state is not S.RUNNING:
            return  # the slot moved on while the check ran
        if event.run != slot.check_run:
            return  # a run already judged (timed out, or its slot restarted)
        slot.check_run = None
        slot.timers.pop("check_timeout", None)
        self._touch(event.task)
        self._check_judged(task, slot, failed, outcome)

    def _start_check(self, task: TaskState, slot: Slot) -> None:
        """Run the slot's health check, with its deadline."""
        self._runs += 1
        slot.check_run = self._runs
        task.check_runs += 1
        self.counters["check_runs"] += 1
        self._run_command(task, "check", slot.instance, run=self._runs)
        if task.spec.check_timeout:
            self._set_timer(slot, "check_timeout", self.now + task.spec.check_timeout)

    def _check_timed_out(self, task: TaskState, slot: Slot) -> None:
        """A health check ran past ``check_timeout``: kill it, count a failure."""
        if slot.check_run is None:
            return
        task.check_timeouts += 1
        self.counters["check_timeouts"] += 1
        self._end_check(slot)
        self._check_judged(task, slot, True, f"timed out after {task.spec.check_timeout:g}s")

    def _end_check(self, slot: Slot) -> None:
        """Kill the slot's running health check, if any.  A check belongs to
        its process: it must not outlive it, its stop, or taskforce."""
        slot.timers.pop("check_timeout", None)
        if slot.check_run is not None:
            self._emit(fx.StopCommand(slot.task, slot.instance, slot.check_run, "SIGKILL"))
            slot.check_run = None

    def _check_judged(self, task: TaskState, slot: Slot, failed: bool, outcome: str) -> None:
        """Restart the slot after ``check_failures`` failures in a row, else
        check again after ``check_interval``."""
        spec = task.spec
        if failed:
            self.counters["check_failures"] += 1
            task.check_failures += 1
            slot.check_fails += 1
            if slot.check_fails >= spec.check_failures:
                streak = f" ({slot.check_fails} in a row)" if slot.check_fails > 1 else ""
                self._stop_slot(task, slot, "restart", f"restarted: health check {outcome}{streak}")
                return
            self._log(
                "warning",
                f"{self._name(slot)}: health check {outcome} "
                f"({slot.check_fails} of {spec.check_failures} failures before a restart)",
                slot.task,
            )
        elif slot.check_fails:
            self._log(
                "info",
                f"{self._name(slot)}: health check passed after {slot.check_fails} failure"
                + ("s" if slot.check_fails > 1 else ""),
                slot.task,
            )
            slot.check_fails = 0
        if spec.check_interval and not self.shutdown:
            self._set_timer(slot, "check", self.now + spec.check_interval)

    def _on_FileChanged(self, event: ev.FileChanged) -> None:
        name, _, index = event.key.partition("#")
        task = self.tasks.get(name)
        if task is None or task.removed or not task.spec.in_scope:
            return
        if index == FAILED_WATCH:
            self.retry_failed(task, f"its executable {event.path} changed")
            return
        if not index.isdigit():
            return
        for spec in task.spec.events:
            if spec.index == int(index):
                if spec.type == "self":
                    self.retry_failed(task, f"its executable {event.path} changed")
                self._fire_action(task, spec.action, f"{event.path} changed")

    def _on_TimerFired(self, event: ev.TimerFired) -> None:
        pass  # due timers already ran in handle()

    def _on_StopRequested(self, event: ev.StopRequested) -> None:
        mode = "reset" if event.reset else "stop"
        if self.shutdown == "stop":
            return
        if self.shutdown == "reset" and event.reset:
            # A storm of resets (two logrotate stanzas, -R typed twice) is one
            # reset: the tasks are stopping already and all start again after
            # the re-exec.  A stop, though, overrides a reset under way.
            self._log("info", f"a reset is already under way ({event.reason or 'requested'})")
            return
        self.shutdown = mode
        what = (
            "reset: stopping every task, then restarting" if event.reset else "stopping every task"
        )
        self._log("info", f"{what} ({event.reason or 'requested'})")
        for name in sorted(self.tasks):
            for slot in self.tasks[name].slots:
                slot.timers.pop("check", None)
                self._end_check(slot)
        for key in sorted(self.leftovers):
            if self.leftovers[key].adopting:
                # As an adopted daemon is at shutdown: left for the next one.
                del self.leftovers[key]

    def _on_ControlRequested(self, event: ev.ControlRequested) -> None:
        handle_control(self, event)

    # --------------------------------------------------------------- config

    def _apply_specs(
        self,
        specs: dict[str, TaskSpec],
        *,
        roles_changed: bool,
        source: str,
        entries: Any = None,
    ) -> None:
        """Apply a config's specs; ``entries``: the tasks of the config before."""
        entries = entries if entries is not None else {}
        new_entries = self.config.get("tasks") or {}
        for name in sorted(set(self.tasks) - set(specs)):
            task = self.tasks[name]
            if not task.removed:
                task.removed = True
                self._log("info", f"{name}: removed from the config; stopping", name)
        for name, spec in specs.items():
            existing = self.tasks.get(name)
            if existing is None:
                fresh = self.tasks[name] = TaskState(spec=spec)
                fresh.run_requested = spec.control == "once"
                continue
            task = existing
            old = task.spec
            task.spec = spec
            own_change = task.removed or entries.get(name) != new_entries.get(name)
            task.removed = False
            self._keep_overrides(task, source=source, own_change=own_change)
            if own_change:
                for slot in task.slots:
                    if slot.state is S.FAILED:
                        self._retry(slot, "its config entry changed")
            if spec.in_scope != old.in_scope:
                why = "roles changed" if roles_changed else "config changed"
                where = "in scope" if spec.in_scope else "out of scope"
                self._log("info", f"{name}: now {where} ({why})", name)
                if spec.in_scope:
                    task.run_requested = spec.control == "once"
            if spec.control != old.control:
                task.run_requested = spec.control == "once"
        order = start_order({n: t.spec for n, t in self.tasks.items() if not t.removed})
        # Removed tasks still drain; keep them after everything else.
        self._set_order(order + sorted(n for n, t in self.tasks.items() if t.removed))
        self._update_watches()
        if self.leftovers:
            self._settle_leftovers()

    def _keep_overrides(self, task: TaskState, *, source: str, own_change: bool) -> None:
        """After a config event: keep the operator's overrides of ``task``, or
        drop them when a reload was asked for over the control path (the
        original's "revert to the config") or the task's own entry changed.

        An operator's stop must not be undone by someone editing another
        task, or a comment: it lasts until the operator, or the task's own
        config, says otherwise.  The log says which, and why.
        """
        made = self.describe_overrides(task)
        if not made:
            return
        name = task.spec.name
        if source == "request" or own_change:
            why = "a reload was asked for" if source == "request" else "its config entry changed"
            task.control_override = task.count_override = None
            task.control_override_at = task.count_override_at = None
            self._log("info", f"{name}: operator override {made} dropped: {why}", name)
            return
        # The spec was built from the config alone: build in the overrides.
        refresh_spec(self, task)
        self._log(
            "info",
            f"{name}: operator override {made} kept: its config entry did not change "
            "(undo: start it, set it back, or ask for a reload)",
            name,
        )

    def describe_overrides(self, task: TaskState) -> str:
        """The overrides in force on ``task``, and since when, for the log."""
        parts = []
        for key, value, at in (
            ("control", task.control_override, task.control_override_at),
            ("count", task.count_override, task.count_override_at),
        ):
            if value is not None:
                since = "" if at is None else f", set {max(0.0, self.now - at):.0f}s ago"
                parts.append(f"{key}={value} (config: {getattr(task.spec, key)}{since})")
        return ", ".join(parts)

    def _set_order(self, order: list[str]) -> None:
        """Set the start order, and what follows from it."""
        self.order = order
        self._rank = {name: index for index, name in enumerate(order)}
        deps: dict[str, list[str]] = {}
        for name in order:
            for required in self.tasks[name].spec.requires:
                deps.setdefault(required, []).append(name)
        self.dependents = {name: tuple(sorted(found)) for name, found in deps.items()}

    def _update_watches(self) -> None:
        wanted: dict[str, fx.Watch] = {}
        for name in sorted(self.tasks):
            task = self.tasks[name]
            if task.removed or not task.spec.in_scope:
                continue
            for spec in task.spec.events:
                key = f"{name}#{spec.index}"
                if spec.type == "file_change":
                    wanted[key] = fx.Watch(key, "file", spec.paths)
                elif spec.type == "self":
                    wanted[key] = fx.Watch(key, "executable", spec.paths[:1], task.spec.search_path)
                elif spec.type == "python":
                    wanted[key] = fx.Watch(key, "python", spec.paths, task.spec.search_path)
            if any(slot.state is S.FAILED for slot in task.slots) and not any(
                spec.type == "self" for spec in task.spec.events
            ):
                # A crash loop that gave up is often a program not (yet)
                # installed: its arrival is a reason to try again.
                key = f"{name}#{FAILED_WATCH}"
                program = task.spec.processes[0].argv[:1]
                wanted[key] = fx.Watch(key, "executable", program, task.spec.search_path)
        for key in sorted(set(self._watches) - set(wanted)):
            self._emit(fx.Unwatch(key))
        for key in sorted(wanted):
            if self._watches.get(key) != wanted[key]:
                self._emit(wanted[key])
        self._watches = wanted

    # -------------------------------------------------------------- actions

    def _fire_action(self, task: TaskState, action: Action, why: str) -> None:
        name = task.spec.name
        if action.signal:
            self._log("info", f"{name}: {why}; sending {action.signal}", name)
            for slot in task.slots:
                if slot.state is S.RUNNING and slot.pid is not None:
                    self._emit(fx.Signal(name, slot.instance, slot.pid, action.signal, group=False))
            return
        command = action.command or ""
        if command in task.spec.commands and command != "start":
            self._log("info", f"{name}: {why}; running command {command!r}", name)
            self._run_command(task, command)
        elif command == "start":
            self._log("info", f"{name}: {why}; starting", name)
            self._request_run(task, why)
        elif command == "stop":
            if task.control in ("once", "event"):
                self._log(
                    "warning", f"{name}: {why}; 'stop' ignored for a {task.control} task", name
                )
                return
            self._log("info", f"{name}: {why}; restarting", name)
            for slot in task.slots:
                self._stop_slot(task, slot, "restart", f"restarted: {why}")

    def _run_command(self, task: TaskState, command: str, instance: int = 0, run: int = 0) -> None:
        spec = task.spec.process(instance)
        self._emit(
            fx.RunCommand(
                task=task.spec.name,
                instance=instance,
                name=command,
                argv=task.spec.commands[command],
                env=dict(spec.env),
                cwd=spec.cwd,
                user=spec.user,
                group=spec.group,
                run=run,
            )
        )

    def _request_run(self, task: TaskState, why: str) -> None:
        self._touch(task.spec.name)
        task.run_requested = True
        for slot in task.slots:
            if slot.state is S.DONE:
                LIFECYCLE.fire(slot, "release")
                slot.reason = why

    # -------------------------------------------------------------- converge

    def _wants_run(self, task: TaskState) -> bool:
        if self.shutdown or task.removed or not task.spec.in_scope:
            return False
        control = task.control
        if control in DAEMON_CONTROLS:
            return True
        if control in ("once", "event"):
            return task.run_requested
        return False  # suspend, off

    def _touch_for(self, event: ev.Event) -> None:
        """Mark what ``event`` can change for the converge pass."""
        if isinstance(event, (ev.ProcessStarted, ev.SpawnFailed, ev.PidfileRead)):
            self._touch(event.task)
        elif isinstance(event, (ev.ProcessExited, ev.GroupEmptied)):
            slot = self._by_pid.get(
                event.pid if isinstance(event, ev.ProcessExited) else event.pgid
            )
            if slot is not None:
                self._touch(slot.task)
        elif isinstance(event, ev.FileChanged):
            self._touch(event.key.partition("#")[0])
        elif not isinstance(event, (ev.TimerFired, ev.CommandExited)):
            self._touch()

    def _touch(self, name: str | None = None) -> None:
        """Mark a task (None: every task) for the next converge pass."""
        if name is None:
            self._all_dirty = True
        else:
            self._dirty.add(name)

    def _visit_order(self) -> list[str]:
        """The tasks this converge pass visits, in start order.

        Only tasks an event touched, and what requires them (transitively),
        can have anything to do; at shutdown the stop order spans every task.
        Nothing in a pass touches a task, so the set is known before it.
        """
        if self._all_dirty or self.shutdown is not None:
            return list(self.order)
        rank = self._rank
        if len(self._dirty) == 1:  # the usual case: one task, maybe nothing requires it
            (name,) = self._dirty
            if name not in self.dependents:
                return [name] if name in rank else []
        todo = [name for name in self._dirty if name in rank]
        seen = set(todo)
        while todo:
            for dependent in self.dependents.get(todo.pop(), ()):
                if dependent not in seen and dependent in rank:
                    seen.add(dependent)
                    todo.append(dependent)
        return sorted(seen, key=rank.__getitem__)

    def _converge(self) -> None:
        forget = []
        for name in self._visit_order():
            task = self.tasks[name]
            want = task.count if self._wants_run(task) else 0
            while len(task.slots) < want:
                slot = Slot(task=name, instance=len(task.slots))
                LIFECYCLE.attach(slot)
                task.slots.append(slot)
            gate = self._gate(task) if want else ()
            if gate != task.waiting_on:
                # Info when what it waits on changes, not each time the reason
                # does (a crash-looping requirement would flood the log).
                before = {item.split(" ", 1)[0] for item in task.waiting_on}
                level = "info" if {item.split(" ", 1)[0] for item in gate} != before else "debug"
                task.waiting_on = gate
                if gate:
                    self._log(level, f"{name}: waiting on {', '.join(gate)}", name)
            for slot in task.slots:
                if slot.instance < want:
                    self._keep_running(task, slot, gate)
                else:
                    self._keep_stopped(task, slot)
            while (
                task.slots
                and task.slots[-1].instance >= want
                and task.slots[-1].state
                in (
                    S.STOPPED,
                    S.DONE,
                )
            ):
                LIFECYCLE.detach(task.slots.pop())
            if task.removed and not task.slots:
                forget.append(name)
        self._dirty = set()
        self._all_dirty = False
        if forget:
            for name in forget:
                del self.tasks[name]
            self._set_order([name for name in self.order if name not in forget])
        if (
            self.shutdown
            and not self.exited
            and not self._by_pid
            and not self.leftovers
            and not any(
                slot.state is S.STARTING or slot.awaiting_daemon
                for task in self.tasks.values()
                for slot in task.slots
            )
        ):
            self.exited = True
            self._log("info", "every task has stopped")
            self._emit(fx.Exit(0, reset=self.shutdown == "reset"))

    def _gate(self, task: TaskState) -> tuple[str, ...]:
        """What ``task`` waits on before it may start (empty: nothing)."""
        waits = []
        for name in task.spec.requires:
            required = self.tasks.get(name)
            why = self._unsatisfied(required)
            if why:
                waits.append(f"{name} ({why})")
        return tuple(waits)

    def _unsatisfied(self, task: TaskState | None) -> str | None:
        if task is None or task.removed:
            return "not in the config"
        if not task.spec.in_scope:
            return "off" if task.spec.control == "off" else "out of scope"
        control = task.control
        if control == "off":
            return "off"
        if control in ("suspend", "event"):
            return None
        if control == "once":
            if all(slot.state is S.DONE for slot in task.slots) and task.slots:
                return None
            return "not finished"
        for slot in task.slots[: task.count]:
            if slot.state is S.FAILED:
                return "failed"
            if slot.state is not S.RUNNING:
                return "not running"
            if "ready" in slot.timers:
                return "in its start_delay"
        if len(task.slots) < task.count:
            return "not running"
        return None

    def _keep_running(self, task: TaskState, slot: Slot, gate: tuple[str, ...]) -> None:
        processes = task.spec.processes  # (TaskSpec.process, inlined: it runs for every slot)
        spec = processes[slot.instance] if slot.instance < len(processes) else processes[-1]
        if slot.spec is not spec and slot.spec == spec:
            slot.spec = spec  # same process after a reload: compare by identity from now on
        # (A spec's __eq__ compares every field; identity is all that is left.)
        same = slot.spec is spec
        state = slot.state
        if state is S.RUNNING:
            if not same and slot.intent is None and slot.spec is not None:
                why = f"config changed: {_spec_diff(slot.spec, spec)}"
                self._stop_slot(task, slot, "restart", f"restarted: {why}")
            return
        if state in (S.STARTING, S.STOPPING, S.DRAINING, S.PROBING):
            return
        if state is S.FAILED:
            if same or slot.spec is None:
                return  # until an operator, its config or its executable says
            self._retry(slot, f"config changed: {_spec_diff(slot.spec, spec)}")
            state = slot.state
        if state is S.BACKOFF and "retry" in slot.timers and same:
            return
        if (
            state is S.DONE
            and task.control in ("once", "event")
            and (same or task.control == "event")
        ):
            return
        if slot.spec is not None and not same:
            slot.fails = 0  # a changed config is a fresh attempt
            slot.starts = ()
        leftover = self.leftovers.get((slot.task, slot.instance)) if self.leftovers else None
        if leftover is not None and not leftover.adopting:
            gate = ("its leftover from an earlier taskforce",)
        if gate:
            if state is not S.WAITING:
                LIFECYCLE.fire(slot, "hold")
            slot.waiting_on = gate
            return
        slot.waiting_on = ()
        if task.control == "adopt" and not slot.adopt_checked and spec.pidfile:
            # Once per slot per taskforce run: is it running from before?
            slot.adopt_checked = True
            LIFECYCLE.fire(slot, "probe")
            self._generation += 1
            slot.generation = self._generation
            slot.spec = spec
            slot.phase = "adopt"
            self._read_pidfile(slot)
            return
        self._spawn(task, slot, spec)

    def _keep_stopped(self, task: TaskState, slot: Slot) -> None:
        state = slot.state
        if state is S.RUNNING:
            if self.shutdown and self._has_live_dependents(task.spec.name):
                return
            if self.shutdown and task.control == "adopt" and slot.phase == "daemon":
                self._log(
                    "info",
                    f"{self._name(slot)} (pid {slot.pid}) left running for adoption",
                    task.spec.name,
                )
                LIFECYCLE.fire(slot, "abandon")
                self._end_check(slot)
                if slot.pid is not None:
                    self._by_pid.pop(slot.pid, None)
                slot.pid = None
                slot.timers.clear()
                return
            why = self._stop_reason(task)
            self._stop_slot(task, slot, "stop", why)
        elif state in (S.STOPPING, S.DRAINING):
            slot.intent = "stop"
        elif slot.awaiting_daemon:
            # Its start command is done and its pidfile does not name the
            # daemon yet: it is stopped (or, adopt at shutdown, left running)
            # once the pidfile names it, or released when none turns up
            # within pidfile_timeout.  Issue 11: stopping it as if nothing
            # ran left the daemon behind, unsupervised.
            if slot.intent != "stop":
                slot.intent = "stop"
                then = (
                    "leave it running" if self.shutdown and task.control == "adopt" else "stop it"
                )
                self._log(
                    "info",
                    f"{self._name(slot)}: waiting for its pidfile to name its daemon, "
                    f"to {then} ({self._stop_reason(task)})",
                    task.spec.name,
                )
        elif state is S.FAILED:
            why = self._stop_reason(task)
            self._retry(slot, why, reason=why)
        elif state in (S.WAITING, S.BACKOFF, S.EXITED) or (state is S.DONE and task.removed):
            slot.timers.pop("retry", None)
            LIFECYCLE.fire(slot, "release")

    def _stop_reason(self, task: TaskState) -> str:
        if self.shutdown:
            return "stopped: taskforce is " + (
                "resetting" if self.shutdown == "reset" else "exiting"
            )
        if task.removed:
            return "stopped: removed from the config"
        if not task.spec.in_scope:
            return "stopped: " + (
                "control is off" if task.spec.control == "off" else "out of scope"
            )
        if task.control in ("suspend", "off"):
            return f"stopped: control is {task.control}"
        return "stopped: count reduced"

    def _has_live_dependents(self, name: str, *, leftovers_only: bool = False) -> bool:
        """Whether anything that requires ``name``, directly or through
        others (a finished ``once`` task in between, say), still runs --
        its own processes, or what an earlier taskforce left of it."""
        left = {task for task, _ in self.leftovers}
        seen = {name}
        todo = list(self.dependents.get(name, ()))
        while todo:
            dependent = todo.pop()
            if dependent in seen:
                continue
            seen.add(dependent)
            if dependent in left:
                return True
            task = self.tasks.get(dependent)
            if not leftovers_only and task and any(slot.live for slot in task.slots):
                return True
            todo.extend(self.dependents.get(dependent, ()))
        return False

    # ------------------------------------------------------------ lifecycle

    def _spawn(self, task: TaskState, slot: Slot, spec: ProcessSpec) -> None:
        if slot.started_at is not None:
            if not slot.reason.startswith(("restarted", "started")):
                slot.reason = "restarted: " + (slot.reason or "exited")
            slot.restarts += 1
            self.counters["restarts"] += 1
        elif not slot.reason:
            slot.reason = "started"
        if self._reload is not None and self._reload.counting:
            self._reload.started += 1
        LIFECYCLE.fire(slot, "spawn")
        burst = task.spec.start_limit[0]
        slot.starts = (*slot.starts[-burst + 1 :], self.now) if burst > 1 else (self.now,)
        self._generation += 1
        slot.generation = self._generation
        slot.spec = spec
        slot.intent = None
        slot.check_fails = 0
        slot.phase = "launcher" if task.control in ("nowait", "adopt") and spec.pidfile else None
        slot.timers.clear()
        self._emit(
            fx.Spawn.of(spec, task=slot.task, instance=slot.instance, generation=slot.generation)
        )

    def _stop_slot(self, task: TaskState, slot: Slot, intent: str, reason: str) -> None:
        if slot.state in (S.STOPPING, S.DRAINING):
            if intent == "stop":
                slot.intent = "stop"
            return
        if slot.state is not S.RUNNING or slot.pid is None:
            return
        LIFECYCLE.fire(slot, "stop")
        slot.intent = intent
        slot.reason = reason
        if self._reload is not None and self._reload.counting:
            if intent == "restart":
                self._reload.restarted += 1
            else:
                self._reload.stopped += 1
        for purpose in ("ready", "limit", "check"):
            slot.timers.pop(purpose, None)
        self._end_check(slot)
        use_restart = intent == "restart" or self.shutdown == "reset"
        action = (task.spec.restart_action if use_restart else None) or task.spec.stop_action
        name = task.spec.name
        if action and action.signal:
            self._emit(
                fx.Signal(name, slot.instance, slot.pid, action.signal, group=slot.signal_group)
            )
        elif action and action.command in task.spec.commands:
            self._run_command(task, action.command or "")
        else:
            self._emit(fx.Signal(name, slot.instance, slot.pid, "SIGTERM", group=slot.signal_group))
        self._set_timer(slot, "kill", self.now + task.spec.stop_timeout)
        self._log("info", f"{self._name(slot)} (pid {slot.pid}) {reason}", name)

    def _process_gone(self, slot: Slot, *, failed: bool = False) -> None:
        self._end_check(slot)
        LIFECYCLE.fire(slot, "exited")
        assert slot.pid is not None
        self._by_pid.pop(slot.pid, None)
        pid, slot.pid = slot.pid, None
        slot.timers.clear()
        self._after_exit(slot, failed=failed, pid=None if failed else pid)

    def _after_exit(self, slot: Slot, *, failed: bool, pid: int | None = None) -> None:
        task = self.tasks[slot.task]
        name = self._name(slot)
        # Until the leader exited: a wrapper whose children drained for a
        # while still failed fast.
        ended = self.now if slot.exited_at is None else slot.exited_at
        ran = 0.0 if slot.started_at is None else ended - slot.started_at
        what = (
            f"{name} (pid {pid}) {slot.last_exit} after {ran:.2f}s"
            if pid
            else f"{name} {slot.last_exit}"
        )
        if slot.intent == "stop" or not self._wants_run(task) or slot.instance >= task.count:
            self._log("info", what, slot.task)
            LIFECYCLE.fire(slot, "release")
        elif slot.intent == "restart":
            self._log("info", what, slot.task)
            slot.fails = 0  # deliberate; the next start is immediate
        elif slot.intent == "finish" or (task.control in ("once", "event") and not failed):
            self._log("info", what, slot.task)
            LIFECYCLE.fire(slot, "finish")
            slot.reason = f"finished: {slot.last_exit}"
        elif (failed or ran < self.settings.stable_after) and self._start_limit_hit(task, slot):
            burst, interval = task.spec.start_limit
            slot.reason = (
                f"start limit hit: {burst} starts in {interval:g} s, last: {slot.last_exit}"
            )
            self._log(
                "warning",
                f"{what}; {slot.reason}; not restarting it until it is started again, "
                "its config entry changes or its executable does",
                slot.task,
            )
            self.counters["start_limit_hits"] = self.counters.get("start_limit_hits", 0) + 1
            LIFECYCLE.fire(slot, "give_up")
            self._update_watches()  # its executable, until it is tried again
        elif ran >= self.settings.stable_after and not failed:
            if slot.fails:
                self._log("info", f"{what}; it had run stably, backoff reset", slot.task)
            else:
                self._log("warning", f"{what}; restarting", slot.task)
            slot.fails = 0
            slot.starts = ()  # it ran stably: what came before is no crash loop
            slot.reason = slot.last_exit or "exited"
        else:
            slot.fails += 1
            delay = min(
                self.settings.backoff_max,
                self.settings.backoff_initial * (2 ** (slot.fails - 1)),
            )
            if slot.fails == 1:
                self._log(
                    "warning",
                    f"{what}; failing fast, restarting with backoff from "
                    f"{delay:g}s up to {self.settings.backoff_max:g}s (logged once)",
                    slot.task,
                )
            else:
                self._log("debug", f"{what}; retry {slot.fails} in {delay:g}s", slot.task)
            LIFECYCLE.fire(slot, "back_off")
            slot.reason = f"backoff step {slot.fails} after: {slot.last_exit}"
            self._set_timer(slot, "retry", self.now + delay)
        slot.intent = None if slot.state is not S.EXITED else slot.intent
        if not self.shutdown and not any(s.live for s in task.slots):
            self._onexit(task)

    def _start_limit_hit(self, task: TaskState, slot: Slot) -> bool:
        """Whether the slot was started ``burst`` times within ``interval``
        seconds up to now, each start since its last stable run (it just
        failed fast again): then it gives up.

        Measured when it exits, not when it would start again, so that the
        growing backoff cannot hide a crash loop from the limit.
        """
        burst, interval = task.spec.start_limit
        if burst <= 0 or interval <= 0 or len(slot.starts) < burst:
            return False
        return self.now - slot.starts[-burst] <= interval

    def _retry(self, slot: Slot, why: str, *, reason: str | None = None) -> None:
        """A failed slot may start again (a fresh attempt): ``why`` says who
        or what said so; ``reason``, when it is stopped instead."""
        if slot.state is not S.FAILED:
            return
        self._touch(slot.task)
        LIFECYCLE.fire(slot, "release")
        slot.fails = 0
        slot.starts = ()
        slot.reason = reason or f"started: {why} (it had failed)"
        self._log("info", f"{self._name(slot)}: failed state cleared: {why}", slot.task)
        self._update_watches()

    def retry_failed(self, task: TaskState, why: str, instance: int | None = None) -> int:
        """Let ``task``'s failed slots (or slot ``instance``) start again; how many."""
        found = 0
        for slot in task.slots:
            if slot.state is S.FAILED and instance in (None, slot.instance):
                self._retry(slot, why)
                found += 1
        return found

    def _onexit(self, task: TaskState) -> None:
        for kind, target_name in task.spec.onexit:
            target = self.tasks.get(target_name)
            if target is None or target.removed or not target.spec.in_scope:
                self._log(
                    "warning", f"{task.spec.name}: onexit target {target_name!r} is not in scope"
                )
                continue
            if target.control not in ("once", "event"):
                self._log(
                    "warning",
                    f"{task.spec.name}: onexit target {target_name!r} is not a once or event task",
                )
                continue
            if kind == "start":
                self._request_run(target, f"started: onexit of {task.spec.name}")

    # --------------------------------------------------------------- timers

    def _set_timer(self, slot: Slot, purpose: str, at: float) -> None:
        slot.timers[purpose] = at
        self._seq += 1
        heapq.heappush(
            self._heap, (at, self._seq, slot.task, slot.instance, slot.generation, purpose)
        )

    def _timer_slot(self, entry: tuple[float, int, str, int, int, str]) -> Slot | None:
        at, _, task, instance, generation, purpose = entry
        if generation < 0:
            return None  # a leftover's, not a slot's (see _leftover_due)
        slot = self.slot(task, instance)
        if slot is None or slot.generation != generation or slot.timers.get(purpose) != at:
            return None
        return slot

    def _leftover_due(self, entry: tuple[float, int, str, int, int, str]) -> Leftover | None:
        at, _, task, instance, generation, _ = entry
        leftover = self.leftovers.get((task, instance)) if generation < 0 else None
        return leftover if leftover is not None and leftover.deadline == at else None

    def _drop_stale_timers(self) -> None:
        heap = self._heap
        while heap and self._timer_slot(heap[0]) is None and self._leftover_due(heap[0]) is None:
            heapq.heappop(heap)

    def _run_due_timers(self) -> None:
        while self._heap and self._heap[0][0] <= self.now:
            entry = heapq.heappop(self._heap)
            slot = self._timer_slot(entry)
            if slot is None:
                leftover = self._leftover_due(entry)
                if leftover is not None:
                    leftover.deadline = None
                    task_name, instance = entry[2], entry[3]
                    self._log(
                        "warning",
                        f"{task_name}[{instance}]: the leftover did not stop; SIGKILL",
                        task_name,
                    )
                    self._emit(fx.StopLeftover(task_name, instance, "SIGKILL"))
                continue
            purpose = entry[5]
            del slot.timers[purpose]
            self._touch(slot.task)
            task = self.tasks[slot.task]
            if purpose == "kill" and slot.pid is not None:
                self._log(
                    "warning",
                    f"{self._name(slot)} (pid {slot.pid}) did not stop; SIGKILL",
                    slot.task,
                )
                self._emit(
                    fx.Signal(
                        slot.task, slot.instance, slot.pid, "SIGKILL", group=slot.signal_group
                    )
                )
            elif purpose == "pidfile" and slot.state is S.PROBING:
                self._read_pidfile(slot)
            elif (
                purpose == "check"
                and slot.state is S.RUNNING
                and "check" in task.spec.commands
                and slot.check_run is None
                and not self.shutdown
            ):
                self._start_check(task, slot)
            elif purpose == "check_timeout" and slot.state is S.RUNNING:
                self._check_timed_out(task, slot)
            elif purpose == "limit" and not self.shutdown:
                # (At shutdown the stop order decides when it goes.)
                if task.control in ("once", "event"):
                    self._stop_slot(task, slot, "finish", "stopped: time_limit reached")
                else:
                    self._stop_slot(task, slot, "restart", "restarted: time_limit reached")
            # "ready" and "retry" only open gates: _converge does the rest.

    def _arm_timer(self) -> None:
        due = self.next_deadline()
        if due != self._armed:
            self._armed = due
            self._emit(fx.ArmTimer(due))

    # -------------------------------------------------------------- helpers

    def _emit(self, effect: fx.Effect) -> None:
        self._out.append(effect)

    def _log(self, level: str, message: str, task: str | None = None) -> None:
        self._out.append(fx.Log(level, message, task))

    @staticmethod
    def _name(slot: Slot) -> str:
        return f"{slot.task}[{slot.instance}]"


#: each event type's handler, ``Supervisor._on_<EventType>``
_HANDLERS: dict[type[Any], Callable[[Supervisor, Any], None]] = {
    cls: getattr(Supervisor, "_on_" + name) for name, cls in ev.EVENT_TYPES.items()
}


def run(events: Iterable[ev.Event]) -> list[tuple[fx.Effect, ...]]:
    """Feed ``events`` to a fresh supervisor; the effects of each, in order."""
    core = Supervisor()
    return [core.handle(event) for event in events]
