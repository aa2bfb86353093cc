"""Readiness, and rollouts: replacing a task's processes without downtime.

**Ready.**  A slot whose process runs is ``running`` until it is ready, then
``ready`` (``lifecycle``): when it says ``READY=1`` on the notify socket
(``ready: notify``), when its probe passes (``tcp``, ``http``, ``command``,
tried every ``ready_interval``), or -- with no ``ready:`` -- once it has run
for its ``start_delay`` (at once without one).  A process not ready within
``ready_timeout`` is restarted; one whose ``watchdog_sec`` passes without a
``WATCHDOG=1`` too.  ``requires`` waits for ready.

**Rollouts.**  When a change needs a ``wait`` task's processes replaced --
its config entry differs, a watched file or module changed (an event whose
action is ``command: stop``), an operator asked for a restart -- its slots are
not all stopped at once.  They are marked outdated, and each converge pass
replaces as many as ``rollout: {max_surge, max_unavailable}`` allows: at
least ``count - max_unavailable`` processes stay ready throughout, and up to
``max_surge`` extra processes are started first.  A process that crashes is
still replaced at once, as ever.

An extra (surge) process takes a slot *after* the pool's, ``Task_instance``
``count`` and up, and is stopped when the rollout is done: so the pool's
instances keep their identities (a shard number, a per-instance output file
or pidfile), no two processes ever share an instance -- its cgroup, its
marker, its files -- and no slot ever has two processes.  The price is one
extra start per surge slot per rollout.

**Halting.**  A process started while a rollout is under way that exits
before it is ready, or is not ready within ``ready_timeout``, halts the
rollout: it is left failed (not retried against the pool), what still runs
keeps running, and nothing more is replaced until the next change -- the fix
saved, the config edited, ``tfctl restart``, or ``tfctl rollout TASK
--resume``.

This module must never do IO, read a clock or draw random numbers.
"""

from __future__ import annotations

from taskforce.core import effects as fx
from taskforce.core.actions import SlotActions
from taskforce.core.lifecycle import (
    INTENT_HALT,
    INTENT_RESTART,
    LIFECYCLE,
    PHASE_LAUNCHER,
    SLOT_READY,
    SLOT_RUNNING,
    TIMER_PROBE,
    TIMER_READY,
    TIMER_READY_TIMEOUT,
    TIMER_WATCHDOG,
    UP_STATES,
    TimerPurpose,
)
from taskforce.core.slots import Slot, TaskState

_READY = SLOT_READY
_RUNNING = SLOT_RUNNING
#: the first probe comes this soon after the start (or ``ready_interval``,
#: if that is shorter): most programs are not listening at exec
FIRST_PROBE = 0.2
#: the longest ``STATUS=`` text kept per slot
STATUS_MAX = 200


def outdated_by(task: TaskState, slot: Slot) -> str:
    """Why ``slot``'s running process must be replaced ("": it need not):
    marked by ``replace``, or its task's spec for it changed since it
    started.  (Equal specs are made identical on the way, so the next look
    is one comparison.)  The converge pass, rollouts and ``status.plan``
    all ask this, so they agree on what a change replaces."""
    if slot.state not in UP_STATES or slot.intent is not None or slot.spec is None:
        return ""
    if slot.stale:
        return slot.stale
    spec = task.spec.process(slot.instance)
    if slot.spec is spec:
        return ""
    if slot.spec == spec:
        slot.spec = spec  # the same process after a reload: compare by identity
        return ""
    return f"config changed: {slot.spec.diff(spec)}"


class Rollouts(SlotActions):
    """Readiness of one slot, and the rollout of a task's slots."""

    # ------------------------------------------------------------ readiness

    def _arm_readiness(self, task: TaskState, slot: Slot) -> None:
        """A slot's process (or daemon) runs: how it becomes ready."""
        spec = task.spec
        ready = spec.readiness
        if slot.phase == PHASE_LAUNCHER:
            return  # its daemon, once found, is what becomes ready
        if ready.kind == "delay":
            delay = spec.start_delay
            if slot.trial:
                # Nothing says when a rollout's new process is ready: it must
                # at least not fail fast, or a release that cannot start
                # would replace the pool one process at a time.
                delay = max(delay, self.settings.stable_after)
            if delay > 0:
                self._set_timer(slot, TIMER_READY, self.now + delay)
            else:
                self._mark_ready(task, slot, "")
            return
        if ready.kind != "notify":
            self._set_timer(slot, TIMER_PROBE, self.now + min(FIRST_PROBE, ready.interval))
        if ready.timeout:
            self._set_timer(slot, TIMER_READY_TIMEOUT, self.now + ready.timeout)
        if ready.watchdog:
            self._set_timer(slot, TIMER_WATCHDOG, self.now + ready.watchdog)

    def _daemon_found(self, task: TaskState, slot: Slot, *, adopted: bool) -> None:
        """A nowait/adopt slot's pidfile just named its daemon: with ``ready:
        notify`` it is ready at once if it said READY=1 before, or was
        ``adopted`` -- a daemon says it once, so waiting for another would
        wait until ``ready_timeout`` restarted it."""
        if task.spec.readiness.kind != "notify":
            return
        if slot.ready_early:
            self._mark_ready(task, slot, "READY=1, sent before its pidfile was read")
        elif adopted:
            # Running before taskforce started (kept through a reset): it
            # said READY=1 to the taskforce before this one.
            self._mark_ready(task, slot, "adopted: running before taskforce started")

    def _mark_ready(self, task: TaskState, slot: Slot, how: str) -> None:
        """``slot`` is ready (``how``: what said so, for the log; "" says nothing)."""
        if slot.state is not _RUNNING or slot.phase == PHASE_LAUNCHER:
            return
        LIFECYCLE.fire(slot, "ready")
        slot.ready_at = self.now
        slot.ready_early = False
        for purpose in (TIMER_READY, TIMER_PROBE, TIMER_READY_TIMEOUT):
            slot.timers.pop(purpose, None)
        self._end_probe(slot)
        slot.status = "" if slot.status.startswith("probe: ") else slot.status
        self._touch_slot(slot.task, slot.instance)
        if slot.trial:
            slot.trial = False
            if task.rollout and slot.instance < task.count:
                task.rollout_replaced += 1
        if how:
            ran = self.now - (self.now if slot.started_at is None else slot.started_at)
            self.log("info", f"{self._name(slot)} ready after {ran:.2f}s ({how})", slot.task)

    def _start_probe(self, task: TaskState, slot: Slot) -> None:
        ready = task.spec.readiness
        self._runs += 1
        slot.probe_run = self._runs
        if ready.kind == "command":
            self._run_command(task, "ready", slot.instance, self._runs, argv=ready.argv)
            # Its deadline: a probe never runs into the next one.
            self._set_timer(slot, TIMER_PROBE, self.now + ready.interval)
        else:
            self.emit(
                fx.Probe(
                    slot.task, slot.instance, self._runs, ready.kind, ready.target, ready.interval
                )
            )

    def _probe_judged(self, slot: Slot, run: int, ok: bool, detail: str) -> None:
        """A probe ended (``ProbeFinished``, or a ``ready`` command's exit)."""
        if slot.probe_run != run:
            return  # not the probe running now (its slot moved on)
        slot.probe_run = None
        slot.timers.pop(TIMER_PROBE, None)
        if slot.state is not _RUNNING:
            return
        task = self.tasks[slot.task]
        if ok:
            self._mark_ready(task, slot, f"{task.spec.readiness.kind} probe passed")
            return
        slot.status = f"probe: {detail}"[:STATUS_MAX]
        self._set_timer(slot, TIMER_PROBE, self.now + task.spec.readiness.interval)

    def _notified(self, task: TaskState, slot: Slot, message: str) -> None:
        """What a process of ``slot`` said on the notify socket."""
        said: dict[str, str] = {}
        for line in message.split("\n"):
            key, eq, value = line.partition("=")
            if eq:
                said[key] = value
        if "STATUS" in said:
            slot.status = said["STATUS"][:STATUS_MAX]
        if said.get("MAINPID", "").isdigit():
            slot.main_pid = int(said["MAINPID"])
        if said.get("STOPPING") == "1" and slot.status != "stopping":
            slot.status = "stopping"
        ready = task.spec.readiness
        if said.get("READY") == "1" and ready.kind == "notify":
            if slot.phase == PHASE_LAUNCHER:
                # Its daemon is not known yet (its start command runs, or
                # its pidfile is awaited): ready once it is (_daemon_found).
                slot.ready_early = True
            else:
                self._mark_ready(task, slot, "READY=1")
        watchdog = said.get("WATCHDOG")
        if watchdog == "1" and ready.watchdog and slot.state in UP_STATES:
            self._set_timer(slot, TIMER_WATCHDOG, self.now + ready.watchdog)
        elif watchdog == "trigger" and slot.state in UP_STATES:
            self.stop_slot(task, slot, INTENT_RESTART, "restarted: watchdog (it asked)")

    def _readiness_due(self, task: TaskState, slot: Slot, purpose: TimerPurpose) -> None:
        """A readiness deadline of ``slot`` came (``READY``, ``PROBE``,
        ``READY_TIMEOUT``, ``WATCHDOG``)."""
        ready = task.spec.readiness
        if purpose == TIMER_READY:
            # (Logged for a rollout's process only: a start_delay never was.)
            self._mark_ready(task, slot, "it did not fail fast" if slot.trial else "")
        elif purpose == TIMER_PROBE and slot.state is _RUNNING and not self.shutdown:
            if slot.probe_run is not None:  # a command probe ran too long: it failed
                self.emit(fx.StopCommand(slot.task, slot.instance, slot.probe_run, "SIGKILL"))
                self._probe_judged(
                    slot, slot.probe_run, False, f"timed out after {ready.interval:g}s"
                )
            else:
                self._start_probe(task, slot)
        elif purpose == TIMER_READY_TIMEOUT and slot.state is _RUNNING:
            what = f"not ready after {ready.timeout:g}s"
            if slot.trial and task.rollout:
                self._halt(task, slot, what)
                self.stop_slot(task, slot, INTENT_HALT, f"stopped: {what}")
            else:
                self.stop_slot(task, slot, INTENT_RESTART, f"restarted: {what}")
        elif purpose == TIMER_WATCHDOG and slot.state in UP_STATES:
            self.stop_slot(
                task,
                slot,
                INTENT_RESTART,
                f"restarted: watchdog (no WATCHDOG=1 for {ready.watchdog:g}s)",
            )

    # -------------------------------------------------------------- rollout

    def _rollout_pass(self, task: TaskState) -> int:
        """Begin, pace or end ``task``'s rollout, before its slots are
        visited; how many extra (surge) slots it wants now."""
        count = task.count
        ready = pending = 0
        why = ""
        for slot in task.slots:
            if slot.state is _READY:
                ready += 1
            if slot.instance >= count:
                continue
            outdated = outdated_by(task, slot)
            if outdated or slot.state is not _READY:
                pending += 1
            if outdated and not why:
                why = outdated
        pending += max(0, count - len(task.slots))
        plan = task.spec.readiness
        task.rollout_check = False
        if not task.rollout:
            if not why:
                return 0
            task.rollout = why
            task.rollout_at = self.now
            task.rollout_replaced = 0
            self.counters["rollouts"] = self.counters.get("rollouts", 0) + 1
            self.log(
                "info" if task.gradual else "debug",
                f"rollout of {task.spec.name}: replacing its processes ({why}); "
                f"max_surge {plan.max_surge}, max_unavailable {plan.max_unavailable}",
                task.spec.name,
            )
        elif not pending and not task.rollout_halted:
            took = self.now - (self.now if task.rollout_at is None else task.rollout_at)
            self.log(
                "info" if task.gradual else "debug",
                f"rollout of {task.spec.name} done: {task.rollout_replaced} replaced "
                f"in {took:.2f}s",
                task.spec.name,
            )
            task.rollout = ""
            task.rollout_at = None
            # (shown only while a rollout is under way: a task at rest keeps
            # its rollout fields at their defaults, and holds no ``rare``)
            task.rollout_replaced = 0
            task.rollout_surge = 0
            return 0
        # Ready processes this pass may take away: never below the floor.
        self._spare[task.spec.name] = ready - (count - plan.max_unavailable)
        # Extra slots grow with what is pending but never shrink before the
        # end: stopping a ready one midway could take the pool below its
        # floor while a replacement is still starting.
        task.rollout_surge = max(task.rollout_surge, min(plan.max_surge, pending))
        return task.rollout_surge

    def _may_replace(self, task: TaskState, slot: Slot) -> bool:
        """Whether this pass may stop ``slot``'s outdated process (its
        replacement follows at once); spends the task's spare readiness."""
        if task.rollout_halted or not task.rollout:
            return False
        if slot.state is not _READY:
            return True  # not serving yet: nothing is lost
        spare = self._spare.get(task.spec.name, 0)
        if spare <= 0:
            return False
        self._spare[task.spec.name] = spare - 1
        return True
