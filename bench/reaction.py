"""Reaction to change: a save, a config edit -> the affected task's new process running.

Three scenarios, each on a daemon of its own (issue 3's benchmarks):

- ``file``: one task with ``events: [{type: file_change, path: F, command:
  stop}]``.  F is saved the way an editor saves (a new file renamed over it;
  ``--write inplace`` rewrites it in place), ``--repeats`` times, and the
  time from the save to the task's replacement having exec'd is measured,
  with the default (inotify) watcher.  The watcher reports a change only
  after ``settle`` seconds without another event (its coalescing window,
  0.1 s): that part is reported apart.
- ``config``: ``--tasks`` fleets (200 and 1,000 task entries, one sleeper
  each, ``sleep {n}`` with ``n`` a define).  Each round edits one task --
  alternately its argv (the define ``n``) and its environment only (a define
  ``rev``) -- and saves the config (rename over it); measured: the save ->
  that task's new process exec'd, and how many OTHER tasks got a new pid
  over ``--quiet`` seconds after it (must be 0).  Also timed in this process,
  to show where the time goes: reading and validating the config
  (``load_config``) and the core's work for the reload (the simulator, no
  real processes).
- ``poll``: ``TASKFORCE_WATCHER=poll``.  The ``file`` rounds again, at random
  phases of the poll: the reaction is bounded by the poll interval (plus the
  coalescing window and the restart itself).  Then the idle cost with 1,000
  watched files (``--idle-tasks`` tasks x ``--idle-paths`` file_change paths
  each): CPU time and context switches of the daemon over ``--idle-seconds``,
  and the same with inotify for comparison.

The replacement is seen with the kernel's process events (netlink proc
connector, kernel timestamps, CLOCK_MONOTONIC) when running as root; they
also split the time into save -> old pid exited, exited -> daemon forked,
forked -> exec'd.  Otherwise a poll of the daemon's children every
``--poll-sleep`` ms.  A round's clock starts just before the file is written.

Inside the daemon, the time is split further by timestamps (CLOCK_MONOTONIC,
like the rest) that a thin wrapper writes to the daemon's log: the watcher
first hears of the path (``seen``), reports it after its window
(``report``), the config has been read and validated (``loaded``), the core
has answered and its effects were performed (``handled``).  The wrapper
starts the daemon as ``python -c WRAPPER ARGS`` and wraps three methods
without changing them (``Watcher._hit``, ``Daemon._on_file_change``,
``Daemon.load_inputs``); ``--pristine`` runs ``python -m taskforce`` as is,
without this split.

    python bench/reaction.py [--scenarios file,config,poll] [--repeats 25]
        [--tasks 200,1000] [--config-repeats 10] [--poll-repeats 20]
        [--idle-seconds 20] [--json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
from common import BenchDaemon, Report, check, summary_ms

TARGET_FILE_MEDIAN_MS = 100.0
#: tasks in the config -> limit on the median save -> changed task running
TARGET_CONFIG_MS = {200: 200.0, 1000: 300.0}
TARGET_OTHER_RESTARTS = 0
#: Allowance for the restart itself (signal, reap, fork, exec) on top of the
#: poll interval and the coalescing window, in the polling backend's bound.
POLL_RESTART_ALLOWANCE_S = 0.05

#: Runs the daemon with timestamps in its log (``TFBENCH <ns> <what> <arg>``),
#: by wrapping three methods; the daemon's own code is not changed.
INSTRUMENTED_DAEMON = r"""
import sys, time
def _note(what, arg):
    sys.stderr.write(f"TFBENCH {time.monotonic_ns()} {what} {arg}\n")
try:
    from taskforce import daemon as _daemon
    from taskforce.watch import Watcher as _Watcher
    _hit = _Watcher._hit
    def _seen(self, path, now, strong):
        if path in self._reg.refs and path not in self._reg.pending:
            _note("seen", path)
        return _hit(self, path, now, strong)
    _Watcher._hit = _seen
    _change = _daemon.Daemon._on_file_change
    def _on_change(self, key, path):
        _note("report", key)
        try:
            return _change(self, key, path)
        finally:
            _note("handled", key)
    _daemon.Daemon._on_file_change = _on_change
    _load = _daemon.Daemon.load_inputs
    def _loaded(self, source):
        try:
            return _load(self, source)
        finally:
            _note("loaded", source)
    _daemon.Daemon.load_inputs = _loaded
except (ImportError, AttributeError) as exc:
    _note("uninstrumented", repr(exc))
from taskforce.cli import main
sys.exit(main(sys.argv[1:]))
"""


def instrument(daemon: BenchDaemon, args: argparse.Namespace) -> None:
    """Start ``daemon`` through the timestamping wrapper (unless ``--pristine``)."""
    if args.pristine:
        return
    assert daemon.argv[1:3] == ["-m", "taskforce"], daemon.argv
    daemon.argv = [daemon.argv[0], "-c", INSTRUMENTED_DAEMON, *daemon.argv[3:]]


def marks(log: str) -> list[tuple[int, str, str]]:
    """The wrapper's timestamps in the daemon's log: (ns, what, arg)."""
    found = []
    for line in log.splitlines():
        if line.startswith("TFBENCH "):
            _, ns, what, arg = (line.split(" ", 3) + [""])[:4]
            found.append((int(ns), what, arg))
    return found


def _matches(arg: str, key: str | None) -> bool:
    """``key`` itself, or with None any task's watch (not ``@config`` and the like)."""
    return arg == key if key is not None else not arg.startswith("@")


def split_inside(
    found: list[tuple[int, str, str]], key: str | None, t0: int, t_end: int
) -> dict[str, float]:
    """The in-daemon split of one round (s): the first marks after ``t0``."""
    seen = report = loaded = handled = None
    for ns, what, arg in found:
        if ns < t0 or ns > t_end + 1_000_000_000:
            continue
        if what == "seen" and seen is None:
            seen = ns
        elif what == "report" and _matches(arg, key) and report is None:
            report = ns
        elif what == "loaded" and report is not None and loaded is None:
            loaded = ns
        elif what == "handled" and _matches(arg, key) and report is not None and handled is None:
            handled = ns
    parts: dict[str, float] = {}
    if seen is None or report is None or handled is None:
        return parts
    parts["seen"] = (seen - t0) / 1e9
    parts["window"] = (report - seen) / 1e9
    if loaded is not None:
        parts["load"] = (loaded - report) / 1e9
        parts["core"] = (handled - loaded) / 1e9
    else:
        parts["core"] = (handled - report) / 1e9
    return parts


def watcher_defaults() -> tuple[float, float]:
    """The daemon's coalescing window and poll interval (``make_watcher``'s
    defaults, which the daemon uses)."""
    from taskforce.watch import make_watcher

    params = inspect.signature(make_watcher).parameters
    return float(params["settle"].default), float(params["poll_interval"].default)


def save(path: Path, text: str, how: str = "rename") -> None:
    """Write ``text`` to ``path`` as an editor does: a new file renamed over
    it (vim, ``sed -i``, rsync), or truncated and rewritten in place."""
    if how == "inplace":
        with open(path, "w") as handle:
            handle.write(text)
        return
    tmp = path.with_name(f".{path.name}.swp")
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


# ------------------------------------------------------- seeing the restart


class Seer:
    """Waits for a new child of the daemon running a given argv, with the
    kernel's events when it has them, else by polling ``/proc``."""

    def __init__(self, events: common.ProcEvents | None, poll_sleep_s: float) -> None:
        self.events = events
        self.poll_sleep_s = poll_sleep_s
        self.lost = 0  # rounds where netlink overflowed and polling took over

    @property
    def method(self) -> str:
        return "netlink" if self.events is not None else "poll"

    def prepare(self) -> None:
        if self.events is not None:
            self.events.drain()

    def clock(self) -> int:
        """Round start, ns on CLOCK_MONOTONIC (the clock of the kernel's stamps)."""
        return time.monotonic_ns()

    def await_exec(
        self,
        daemon: BenchDaemon,
        line: bytes,
        old: int,
        t0: int,
        timeout: float,
    ) -> tuple[int, dict[str, float]]:
        """The new pid running ``line`` (not ``old``) and the times (s) from ``t0``."""
        if self.events is not None:
            try:
                return self._netlink(daemon, line, old, t0, timeout)
            except OSError:  # ENOBUFS: the host made more events than the buffer held
                self.lost += 1
        return self._poll(daemon, line, old, t0, timeout)

    def _netlink(
        self, daemon: BenchDaemon, line: bytes, old: int, t0: int, timeout: float
    ) -> tuple[int, dict[str, float]]:
        assert self.events is not None
        ev = self.events
        forks: dict[int, int] = {}
        t_exit = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for what, ts, a, b in ev.events(0.2):
                if what == ev.EXIT and a == old:
                    t_exit = ts
                elif what == ev.FORK and a == daemon.pid:
                    forks[b] = ts
                elif what == ev.EXEC and a in forks and a != old and common.cmdline(a) == line:
                    parts = {"total": (ts - t0) / 1e9, "exec": (ts - forks[a]) / 1e9}
                    if t_exit is not None:
                        parts["exited"] = (t_exit - t0) / 1e9
                        parts["react"] = (forks[a] - t_exit) / 1e9
                    return a, parts
                if time.monotonic() > deadline:
                    break
            if not daemon.alive():
                break
        raise RuntimeError(
            f"no new process for {line!r} after {timeout:g}s; log:\n{daemon.log_tail()}"
        )

    def _poll(
        self, daemon: BenchDaemon, line: bytes, old: int, t0: int, timeout: float
    ) -> tuple[int, dict[str, float]]:
        assert daemon.children is not None
        deadline = time.monotonic() + timeout
        t_exit = None
        while True:
            kids = daemon.children.children()
            t = time.monotonic_ns()
            if t_exit is None and old not in kids:
                t_exit = t
            for pid in kids:
                if pid != old and common.cmdline(pid) == line:
                    parts = {"total": (t - t0) / 1e9}
                    if t_exit is not None:
                        parts["reaped"] = (t_exit - t0) / 1e9
                    return pid, parts
            if time.monotonic() > deadline or not daemon.alive():
                raise RuntimeError(
                    f"no new process for {line!r} after {timeout:g}s; log:\n{daemon.log_tail()}"
                )
            time.sleep(self.poll_sleep_s)

    def forks_during(self, daemon: BenchDaemon, seconds: float) -> int | None:
        """How many processes the daemon forks over the next ``seconds``
        (None without the kernel's events)."""
        if self.events is None:
            time.sleep(seconds)
            return None
        forks = 0
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                for what, _ts, a, _b in self.events.events(max(0.01, deadline - time.monotonic())):
                    if what == self.events.FORK and a == daemon.pid:
                        forks += 1
                    if time.monotonic() > deadline:
                        break
        except OSError:
            self.lost += 1
            time.sleep(max(0.0, deadline - time.monotonic()))
            return None
        return forks


PART_LABELS = {
    "total": "save -> replacement exec'd",
    "seen": "  save -> the watcher hears of it (in the daemon)",
    "window": "  coalescing window (heard -> reported)",
    "load": "  read + validate the config",
    "core": "  core answers, effects performed (signal sent)",
    "exited": "  save -> old pid exited (kernel)",
    "reaped": "  save -> old pid gone (poll)",
    "react": "  old exited -> daemon forked",
    "exec": "  forked -> exec'd",
    "beyond": "  total - nominal coalescing window",
}


def parts_rows(report: Report, prefix: str, parts: dict[str, list[float]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for key in PART_LABELS:
        if key not in parts or not parts[key]:
            continue
        s = summary_ms(parts[key])
        figures[key] = s
        report.row(
            f"{prefix}{PART_LABELS[key]}",
            f"median {s['median_ms']:7.1f} ms  p90 {s['p90_ms']:7.1f} ms  "
            f"max {s['max_ms']:7.1f} ms  min {s['min_ms']:6.1f} ms  (n={s['n']})",
        )
    figures["samples_ms"] = [round(v * 1000, 2) for v in parts["total"]]
    return figures


# ------------------------------------------------------- scenario: a file


def file_rounds(
    args: argparse.Namespace,
    seer: Seer,
    backend: str,
    repeats: int,
    gap: tuple[float, float],
    settle: float,
) -> tuple[dict[str, list[float]], str]:
    """``repeats`` saves of a watched file; the times per part (s)."""
    argv = common.sleeper_argv(0)
    line = common.argv_bytes(argv)
    with BenchDaemon({"tasks": {}}, env={"TASKFORCE_WATCHER": backend}) as daemon:
        watched = daemon.root / "watched.conf"
        watched.write_text("round -1\n")
        config = {
            "tasks": {
                "watcher": {
                    "control": "wait",
                    "commands": {"start": argv},
                    "events": [{"type": "file_change", "path": str(watched), "command": "stop"}],
                }
            }
        }
        daemon.config_path.write_text(json.dumps(config, indent=1))
        instrument(daemon, args)
        daemon.start()
        _, found = daemon.wait_running({line: 1}, timeout=30)
        (old,) = found
        time.sleep(1.2)  # past stable_after, and let start-up settle
        rng = random.Random(args.seed)
        parts: dict[str, list[float]] = {}
        windows: list[tuple[int, int]] = []
        for r in range(repeats):
            time.sleep(rng.uniform(*gap))
            seer.prepare()
            t0 = seer.clock()
            save(watched, f"round {r}\n", args.write)
            new, seen = seer.await_exec(daemon, line, old, t0, args.timeout)
            seen["beyond"] = seen["total"] - settle
            for key, value in seen.items():
                parts.setdefault(key, []).append(value)
            windows.append((t0, t0 + int(seen["total"] * 1e9)))
            old = new
        log = daemon.log_text()
        if backend != "poll" and "polling" in log:
            raise RuntimeError(f"the daemon fell back to polling; log:\n{daemon.log_tail()}")
    add_inside(parts, marks(log), None, windows)
    return parts, log


def add_inside(
    parts: dict[str, list[float]],
    found: list[tuple[int, str, str]],
    key: str | None,
    windows: list[tuple[int, int]],
) -> None:
    """Add the in-daemon split of every round (when every round has one)."""
    inside = [split_inside(found, key, t0, t_end) for t0, t_end in windows]
    if not inside or not all(inside):
        return
    for split in inside:
        for name, value in split.items():
            parts.setdefault(name, []).append(value)


def scenario_file(args: argparse.Namespace, seer: Seer, report: Report) -> None:
    settle, _ = watcher_defaults()
    parts, _ = file_rounds(args, seer, "inotify", args.repeats, (0.25, 0.4), settle)
    report.row(
        f"[file, inotify] {args.repeats} saves ({args.write}), {seer.method}; "
        f"coalescing window {settle * 1000:.0f} ms",
        "",
    )
    figures = parts_rows(report, "", parts)
    figures["settle_s"] = settle
    report.figures["file_inotify"] = figures
    report.checks.append(
        check(
            "file change -> running, inotify (median)",
            figures["total"]["median_ms"],
            TARGET_FILE_MEDIAN_MS,
            "ms",
            strict=True,
        )
    )


# ----------------------------------------------------- scenario: the config


def fleet(ntasks: int) -> tuple[dict[str, Any], list[str]]:
    sleep = common.sleeper_argv(0)[0]
    names = [f"t{i:04d}" for i in range(ntasks)]
    tasks = {
        name: {
            "control": "wait",
            "defines": {"n": str(common.SLEEP_BASE + i), "rev": "0"},
            "commands": {"start": [sleep, "{n}"]},
        }
        for i, name in enumerate(names)
    }
    return {"tasks": tasks}, names


def line_of(config: dict[str, Any], name: str) -> bytes:
    task = config["tasks"][name]
    return common.argv_bytes([task["commands"]["start"][0], task["defines"]["n"]])


def edit(config: dict[str, Any], name: str, index: int, r: int, ntasks: int) -> str:
    """Change task ``name`` for round ``r``: its argv, or its environment only."""
    defines = config["tasks"][name]["defines"]
    if r % 2 == 0:
        # Beyond every other task's n, and different in every round.
        defines["n"] = str(common.SLEEP_BASE + ntasks * (r + 1) + index)
        return "argv"
    defines["rev"] = str(r + 1)
    return "define"


def config_rounds(
    args: argparse.Namespace, seer: Seer, ntasks: int
) -> tuple[dict[str, list[float]], list[dict[str, Any]], int]:
    config, names = fleet(ntasks)
    lines = {name: line_of(config, name) for name in names}
    with BenchDaemon(config, env={"TASKFORCE_WATCHER": "inotify"}) as daemon:
        instrument(daemon, args)
        daemon.start()
        _, found = daemon.wait_running(dict.fromkeys(lines.values(), 1), timeout=120)
        by_line = {line: pid for pid, line in found.items()}
        pid_of = {name: by_line[lines[name]] for name in names}
        time.sleep(1.5)  # every task past stable_after; start-up over
        order = list(range(ntasks))
        random.Random(args.seed).shuffle(order)
        parts: dict[str, list[float]] = {}
        rounds: list[dict[str, Any]] = []
        windows: list[tuple[int, int]] = []
        size = 0
        for r in range(args.config_repeats):
            index = order[r % ntasks]
            name = names[index]
            kind = edit(config, name, index, r, ntasks)
            text = json.dumps(config, indent=1)
            size = len(text)
            line = line_of(config, name)
            old = pid_of[name]
            seer.prepare()
            t0 = seer.clock()
            save(daemon.config_path, text)
            new, seen = seer.await_exec(daemon, line, old, t0, args.timeout)
            forks = seer.forks_during(daemon, args.quiet)
            lines[name] = line
            running = daemon.running(dict.fromkeys(lines.values(), 1))
            now_by_line = {ln: pid for pid, ln in running.items()}
            others = sum(
                1
                for other in names
                if other != name and now_by_line.get(lines[other]) != pid_of[other]
            )
            if now_by_line.get(line) != new:
                raise RuntimeError(f"{name}: its new pid {new} is not running any more")
            pid_of[name] = new
            windows.append((t0, t0 + int(seen["total"] * 1e9)))
            for key, value in seen.items():
                parts.setdefault(key, []).append(value)
            rounds.append(
                {
                    "task": name,
                    "change": kind,
                    "total_ms": round(seen["total"] * 1000, 2),
                    "other_restarts": others,
                    "extra_forks": forks,
                }
            )
            time.sleep(0.1)
        log = daemon.log_text()
    add_inside(parts, marks(log), "@config", windows)
    return parts, rounds, size


def scenario_config(args: argparse.Namespace, seer: Seer, report: Report) -> None:
    for ntasks in args.tasks:
        parts, rounds, size = config_rounds(args, seer, ntasks)
        others = sum(r["other_restarts"] for r in rounds)
        forks = [r["extra_forks"] for r in rounds if r["extra_forks"] is not None]
        report.row(
            f"[config, {ntasks} tasks] {len(rounds)} edits of one task "
            f"(argv and define alternately), config {size // 1024} KiB, {seer.method}",
            "",
        )
        figures = parts_rows(report, "", parts)
        report.row(
            "  other tasks restarted",
            f"{others} (over {args.quiet:g} s after each edit; "
            + (
                f"daemon forks besides the changed task's: {sum(forks)})"
                if forks
                else "kernel events unavailable)"
            ),
        )
        figures["config_bytes"] = size
        figures["rounds"] = rounds
        figures["other_restarts"] = others
        report.figures[f"config_{ntasks}"] = figures
        limit = TARGET_CONFIG_MS.get(ntasks)
        if limit is not None:
            report.checks.append(
                check(
                    f"config edit, {ntasks} tasks -> running (median)",
                    figures["total"]["median_ms"],
                    limit,
                    "ms",
                )
            )
        report.checks.append(
            check(f"config edit, {ntasks} tasks: other restarts", others, TARGET_OTHER_RESTARTS, "")
        )


# ------------------------------------------------- scenario: the polling backend


def idle_run(args: argparse.Namespace, backend: str) -> dict[str, float]:
    from idle import idle_window  # the idle benchmark's measurement

    sleep = common.sleeper_argv(0)[0]
    with BenchDaemon({"tasks": {}}, env={"TASKFORCE_WATCHER": backend}) as daemon:
        files = daemon.root / "watched"
        files.mkdir()
        tasks = {}
        lines = {}
        for t in range(args.idle_tasks):
            paths = []
            for p in range(args.idle_paths):
                path = files / f"t{t:03d}-{p:02d}.conf"
                path.write_text("x\n")
                paths.append(str(path))
            argv = [sleep, str(common.SLEEP_BASE + t)]
            lines[common.argv_bytes(argv)] = 1
            tasks[f"t{t:03d}"] = {
                "control": "wait",
                "commands": {"start": argv},
                "events": [{"type": "file_change", "path": paths, "command": "stop"}],
            }
        daemon.config_path.write_text(json.dumps({"tasks": tasks}, indent=1))
        daemon.start()
        window = idle_window(daemon, lines, args.idle_settle, args.idle_seconds)
    result = {"watched_files": args.idle_tasks * args.idle_paths, **window}
    result["switches"] = result.pop("wakeups")
    return result


def scenario_poll(args: argparse.Namespace, seer: Seer, report: Report) -> None:
    settle, interval = watcher_defaults()
    # Saves land at random phases of the poll: wait a random part of the
    # interval (and past the last restart's own window) between rounds.
    gap = (settle + 0.2, settle + 0.2 + interval)
    parts, _ = file_rounds(args, seer, "poll", args.poll_repeats, gap, settle)
    report.row(
        f"[poll] {args.poll_repeats} saves at random phases, {seer.method}; "
        f"poll interval {interval:g} s, coalescing window {settle * 1000:.0f} ms",
        "",
    )
    figures = parts_rows(report, "", parts)
    figures.update({"poll_interval_s": interval, "settle_s": settle})
    bound = interval + settle + POLL_RESTART_ALLOWANCE_S
    report.row(
        "  bound (interval + window + restart allowance)",
        f"{bound * 1000:.0f} ms; max / interval = "
        f"{figures['total']['max_ms'] / 1000 / interval:.2f}",
    )
    report.figures["file_poll"] = figures
    report.checks.append(
        check(
            f"poll: max reaction (interval {interval:g} s + {settle:g} + "
            f"{POLL_RESTART_ALLOWANCE_S:g})",
            round(figures["total"]["max_ms"] / 1000, 3),
            round(bound, 3),
            "s",
        )
    )
    own = sum(1 for _ in (common.REPO / "taskforce").rglob("*.py"))
    for backend in args.idle_backends:
        r = idle_run(args, backend)
        report.figures[f"idle_{backend}"] = r
        per_poll = ""
        if backend == "poll":
            polls = r["seconds"] / interval
            per_poll = f"; {r['run_time_s'] / polls * 1000:.2f} ms per poll"
        report.row(
            f"[idle, {backend}] {r['watched_files']} watched files "
            f"({args.idle_tasks} tasks x {args.idle_paths}) + config + {own} own modules",
            f"CPU {r['cpu_s']:.2f} s (ticks), {r['run_time_s'] * 1000:.1f} ms (schedstat) over "
            f"{r['seconds']:.1f} s = {r['run_time_s'] / r['seconds'] * 100:.2f}% of a CPU"
            f"{per_poll}; "
            f"context switches {r['switches']} (vol {r['voluntary']}, invol {r['involuntary']})",
        )
        if r["tasks_replaced"]:
            report.notes.append(f"idle {backend}: {r['tasks_replaced']} task(s) restarted")


# --------------------------------------------------------------------- main


SCENARIOS = {"file": scenario_file, "config": scenario_config, "poll": scenario_poll}


def measure(args: argparse.Namespace) -> Report:
    report = Report(
        "reaction",
        {
            "scenarios": ",".join(args.scenarios),
            "repeats": args.repeats,
            "tasks": ",".join(map(str, args.tasks)),
            "config_repeats": args.config_repeats,
            "poll_repeats": args.poll_repeats,
            "idle_seconds": args.idle_seconds,
        },
    )
    events = common.ProcEvents.open() if args.method != "poll" else None
    if events is None and args.method == "netlink":
        raise RuntimeError("the netlink proc connector is unavailable (needs root)")
    if events is None and args.method == "auto":
        report.notes.append("netlink proc connector unavailable (not root?): polling /proc")
    seer = Seer(events, args.poll_sleep / 1000)
    start_load = os.getloadavg()
    try:
        for name in args.scenarios:
            SCENARIOS[name](args, seer, report)
    finally:
        if events is not None:
            events.close()
    load = os.getloadavg()
    report.notes.append(
        f"load average {start_load[0]:.2f} at start, {load[0]:.2f} at end "
        f"({os.cpu_count()} CPUs): figures move with it"
    )
    if seer.lost:
        report.notes.append(
            f"{seer.lost} time(s) the kernel's event buffer overflowed; polling took over"
        )
    return report


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios",
        type=comma_list,
        default=list(SCENARIOS),
        help="comma list of: file, config, poll (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=25, help="saves, file scenario (25)")
    parser.add_argument(
        "--write",
        choices=("rename", "inplace"),
        default="rename",
        help="how the watched file is saved (default rename, as vim or sed -i)",
    )
    parser.add_argument(
        "--tasks",
        type=lambda s: [int(x) for x in comma_list(s)],
        default=[200, 1000],
        help="config sizes, comma list (default 200,1000)",
    )
    parser.add_argument("--config-repeats", type=int, default=10, help="edits per config (10)")
    parser.add_argument(
        "--quiet", type=float, default=0.5, help="watch for other restarts this long after an edit"
    )
    parser.add_argument("--poll-repeats", type=int, default=20, help="saves, polling backend (20)")
    parser.add_argument("--idle-tasks", type=int, default=100)
    parser.add_argument("--idle-paths", type=int, default=10, help="file_change paths per task")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--idle-settle", type=float, default=3.0)
    parser.add_argument(
        "--idle-backends",
        type=comma_list,
        default=["poll", "inotify"],
        help="watchers for the idle cost (default poll,inotify)",
    )
    parser.add_argument(
        "--method",
        choices=("auto", "netlink", "poll"),
        default="auto",
        help="how to see the new process (default: netlink when root, else poll)",
    )
    parser.add_argument(
        "--poll-sleep", type=float, default=1.0, help="ms between polls of /proc (default 1)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per-round limit (s)")
    parser.add_argument(
        "--pristine",
        action="store_true",
        help="run python -m taskforce as is: no timestamps from inside the daemon",
    )
    parser.add_argument("--seed", type=int, default=1)
    return parser


def bound(args: argparse.Namespace) -> float:
    total = 60.0
    if "file" in args.scenarios:
        total += 30 + args.repeats * (args.timeout + 0.5)
    if "config" in args.scenarios:
        total += sum(60 + n / 10 for n in args.tasks)
        total += len(args.tasks) * args.config_repeats * (args.timeout + args.quiet + 5)
    if "poll" in args.scenarios:
        total += 30 + args.poll_repeats * (args.timeout + 2)
        total += len(args.idle_backends) * (args.idle_seconds + args.idle_settle + 120)
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    return common.run_main(measure, parser, argv, bound)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.pop("TASKFORCE_WATCHER", None)
    sys.exit(main())
