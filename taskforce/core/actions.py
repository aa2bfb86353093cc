"""What the supervisor does to one slot: start it, stop it, judge its exit.

``SlotActions`` pulls the lifecycle triggers (``lifecycle.LIFECYCLE``) and
records the effects that go with them: a spawn, a stop signal and its kill
deadline, a command run, a retry of a failed slot, a ``once`` task's run
asked for.  Which slot needs which action is decided above, in
``convergence`` and ``handlers``; each action here checks the slot's state
itself, so calling one on a slot it does not apply to changes nothing.

This module must never do IO, read a clock or draw random numbers.
"""

from __future__ import annotations

from taskforce.core import effects as fx
from taskforce.core.lifecycle import (
    INTENT_FINISH,
    INTENT_HALT,
    INTENT_RESTART,
    INTENT_STOP,
    LIFECYCLE,
    ONE_SHOT_CONTROLS,
    PHASE_LAUNCHER,
    SHUTDOWN_RESET,
    SLOT_DONE,
    SLOT_DRAINING,
    SLOT_EXITED,
    SLOT_FAILED,
    SLOT_STOPPING,
    TIMER_CHECK,
    TIMER_CHECK_TIMEOUT,
    TIMER_KILL,
    TIMER_LIMIT,
    TIMER_PROBE,
    TIMER_READY,
    TIMER_READY_TIMEOUT,
    TIMER_RETRY,
    TIMER_WATCHDOG,
    UP_STATES,
    Intent,
)
from taskforce.core.model import DAEMON_CONTROLS, Action, ProcessSpec
from taskforce.core.slots import FAILED_WATCH, OUTSIDE_SIGNALS, Slot, TaskState
from taskforce.core.timers import Timers

#: the deadlines of a running process that a stop makes moot
_RUNNING_TIMERS = (
    TIMER_READY,
    TIMER_LIMIT,
    TIMER_CHECK,
    TIMER_PROBE,
    TIMER_READY_TIMEOUT,
    TIMER_WATCHDOG,
)


class SlotActions(Timers):
    """Actions on one slot or task, each with its effects and log lines."""

    def wants_run(self, task: TaskState) -> bool:
        if self.shutdown or task.removed or not task.spec.in_scope:
            return False
        control = task.control
        if control in DAEMON_CONTROLS:
            return True
        if control in ONE_SHOT_CONTROLS:
            return task.run_requested
        return False  # suspend, off

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
        # A process started while its task rolls out is on trial: if it
        # fails before it is ready, the rollout halts (see ``rollout``).
        slot.trial = bool(task.rollout) and not task.rollout_halted
        slot.surge = slot.instance >= task.count
        slot.stale = ""
        slot.status = ""
        slot.main_pid = None
        slot.ready_at = None
        slot.ready_early = False
        slot.phase = (
            PHASE_LAUNCHER if task.control in ("nowait", "adopt") and spec.pidfile else None
        )
        slot.timers.clear()
        self.emit(
            fx.Spawn.of(spec, task=slot.task, instance=slot.instance, generation=slot.generation)
        )

    def stop_slot(self, task: TaskState, slot: Slot, intent: Intent, reason: str) -> None:
        if slot.state in (SLOT_STOPPING, SLOT_DRAINING):
            if intent == INTENT_STOP:
                slot.intent = INTENT_STOP
            return
        if slot.state not in UP_STATES or slot.pid is None:
            return
        LIFECYCLE.fire(slot, "stop")
        slot.intent = intent
        slot.reason = reason
        if self._reload is not None and self._reload.counting:
            if intent == INTENT_RESTART:
                self._reload.restarted += 1
            else:
                self._reload.stopped += 1
        for purpose in _RUNNING_TIMERS:
            slot.timers.pop(purpose, None)
        self._end_check(slot)
        use_restart = intent == INTENT_RESTART or self.shutdown == SHUTDOWN_RESET
        action = (task.spec.restart_action if use_restart else None) or task.spec.stop_action
        name = task.spec.name
        if action and action.signal:
            self.emit(
                fx.Signal(name, slot.instance, slot.pid, action.signal, group=slot.signal_group)
            )
        elif action and action.command in task.spec.commands:
            self._run_command(task, action.command or "")
        else:
            self.emit(fx.Signal(name, slot.instance, slot.pid, "SIGTERM", group=slot.signal_group))
        self._set_timer(slot, TIMER_KILL, self.now + task.spec.stop_timeout)
        self.log("info", f"{self._name(slot)} (pid {slot.pid}) {reason}", name)

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
        if self.wants_run(task) and (
            slot.intent == INTENT_HALT
            or (
                slot.trial
                and slot.intent is None
                and task.rollout
                and (failed or slot.exit_signal not in OUTSIDE_SIGNALS)
            )
        ):
            # A new process of a rollout failed: the rollout halts on it, and
            # it is not tried again against the pool until the next change.
            self.log("info", what, slot.task)
            self._halt(task, slot, slot.last_exit or "exited")
            LIFECYCLE.fire(slot, "give_up")
            slot.reason = f"failed: {task.rollout_halted}"
            slot.trial = False
            self.update_watches()
        elif slot.intent == INTENT_STOP or not self.wants_run(task) or slot.instance >= task.count:
            self.log("info", what, slot.task)
            LIFECYCLE.fire(slot, "release")
        elif slot.intent == INTENT_RESTART:
            self.log("info", what, slot.task)
            # Deliberate (a change, an operator, a rollout, a failed check):
            # the next start is immediate, and a fresh attempt -- the start
            # limit counts a crash loop, not the restarts taskforce made.
            slot.fails = 0
            slot.starts = ()
        elif slot.intent == INTENT_FINISH or (task.control in ONE_SHOT_CONTROLS and not failed):
            self.log("info", what, slot.task)
            LIFECYCLE.fire(slot, "finish")
            slot.reason = f"finished: {slot.last_exit}"
        elif (failed or ran < self.settings.stable_after) and self._start_limit_hit(task, slot):
            burst, interval = task.spec.start_limit
            slot.reason = (
                f"start limit hit: {burst} starts in {interval:g} s, last: {slot.last_exit}"
            )
            self.log(
                "warning",
                f"{what}; {slot.reason}; not restarting it until it is started again, "
                "its config entry changes or its executable does",
                slot.task,
            )
            self.counters["start_limit_hits"] = self.counters.get("start_limit_hits", 0) + 1
            LIFECYCLE.fire(slot, "give_up")
            self.update_watches()  # its executable, until it is tried again
        elif ran >= self.settings.stable_after and not failed:
            if slot.fails:
                self.log("info", f"{what}; it had run stably, backoff reset", slot.task)
            else:
                self.log("warning", f"{what}; restarting", slot.task)
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
                self.log(
                    "warning",
                    f"{what}; failing fast, restarting with backoff from "
                    f"{delay:g}s up to {self.settings.backoff_max:g}s (logged once)",
                    slot.task,
                )
            else:
                self.log("debug", f"{what}; retry {slot.fails} in {delay:g}s", slot.task)
            LIFECYCLE.fire(slot, "back_off")
            slot.reason = f"backoff step {slot.fails} after: {slot.last_exit}"
            self._set_timer(slot, TIMER_RETRY, self.now + delay)
        slot.intent = None if slot.state is not SLOT_EXITED else slot.intent
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
        if slot.state is not SLOT_FAILED:
            return
        self._touch(slot.task)
        LIFECYCLE.fire(slot, "release")
        slot.fails = 0
        slot.starts = ()
        slot.reason = reason or f"started: {why} (it had failed)"
        self.log("info", f"{self._name(slot)}: failed state cleared: {why}", slot.task)
        self.update_watches()

    def retry_failed(self, task: TaskState, why: str, instance: int | None = None) -> int:
        """Let ``task``'s failed slots (or slot ``instance``) start again; how many."""
        found = 0
        for slot in task.slots:
            if slot.state is SLOT_FAILED and instance in (None, slot.instance):
                self._retry(slot, why)
                found += 1
        self.resume(task, why)
        return found

    # -- replacing processes: at once, or by a rollout (see ``rollout``)

    def rolls(self, task: TaskState) -> bool:
        """Whether a change replaces ``task``'s processes by a rollout (a
        daemon task of its own children), rather than all at once."""
        return task.control == "wait" and not self.shutdown

    def replace(self, task: TaskState, why: str) -> int:
        """Replace ``task``'s running processes because of ``why``: by a
        rollout where the task rolls, else at once.  How many were marked
        or stopped."""
        done = 0
        if not self.rolls(task):
            for slot in task.slots:
                if slot.state in UP_STATES:
                    self.stop_slot(task, slot, INTENT_RESTART, f"restarted: {why}")
                    done += 1
            return done
        self._touch(task.spec.name)
        task.rollout_check = True
        for slot in task.slots[: task.count]:
            if slot.state in UP_STATES and slot.intent is None:
                slot.stale = why
                done += 1
        self.resume(task, why)
        return done

    def resume(self, task: TaskState, why: str) -> bool:
        """A change came: a halted rollout of ``task`` goes on, and the
        processes it left failed are tried again.  Whether one was halted."""
        if not task.rollout_halted:
            return False
        self.log("info", f"rollout of {task.spec.name} resumed: {why}", task.spec.name)
        task.rollout_halted = ""
        self._touch(task.spec.name)
        for slot in task.slots:
            self._retry(slot, why)  # (only a failed one)
        return True

    def _halt(self, task: TaskState, slot: Slot, what: str) -> None:
        """A process of the rollout failed (``what``): halt it."""
        if task.rollout_halted:
            return
        ran = self.now - (self.now if slot.started_at is None else slot.started_at)
        task.rollout_halted = (
            f"rollout of {task.spec.name} halted: {self._name(slot)} (new) "
            f"not ready after {ran:.1f}s: {what}"
        )
        self.counters["rollout_halts"] = self.counters.get("rollout_halts", 0) + 1
        self.log(
            "warning",
            f"{task.rollout_halted}; what runs keeps running, nothing more is replaced "
            "until the next change (or tfctl rollout --resume)",
            task.spec.name,
        )

    def _onexit(self, task: TaskState) -> None:
        for kind, target_name in task.spec.onexit:
            target = self.tasks.get(target_name)
            if target is None or target.removed or not target.spec.in_scope:
                self.log(
                    "warning", f"{task.spec.name}: onexit target {target_name!r} is not in scope"
                )
                continue
            if target.control not in ONE_SHOT_CONTROLS:
                self.log(
                    "warning",
                    f"{task.spec.name}: onexit target {target_name!r} is not a once or event task",
                )
                continue
            if kind == "start":
                self.request_run(target, f"started: onexit of {task.spec.name}")

    def fire_action(self, task: TaskState, action: Action, why: str) -> None:
        name = task.spec.name
        if action.signal:
            self.log("info", f"{name}: {why}; sending {action.signal}", name)
            for slot in task.slots:
                if slot.state in UP_STATES and slot.pid is not None:
                    self.emit(fx.Signal(name, slot.instance, slot.pid, action.signal, group=False))
            return
        command = action.command or ""
        if command in task.spec.commands and command != "start":
            self.log("info", f"{name}: {why}; running command {command!r}", name)
            self._run_command(task, command)
        elif command == "start":
            self.log("info", f"{name}: {why}; starting", name)
            self.request_run(task, why)
        elif command == "stop":
            if task.control in ONE_SHOT_CONTROLS:
                self.log(
                    "warning", f"{name}: {why}; 'stop' ignored for a {task.control} task", name
                )
                return
            self.log("info", f"{name}: {why}; restarting", name)
            self.replace(task, why)

    def _run_command(
        self,
        task: TaskState,
        command: str,
        instance: int = 0,
        run: int = 0,
        argv: tuple[str, ...] | None = None,
    ) -> None:
        """Run the task's command ``command`` (or ``argv``, named so) in slot
        ``instance``'s environment; ``run`` numbers a check or a probe."""
        spec = task.spec.process(instance)
        self.emit(
            fx.RunCommand(
                task=task.spec.name,
                instance=instance,
                name=command,
                argv=task.spec.commands[command] if argv is None else argv,
                env=spec.env,
                cwd=spec.cwd,
                user=spec.user,
                group=spec.group,
                run=run,
            )
        )

    def request_run(self, task: TaskState, why: str) -> None:
        self._touch(task.spec.name)
        task.run_requested = True
        for slot in task.slots:
            if slot.state is SLOT_DONE:
                LIFECYCLE.fire(slot, "release")
                slot.reason = why

    def _end_check(self, slot: Slot) -> None:
        """Kill the slot's running health check, if any, and forget its
        readiness probe (a command probe is killed).  Both belong to its
        process: they must not outlive it, its stop, or taskforce."""
        slot.timers.pop(TIMER_CHECK_TIMEOUT, None)
        if slot.check_run is not None:
            self.emit(fx.StopCommand(slot.task, slot.instance, slot.check_run, "SIGKILL"))
            slot.check_run = None
        self._end_probe(slot)

    def _end_probe(self, slot: Slot) -> None:
        """Forget the slot's running readiness probe; a command probe is killed."""
        if slot.probe_run is not None:
            if self.tasks[slot.task].spec.readiness.kind == "command":
                self.emit(fx.StopCommand(slot.task, slot.instance, slot.probe_run, "SIGKILL"))
            slot.probe_run = None

    def _pidfile_path(self, slot: Slot) -> str:
        return self.tasks[slot.task].spec.process(slot.instance).pidfile or ""

    def _read_pidfile(self, slot: Slot) -> None:
        path = self._pidfile_path(slot)
        self.emit(fx.ReadPidfile(slot.task, slot.instance, slot.generation, path))

    def update_watches(self) -> None:
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
            if any(slot.state is SLOT_FAILED for slot in task.slots) and not any(
                spec.type == "self" for spec in task.spec.events
            ):
                # A crash loop that gave up is often a program not (yet)
                # installed: its arrival is a reason to try again.
                key = f"{name}#{FAILED_WATCH}"
                program = task.spec.processes[0].argv[:1]
                wanted[key] = fx.Watch(key, "executable", program, task.spec.search_path)
        for key in sorted(set(self._watches) - set(wanted)):
            self.emit(fx.Unwatch(key))
        for key in sorted(wanted):
            if self._watches.get(key) != wanted[key]:
                self.emit(wanted[key])
        self._watches = wanted
