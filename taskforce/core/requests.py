"""Operator requests, decided purely (the ``ControlRequested`` event).

What an operator asks over the control path (tfctl, HTTP) arrives as one
``ControlRequested`` event; this module judges and applies it through the
Supervisor's public methods (``stop_slot``, ``request_run``, ``emit``...).

This module must never do IO: it changes the supervisor's wishes and answers
with a ``Reply`` effect; the supervisor's converge pass does the rest.

Every request gets exactly one ``Reply``.  A request that is wrong in any
part changes nothing: each action checks everything it was given before it
touches the supervisor.  What it changes (``control_override``,
``count_override``) lasts until the operator sets it back (``start`` ends a
stop), a ``reload`` is asked for (the original's "revert to the config"), or
the task's own config entry changes; an edit elsewhere in the config keeps
it (``reconcile.Reconcile._keep_overrides``).  The status shows it, and since when.

Actions and their arguments (``ControlRequested.args``):

- ``control``: ``{task: control}``.  The original's per-task lines
  (``"<task>\\t<result>\\n"``, sorted) and codes: 404 if any line is an
  error, else 202 if anything changed, else 200.
- ``count``: ``{task: n}``, the same shape; 200 no change, 202 changed, 404
  (nothing changed) on any error.
- ``start``: ``{"tasks": [names]}``: end a stopping override (``off``,
  ``suspend``), run a ``once``/``event`` task again, or try again the slots
  that hit their start limit (``failed``).
- ``restart``: ``{"task": name, "instance": n or None}``; the task may be
  given as a slot, ``web[0]`` or ``web:0`` (see ``split_slot``).
- ``signal``: ``{"task": name, "signal": "SIGHUP", "instance": n or None}``;
  sent to each live slot's process (not its group), as event actions are.
- ``event``: ``{"name": name}``: fire the action of every in-scope task
  event ``{type: external, name: name}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from taskforce.core import access
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.context import ContextError
from taskforce.core.lifecycle import (
    ONE_SHOT_CONTROLS,
    UP_STATES,
    Intent,
    Shutdown,
    SlotState,
    TimerPurpose,
)
from taskforce.core.model import CONTROLS, SpecError, _build_task
from taskforce.core.values import MAX_COUNT, SIGNALS, signal_word

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.core.model import TaskSpec
    from taskforce.core.slots import TaskState
    from taskforce.core.state import SupervisorState
    from taskforce.core.supervisor import Supervisor

S = SlotState


class _Refused(Exception):
    """A request that cannot be done: its code and one-line reason."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def handle_request(sup: Supervisor, event: ev.ControlRequested) -> None:
    """Apply one control request to ``sup`` and emit its ``Reply``.

    Who asked is judged first, before the action is even looked up, so a
    client without the right learns nothing from the answer.  A granted
    request that changes something is logged with who asked and what came
    of it (the audit trail, recorded with the run).
    """
    who = event.who if isinstance(event.who, Mapping) else {}
    if not access.grants(event.allow, who):
        asker = access.describe(who)
        sup.log("warning", f"control request refused: {asker} may not {event.action}")
        sup.emit(fx.Reply(event.request, 403, f"{FORBIDDEN}: {asker} may not control taskforce\n"))
        return
    if event.action in SHELL_ACTIONS:
        # Performed by the shell (files, re-exec, a shadow core): granted here.
        if who and event.action != "plan":
            sup.log("info", f"control request by {access.describe(who)}: {event.action}")
        sup.emit(fx.Reply(event.request, 200, "granted\n"))
        return
    handler = _ACTIONS.get(event.action)
    if handler is None:
        sup.emit(fx.Reply(event.request, 404, f"unknown action {event.action!r}\n"))
        return
    if sup.shutdown:
        sup.emit(fx.Reply(event.request, 503, f"taskforce is {_shutdown_word(sup)}\n"))
        return
    args = event.args if isinstance(event.args, Mapping) else {}
    try:
        code, body = handler(sup, args)
    except _Refused as exc:
        code, body = exc.code, exc.text + "\n"
    if who:
        outcome = " ".join(body.split())[:200]
        sup.log(
            "info",
            f"control request by {access.describe(who)}: {event.action} "
            f"{_shown_args(args)} -> {code} {outcome}",
        )
    sup.emit(fx.Reply(event.request, code, body))


#: The first word of a refusal's body: the shell counts these by it.
FORBIDDEN = "not allowed"
#: Actions the shell performs once the core has granted them.
SHELL_ACTIONS = frozenset({"reload", "stop", "reset", "plan"})


def _shown_args(args: Mapping[str, Any]) -> str:
    def shown(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ",".join(str(item) for item in value)
        return "" if value is None else str(value)

    return " ".join(f"{key}={shown(args[key])}" for key in sorted(args, key=str))


def _shutdown_word(sup: Supervisor) -> str:
    return "resetting" if sup.shutdown == Shutdown.RESET else "stopping"


def _lines(results: list[tuple[str, str]]) -> str:
    return "".join(f"{name}\t{result}\n" for name, result in results)


def _find(sup: Supervisor, name: Any) -> TaskState | None:
    if not isinstance(name, str):
        return None
    task = sup.tasks.get(name)
    return None if task is None or task.removed else task


def _whole(text: str, *, signed: bool = False) -> int | None:
    """``text`` as a whole number of at most 9 digits, or None.

    ASCII digits only: ``str.isdigit`` accepts "²", which ``int`` refuses.
    """
    digits = text[1:] if signed and text[:1] in ("+", "-") else text
    if not digits or len(digits) > 9 or not (digits.isascii() and digits.isdigit()):
        return None
    return int(text)


def _text(value: Any) -> str:
    """A parameter value as text (the shell sends the first of repeated ones)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return value if isinstance(value, str) else str(value)


def _built(sup: SupervisorState, task: TaskState, control: str, count: int) -> TaskSpec | None:
    """``task`` built again as if configured with ``control`` and ``count``."""
    name = task.spec.name
    raw = (sup.config.get("tasks") or {}).get(name)
    if not isinstance(raw, Mapping):
        return None
    # "off" by override keeps the roles' scope; the control says it is off.
    if control == "off":
        control = task.spec.control
    changed = {**raw, "control": control, "count": max(count, task.spec.count)}
    try:
        return _build_task(
            name, changed, sup.config, sup.settings, sup.facts, sup.roles, sup.role_values
        )
    except (SpecError, ContextError, TypeError, ValueError, KeyError):
        return None  # it built before, so this cannot happen


def refresh_spec(sup: SupervisorState, task: TaskState) -> None:
    """Rebuild what the overrides change in ``task.spec``: scope and slots.

    The model folds ``control: off`` into ``in_scope`` and builds one
    ``ProcessSpec`` per configured slot, so turning a configured-off task on,
    or raising its count, needs the task built again with the override (each
    new slot gets its own ``Task_instance``).  Control and count stay as
    configured in the spec: the overrides live in ``TaskState``.
    """
    built = _built(sup, task, task.control, task.count)
    if built is not None:
        task.rollout_check = True  # (a process may be outdated now)
        task.spec = dataclasses.replace(
            task.spec, in_scope=built.in_scope, processes=built.processes
        )


def _set_override(sup: Supervisor, task: TaskState, key: str, value: Any) -> str:
    """Make ``value`` the operator's ``key`` (control or count) of ``task``:
    an override, with since when, or none where the config says the same.
    The spec follows (``refresh_spec``).  Returns the note for the log line."""
    override = None if value == getattr(task.spec, key) else value
    if override != getattr(task, f"{key}_override"):
        setattr(task, f"{key}_override_at", None if override is None else sup.now)
    setattr(task, f"{key}_override", override)
    refresh_spec(sup, task)
    return "; the operator's override ends" if override is None else ""


def _set_control(sup: Supervisor, task: TaskState, control: str) -> None:
    previous = task.control
    note = _set_override(sup, task, "control", control)
    sup.update_watches()  # (a task the override turns on watches its files)
    name = task.spec.name
    sup.log("info", f"{name}: control {previous} -> {control} (control request){note}", name)
    task.run_requested = control == "once"
    if control in ("off", "suspend"):
        for slot in task.slots:
            sup.stop_slot(task, slot, Intent.STOP, f"stopped: control request (control {control})")


def _set_count(sup: Supervisor, task: TaskState, count: int) -> None:
    previous = task.count
    note = _set_override(sup, task, "count", count)
    name = task.spec.name
    sup.log("info", f"{name}: count {previous} -> {count} (control request){note}", name)
    for slot in task.slots[count:]:
        sup.stop_slot(task, slot, Intent.STOP, f"stopped: control request (count {count})")


# ---------------------------------------------------------------- actions


#: a judge's answer when the task already has the value asked for
_UNCHANGED = object()
if TYPE_CHECKING:
    #: (refusal, value): a refusal refuses the whole request
    _Judgement = tuple[str | None, Any]


def _assign(
    sup: Supervisor,
    args: Mapping[str, Any],
    judge: Callable[[TaskState | None, Any], _Judgement],
    apply: Callable[[Supervisor, TaskState, Any], None],
) -> tuple[int, str]:
    """Set a value per task, all or nothing: if ``judge`` refuses any
    task's value, nothing changes (404); else 202, or 200 if nothing to do."""
    results: list[tuple[str, str]] = []
    changes: list[tuple[TaskState, Any]] = []
    failed = False
    for name in sorted(args, key=str):
        task = _find(sup, name)
        refusal, value = judge(task, args[name])
        if refusal is not None:
            if task is None and refusal == "not found":
                refusal = _missing(sup, name).partition(": ")[2]
            results.append((str(name), refusal))
            failed = True
        elif value is _UNCHANGED:
            results.append((name, "no change"))
        else:
            assert task is not None  # a judge refuses what is not found
            results.append((name, "ok"))
            changes.append((task, value))
    if failed:
        return 404, _lines(results)
    for task, value in changes:
        apply(sup, task, value)
    return (202 if changes else 200), _lines(results)


def _judge_control(task: TaskState | None, raw: Any) -> _Judgement:
    value = _text(raw)
    if task is None:
        return "not found", None
    if value not in CONTROLS:
        return f"bad control '{value}'", None
    return None, _UNCHANGED if value == task.control else value


def _judge_count(task: TaskState | None, raw: Any) -> _Judgement:
    value = _text(raw).strip()
    number = _whole(value, signed=True)
    if number is None:
        return f'bad count "{value}"', None
    if task is None:
        return "not found", None
    if number <= 0:
        return f"non-positive count '{number}'", None
    if number > MAX_COUNT:
        return f"count '{number}' is above the limit of {MAX_COUNT}", None
    return None, _UNCHANGED if number == task.count else number


def _control(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    return _assign(sup, args, _judge_control, _set_control)


def _count(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    return _assign(sup, args, _judge_count, _set_count)


def _names(args: Mapping[str, Any], key: str) -> list[Any]:
    value = args.get(key)
    if value is None:
        raise _Refused(400, f"missing parameter '{key}'")
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _start(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    names = _names(args, "tasks")
    tasks = []
    for name in names:
        task = _find(sup, name)
        if task is None:
            raise _Refused(404, _missing(sup, name))
        tasks.append(task)
    results: list[tuple[str, str]] = []
    plan: list[tuple[TaskState, str | None]] = []
    for task in sorted(tasks, key=lambda t: t.spec.name):
        name = task.spec.name
        if task.control in ("off", "suspend") or not task.spec.in_scope:
            configured = task.spec.control
            target = configured if configured not in ("off", "suspend") else "wait"
            built = _built(sup, task, target, task.count)
            if built is None or not built.in_scope:
                results.append((name, "out of scope"))
            else:
                results.append((name, f"ok (control {target})"))
                plan.append((task, target))
        elif task.control in ONE_SHOT_CONTROLS and not _failed(task):
            if any(slot.live for slot in task.slots):
                results.append((name, "already running"))
            else:
                results.append((name, "ok"))
                plan.append((task, None))
        elif _failed(task):
            results.append((name, f"ok (trying again: {_failed(task)} failed)"))
            plan.append((task, "retry"))
        else:
            results.append((name, "no change"))
    if any(result == "out of scope" for _, result in results):
        return 409, _lines(results)
    for chosen, control in plan:
        if control == "retry":
            sup.retry_failed(chosen, "started by control request")
        elif control is not None:
            _set_control(sup, chosen, control)
        else:
            sup.log("info", f"{chosen.spec.name}: started by control request", chosen.spec.name)
            sup.request_run(chosen, "started: control request")
    return (202 if plan else 200), _lines(results)


def _failed(task: TaskState) -> str:
    """Which of ``task``'s slots hit their start limit ("" if none)."""
    return ", ".join(
        f"{task.spec.name}[{slot.instance}]" for slot in task.slots if slot.state is S.FAILED
    )


def _instance(task: TaskState, args: Mapping[str, Any]) -> int | None:
    raw = args.get("instance")
    if raw is None or raw == "":
        return None
    text = _text(raw).strip()
    instance = _whole(text)
    if instance is None:
        raise _Refused(400, f"bad instance '{text}'")
    if instance >= max(task.count, len(task.slots)):
        raise _Refused(404, f"{task.spec.name}: no instance {instance} (count {task.count})")
    return instance


def split_slot(text: str) -> tuple[str, str] | None:
    """``web[0]`` or ``web:0`` -> ("web", "0"); None for anything else.

    Both spellings name a slot everywhere (tfctl, the control requests, a
    simulate script); the caller prefers a task that is literally named so.
    """
    if text.endswith("]") and "[" in text:
        name, _, rest = text[:-1].rpartition("[")
    else:
        name, _, rest = text.rpartition(":")
    if name and _whole(rest) is not None:
        return name, rest
    return None


def _slot_args(sup: Supervisor, args: Mapping[str, Any]) -> Mapping[str, Any]:
    """``args`` with a ``task`` of ``web[0]`` or ``web:0`` split into the
    task and its ``instance`` (unless a task is named so)."""
    raw = args.get("task")
    if not isinstance(raw, str) or _find(sup, raw) is not None:
        return args
    parts = split_slot(raw)
    if parts is None or _find(sup, parts[0]) is None:
        return args
    given = args.get("instance")
    if given not in (None, "") and _text(given).strip() != parts[1]:
        raise _Refused(400, f"{raw}: instance={_text(given)} names another slot")
    return {**args, "task": parts[0], "instance": parts[1]}


def _missing(sup: Supervisor, name: Any) -> str:
    """Why ``name`` names no task, in one line."""
    parts = split_slot(name) if isinstance(name, str) else None
    if parts is not None and _find(sup, parts[0]) is not None:
        return (
            f"{name}: start, stop and control act on a whole task ({parts[0]}); "
            "restart and signal take one slot"
        )
    return f"{name}: not found"


def _task_arg(sup: Supervisor, args: Mapping[str, Any]) -> TaskState:
    name = args.get("task")
    if name is None or name == "":
        raise _Refused(400, "missing parameter 'task'")
    task = _find(sup, _text(name))
    if task is None:
        raise _Refused(404, f"{_text(name)}: not found")
    return task


def _restart(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    args = _slot_args(sup, args)
    task = _task_arg(sup, args)
    instance = _instance(task, args)
    name = task.spec.name
    why = "restarted: control request"
    slots = [s for s in task.slots if instance is None or s.instance == instance]
    results = []
    # A whole task that rolls is replaced a few at a time (see core.rollout).
    rolling = instance is None and sup.rolls(task)
    for slot in slots:
        where = f"{name}[{slot.instance}]"
        if slot.state in UP_STATES and rolling:
            results.append((where, "restarting (rollout)" if task.gradual else "restarting"))
        elif slot.state in UP_STATES:
            sup.stop_slot(task, slot, Intent.RESTART, why)
            results.append((where, "restarting"))
        elif slot.state is S.BACKOFF:
            # Skip the rest of the backoff: the converge pass starts it now.
            slot.timers.pop(TimerPurpose.RETRY, None)
            slot.fails = 0
            slot.starts = ()
            slot.reason = why
            results.append((where, "starting now (was in backoff)"))
        elif slot.state in (S.STOPPING, S.DRAINING) and slot.intent == Intent.RESTART:
            results.append((where, "already restarting"))
        elif slot.state is S.DONE and task.control in ONE_SHOT_CONTROLS:
            results.append((where, "starting again"))
        elif slot.state is S.FAILED:
            sup.retry_failed(task, "restarted by control request", slot.instance)
            results.append((where, "starting again (had failed)"))
        else:
            results.append((where, f"not running ({slot.state.value})"))
    if rolling:
        sup.replace(task, "control request")
    if any(result == "starting again" for _, result in results):
        sup.request_run(task, "started: control request")
    acted = [r for r in results if not r[1].startswith("not running")]
    if not acted:
        detail = f"[{instance}]" if instance is not None else ""
        raise _Refused(409, f"{name}{detail}: nothing to restart ({task_word(task)})")
    return 202, _lines(results)


def _rollout(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    """``rollout``: resume a halted rollout of a task (``resume``), else say
    where it stands (the status shows the same, see ``status.rollout_status``)."""
    task = _task_arg(sup, args)
    name = task.spec.name
    if args.get("resume") not in (None, "", False, "0", "false", "no"):
        if not task.rollout_halted:
            raise _Refused(409, f"{name}: no halted rollout to resume")
        sup.resume(task, "resumed by control request")
        return 202, f"{name}\tresumed\n"
    if not task.rollout:
        return 200, f"{name}\tno rollout\n"
    if task.rollout_halted:
        return 200, f"{name}\t{task.rollout_halted}\n"
    return 200, f"{name}\trolling out: {task.rollout_replaced} of {task.count} replaced\n"


def task_word(task: TaskState) -> str:
    """Why a task has nothing running, in a few words."""
    if not task.spec.in_scope:
        return "control is off" if task.spec.control == "off" else "out of scope"
    if task.control in ("off", "suspend"):
        return f"control is {task.control}"
    return "no process is running"


def _signal(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    args = _slot_args(sup, args)
    task = _task_arg(sup, args)
    raw = args.get("signal")
    if raw is None or raw == "":
        raise _Refused(400, "missing parameter 'signal'")
    signame = signal_word(_text(raw))
    if signame not in SIGNALS:
        raise _Refused(400, f"bad signal '{_text(raw)}'")
    instance = _instance(task, args)
    name = task.spec.name
    targets = [
        slot
        for slot in task.slots
        if (instance is None or slot.instance == instance)
        and slot.state in UP_STATES
        and slot.pid is not None
    ]
    if not targets:
        detail = f"[{instance}]" if instance is not None else ""
        raise _Refused(409, f"{name}{detail}: nothing to signal ({task_word(task)})")
    results = []
    for slot in targets:
        assert slot.pid is not None
        sup.emit(fx.Signal(name, slot.instance, slot.pid, signame, group=False))
        results.append((f"{name}[{slot.instance}]", f"sent {signame} to pid {slot.pid}"))
    sup.log("info", f"{name}: sending {signame} (control request)", name)
    return 200, _lines(results)


def _event(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    raw = args.get("name")
    if raw is None or raw == "":
        raise _Refused(400, "missing parameter 'name'")
    event_name = _text(raw)
    results = []
    for name in sorted(sup.tasks):
        task = sup.tasks[name]
        if task.removed or not task.spec.in_scope:
            continue
        for spec in task.spec.events:
            if spec.type == "external" and spec.name == event_name:
                sup.fire_action(task, spec.action, f"external event {event_name!r}")
                results.append((name, spec.action.describe()))
    if not results:
        raise _Refused(404, f"no task in scope has an external event named {event_name!r}")
    return 202, _lines(results)


_ACTIONS: dict[str, Callable[[Supervisor, Mapping[str, Any]], tuple[int, str]]] = {
    "control": _control,
    "count": _count,
    "start": _start,
    "restart": _restart,
    "rollout": _rollout,
    "signal": _signal,
    "event": _event,
}
