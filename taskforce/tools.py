"""``taskforce replay``, ``taskforce simulate`` and ``taskforce plan``.

- replay: feed a recorded event log to a fresh core and check, step by step,
  that it answers with exactly the recorded effects, and at each checkpoint
  that it holds exactly the recorded state (a long log in segments between
  checkpoints, one process each); or print the run as a readable timeline.
- simulate: run a config through the real core with a fake clock, process
  table and file system, following a script of happenings, and print what
  taskforce would do.  Nothing is started.
- plan: which tasks a config runs for each roles file (one per kind of host),
  and what would start, stop, restart or wait against a recorded run
  (formatted in ``taskforce.plans``; re-exported here).

These commands never start, stop or signal a process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Sequence

import yaml

from taskforce.config import ConfigError, load_config, load_roles
from taskforce.core import access
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.codec import encode, matches
from taskforce.core.requests import split_slot, task_word
from taskforce.core.snapshot import restore, snapshot
from taskforce.core.supervisor import Supervisor
from taskforce.eventlog import (
    DEFAULT_CHECKPOINT_BYTES,
    Marker,
    Step,
    find_checkpoint,
    read_log,
)
from taskforce.plans import diff_plan as diff_plan
from taskforce.plans import scope_plan as scope_plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# ---------------------------------------------------------------- replay


def replay(path: str, *, out: Any = sys.stdout, jobs: int = 1) -> int:
    """Check that ``path`` replays exactly; 0 if it does, 1 if not, 2 if unreadable.

    With ``jobs`` above 1 and checkpoints in the log, the file is cut at
    checkpoints into that many segments, replayed side by side: each starts
    from the checkpoint it begins at, and checks the state it reaches
    against the checkpoint the next one begins at, so the whole file is
    checked exactly as one replay would check it.
    """
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        print(f"taskforce replay: {exc}", file=out)
        return 2
    bounds = [size * index // jobs for index in range(jobs)] if jobs > 1 else [0]
    bounds.append(size)
    segments = list(zip(bounds, bounds[1:], strict=False))
    results: list[dict[str, Any]] = []
    pool = None
    pending = []
    try:
        if len(segments) > 1:
            # "spawn": a fresh interpreter per worker, whatever threads the
            # caller runs (a fork would copy their locks mid-use).
            pool = multiprocessing.get_context("spawn").Pool(len(segments) - 1)
            pending = [
                pool.apply_async(replay_segment, (path, begin, end)) for begin, end in segments[1:]
            ]
        results.append(replay_segment(path, *segments[0]))
        for job in pending:
            if results[-1]["rc"] != 0:
                break  # the first failure is the verdict; the rest need not finish
            results.append(job.get())
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    matched = 0
    for result in results:
        if result["rc"] != 0:
            for line in result["report"]:
                print(line, file=out)
            if result["rc"] == 1:
                print(f"{matched + result['steps']} steps matched before it", file=out)
            return int(result["rc"])
        matched += result["steps"]
    checkpoints = sum(result["checkpoints"] for result in results)
    print(
        f"{path}: {matched} steps replayed, every effect matched"
        + (f", and the state at {checkpoints} checkpoints" if checkpoints else ""),
        file=out,
    )
    return 0


def auto_jobs(path: str) -> int:
    """One process per CPU, when the log holds a few checkpoints' worth for each."""
    try:
        cpus = len(getattr(os, "sched_getaffinity")(0))  # noqa: B009 (mypy for darwin)
    except AttributeError:  # none on macOS
        cpus = os.cpu_count() or 1
    try:
        size = os.path.getsize(path)
    except OSError:
        return 1
    return max(1, min(cpus, size // (4 * DEFAULT_CHECKPOINT_BYTES)))


def replay_segment(path: str, begin: int, end: int) -> dict[str, Any]:
    """Replay the part of ``path`` from the first checkpoint at or after byte
    ``begin`` (the file's start if ``begin`` is 0) to the first at or after
    ``end``; what matched, or the report of what did not."""
    core = Supervisor()
    steps = checkpoints = 0
    fresh = True  # nothing replayed yet: a snapshot sets the state
    report: list[str] = []
    result = {"rc": 0, "steps": 0, "checkpoints": 0, "report": report}
    try:
        start = 0 if begin == 0 else find_checkpoint(path, begin)
        if start is None or (start >= end and begin > 0):
            return result  # no checkpoint in this part: the one before covers it
        for item in read_log(path, start=start, stop=end):
            if isinstance(item, Marker):
                if item.kind == "snapshot":
                    if fresh:
                        core = restore(item.data)
                        fresh = False
                        continue
                    # The recorded state as this version reads it: a field
                    # added since the log was written takes its default, as
                    # it did when a segment began at a checkpoint.
                    recorded = snapshot(restore(item.data))
                    differences = state_differences(recorded, snapshot(core))
                    if differences:
                        report.append(f"{item.where}: the state differs from the checkpoint")
                        report.extend(f"  {line}" for line in differences)
                        return {**result, "rc": 1, "steps": steps}
                    checkpoints += 1
                elif item.kind == "gap":
                    report.append(
                        f"{item.where}: {item.data} steps were not recorded (the disk fell behind)"
                    )
                    return {**result, "rc": 1, "steps": steps}
                continue
            fresh = False
            try:
                effects = core.handle(item.event)
            except Exception as exc:  # noqa: BLE001 -- a recorded run did not fail here
                report.append(f"divergence at step {item.number}: the core failed: {exc!r}")
                report.append(f"  event:    {json.dumps(encode(item.event))}")
                return {**result, "rc": 1, "steps": steps}
            if not _all_match(effects, item.effects):
                produced = [encode(effect) for effect in effects]
                report.append(f"divergence at step {item.number}")
                report.append(f"  event:    {json.dumps(encode(item.event))}")
                report.extend(_effect_diff(item.effects, produced))
                return {**result, "rc": 1, "steps": steps}
            steps += 1
    except (OSError, ValueError) as exc:
        report.append(f"taskforce replay: {exc}")
        return {**result, "rc": 2, "steps": steps}
    return {**result, "steps": steps, "checkpoints": checkpoints}


def _all_match(effects: tuple[fx.Effect, ...], recorded: list[dict[str, Any]]) -> bool:
    if len(effects) != len(recorded):
        return False
    for index, effect in enumerate(effects):
        if not matches(effect, recorded[index]):
            return False
    return True


def state_differences(expected: Any, actual: Any, *, limit: int = 8) -> list[str]:
    """Where two snapshots differ, as ``path: expected ..., replayed ...`` lines.

    Both are passed through JSON first, as a recorded one was written.
    """
    found: list[str] = []
    _differences(json.loads(json.dumps(expected)), json.loads(json.dumps(actual)), "", found, limit)
    return found


def _differences(expected: Any, actual: Any, path: str, found: list[str], limit: int) -> None:
    if len(found) >= limit or (expected == actual and type(expected) is type(actual)):
        return
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in list(expected) + [key for key in actual if key not in expected]:
            where = f"{path}.{key}" if path else str(key)
            _differences(expected.get(key, _ABSENT), actual.get(key, _ABSENT), where, found, limit)
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            _differences(want, got, f"{path}[{index}]", found, limit)
    else:
        found.append(f"{path or '(all)'}: recorded {_shown(expected)}, replayed {_shown(actual)}")


_ABSENT = object()


def _shown(value: Any) -> str:
    return "nothing" if value is _ABSENT else json.dumps(value)[:200]


def _effect_diff(expected: list[Any], actual: list[Any]) -> list[str]:
    lines = []
    for index in range(max(len(expected), len(actual))):
        want = expected[index] if index < len(expected) else None
        got = actual[index] if index < len(actual) else None
        mark = " " if want == got else "!"
        lines.append(f" {mark} expected: {json.dumps(want)}")
        if want != got:
            lines.append(f"   actual:   {json.dumps(got)}")
    return lines


# --------------------------------------------------------------- timeline


def describe_event(event: ev.Event, names: dict[int, str]) -> str:
    if isinstance(event, ev.ProcessStarted):
        names[event.pid] = f"{event.task}[{event.instance}]"
        return f"{names[event.pid]} started as pid {event.pid}"
    if isinstance(event, ev.ProcessExited):
        what = f"killed by {event.signal}" if event.signal else f"exited {event.exit_code}"
        return f"{names.get(event.pid, 'pid ' + str(event.pid))} {what}"
    if isinstance(event, ev.SpawnFailed):
        return f"{event.task}[{event.instance}] failed to start: {event.error}"
    if isinstance(event, ev.FileChanged):
        return f"{event.path} changed"
    if isinstance(event, ev.ConfigLoaded):
        return f"config loaded ({event.source}), {len(event.config.get('tasks', {}))} tasks"
    if isinstance(event, ev.ConfigRejected):
        return f"config rejected: {event.error}"
    if isinstance(event, ev.StopRequested):
        return ("reset" if event.reset else "stop") + f" requested ({event.reason})"
    if isinstance(event, ev.ResetAsked):
        return f"reset asked for ({event.reason})"
    if isinstance(event, ev.ResetRequested):
        broken = " (the files on disk do not load)" if event.errors or event.roles_missing else ""
        return f"reset requested ({event.reason}){broken}"
    if isinstance(event, ev.TimerFired):
        return "timer"
    if isinstance(event, ev.GroupEmptied):
        return f"process group {event.pgid} empty"
    if isinstance(event, ev.ControlRequested):
        asker = f" by {access.describe(event.who)}" if event.who else ""
        return f"control request {event.action} {event.args}{asker}"
    if isinstance(event, ev.Booted):
        return f"taskforce started as pid {event.pid} on {event.host}"
    return type(event).__name__


def describe_effect(effect: dict[str, Any]) -> str | None:
    kind = effect["type"]
    if kind == "Spawn":
        return f"start {effect['task']}[{effect['instance']}]: {' '.join(effect['argv'])}"
    if kind == "Signal":
        return f"send {effect['signal']} to {effect['task']}[{effect['instance']}]"
    if kind == "Log" and effect["level"] != "debug":
        return f"log: {effect['message']}"
    if kind == "RunCommand":
        return f"run {effect['task']} command {effect['name']!r}"
    if kind == "Exit":
        return "re-execute" if effect["reset"] else f"exit {effect['code']}"
    return None


def print_step(
    at: float, event: ev.Event, effects: list[dict[str, Any]], names: dict[int, str], out: Any
) -> None:
    """One step of a history: what happened, then what was done about it."""
    described = [text for text in map(describe_effect, effects) if text]
    if isinstance(event, ev.TimerFired) and not described:
        return  # a timer that changed nothing says nothing
    print(f"{at:10.3f}s  {describe_event(event, names)}", file=out)
    for text in described:
        print(f"{'':12}-> {text}", file=out)


def timeline(path: str, *, out: Any = sys.stdout) -> int:
    names: dict[int, str] = {}
    first: float | None = None
    try:
        for item in read_log(path):
            if isinstance(item, Step):
                first = item.event.at if first is None else first
                print_step(item.event.at - first, item.event, item.effects, names, out)
    except BrokenPipeError:
        raise  # not a problem with the log: the reader went away
    except (OSError, ValueError) as exc:
        print(f"taskforce replay: {exc}", file=out)
        return 2
    return 0


# --------------------------------------------------------------- simulate


def simulate(
    config_path: str, roles_path: str | None, script_path: str | None, *, out: Any = sys.stdout
) -> int:
    from taskforce.simulator import Simulation

    try:
        roles = load_roles(roles_path)
        config = load_config(config_path, roles=roles.names, role_values=roles.values)
        script = _load_script(script_path)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"taskforce simulate: {exc}", file=out)
        return 1
    sim = Simulation()
    sim.boot(config, roles.names, role_values=roles.values)
    for entry in sorted(script, key=lambda item: float(item.get("at", 0))):
        sim.advance(max(0.0, float(entry.get("at", 0)) - sim.now))
        try:
            _perform(sim, entry, roles_path)
        except (ConfigError, OSError, KeyError, ValueError) as exc:
            print(f"taskforce simulate: step {entry}: {exc}", file=out)
            return 1
    sim.settle(max_time=60.0)
    names: dict[int, str] = {}
    for event, effects in sim.log:
        print_step(event.at, event, [encode(effect) for effect in effects], names, out)
    running = sim.running()
    print(f"\nrunning at {sim.now:.3f}s:", file=out)
    for (task, instance), pid in sorted(running.items()):
        print(f"  {task}[{instance}] pid {pid}", file=out)
    return 0


def _load_script(path: str | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"{path}: a script is a list of maps such as {{at: 5, kill: web[0]}}")
    return data


def _slot(sim: Any, name: str) -> int:
    """The pid of slot ``name`` (``web[0]``, ``web:0``, or ``web`` for its
    slot 0); an error says what the slot is doing instead of running."""
    name = str(name)
    task, instance = name, 0
    tasks = sim.core.tasks
    parts = split_slot(name) if name not in tasks else None
    if parts is not None:
        task, instance = parts[0], int(parts[1])
    pid = sim.running().get((task, instance))
    if pid is not None:
        return int(pid)
    state = tasks.get(task)
    if state is None:
        raise ValueError(f"{name}: no such task (tasks: {', '.join(sorted(tasks))})")
    slot = next((s for s in state.slots if s.instance == instance), None)
    if slot is None:
        raise ValueError(f"{name} is not running at {sim.now:g}s ({task_word(state)})")
    waits = slot.waiting_on or state.waiting_on
    why = f"waiting on {', '.join(waits)}" if waits else f"it is {slot.state.value}"
    raise ValueError(f"{name} is not running at {sim.now:g}s ({why})")


def _perform(sim: Any, entry: dict[str, Any], roles_path: str | None) -> None:
    if "kill" in entry:
        sim.kill(_slot(sim, entry["kill"]), entry.get("signal", "SIGKILL"))
    elif "exit" in entry:
        sim.exit(_slot(sim, entry["exit"]), int(entry.get("code", 0)))
    elif "touch" in entry:
        sim.touch(entry["touch"])
    elif "config" in entry:
        roles = load_roles(roles_path)
        sim.reload(load_config(entry["config"], roles=roles.names, role_values=roles.values))
    elif "roles" in entry:
        sim.reload(roles=tuple(entry["roles"]))
    elif "roles_deleted" in entry:
        sim.delete_roles(roles_path or "<roles file>")
    elif "stop" in entry:
        sim.request_stop(reset=False, reason="script")
    elif "reset" in entry:
        sim.request_stop(reset=True, reason="script")
    elif "advance" not in entry:
        raise ValueError(
            "expected one of kill, exit, touch, config, roles, roles_deleted, stop, reset"
        )


# ------------------------------------------------------------------- main


def main(argv: Sequence[str]) -> int:
    from taskforce.cli import build_tool_parser

    parser = build_tool_parser()[0]
    args = parser.parse_args(argv)
    if args.command == "replay":
        if args.timeline:
            return timeline(args.log)
        if args.jobs < 0:
            parser.error("--jobs must be 0 (automatic) or more")
        return replay(args.log, jobs=args.jobs or auto_jobs(args.log))
    if args.command == "simulate":
        return simulate(args.config_file, _roles(args.roles_file), args.script)
    if args.against:
        roles = args.roles_file[0] if args.roles_file else None
        return diff_plan(args.config_file, _roles(roles), args.against)
    return scope_plan(args.config_file, args.roles_file)


def _roles(path: str | None) -> str | None:
    return None if path in (None, "", "-") else path
