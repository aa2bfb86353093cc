"""``taskforce replay``, ``taskforce simulate`` and ``taskforce plan``.

- replay: feed a recorded event log to a fresh core and check, step by step,
  that it answers with exactly the recorded effects; or print the run as a
  readable timeline.
- simulate: run a config through the real core with a fake clock, process
  table and file system, following a script of happenings, and print what
  taskforce would do.  Nothing is started.
- plan: which tasks a config runs for each roles file (one per kind of host),
  and what would start, stop or restart against a recorded run.

These commands never start, stop or signal a process.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from taskforce.config import ConfigError, host_facts, load_config, load_roles
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.codec import encode, matches
from taskforce.core.model import SpecError, build
from taskforce.core.snapshot import restore
from taskforce.core.supervisor import Supervisor
from taskforce.eventlog import Marker, Step, read_log

# ---------------------------------------------------------------- replay


def replay(path: str, *, out: Any = sys.stdout) -> int:
    core = Supervisor()
    steps = 0
    try:
        for item in read_log(path):
            if isinstance(item, Marker):
                if item.kind == "snapshot":
                    core = restore(item.data)
                elif item.kind == "gap":
                    print(
                        f"{path}:{item.line}: {item.data} steps were not recorded "
                        f"(the disk fell behind); {steps} steps matched before it",
                        file=out,
                    )
                    return 1
                continue
            effects = core.handle(item.event)
            if len(effects) != len(item.effects) or not all(
                matches(effect, plain) for effect, plain in zip(effects, item.effects, strict=True)
            ):
                produced = [encode(effect) for effect in effects]
                print(f"divergence at step {item.number}", file=out)
                print(f"  event:    {json.dumps(encode(item.event))}", file=out)
                _print_effect_diff(item.effects, produced, out)
                print(f"{steps} steps matched before it", file=out)
                return 1
            steps += 1
    except (OSError, ValueError) as exc:
        print(f"taskforce replay: {exc}", file=out)
        return 2
    print(f"{path}: {steps} steps replayed, every effect matched", file=out)
    return 0


def _print_effect_diff(expected: list[Any], actual: list[Any], out: Any) -> None:
    width = max(len(expected), len(actual))
    for index in range(width):
        want = expected[index] if index < len(expected) else None
        got = actual[index] if index < len(actual) else None
        mark = " " if want == got else "!"
        print(f" {mark} expected: {json.dumps(want)}", file=out)
        if want != got:
            print(f"   actual:   {json.dumps(got)}", file=out)


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
    if isinstance(event, ev.TimerFired):
        return "timer"
    if isinstance(event, ev.GroupEmptied):
        return f"process group {event.pgid} empty"
    if isinstance(event, ev.ControlRequested):
        return f"control request {event.action} {event.args}"
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
    task, _, rest = name.partition("[")
    instance = int(rest.rstrip("]") or 0) if rest else 0
    pid = sim.running().get((task, instance))
    if pid is None:
        raise KeyError(f"{name} is not running")
    return int(pid)


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
    elif "stop" in entry:
        sim.request_stop(reset=False, reason="script")
    elif "reset" in entry:
        sim.request_stop(reset=True, reason="script")
    elif "advance" not in entry:
        raise ValueError("expected one of kill, exit, touch, config, roles, stop, reset")


# ------------------------------------------------------------------- plan


def scope_plan(config_path: str, roles_paths: Sequence[str], *, out: Any = sys.stdout) -> int:
    """What each kind of host (one roles file each) runs, and what cannot run."""
    facts = host_facts()
    try:
        config = load_config(config_path)
    except (ConfigError, OSError) as exc:
        print(f"taskforce plan: {exc}", file=out)
        return 1
    runs_somewhere: set[str] = set()
    problems = 0
    for roles_path in roles_paths or ["-"]:
        try:
            roles = load_roles(None if roles_path == "-" else roles_path)
            specs = build(config, facts, roles.names, roles.values)
        except (ConfigError, OSError) as exc:
            print(f"taskforce plan: {exc}", file=out)
            return 1
        except SpecError as exc:
            print(f"taskforce plan: {roles_path}: {exc.message}", file=out)
            return 1
        label = roles_path if roles_path != "-" else "(no roles file)"
        print(f"{label}:", file=out)
        for name, spec in sorted(specs.items()):
            if not spec.in_scope:
                continue
            runs_somewhere.add(name)
            note = f" x{spec.count}" if spec.count != 1 else ""
            print(f"  {name} ({spec.control}){note}", file=out)
            for required in spec.requires:
                other = specs[required]
                if not other.in_scope:
                    problems += 1
                    why = "off" if other.control == "off" else "not run on this host"
                    print(f"    ! requires {required}, which is {why}: {name} will wait", file=out)
    idle = sorted(set(config["tasks"]) - runs_somewhere)
    if idle:
        print("tasks no host runs: " + ", ".join(idle), file=out)
    return 1 if problems else 0


def diff_plan(
    config_path: str, roles_path: str | None, against: str, *, out: Any = sys.stdout
) -> int:
    """What applying a config would start, stop or restart after a recorded run."""
    core = Supervisor()
    try:
        for item in read_log(against):
            if isinstance(item, Marker):
                if item.kind == "snapshot":
                    core = restore(item.data)
                continue
            core.handle(item.event)
        roles = load_roles(roles_path)
        config = load_config(config_path, roles=roles.names, role_values=roles.values)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"taskforce plan: {exc}", file=out)
        return 1
    effects = core.handle(
        ev.ConfigLoaded(
            at=core.now,
            config=dict(config),
            roles=roles.names,
            role_values=dict(roles.values),
            source="plan",
        )
    )
    print_plan(core, effects, out)
    return 0


def print_plan(core: Supervisor, effects: Iterable[fx.Effect], out: Any) -> None:
    """What ``effects`` (the answer to a new config) start, stop and restart."""
    effects = list(effects)
    starts = sorted({f"{e.task}[{e.instance}]" for e in effects if isinstance(e, fx.Spawn)})
    stops: list[str] = []
    restarts: list[str] = []
    for effect in effects:
        if isinstance(effect, fx.Signal):
            slot = core.slot(effect.task, effect.instance)
            name = f"{effect.task}[{effect.instance}]"
            (restarts if slot is not None and slot.intent == "restart" else stops).append(name)
    stops, restarts = sorted(set(stops)), sorted(set(restarts))
    print("start:   " + (", ".join(starts) or "nothing"), file=out)
    print("stop:    " + (", ".join(stops) or "nothing"), file=out)
    print("restart: " + (", ".join(restarts) or "nothing"), file=out)
    for effect in effects:
        if isinstance(effect, fx.Log) and effect.level != "debug":
            print(f"  {effect.message}", file=out)


# ------------------------------------------------------------------- main


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="taskforce")
    commands = parser.add_subparsers(dest="command", required=True)
    rep = commands.add_parser("replay", help="check a recorded event log replays exactly")
    rep.add_argument("log")
    rep.add_argument("--timeline", action="store_true", help="print the run as a timeline")
    sim = commands.add_parser("simulate", help="what taskforce would do, without doing it")
    sim.add_argument("-f", "--config-file", required=True)
    sim.add_argument("-r", "--roles-file")
    sim.add_argument("script", nargs="?", help="YAML list of happenings: {at: 5, kill: web[0]}")
    plan = commands.add_parser("plan", help="what a config runs, per kind of host")
    plan.add_argument("-f", "--config-file", required=True)
    plan.add_argument("-r", "--roles-file", action="append", default=[])
    plan.add_argument("--against", metavar="LOG", help="a recorded run to diff against")
    args = parser.parse_args(argv)
    if args.command == "replay":
        return timeline(args.log) if args.timeline else replay(args.log)
    if args.command == "simulate":
        return simulate(args.config_file, _roles(args.roles_file), args.script)
    if args.against:
        roles = args.roles_file[0] if args.roles_file else None
        return diff_plan(args.config_file, _roles(roles), args.against)
    return scope_plan(args.config_file, args.roles_file)


def _roles(path: str | None) -> str | None:
    return None if path in (None, "", "-") else path
