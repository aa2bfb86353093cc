"""What the supervisor knows, as plain data for operators: status, health,
metrics, and the plan of a config that has not been applied.

Every function here reads a ``Supervisor`` and returns JSON-able values (or
Prometheus text); none of them changes it.  ``plan`` works on a throw-away
copy of the supervisor, so what it predicts is what the core itself would
do -- there is no second copy of the policy to drift out of step.

Times stay on the core's monotonic clock (``started_at``); the shell knows
the offset to the wall clock and converts them.  This module must never do
IO, read a clock, or change the supervisor it is given.
"""

from __future__ import annotations

from collections.abc import Mapping

from taskforce.core import events as ev
from taskforce.core.effects import Log
from taskforce.core.lifecycle import ONE_SHOT_CONTROLS, UP_STATES, Intent, SlotState, TimerPurpose
from taskforce.core.model import DAEMON_CONTROLS, build
from taskforce.core.rollout import outdated_by

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.core.model import HostFacts
    from taskforce.core.slots import Slot, TaskState
    from taskforce.core.supervisor import Supervisor

S = SlotState

#: Summary states of a task, worst first where several slots disagree
#: (``task_state``); also the label values of ``taskforce_tasks``.
TASK_STATES = (
    "failed",
    "backoff",
    "waiting",
    "stopping",
    "starting",
    "running",
    "done",
    "idle",
    "suspended",
    "stopped",
    "off",
    "out_of_scope",
    "removed",
)


# ---------------------------------------------------------------- status


def slot_status(slot: Slot) -> dict[str, Any]:
    """One slot, with only the keys that apply (as the original did)."""
    out: dict[str, Any] = {"instance": slot.instance, "state": slot.state.value}
    if slot.pid is not None:
        out["pid"] = slot.pid
    if slot.started_at is not None:
        out["started_at"] = slot.started_at
    if slot.exited_at is not None:
        out["exited_at"] = slot.exited_at
    if slot.last_exit is not None:
        out["exit"] = slot.last_exit
    out["restarts"] = slot.restarts
    # (``rare`` None: every Rare field is at its default, none is shown --
    # the usual case, and the descriptors are not asked, ten thousand times)
    rare = slot.rare
    if rare is not None and slot.fails:
        out["backoff_step"] = slot.fails
    if TimerPurpose.RETRY in slot.timers:
        out["retry_at"] = slot.timers[TimerPurpose.RETRY]
    if TimerPurpose.KILL in slot.timers:
        # The original's flag for "a SIGKILL escalation is pending".
        out["exit_pending"] = True
        out["kill_at"] = slot.timers[TimerPurpose.KILL]
    if rare is not None and slot.intent:
        out["intent"] = str(slot.intent)
    if rare is not None and slot.waiting_on:
        out["waiting_on"] = list(slot.waiting_on)
    if slot.reason:
        out["reason"] = slot.reason
    if slot.ready_at is not None:
        out["ready_at"] = slot.ready_at
    if rare is None:
        return out
    if slot.status:
        out["status"] = slot.status  # what it said (STATUS=), or its probe found
    if slot.main_pid is not None:
        out["main_pid"] = slot.main_pid
    if slot.surge:
        out["surge"] = True  # an extra process of a rollout
    if slot.stale:
        out["outdated"] = slot.stale  # to be replaced by the rollout
    return out


def rollout_status(task: TaskState) -> dict[str, Any] | None:
    """The task's rollout under way or halted (None: none)."""
    if not task.rollout:
        return None
    out: dict[str, Any] = {
        "why": task.rollout,
        "started_at": task.rollout_at,
        "replaced": task.rollout_replaced,
        "count": task.count,
    }
    if task.rollout_halted:
        out["halted"] = task.rollout_halted
    return out


def task_state(sup: Supervisor, task: TaskState) -> str:
    """A one-word summary of a task (one of ``TASK_STATES``)."""
    if task.removed:
        return "removed"
    if not task.spec.in_scope:
        return "off" if task.spec.control == "off" else "out_of_scope"
    control = task.control
    if control == "off":
        return "off"
    # One pass, comparing by identity: this runs for every task on every
    # status request (hashing enum members is slow by comparison).
    running = done = 0
    failed = backoff = waiting = stopping = starting = False
    for slot in task.slots:
        state = slot.state
        if state is S.READY:
            running += 1
        elif state is S.RUNNING:
            running += 1
            starting = True
        elif state is S.FAILED:
            failed = True
        elif state is S.DONE:
            done += 1
        elif state is S.BACKOFF or state is S.EXITED:
            backoff = True
        elif state is S.WAITING:
            waiting = True
        elif state is S.STOPPING or state is S.DRAINING:
            stopping = True
        elif state is S.STARTING:
            starting = True
    if failed:
        return "failed"
    if backoff:
        return "backoff"
    if waiting:
        return "waiting"
    if stopping:
        return "stopping"
    if starting:
        return "starting"
    if control == "suspend":
        return "suspended" if not running else "stopping"
    if control in ONE_SHOT_CONTROLS:
        if running:
            return "running"
        if task.slots and done == len(task.slots):
            return "done"
        return "idle"
    if sup.shutdown and not running:
        return "stopped"
    if task.count == 0:
        return "idle"
    return "running" if running >= task.count else "stopped"


def task_status(sup: Supervisor, task: TaskState) -> dict[str, Any]:
    spec = task.spec
    overrides = {key: value for key, value, _ in task.overrides()}
    #: when each override was made (core time; the shell shows wall time)
    since = {key: at for key, _, at in task.overrides() if at is not None}
    out: dict[str, Any] = {
        "control": task.control,
        "count": task.count,
        "state": task_state(sup, task),
        "in_scope": spec.in_scope,
        "configured": {"control": spec.control, "count": spec.count},
        # Made through the control path; in force until the operator undoes
        # them, a reload is asked for, or the task's own config entry changes.
        "overrides": overrides,
        "requires": list(spec.requires),
        "waiting_on": list(task.waiting_on),
        "restarts": sum(slot.restarts for slot in task.slots),
        "processes": [slot_status(slot) for slot in task.slots],
    }
    if since:
        out["overrides_at"] = since
    rollout = rollout_status(task)
    if rollout is not None:
        out["rollout"] = rollout
    if task.removed:
        out["removed"] = True
    return out


def tasks_status(sup: Supervisor) -> dict[str, Any]:
    """Every task the core knows (out-of-scope ones too), by name."""
    return {name: task_status(sup, sup.tasks[name]) for name in sorted(sup.tasks)}


# ---------------------------------------------------------------- health


def health(sup: Supervisor) -> dict[str, Any]:
    """``status`` is "ok" when every process that should run does.

    "degraded" lists the slots that should run but do not (failing, held
    back by a requirement, not started), "stopping" means taskforce is
    shutting down.  A probe reads ``healthy``.
    """
    problems: dict[str, str] = {}
    running = 0
    for name in sorted(sup.tasks):
        task = sup.tasks[name]
        running += sum(1 for slot in task.slots if slot.state in UP_STATES)
        if task.rollout_halted:
            problems[name] = task.rollout_halted
        if not sup.wants_run(task):
            continue
        daemon = task.control in DAEMON_CONTROLS
        for instance in range(task.count):
            slot = task.slots[instance] if instance < len(task.slots) else None
            where = f"{name}[{instance}]"
            if slot is None:
                problems[where] = "not started"
            elif slot.state in (S.READY, S.RUNNING, S.STARTING):
                continue
            elif not daemon and slot.state is S.DONE:
                continue
            elif slot.state is S.WAITING:
                problems[where] = "waiting on " + ", ".join(slot.waiting_on)
            else:
                problems[where] = slot.state.value + (f" ({slot.reason})" if slot.reason else "")
    if sup.shutdown:
        status = "stopping"
    else:
        status = "degraded" if problems else "ok"
    return {
        "status": status,
        "healthy": status == "ok",
        "tasks": len(sup.tasks),
        "running": running,
        "problems": problems,
    }


# --------------------------------------------------------------- metrics


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


_COUNTERS = (
    ("starts", "taskforce_starts_total", "Processes started."),
    ("restarts", "taskforce_restarts_total", "Processes restarted (any reason)."),
    ("exits", "taskforce_exits_total", "Processes that exited (any reason)."),
    ("spawn_failures", "taskforce_spawn_failures_total", "Processes that failed to start."),
    ("reloads", "taskforce_reloads_total", "Configs or roles applied after the first."),
    ("reload_errors", "taskforce_reload_errors_total", "Configs or roles rejected."),
    ("check_runs", "taskforce_check_runs_total", "Health checks run."),
    ("check_failures", "taskforce_check_failures_total", "Health checks failed (timeouts too)."),
    ("check_timeouts", "taskforce_check_timeouts_total", "Health checks killed at check_timeout."),
    (
        "start_limit_hits",
        "taskforce_start_limit_hits_total",
        "Slots that hit their start limit and failed.",
    ),
    ("rollouts", "taskforce_rollouts_total", "Rollouts begun (processes replaced gradually)."),
    ("rollout_halts", "taskforce_rollout_halts_total", "Rollouts halted by a failing new process."),
)
#: per task, for the tasks that have a health check
_TASK_CHECK_COUNTERS = (
    ("check_runs", "taskforce_task_check_runs_total", "Health checks run, by task."),
    ("check_failures", "taskforce_task_check_failures_total", "Health checks failed, by task."),
    ("check_timeouts", "taskforce_task_check_timeouts_total", "Health checks timed out, by task."),
)


def metrics_text(sup: Supervisor, extra: Mapping[str, float] | None = None) -> str:
    """The Prometheus text exposition (format 0.0.4) of the core's figures.

    ``extra`` adds the shell's own figures by metric name; a name ending in
    ``_total`` is a counter, anything else a gauge.
    """
    lines: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")

    by_task_state = dict.fromkeys(TASK_STATES, 0)
    by_slot_state = {state.value: 0 for state in SlotState}
    for name in sorted(sup.tasks):
        task = sup.tasks[name]
        by_task_state[task_state(sup, task)] += 1
        for slot in task.slots:
            by_slot_state[slot.state.value] += 1
    family("taskforce_tasks", "gauge", "Tasks by summary state.")
    for state, count in by_task_state.items():
        lines.append(f'taskforce_tasks{{state="{state}"}} {count}')
    family("taskforce_slots", "gauge", "Process slots by lifecycle state.")
    for state, count in by_slot_state.items():
        lines.append(f'taskforce_slots{{state="{state}"}} {count}')
    for key, metric, text in _COUNTERS:
        family(metric, "counter", text)
        lines.append(f"{metric} {sup.counters.get(key, 0)}")
    family("taskforce_task_restarts_total", "counter", "Restarts of each task's slots.")
    for name in sorted(sup.tasks):
        restarts = sum(slot.restarts for slot in sup.tasks[name].slots)
        lines.append(f'taskforce_task_restarts_total{{task="{_label(name)}"}} {restarts}')
    family("taskforce_task_running", "gauge", "Running processes of each task.")
    for name in sorted(sup.tasks):
        running = sum(1 for slot in sup.tasks[name].slots if slot.state in UP_STATES)
        lines.append(f'taskforce_task_running{{task="{_label(name)}"}} {running}')
    family("taskforce_task_ready", "gauge", "Ready processes of each task.")
    for name in sorted(sup.tasks):
        ready = sum(1 for slot in sup.tasks[name].slots if slot.state is S.READY)
        lines.append(f'taskforce_task_ready{{task="{_label(name)}"}} {ready}')
    family(
        "taskforce_task_rollout", "gauge", "1 while a rollout of the task is under way, 2 halted."
    )
    for name in sorted(sup.tasks):
        task = sup.tasks[name]
        value = 2 if task.rollout_halted else 1 if task.rollout else 0
        lines.append(f'taskforce_task_rollout{{task="{_label(name)}"}} {value}')
    checked = [name for name in sorted(sup.tasks) if sup.tasks[name].spec.check_interval]
    for attribute, metric, text in _TASK_CHECK_COUNTERS:
        family(metric, "counter", text)
        for name in checked:
            value = getattr(sup.tasks[name], attribute)
            lines.append(f'{metric}{{task="{_label(name)}"}} {value}')
    family("taskforce_task_failed", "gauge", "Slots of each task that hit their start limit.")
    for name in sorted(sup.tasks):
        failed = sum(1 for slot in sup.tasks[name].slots if slot.state is S.FAILED)
        lines.append(f'taskforce_task_failed{{task="{_label(name)}"}} {failed}')
    family("taskforce_stopping", "gauge", "1 while taskforce is stopping every task.")
    lines.append(f"taskforce_stopping {1 if sup.shutdown else 0}")
    for metric in sorted(extra or {}):
        kind = "counter" if metric.endswith("_total") else "gauge"
        family(metric, kind, metric.replace("_", " ").replace("taskforce ", "", 1) + ".")
        lines.append(f"{metric} {_number((extra or {})[metric])}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ plan


def _holds(slot: Slot | None) -> bool:
    """Whether a slot runs, or is about to, and is meant to stay."""
    if slot is None:
        return False
    if slot.state in (S.STOPPING, S.DRAINING):
        return slot.intent == Intent.RESTART
    return slot.state in (S.READY, S.RUNNING, S.STARTING, S.WAITING, S.BACKOFF, S.EXITED)


def _start_reason(before: TaskState | None, after: TaskState, slot: Slot) -> str:
    if before is None or before.removed:
        return "new in the config"
    old, new = before.spec, after.spec
    if new.in_scope and not old.in_scope:
        return "now in scope"
    if before.control_override is not None and before.control_override != new.control:
        return f"control override {before.control_override!r} ends (config: {new.control})"
    if old.control != new.control:
        return f"control {old.control} -> {new.control}"
    if before.count != after.count:
        return f"count {before.count} -> {after.count}"
    if slot.state is S.WAITING and slot.waiting_on:
        return "will start after " + ", ".join(slot.waiting_on)
    return slot.reason or "started"


def _wait_reason(before: TaskState | None, after: TaskState, slot: Slot) -> str:
    """Why a slot that would start waits instead, and what for."""
    why = _start_reason(before, after, slot)
    if slot.waiting_on and not why.startswith("will start after"):
        why += "; will start after " + ", ".join(slot.waiting_on)
    return why


def scope(
    config: Mapping[str, Any],
    facts: HostFacts,
    roles: tuple[str, ...] | None,
    role_values: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """What ``config`` runs on a host with ``roles``: one entry per task in
    scope, ``{"task", "control", "count", "blocked"}``, by name; ``blocked``
    lists ``{"requires", "why"}`` for each task it requires that never runs
    on such a host (``"off"`` or ``"out of scope"``), which makes it wait --
    the core's own judgement (``TaskSpec.not_run_here``).

    Raises ``model.SpecError`` when the config cannot be built.
    """
    specs = build(config, facts, roles, role_values)
    runs = []
    for name, spec in sorted(specs.items()):
        if not spec.in_scope:
            continue
        blocked = []
        for required in spec.requires:
            gap = specs[required].not_run_here()
            if gap is not None:
                blocked.append({"requires": required, "why": gap})
        runs.append(
            {"task": name, "control": spec.control, "count": spec.count, "blocked": blocked}
        )
    return runs


def plan(
    sup: Supervisor,
    config: Mapping[str, Any],
    roles: tuple[str, ...] | None,
    role_values: Mapping[str, str] | None = None,
    *,
    notes: bool = False,
) -> dict[str, Any]:
    """What applying ``config`` (with ``roles``) would start, stop and restart.

    Raises ``model.SpecError`` when the config cannot be built.  The answer
    is ``{"start": [...], "stop": [...], "restart": [...], "wait": [...],
    "unchanged": [...]}``; each change is ``{"task", "instances", "why"}``.
    ``start`` is what would start at once, ``wait`` what would start but
    waits (for a task it requires, say) -- the shell's tools only format
    this, they do not classify.  With ``notes``, ``"notes"`` lists the
    messages (above debug) the core would log on applying it -- for a local
    tool only: secrets are taken out of log lines by the shell as it logs
    them, so the control server's answer leaves them out.  Like a reload
    of an edited file, it keeps the operator's overrides of the tasks whose
    own entry it leaves as it is.
    """
    values = dict(sup.role_values if role_values is None else role_values)
    specs = build(config, sup.facts, roles, values)
    shadow = sup.shadow()
    try:
        effects = shadow.handle(
            ev.ConfigLoaded(
                at=sup.now, config=dict(config), roles=roles, role_values=values, source="plan"
            )
        )
        changes: dict[str, dict[tuple[str, str], list[int]]] = {
            "start": {},
            "stop": {},
            "restart": {},
            "wait": {},
        }
        unchanged = []
        for name in sorted(set(sup.tasks) | set(specs)):
            before = sup.tasks.get(name)
            after = shadow.tasks.get(name)
            found = False
            size = max(len(before.slots) if before else 0, len(after.slots) if after else 0)
            for instance in range(size):
                old = before.slots[instance] if before and instance < len(before.slots) else None
                new = after.slots[instance] if after and instance < len(after.slots) else None
                wanted = (
                    after is not None
                    and new is not None
                    and instance < after.count
                    and shadow.wants_run(after)
                )
                kind, why = _change(before, after, old, new, wanted)
                if kind:
                    changes[kind].setdefault((name, why), []).append(instance)
                    found = True
            if not found:
                unchanged.append(name)
    finally:
        shadow.release()
    out: dict[str, Any] = {
        kind: [
            {"task": name, "instances": instances, "why": why}
            for (name, why), instances in sorted(found.items())
        ]
        for kind, found in changes.items()
    }
    out["unchanged"] = unchanged
    if notes:
        out["notes"] = [e.message for e in effects if isinstance(e, Log) and e.level != "debug"]
    return out


def _change(
    before: TaskState | None,
    after: TaskState | None,
    old: Slot | None,
    new: Slot | None,
    wanted: bool,
) -> tuple[str | None, str]:
    """How one slot fares: ("start" | "wait" | "stop" | "restart" | None, why).

    ``wanted``: the copy would keep this slot running once it can.
    """
    if new is not None and after is not None:
        if new.surge:
            return None, ""  # a rollout's extra process, gone once it is over
        if new.state in UP_STATES and after.rollout and old is not None and old.state in UP_STATES:
            # A rollout replaces it when its turn comes (see core.rollout;
            # ``new`` is the throw-away copy's slot, so asking may touch it).
            why = outdated_by(after, new)
            if why:
                return "restart", f"restarted: {why}" + (" (rollout)" if after.gradual else "")
        if new.state is S.STOPPING and new.intent == Intent.RESTART:
            if old is not None and old.state in UP_STATES:
                return "restart", new.reason
        elif new.state is S.STARTING and not _holds(old):
            return "start", _start_reason(before, after, new)
        elif new.state is S.WAITING and not _holds(old):
            return "wait", _wait_reason(before, after, new)
        elif new.state in (S.STOPPING, S.DRAINING) and _holds(old):
            return "stop", new.reason
        elif new.state in (S.STOPPING, S.DRAINING) and wanted and not _holds(old):
            # Being stopped now, but the new config wants it: it comes back.
            return "start", _start_reason(before, after, new)
    if _holds(old) and not _holds(new):
        if old is not None and old.state in UP_STATES and new is not None:
            return "stop", new.reason
        return "stop", "no longer wanted"
    return None, ""
