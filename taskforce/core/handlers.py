"""The event handlers: each event's facts, recorded in the supervisor.

``_on_<EventType>`` takes one event (``events``) and updates what the
supervisor knows -- a process started or exited, a pidfile was read, a
command or health check ended, a file changed, a stop was asked for -- and
acts on the one slot it concerns.  Anything that follows for other slots is
left to the converge pass that ``Supervisor.handle`` runs next.  Due timers
are dispatched here too (``_run_due_timers``): a due timer is an event.

This module must never do IO, read a clock or draw random numbers.
"""

from __future__ import annotations

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.lifecycle import (
    INTENT_FINISH,
    INTENT_RESTART,
    LIFECYCLE,
    ONE_SHOT_CONTROLS,
    PHASE_ADOPT,
    PHASE_DAEMON,
    PHASE_LAUNCHER,
    SHUTDOWN_RESET,
    SHUTDOWN_STOP,
    SLOT_DRAINING,
    SLOT_PROBING,
    SLOT_RUNNING,
    SLOT_STARTING,
    TIMER_CHECK,
    TIMER_CHECK_TIMEOUT,
    TIMER_KILL,
    TIMER_LIMIT,
    TIMER_PIDFILE,
    TIMER_PROBE,
    TIMER_READY,
    TIMER_READY_TIMEOUT,
    TIMER_WATCHDOG,
    UP_STATES,
)
from taskforce.core.model import HostFacts
from taskforce.core.reconcile import Reconcile
from taskforce.core.slots import FAILED_WATCH, Leftover, Slot, TaskState, describe_exit

_READINESS_TIMERS = (
    TIMER_READY,
    TIMER_PROBE,
    TIMER_READY_TIMEOUT,
    TIMER_WATCHDOG,
)


class EventHandlers(Reconcile):
    """One method per event type, and the due-timer dispatch."""

    def _on_Booted(self, event: ev.Booted) -> None:
        self.facts = HostFacts(
            environ=dict(event.environ), host=event.host, fqdn=event.fqdn, pid=event.pid
        )
        self.log("info", f"taskforce started as pid {event.pid} on {event.host}")

    def _on_ProcessStarted(self, event: ev.ProcessStarted) -> None:
        slot = self.slot(event.task, event.instance)
        if slot is None or slot.generation != event.generation or slot.state is not SLOT_STARTING:
            # Cannot happen under the spawn contract; never lose the process.
            self.log("error", f"unexpected process {event.pid} for {event.task}; killing it")
            self.emit(fx.Signal(event.task, event.instance, event.pid, "SIGKILL"))
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
        self.log(level, f"{self._name(slot)} started as pid {event.pid}{why}", slot.task)

    def _on_SpawnFailed(self, event: ev.SpawnFailed) -> None:
        slot = self.slot(event.task, event.instance)
        if slot is None or slot.generation != event.generation or slot.state is not SLOT_STARTING:
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
        slot.exit_signal = event.signal
        if event.error:
            slot.last_exit = f"failed to start: {event.error}"
            self.counters["spawn_failures"] += 1
        slot.exited_at = self.now
        if slot.phase == PHASE_LAUNCHER and slot.state is SLOT_RUNNING and not event.error:
            self._launcher_exited(slot, event)
            return
        self.counters["exits"] += 1
        self._end_check(slot)
        if event.group_alive:
            # (A daemon's stop signalled the daemon alone: what it left has
            # had no SIGTERM yet, even when the stop's deadline runs.)
            unwarned = slot.phase == PHASE_DAEMON
            LIFECYCLE.fire(slot, "leader_exited")
            if TIMER_KILL not in slot.timers or unwarned:
                # The leader died on its own and left members behind: they
                # must be gone before a replacement may start.
                self.emit(fx.Signal(slot.task, slot.instance, event.pid, "SIGTERM"))
            if TIMER_KILL not in slot.timers:
                self._set_timer(
                    slot, TIMER_KILL, self.now + self.tasks[slot.task].spec.stop_timeout
                )
            self.log(
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
            # We never saw a daemon, so this is a failed start; whatever it
            # started is still the slot's.
            LIFECYCLE.fire(slot, "exited")
            slot.timers.clear()
            slot.phase = None
            self._sweep(slot)
            self._after_exit(slot, failed=True, pid=event.pid)
            return
        LIFECYCLE.fire(slot, "launched")
        self.log("debug", f"{self._name(slot)}: start command done; reading its pidfile", slot.task)
        slot.timers.pop(TIMER_LIMIT, None)
        slot.timers.pop(TIMER_READY, None)
        slot.pidfile_deadline = self.now + self.settings.pidfile_timeout
        self._read_pidfile(slot)

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
        if slot is None or slot.generation != event.generation or slot.state is not SLOT_PROBING:
            return
        task = self.tasks[slot.task]
        name = self._name(slot)
        refusal, forged = self._pidfile_refusal(slot, event)
        if forged:
            # Located, and at warning level every time: it is either a
            # broken daemon or someone trying to make us signal a stranger.
            self.log("warning", f"{name}: refused: {refusal}; it is not signalled", slot.task)
        if not refusal and event.pid is not None:
            LIFECYCLE.fire(slot, "found")
            adopted = slot.phase == PHASE_ADOPT
            slot.phase = PHASE_DAEMON
            # Whether it is still wanted is decided afresh (a stop that came
            # while the pidfile was awaited stops it now; see _keep_stopped).
            slot.intent = None
            slot.pid = event.pid
            slot.started_at = self.now
            slot.timers.pop(TIMER_PIDFILE, None)
            self._by_pid[event.pid] = slot
            self.emit(fx.WatchProcess(slot.task, slot.instance, event.pid))
            if adopted:
                slot.reason = "adopted: running before taskforce started"
                # What the last taskforce left here is this daemon's own.
                self.leftovers.pop((slot.task, slot.instance), None)
            else:
                self.counters["starts"] += 1
            self._arm_running_timers(task, slot)
            what = "adopted" if adopted else "daemon running as"
            self.log("info", f"{name} {what} pid {event.pid}", slot.task)
            self._daemon_found(task, slot, adopted=adopted)
            return
        if slot.phase == PHASE_ADOPT:
            leftover = self.leftovers.get((slot.task, slot.instance))
            if leftover is not None:
                # Its pidfile names none of what the last taskforce left in
                # this slot: that goes first, then the slot starts afresh.
                self.log("info", f"{name}: nothing to adopt ({refusal})", slot.task)
                LIFECYCLE.fire(slot, "lost")
                slot.phase = None
                leftover.adopting = False
                self._settle_leftovers()
                return
            self.log("info", f"{name}: nothing to adopt ({refusal}); starting it", slot.task)
            slot.phase = None
            self._spawn(task, slot, task.spec.process(slot.instance))
            return
        if self.now < slot.pidfile_deadline and not forged:
            # Not written yet, or still the last daemon's: look again soon.
            self._set_timer(slot, TIMER_PIDFILE, min(self.now + 0.1, slot.pidfile_deadline))
            return
        # A forged pidfile is not waited out: the file is there and names a
        # live process, just not ours.  Lost: the usual backoff applies.
        LIFECYCLE.fire(slot, "lost")
        slot.exited_at = self.now
        slot.phase = None
        slot.timers.pop(TIMER_PIDFILE, None)
        self._sweep(slot)
        if forged:  # (the warning above said where and why)
            refusal = f"its pidfile was refused (pid {event.pid} is not a process of the task)"
        slot.last_exit = f"no daemon after its start command: {refusal}"
        self._after_exit(slot, failed=True)

    def _sweep(self, slot: Slot) -> None:
        """``slot``'s start command is done and named no daemon: what it
        started (a daemon that died before its pidfile was read, left its
        workers behind) must go before the slot starts again.  Held as a
        leftover until the shell says what is there (``SweepSlot``)."""
        key = (slot.task, slot.instance)
        if key not in self.leftovers:
            self.leftovers[key] = Leftover((), stray=True)
            self.emit(fx.SweepSlot(*key))

    def _on_LeftoversFound(self, event: ev.LeftoversFound) -> None:
        for task, instance, pids in event.leftovers:
            known = self.leftovers.get((task, instance))
            merged = tuple(sorted(set(pids) | set(known.pids if known else ())))
            if known is None:
                self.leftovers[(task, instance)] = Leftover(merged)
            else:
                known.pids = merged
            shown = ", ".join(str(pid) for pid in merged)
            them = "them" if len(merged) > 1 else "it"
            whose = (
                "by its start command, which named no daemon; stopping "
                + (them if self.shutdown else f"{them} before the slot starts again")
                if known is not None and known.stray
                else "running by an earlier taskforce"
            )
            self.log(
                "warning",
                f"{task}[{instance}]: found process{'es' if len(merged) > 1 else ''} "
                f"{shown} left {whose}",
                task,
            )
        if self.tasks or self.config:
            self._settle_leftovers()

    def _on_LeftoverGone(self, event: ev.LeftoverGone) -> None:
        gone = self.leftovers.pop((event.task, event.instance), None)
        if gone is None:
            return
        if gone.pids:  # (a sweep that found nothing says nothing)
            whose = "its start command" if gone.stray else "the earlier taskforce"
            self.log(
                "info",
                f"{event.task}[{event.instance}]: what {whose} left is gone",
                event.task,
            )
        if self.leftovers and (self.tasks or self.config):
            self._settle_leftovers()

    def _on_GroupEmptied(self, event: ev.GroupEmptied) -> None:
        slot = self._by_pid.get(event.pgid)
        if slot is not None and slot.state is SLOT_DRAINING:
            self._process_gone(slot)

    def _arm_running_timers(self, task: TaskState, slot: Slot) -> None:
        """Deadlines of a slot whose process (or daemon) now runs."""
        spec = task.spec
        if spec.time_limit:
            self._set_timer(slot, TIMER_LIMIT, self.now + spec.start_delay + spec.time_limit)
        if spec.check_interval and slot.phase != PHASE_LAUNCHER:
            self._set_timer(slot, TIMER_CHECK, self.now + spec.check_interval)
        self._arm_readiness(task, slot)

    def _on_CommandExited(self, event: ev.CommandExited) -> None:
        outcome = event.error or describe_exit(event.exit_code, event.signal)
        failed = bool(event.error) or event.exit_code != 0
        if event.name == "check":
            self._check_done(event, failed, outcome)
            return
        if event.name == "ready":
            slot = self.slot(event.task, event.instance)
            if slot is not None:
                self._probe_judged(slot, event.run, not failed, f"command {outcome}")
            return
        level = "warning" if failed else "info"
        self.log(level, f"{event.task}: command {event.name!r} {outcome}", event.task)

    def _check_done(self, event: ev.CommandExited, failed: bool, outcome: str) -> None:
        """A health check ended by itself: judge it."""
        slot = self.slot(event.task, event.instance)
        task = self.tasks.get(event.task)
        if slot is None or task is None or slot.state not in UP_STATES:
            return  # the slot moved on while the check ran
        if event.run != slot.check_run:
            return  # a run already judged (timed out, or its slot restarted)
        slot.check_run = None
        slot.timers.pop(TIMER_CHECK_TIMEOUT, None)
        self._touch_slot(event.task, event.instance)
        self._check_judged(task, slot, failed, outcome)

    def _start_check(self, task: TaskState, slot: Slot) -> None:
        """Run the slot's health check, with its deadline."""
        self._runs += 1
        slot.check_run = self._runs
        task.check_runs += 1
        self.counters["check_runs"] += 1
        self._run_command(task, "check", slot.instance, run=self._runs)
        if task.spec.check_timeout:
            self._set_timer(slot, TIMER_CHECK_TIMEOUT, self.now + task.spec.check_timeout)

    def _check_timed_out(self, task: TaskState, slot: Slot) -> None:
        """A health check ran past ``check_timeout``: kill it, count a failure."""
        if slot.check_run is None:
            return
        task.check_timeouts += 1
        self.counters["check_timeouts"] += 1
        self._end_check(slot)
        self._check_judged(task, slot, True, f"timed out after {task.spec.check_timeout:g}s")

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
                self.stop_slot(
                    task, slot, INTENT_RESTART, f"restarted: health check {outcome}{streak}"
                )
                return
            self.log(
                "warning",
                f"{self._name(slot)}: health check {outcome} "
                f"({slot.check_fails} of {spec.check_failures} failures before a restart)",
                slot.task,
            )
        elif slot.check_fails:
            self.log(
                "info",
                f"{self._name(slot)}: health check passed after {slot.check_fails} failure"
                + ("s" if slot.check_fails > 1 else ""),
                slot.task,
            )
            slot.check_fails = 0
        if spec.check_interval and not self.shutdown:
            self._set_timer(slot, TIMER_CHECK, self.now + spec.check_interval)

    def _on_FileChanged(self, event: ev.FileChanged) -> None:
        if event.key in (ev.CONFIG_KEY, ev.ROLES_KEY, ev.CODE_KEY):
            self._input_changed(event)
            return
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
                self.fire_action(task, spec.action, f"{event.path} changed")

    def _input_changed(self, event: ev.FileChanged) -> None:
        """One of taskforce's own inputs changed (the shell watches them
        under ``events.CONFIG_KEY`` and its kin).  An edited config or roles
        file is read again; new code of taskforce's own can only run after a
        reset -- which, like any reset, goes ahead only if the files on disk
        load (``CheckReset`` asks the shell what they hold)."""
        if event.key == ev.CODE_KEY:
            self._ask_reset(f"taskforce's own code changed ({event.path})")
        else:
            self.emit(fx.LoadInputs("config" if event.key == ev.CONFIG_KEY else "roles"))

    def _on_Notified(self, event: ev.Notified) -> None:
        # (The shell vouches that the sender is a process of this slot.)
        slot = self.slot(event.task, event.instance)
        # A daemon may speak before its pidfile is read (``awaiting_daemon``):
        # what it says then counts too (``READY=1`` is kept for later).
        if slot is None or (slot.state not in UP_STATES and not slot.awaiting_daemon):
            return
        self._touch_slot(event.task, event.instance)
        self._notified(self.tasks[event.task], slot, event.message)

    def _on_ProbeFinished(self, event: ev.ProbeFinished) -> None:
        slot = self.slot(event.task, event.instance)
        if slot is not None:
            self._probe_judged(slot, event.run, event.ok, event.detail)

    def _on_TimerFired(self, event: ev.TimerFired) -> None:
        pass  # due timers already ran in handle()

    def _on_ResetAsked(self, event: ev.ResetAsked) -> None:
        self._ask_reset(event.reason)

    def _ask_reset(self, reason: str) -> None:
        if self.shutdown is not None:
            # The files do not matter once one is under way (see
            # _on_ResetRequested): join it without having the shell read
            # them -- a signal storm, or an update writing dozens of modules.
            self._begin_shutdown(reset=True, reason=reason)
        else:
            self.emit(fx.CheckReset(reason))

    def _on_ResetRequested(self, event: ev.ResetRequested) -> None:
        if self.shutdown is None:
            errors = event.errors
            if event.roles_missing is not None:
                # Started again, taskforce would refuse to run (-r PATH) or
                # run every task (a default path): keep what runs instead.
                errors += (f"roles file {event.roles_missing} not found",)
            if errors:
                # The re-executed taskforce starts from the files on disk;
                # broken, it could run nothing: refuse, and keep everything.
                # (Worded, and counted, as the shell's refusal always was.)
                self._reject(
                    "reset",
                    tuple(f"reset refused, {error}; nothing was stopped" for error in errors),
                )
                return
        # Under way already, the files do not matter: a reset joins it (and
        # a stop under way stays a stop), as for a StopRequested.
        self._begin_shutdown(reset=True, reason=event.reason)

    def _on_StopRequested(self, event: ev.StopRequested) -> None:
        # (With ``reset``, as the shell asked for a reset before it reported
        # ``ResetRequested``; recorded logs still hold them.)
        self._begin_shutdown(reset=event.reset, reason=event.reason)

    def _begin_shutdown(self, *, reset: bool, reason: str) -> None:
        mode = SHUTDOWN_RESET if reset else SHUTDOWN_STOP
        if self.shutdown == SHUTDOWN_STOP:
            return
        if self.shutdown == SHUTDOWN_RESET and reset:
            # A storm of resets (two logrotate stanzas, -R typed twice) is one
            # reset: the tasks are stopping already and all start again after
            # the re-exec.  A stop, though, overrides a reset under way.
            self.log("info", f"a reset is already under way ({reason or 'requested'})")
            return
        self.shutdown = mode
        what = "reset: stopping every task, then restarting" if reset else "stopping every task"
        self.log("info", f"{what} ({reason or 'requested'})")
        for name in sorted(self.tasks):
            for slot in self.tasks[name].slots:
                slot.timers.pop(TIMER_CHECK, None)
                self._end_check(slot)
        for key in sorted(self.leftovers):
            if self.leftovers[key].adopting:
                # As an adopted daemon is at shutdown: left for the next one.
                del self.leftovers[key]

    def _run_due_timers(self) -> None:
        while (entry := self._pop_due()) is not None:
            slot = self._timer_slot(entry)
            if slot is None:
                leftover = self._leftover_due(entry)
                if leftover is not None:
                    leftover.deadline = None
                    task_name, instance = entry[2], entry[3]
                    self.log(
                        "warning",
                        f"{task_name}[{instance}]: the leftover did not stop; SIGKILL",
                        task_name,
                    )
                    self.emit(fx.StopLeftover(task_name, instance, "SIGKILL"))
                continue
            purpose = entry[5]
            del slot.timers[purpose]
            self._touch_slot(slot.task, slot.instance)
            task = self.tasks[slot.task]
            if purpose == TIMER_KILL and slot.pid is not None:
                self.log(
                    "warning",
                    f"{self._name(slot)} (pid {slot.pid}) did not stop; SIGKILL",
                    slot.task,
                )
                self.emit(
                    fx.Signal(
                        slot.task, slot.instance, slot.pid, "SIGKILL", group=slot.signal_group
                    )
                )
            elif purpose == TIMER_PIDFILE and slot.state is SLOT_PROBING:
                self._read_pidfile(slot)
            elif purpose in _READINESS_TIMERS:
                self._readiness_due(task, slot, purpose)
            elif (
                purpose == TIMER_CHECK
                and slot.state in UP_STATES
                and "check" in task.spec.commands
                and slot.check_run is None
                and not self.shutdown
            ):
                self._start_check(task, slot)
            elif purpose == TIMER_CHECK_TIMEOUT and slot.state in UP_STATES:
                self._check_timed_out(task, slot)
            elif purpose == TIMER_LIMIT and not self.shutdown:
                # (At shutdown the stop order decides when it goes.)
                if task.control in ONE_SHOT_CONTROLS:
                    self.stop_slot(task, slot, INTENT_FINISH, "stopped: time_limit reached")
                else:
                    self.stop_slot(task, slot, INTENT_RESTART, "restarted: time_limit reached")
