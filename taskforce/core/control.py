"""Control requests from operators, decided purely (see ``ControlRequested``).

This module must never do IO: it changes the supervisor's wishes and answers
with a ``Reply`` effect; the supervisor's converge pass does the rest.

Every request gets exactly one ``Reply``.  A request that is wrong in any
part changes nothing: each action checks everything it was given before it
touches the supervisor.  What it changes lasts until the next config event
(the supervisor clears ``control_override``/``count_override`` then), as in
the original taskforce, and shows in the status while it is in force.

Actions and their arguments (``ControlRequested.args``):

- ``control``: ``{task: control}``.  The original's per-task lines
  (``"<task>\\t<result>\\n"``, sorted) and codes: 404 if any line is an
  error, else 202 if anything changed, else 200.
- ``count``: ``{task: n}``, the same shape; 200 no change, 202 changed, 404
  (nothing changed) on any error.
- ``start``: ``{"tasks": [names]}``: end a stopping override (``off``,
  ``suspend``), or run a ``once``/``event`` task again.
- ``restart``: ``{"task": name, "instance": n or None}``.
- ``signal``: ``{"task": name, "signal": "SIGHUP", "instance": n or None}``;
  sent to each live slot's process (not its group), as event actions are.
- ``event``: ``{"name": name}``: fire the action of every in-scope task
  event ``{type: external, name: name}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.context import ContextError
from taskforce.core.lifecycle import SlotState
from taskforce.core.model import CONTROLS, in_scope, task_context

if TYPE_CHECKING:
    from taskforce.core.supervisor import Supervisor, TaskState

S = SlotState

#: The most slots a control request may ask a task for.  A typo such as
#: ``count=10000000`` must not make the daemon fork until the host dies.
MAX_COUNT = 10_000

#: Signals a request may send (POSIX names; the shell canonicalizes aliases).
SIGNALS = frozenset(
    "SIG" + name
    for name in (
        "ABRT ALRM BUS CHLD CONT FPE HUP ILL INT IO KILL PIPE PROF PWR QUIT SEGV "
        "STOP SYS TERM TRAP TSTP TTIN TTOU URG USR1 USR2 VTALRM WINCH XCPU XFSZ"
    ).split()
)


class _Refused(Exception):
    """A request that cannot be done: its code and one-line reason."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def handle_control(sup: Supervisor, event: ev.ControlRequested) -> None:
    """Apply one control request to ``sup`` and emit its ``Reply``."""
    handler = _ACTIONS.get(event.action)
    if handler is None:
        sup._emit(fx.Reply(event.request, 404, f"unknown action {event.action!r}\n"))
        return
    if sup.shutdown:
        sup._emit(fx.Reply(event.request, 503, f"taskforce is {_shutdown_word(sup)}\n"))
        return
    args = event.args if isinstance(event.args, Mapping) else {}
    try:
        code, body = handler(sup, args)
    except _Refused as exc:
        code, body = exc.code, exc.text + "\n"
    sup._emit(fx.Reply(event.request, code, body))


def _shutdown_word(sup: Supervisor) -> str:
    return "resetting" if sup.shutdown == "reset" else "stopping"


def _lines(results: list[tuple[str, str]]) -> str:
    return "".join(f"{name}\t{result}\n" for name, result in results)


def _find(sup: Supervisor, name: Any) -> TaskState | None:
    if not isinstance(name, str):
        return None
    task = sup.tasks.get(name)
    return None if task is None or task.removed else task


def _text(value: Any) -> str:
    """A parameter value as text (the shell sends the first of repeated ones)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return value if isinstance(value, str) else str(value)


def _role_scoped(sup: Supervisor, task: TaskState) -> bool:
    """Whether the roles put ``task`` on this host, whatever its control.

    The model folds ``control: off`` into ``in_scope``; turning such a task
    on through the control path needs the roles' answer alone.
    """
    raw = (sup.config.get("tasks") or {}).get(task.spec.name)
    if not isinstance(raw, Mapping):
        return False
    try:
        ctx = task_context(task.spec.name, raw, sup.config, sup.facts, sup.roles, sup.role_values)
        return in_scope(raw, sup.roles, ctx)
    except (ContextError, TypeError, ValueError):
        return False


def _set_control(sup: Supervisor, task: TaskState, control: str) -> None:
    previous = task.control
    task.control_override = None if control == task.spec.control else control
    if task.spec.control == "off" or not task.spec.in_scope:
        # Configured off: the spec says out of scope; the override decides.
        wanted = control != "off" and _role_scoped(sup, task)
        if wanted != task.spec.in_scope:
            task.spec = dataclasses.replace(task.spec, in_scope=wanted)
    if control != previous:
        task.run_requested = control == "once"
        for slot in task.slots:
            if slot.state is S.RUNNING or slot.state is S.WAITING:
                slot.reason = f"control request: control {previous} -> {control}"
    sup._log(
        "info",
        f"{task.spec.name}: control {previous} -> {control} (control request)",
        task.spec.name,
    )


# ---------------------------------------------------------------- actions


def _control(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    results: list[tuple[str, str]] = []
    changes: list[tuple[TaskState, str]] = []
    failed = False
    for name in sorted(args, key=str):
        task = _find(sup, name)
        value = _text(args[name])
        if task is None:
            results.append((str(name), "not found"))
            failed = True
        elif value not in CONTROLS:
            results.append((name, f"bad control '{value}'"))
            failed = True
        elif value == task.control:
            results.append((name, "no change"))
        else:
            results.append((name, "ok"))
            changes.append((task, value))
    if failed:
        return 404, _lines(results)
    for task, value in changes:
        _set_control(sup, task, value)
    return (202 if changes else 200), _lines(results)


def _count(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    results: list[tuple[str, str]] = []
    changes: list[tuple[TaskState, int]] = []
    failed = False
    for name in sorted(args, key=str):
        task = _find(sup, name)
        value = _text(args[name]).strip()
        number = int(value) if value.lstrip("+-").isdigit() and len(value) < 12 else None
        if number is None:
            results.append((str(name), f'bad count "{value}"'))
            failed = True
        elif task is None:
            results.append((str(name), "not found"))
            failed = True
        elif number <= 0:
            results.append((name, f"non-positive count '{number}'"))
            failed = True
        elif number > MAX_COUNT:
            results.append((name, f"count '{number}' is above the limit of {MAX_COUNT}"))
            failed = True
        elif number == task.count:
            results.append((name, "no change"))
        else:
            results.append((name, "ok"))
            changes.append((task, number))
    if failed:
        return 404, _lines(results)
    for task, number in changes:
        previous = task.count
        task.count_override = None if number == task.spec.count else number
        sup._log(
            "info",
            f"{task.spec.name}: count {previous} -> {number} (control request)",
            task.spec.name,
        )
    return (202 if changes else 200), _lines(results)


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
            raise _Refused(404, f"{name}: not found")
        tasks.append(task)
    results = []
    changed = False
    for task in sorted(tasks, key=lambda t: t.spec.name):
        name = task.spec.name
        if task.control in ("off", "suspend") or not task.spec.in_scope:
            configured = task.spec.control
            target = configured if configured not in ("off", "suspend") else "wait"
            if target == "off" or not _role_scoped(sup, task):
                results.append((name, "out of scope"))
                continue
            _set_control(sup, task, target)
            results.append((name, f"ok (control {target})"))
            changed = True
        elif task.control in ("once", "event"):
            if any(slot.live for slot in task.slots):
                results.append((name, "already running"))
                continue
            sup._log("info", f"{name}: started by control request", name)
            sup._request_run(task, "started: control request")
            results.append((name, "ok"))
            changed = True
        else:
            results.append((name, "no change"))
    if any(result == "out of scope" for _, result in results):
        return 409, _lines(results)
    return (202 if changed else 200), _lines(results)


def _instance(task: TaskState, args: Mapping[str, Any]) -> int | None:
    raw = args.get("instance")
    if raw is None or raw == "":
        return None
    text = _text(raw).strip()
    if not text.isdigit() or len(text) > 9:
        raise _Refused(400, f"bad instance '{text}'")
    instance = int(text)
    if instance >= max(task.count, len(task.slots)):
        raise _Refused(404, f"{task.spec.name}: no instance {instance} (count {task.count})")
    return instance


def _task_arg(sup: Supervisor, args: Mapping[str, Any]) -> TaskState:
    name = args.get("task")
    if name is None or name == "":
        raise _Refused(400, "missing parameter 'task'")
    task = _find(sup, _text(name))
    if task is None:
        raise _Refused(404, f"{_text(name)}: not found")
    return task


def _restart(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    task = _task_arg(sup, args)
    instance = _instance(task, args)
    name = task.spec.name
    why = "restarted: control request"
    slots = [s for s in task.slots if instance is None or s.instance == instance]
    results = []
    for slot in slots:
        where = f"{name}[{slot.instance}]"
        if slot.state is S.RUNNING:
            sup._stop_slot(task, slot, "restart", why)
            results.append((where, "restarting"))
        elif slot.state is S.BACKOFF:
            # Skip the rest of the backoff: the converge pass starts it now.
            slot.timers.pop("retry", None)
            slot.fails = 0
            slot.reason = why
            results.append((where, "starting now (was in backoff)"))
        elif slot.state in (S.STOPPING, S.DRAINING) and slot.intent == "restart":
            results.append((where, "already restarting"))
        elif slot.state is S.DONE and task.control in ("once", "event"):
            results.append((where, "starting again"))
        else:
            results.append((where, f"not running ({slot.state.value})"))
    if any(result == "starting again" for _, result in results):
        sup._request_run(task, "started: control request")
    acted = [r for r in results if not r[1].startswith("not running")]
    if not acted:
        detail = f"[{instance}]" if instance is not None else ""
        raise _Refused(409, f"{name}{detail}: nothing to restart ({task_word(task)})")
    return 202, _lines(results)


def task_word(task: TaskState) -> str:
    """Why a task has nothing running, in a few words."""
    if not task.spec.in_scope:
        return "control is off" if task.spec.control == "off" else "out of scope"
    if task.control in ("off", "suspend"):
        return f"control is {task.control}"
    return "no process is running"


def _signal(sup: Supervisor, args: Mapping[str, Any]) -> tuple[int, str]:
    task = _task_arg(sup, args)
    raw = args.get("signal")
    if raw is None or raw == "":
        raise _Refused(400, "missing parameter 'signal'")
    signame = _text(raw).strip().upper()
    if not signame.startswith("SIG"):
        signame = "SIG" + signame
    if signame not in SIGNALS:
        raise _Refused(400, f"bad signal '{_text(raw)}'")
    instance = _instance(task, args)
    name = task.spec.name
    targets = [
        slot
        for slot in task.slots
        if (instance is None or slot.instance == instance)
        and slot.state is S.RUNNING
        and slot.pid is not None
    ]
    if not targets:
        detail = f"[{instance}]" if instance is not None else ""
        raise _Refused(409, f"{name}{detail}: nothing to signal ({task_word(task)})")
    results = []
    for slot in targets:
        assert slot.pid is not None
        sup._emit(fx.Signal(name, slot.instance, slot.pid, signame, group=False))
        results.append((f"{name}[{slot.instance}]", f"sent {signame} to pid {slot.pid}"))
    sup._log("info", f"{name}: sending {signame} (control request)", name)
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
                sup._fire_action(task, spec.action, f"external event {event_name!r}")
                results.append((name, spec.action.describe()))
    if not results:
        raise _Refused(404, f"no task in scope has an external event named {event_name!r}")
    return 202, _lines(results)


_ACTIONS: dict[str, Callable[[Supervisor, Mapping[str, Any]], tuple[int, str]]] = {
    "control": _control,
    "count": _count,
    "start": _start,
    "restart": _restart,
    "signal": _signal,
    "event": _event,
}
