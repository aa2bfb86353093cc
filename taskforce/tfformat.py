"""How ``tfctl`` shows the daemon's answers: the status table, plans, versions, log lines.

Pure formatting of the JSON the control server sends (``status_rows``,
``format_table``, ``format_plan``, ``format_version``,
``format_log_line``); no request is made here and nothing is decided --
a plan, for one, is classified by the daemon's core.  Split out of
``taskforce.tfctl``.

Only the standard library is used, so tfctl runs wherever Python does; this
module never prints, reads a socket or exits.
"""

from __future__ import annotations

import datetime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def describe_rollout(name: str, task: dict[str, Any], now: float) -> str:
    """One line: where the task's rollout stands."""
    rollout = task.get("rollout")
    if not rollout:
        return f"{name}: no rollout"
    if rollout.get("halted"):
        return str(rollout["halted"])
    took = ""
    if "started_t" in rollout:
        took = f", for {_duration(now - rollout['started_t'])}"
    return (
        f"rollout of {name}: {rollout.get('replaced', 0)} of {rollout.get('count', '?')} "
        f"replaced{took} ({rollout.get('why', '')})"
    )


def human_bytes(value: float) -> str:
    """``45.2M``, as ``pm2 ls`` shows memory (powers of 1024)."""
    if value < 1024:
        return f"{int(value)}B"
    for unit in ("K", "M", "G"):
        value /= 1024
        if value < 1024 or unit == "G":
            break
    return f"{value:.1f}{unit}"


def _has_costs(tasks: dict[str, Any]) -> bool:
    return any(
        "cpu_percent" in slot or "memory_bytes" in slot
        for task in tasks.values()
        for slot in task.get("processes") or ()
    )


def _costs_cells(slot: dict[str, Any]) -> list[str]:
    """CPU (percent of one CPU) and MEM of a slot, "-" where not measured."""
    cpu = f"{slot['cpu_percent']:.1f}%" if "cpu_percent" in slot else "-"
    memory = human_bytes(slot["memory_bytes"]) if "memory_bytes" in slot else "-"
    return [cpu, memory]


def status_rows(tasks: dict[str, Any], now: float) -> list[list[str]]:
    """The status table: one row per slot (or per task without slots); the
    CPU and MEM columns only when the daemon measured some (not on macOS)."""
    costs = _has_costs(tasks)
    rows = [
        ["TASK", "STATE", "PID", "UPTIME", "RESTARTS", *(["CPU", "MEM"] if costs else []), "INFO"]
    ]
    for name in sorted(tasks):
        task = tasks[name]
        notes = []
        overrides = task.get("overrides") or {}
        configured = task.get("configured") or {}
        made = task.get("overrides_t") or {}
        for key in sorted(overrides):
            since = f" for {_duration(now - made[key])}" if key in made else ""
            notes.append(
                f"override {key}={overrides[key]} (config: {configured.get(key)}){since}, "
                "until undone, a reload request or an edit of this task"
            )
        if task.get("rollout"):
            notes.append(describe_rollout(name, task, now))
        processes = task.get("processes") or []
        if not processes:
            state = task.get("state", "?")
            if state == "out_of_scope":
                why = "not in this host's roles"
            elif task.get("waiting_on"):
                why = "waiting on " + ", ".join(task["waiting_on"])
            else:
                why = f"control {task.get('control')}"
            info = "; ".join([why, *notes])
            rows.append([name, state, "-", "-", "-", *(["-", "-"] if costs else []), info])
            continue
        for slot in processes:
            details: list[str] = []
            if slot.get("waiting_on"):
                details.append("waiting on " + ", ".join(slot["waiting_on"]))
            if slot.get("reason"):
                details.append(slot["reason"])
            if slot.get("status"):
                details.append(f"status: {slot['status']}")
            if slot.get("exit") and slot["exit"] not in (slot.get("reason") or ""):
                details.append(f"last: {slot['exit']}")
            if "retry_t" in slot:
                details.append(f"retry in {max(0.0, slot['retry_t'] - now):.1f}s")
            running = slot.get("state") in ("running", "ready") and "started_t" in slot
            rows.append(
                [
                    f"{name}[{slot.get('instance', 0)}]",
                    str(slot.get("state", "?")),
                    str(slot.get("pid", "-")),
                    _duration(now - slot["started_t"]) if running else "-",
                    str(slot.get("restarts", 0)),
                    *(_costs_cells(slot) if costs else []),
                    "; ".join(details + notes),
                ]
            )
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        cells.append(row[-1])
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_plan(answer: dict[str, Any]) -> str:
    lines = []
    for kind in ("start", "restart", "stop", "wait"):
        for change in answer.get(kind) or ():
            slots = ",".join(str(i) for i in change["instances"])
            lines.append(f"{kind:<8} {change['task']}[{slots}]  {change['why']}")
    if not lines:
        lines.append("no change: nothing would start, stop or restart")
    unchanged = answer.get("unchanged") or []
    if unchanged:
        lines.append(f"unchanged: {len(unchanged)} task{'s' if len(unchanged) != 1 else ''}")
    return "\n".join(lines)


def one_line(body: str) -> str:
    """A refusal's reason on one line: the per-task lines (``task<TAB>why``)
    joined as ``task: why; task: why``."""
    lines = [line.strip().replace("\t", ": ") for line in body.splitlines() if line.strip()]
    return "; ".join(lines) or "no reason given"


def format_version(info: dict[str, Any]) -> str:
    """``taskforce 1.2 (Python 3.12.1, Linux-6.1-x86_64)``."""
    where = info.get("platform") or {}
    system = where.get("platform") or where.get("system") or "?"
    return f"taskforce {info.get('taskforce', '?')} (Python {info.get('python', '?')}, {system})"


def format_log_line(task: str, line: dict[str, Any]) -> str:
    """``time task[instance] text``, the time local, to the millisecond;
    a stderr line is marked ``task[instance]:stderr`` (as in taskforce's
    log); a line read back from a file without timestamps has ``-`` for its
    time, and no instance if its file is shared by several slots."""
    when = line.get("time")
    if when is None:
        moment = "-"
    else:
        moment = datetime.datetime.fromtimestamp(when).isoformat(timespec="milliseconds")
    instance = line.get("instance")
    label = task if instance is None else f"{task}[{instance}]"
    if line.get("stream") == "stderr":
        label += ":stderr"
    return f"{moment} {label} {line['text']}"
