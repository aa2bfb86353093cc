"""Convergence: after every event, move each slot towards what its task wants.

``_converge`` walks the tasks an event touched (and what requires them), in
start order, and for each slot decides: keep it running (``_keep_running``:
start it once its requirements are met, restart it when its process spec
changed) or keep it stopped (``_keep_stopped``: at shutdown only after what
depends on it).  It is level-triggered -- want is compared with have on
every pass -- which is what makes a lost process hard to lose.  What an
earlier taskforce left running is settled here too (``_settle_leftovers``):
no slot starts while a leftover of it runs.

This module must never do IO, read a clock or draw random numbers.
"""

from __future__ import annotations

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.lifecycle import (
    INTENT_RESTART,
    INTENT_STOP,
    LIFECYCLE,
    ONE_SHOT_CONTROLS,
    PHASE_ADOPT,
    PHASE_DAEMON,
    SHUTDOWN_RESET,
    SLOT_BACKOFF,
    SLOT_DONE,
    SLOT_DRAINING,
    SLOT_EXITED,
    SLOT_FAILED,
    SLOT_PROBING,
    SLOT_READY,
    SLOT_RUNNING,
    SLOT_STARTING,
    SLOT_STOPPED,
    SLOT_STOPPING,
    SLOT_WAITING,
    TIMER_READY,
    TIMER_RETRY,
)
from taskforce.core.rollout import Rollouts, outdated_by
from taskforce.core.slots import Slot, TaskState


class Convergence(Rollouts):
    """The converge pass and the keep-running / keep-stopped decisions."""

    def _touch_for(self, event: ev.Event) -> None:
        """Mark what ``event`` can change for the converge pass."""
        # What happened to one process touches its slot alone: the pass then
        # visits that slot, not every slot of a task of 1,000 (a start-up of
        # a ``count: 1000`` task was quadratic).  A handler that changes more
        # than that slot touches the task as well.
        if isinstance(event, (ev.ProcessStarted, ev.SpawnFailed, ev.PidfileRead)):
            self._touch_slot(event.task, event.instance)
        elif isinstance(event, (ev.ProcessExited, ev.GroupEmptied)):
            slot = self._by_pid.get(
                event.pid if isinstance(event, ev.ProcessExited) else event.pgid
            )
            if slot is not None:
                self._touch_slot(slot.task, slot.instance)
        elif isinstance(event, ev.FileChanged):
            self._touch(event.key.partition("#")[0])
        elif isinstance(event, ev.ConfigLoaded):
            pass  # reconcile touches what the config changed (``_apply_specs``)
        elif not isinstance(event, (ev.TimerFired, ev.CommandExited)):
            self._touch()

    def _visit_order(self) -> list[str]:
        """The tasks this converge pass visits, in start order.

        Only tasks an event touched, and what requires them (transitively),
        can have anything to do; at shutdown the stop order spans every task.
        Nothing in a pass touches a task, so the set is known before it.
        """
        if self._all_dirty:
            return list(self.order)
        rank = self._rank
        dirty = self._dirty.union(self._dirty_slots) if self._dirty_slots else self._dirty
        if self.shutdown is not None:
            # The stop order: what was touched, and every task not yet
            # settled (it may be waiting for its dependents to go).
            names = set(dirty)
            if len(self._settled) < len(self.order):
                names.update(name for name in self.order if name not in self._settled)
            return sorted((name for name in names if name in rank), key=rank.__getitem__)
        if len(dirty) == 1:  # the usual case: one task, maybe nothing requires it
            (name,) = dirty
            if name not in self.dependents:
                return [name] if name in rank else []
        todo = [name for name in dirty if name in rank]
        seen = set(todo)
        while todo:
            for dependent in self.dependents.get(todo.pop(), ()):
                if dependent not in seen and dependent in rank:
                    seen.add(dependent)
                    todo.append(dependent)
        return sorted(seen, key=rank.__getitem__)

    def _only_slots(self, task: TaskState, want: int, gate: tuple[str, ...]) -> list[Slot] | None:
        """The slots this pass must visit when only some of ``task``'s were
        touched (None: visit them all).

        An untouched slot is where the last pass left it, and a pass over it
        again would do nothing -- as long as nothing it is judged by changed:
        the task itself (touched then), its gate, its pool size, a rollout
        (which weighs slots against each other), a leftover or a shutdown.
        """
        instances = self._dirty_slots.get(task.spec.name)
        if (
            instances is None
            or task.spec.name in self._dirty
            or self.shutdown is not None
            or self.leftovers
            or task.rollout
            or task.rollout_check
            or task.rollout_halted
            or task.removed
            or len(task.slots) != want
            or gate != task.waiting_on
        ):
            return None
        slots = task.slots
        return [slots[i] for i in sorted(instances) if i < len(slots)]

    def _stop_touched(self, task: TaskState) -> bool:
        """At shutdown: whether ``task`` was settled before and only some
        of its slots were touched since; then those alone are kept stopped.

        A settled task is one a shutdown pass found with no live dependents:
        every slot got its stop then, nothing starts again before the exit,
        so a later pass over an untouched slot would do nothing.  (Each exit
        at shutdown walked every slot of every task: quadratic in the fleet.)
        """
        name = task.spec.name
        if name not in self._settled or name in self._dirty or self.leftovers:
            return False
        for instance in sorted(self._dirty_slots.get(name, ())):
            if instance < len(task.slots):
                self._keep_stopped(task, task.slots[instance])
        return True

    def _converge_task(self, task: TaskState, partial: bool) -> bool:
        """One task's part of the pass; whether every slot was visited."""
        name = task.spec.name
        want = task.count if self.wants_run(task) else 0
        if want and (task.rollout or task.rollout_check) and self.rolls(task):
            want += self._rollout_pass(task)  # (its surge slots, if any)
        gate = self._gate(task) if want else ()
        only = self._only_slots(task, want, gate) if partial else None
        if only is not None:
            for slot in only:
                self._keep_running(task, slot, gate)
            return False
        while len(task.slots) < want:
            slot = Slot(task=name, instance=len(task.slots))
            LIFECYCLE.attach(slot)
            if task.slots:
                task.slots.append(slot)
            else:
                task.slots = [slot]  # (room for one: most tasks never have more)
        if gate != task.waiting_on:
            # Info when what it waits on changes, not each time the reason
            # does (a crash-looping requirement would flood the log).
            before = {item.split(" ", 1)[0] for item in task.waiting_on}
            level = "info" if {item.split(" ", 1)[0] for item in gate} != before else "debug"
            task.waiting_on = gate
            if gate:
                self.log(level, f"{name}: waiting on {', '.join(gate)}", name)
        for slot in task.slots:
            if slot.instance < want:
                self._keep_running(task, slot, gate)
            else:
                self._keep_stopped(task, slot)
        self._drop_stopped(task, want)
        return True

    @staticmethod
    def _drop_stopped(task: TaskState, want: int) -> None:
        """Forget the stopped slots at the end of ``task``'s list past ``want``."""
        slots = task.slots
        while slots and slots[-1].instance >= want and slots[-1].state in (SLOT_STOPPED, SLOT_DONE):
            LIFECYCLE.detach(slots.pop())

    def _converge(self) -> None:
        forget = []
        partial = not self._all_dirty and bool(self._dirty_slots)
        if self.shutdown is None:
            if self._settled:
                self._settled = set()
        elif self._all_dirty:
            self._settled = set()
        for name in self._visit_order():
            task = self.tasks[name]
            if self.shutdown is not None and self._stop_touched(task):
                self._drop_stopped(task, 0)
            elif self._converge_task(task, partial) and self.shutdown is not None:
                if not self.leftovers and not self._has_live_dependents(name):
                    self._settled.add(name)
            if task.removed and not task.slots:
                forget.append(name)
        self._dirty = set()
        if self._dirty_slots:
            self._dirty_slots = {}
        self._all_dirty = False
        if self._spare:
            self._spare = {}
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
                slot.state is SLOT_STARTING or slot.awaiting_daemon
                for task in self.tasks.values()
                for slot in task.slots
            )
        ):
            self.exited = True
            self.log("info", "every task has stopped")
            self.emit(fx.Exit(0, reset=self.shutdown == SHUTDOWN_RESET))

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
        elsewhere = task.spec.not_run_here()
        if elsewhere is not None:
            return elsewhere
        control = task.control
        if control == "off":
            return "off"
        if control in ("suspend", "event"):
            return None
        if control == "once":
            if all(slot.state is SLOT_DONE for slot in task.slots) and task.slots:
                return None
            return "not finished"
        for slot in task.slots[: task.count]:
            state = slot.state
            if state is SLOT_READY:
                continue
            if state is SLOT_FAILED:
                return "failed"
            if state is not SLOT_RUNNING:
                return "not running"
            if TIMER_READY in slot.timers:
                return "in its start_delay"
            return "not ready"
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
        if state is SLOT_READY or state is SLOT_RUNNING:
            why = outdated_by(task, slot) if slot.stale or not same else ""
            if why:
                if not self.rolls(task):
                    self.stop_slot(task, slot, INTENT_RESTART, f"restarted: {why}")
                elif self._may_replace(task, slot):
                    how = " (rollout)" if task.gradual else ""
                    self.stop_slot(task, slot, INTENT_RESTART, f"restarted: {why}{how}")
            return
        if state in (SLOT_STARTING, SLOT_STOPPING, SLOT_DRAINING, SLOT_PROBING):
            return
        if task.rollout_halted and slot.spec is not None and not same and not slot.surge:
            # The rollout halted on the new spec: an old process that ended
            # comes back as it was, so the pool keeps serving what worked
            # (the next change resumes the rollout, which replaces it).
            spec, same = slot.spec, True
        if state is SLOT_FAILED:
            if same or slot.spec is None:
                return  # until an operator, its config or its executable says
            self._retry(slot, f"config changed: {slot.spec.diff(spec)}")
            state = slot.state
        if state is SLOT_BACKOFF and TIMER_RETRY in slot.timers and same:
            return
        if (
            state is SLOT_DONE
            and task.control in ONE_SHOT_CONTROLS
            and (same or task.control == "event")
        ):
            return
        if slot.spec is not None and not same:
            slot.fails = 0  # a changed config is a fresh attempt
            slot.starts = ()
        leftover = self.leftovers.get((slot.task, slot.instance)) if self.leftovers else None
        if leftover is not None and not leftover.adopting:
            gate = (
                "what its start command left"
                if leftover.stray
                else "its leftover from an earlier taskforce",
            )
        if gate:
            if state is not SLOT_WAITING:
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
            slot.phase = PHASE_ADOPT
            self._read_pidfile(slot)
            return
        self._spawn(task, slot, spec)

    def _keep_stopped(self, task: TaskState, slot: Slot) -> None:
        state = slot.state
        wants_run = slot.surge and self.wants_run(task)
        if state is SLOT_RUNNING or state is SLOT_READY:
            if self.shutdown and self._has_live_dependents(task.spec.name):
                return
            if self.shutdown and task.control == "adopt" and slot.phase == PHASE_DAEMON:
                self.log(
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
            if slot.surge and wants_run:
                why = "stopped: the rollout no longer needs this extra process"
            else:
                why = self._stop_reason(task)
            self.stop_slot(task, slot, INTENT_STOP, why)
        elif state in (SLOT_STOPPING, SLOT_DRAINING):
            slot.intent = INTENT_STOP
        elif slot.awaiting_daemon:
            # Its start command is done and its pidfile does not name the
            # daemon yet: it is stopped (or, adopt at shutdown, left running)
            # once the pidfile names it, or released when none turns up
            # within pidfile_timeout.  Issue 11: stopping it as if nothing
            # ran left the daemon behind, unsupervised.
            if slot.intent != INTENT_STOP:
                slot.intent = INTENT_STOP
                then = (
                    "leave it running" if self.shutdown and task.control == "adopt" else "stop it"
                )
                self.log(
                    "info",
                    f"{self._name(slot)}: waiting for its pidfile to name its daemon, "
                    f"to {then} ({self._stop_reason(task)})",
                    task.spec.name,
                )
        elif state is SLOT_FAILED:
            why = self._stop_reason(task)
            self._retry(slot, why, reason=why)
        elif state in (SLOT_WAITING, SLOT_BACKOFF, SLOT_EXITED) or (
            state is SLOT_DONE and task.removed
        ):
            slot.timers.pop(TIMER_RETRY, None)
            LIFECYCLE.fire(slot, "release")

    def _stop_reason(self, task: TaskState) -> str:
        if self.shutdown:
            return "stopped: taskforce is " + (
                "resetting" if self.shutdown == SHUTDOWN_RESET else "exiting"
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
                and self.wants_run(task)
                and task.control == "adopt"
                and instance < task.count
                and not leftover.adopting
            ):
                slot = self.slot(name, instance)
                if slot is None or not slot.adopt_checked:
                    self.log(
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
            self.log(
                "info",
                f"{name}[{instance}]: stopping the leftover before anything starts in its place",
                name,
            )
            self.emit(fx.StopLeftover(name, instance, "SIGTERM"))
            leftover.deadline = self.now + timeout
            self._set_leftover_timer(name, instance, leftover.deadline)
