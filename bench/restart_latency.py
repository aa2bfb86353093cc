"""SIGKILL of a stable child -> its replacement running: how long?

A fleet of tiny sleepers (``sleep N``, N naming the task) runs under
taskforce.  Once every task has run longer than the core's ``stable_after``
(1 s), one child at a time is sent SIGKILL, and the time until a new child of
the daemon runs the same argv is measured.  "Running" means exec'd: before
the exec a forked child's cmdline is still the daemon's.  Each round kills a
different task, one that has itself run stably.

Two ways to see the replacement, each over ``--repeats`` kills:

- ``netlink``: the kernel's process events (proc connector), stamped in the
  kernel with CLOCK_MONOTONIC.  Exact, and the benchmark sleeps in ``recv``
  so it takes no CPU from the daemon.  Splits the time into kill -> old pid
  exited, exited -> daemon forked (the daemon's reaction: wake-up, reap,
  decide, fork), forked -> child exec'd (the child's set-up and execve).
  Needs root (CAP_NET_ADMIN).
- ``poll``: a tight loop reading ``/proc/DAEMON/task/TID/children`` and each
  new child's cmdline.  Works unprivileged, but the loop holds a CPU: on a
  machine with few CPUs it slows the daemon it measures (see README).  Splits
  into kill -> old pid reaped, reaped -> new pid exec'd.

The target is checked on ``netlink`` when it is available, else on ``poll``.
``--reference`` runs the same rounds against a minimal supervisor (blocking
``wait()``, then ``posix_spawn``) instead of taskforce: the floor on this
machine.

    python bench/restart_latency.py [--tasks 200] [--repeats 40] [--json]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from collections.abc import Sequence

import common
from common import BenchDaemon, Report, check, summary_ms

TARGET_MEDIAN_MS = 5.0

#: The calibration supervisor: about the least work a supervisor can do to
#: replace a child.  Reads the same config; restarts whatever exits.
REFERENCE_SUPERVISOR = r"""
import json, os, signal, sys
config = json.load(open(sys.argv[1]))
argvs = {}
def stop(signum, frame):
    for pid in list(argvs):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
def spawn(argv):
    if sys.argv[2] == "fork":
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
    else:
        pid = os.posix_spawn(argv[0], argv, os.environ, setpgroup=0)
    argvs[pid] = argv
for task in config["tasks"].values():
    spawn(task["commands"]["start"])
while True:
    pid, status = os.wait()
    argv = argvs.pop(pid, None)
    if argv is not None:
        spawn(argv)
"""

LABELS = {
    "total": "kill -> replacement running",
    "exit": "  kill -> old pid exited",
    "react": "  exited -> daemon forked",
    "exec": "  forked -> child exec'd",
    "reaped": "  kill -> old pid reaped",
    "respawn": "  reaped -> new pid exec'd",
}


def measure(args: argparse.Namespace) -> Report:
    make = common.CHILDREN[args.child]
    argvs = [make(i) for i in range(args.tasks)]
    lines = [common.argv_bytes(argv) for argv in argvs]
    supervisor = f"reference ({args.reference})" if args.reference else "taskforce"
    report = Report(
        "restart_latency",
        {
            "tasks": args.tasks,
            "repeats": args.repeats,
            "child": args.child,
            "supervisor": supervisor,
            "task_output": args.task_output or "log",
        },
    )
    methods = ["poll", "netlink"] if args.method == "both" else [args.method]
    events = common.ProcEvents.open() if "netlink" in methods else None
    if events is None and "netlink" in methods:
        if args.method == "netlink":
            raise RuntimeError("the netlink proc connector is unavailable (needs root)")
        methods.remove("netlink")
        report.notes.append("netlink proc connector unavailable (not root?): polling only")

    command = None
    if args.reference:
        command = [sys.executable, "-c", REFERENCE_SUPERVISOR, "taskforce.conf", args.reference]
    results: dict[str, dict[str, list[float]]] = {}
    try:
        config = common.fleet_config(argvs)
        if args.task_output:
            config["settings"] = {"output": args.task_output}
        with BenchDaemon(config, command=command) as daemon:
            daemon.start()
            fleet = Fleet(daemon, lines, args)
            for method in methods:
                parts: dict[str, list[float]] = {}
                for _ in range(args.repeats):
                    for key, value in fleet.kill_one(method, events).items():
                        parts.setdefault(key, []).append(value)
                    time.sleep(args.gap)
                results[method] = parts
            fast = fleet.watcher.fast
    finally:
        if events is not None:
            events.close()

    for method, parts in results.items():
        how = {
            "poll": "tight poll of /proc children" if fast else "poll: scan of /proc",
            "netlink": "kernel timestamps (netlink proc connector)",
        }[method]
        if args.poll_sleep and method == "poll":
            how += f", {args.poll_sleep:g} us between polls"
        report.row(f"[{method}] {how}", "")
        figures: dict[str, object] = {}
        for key, values in parts.items():
            s = summary_ms(values)
            figures[key] = s
            report.row(
                LABELS[key],
                f"median {s['median_ms']:6.2f} ms  p90 {s['p90_ms']:6.2f} ms  "
                f"max {s['max_ms']:6.2f} ms  min {s['min_ms']:5.2f} ms",
            )
        figures["samples_ms"] = [round(v * 1000, 3) for v in parts["total"]]
        report.figures[method] = figures
    kills = sum(len(p["total"]) for p in results.values())
    report.row(
        "rounds", f"{kills} kills, each of a different task that had run > {args.stable:g} s"
    )
    main_method = "netlink" if "netlink" in results else "poll"
    median = report.figures[main_method]["total"]["median_ms"]
    report.figures["checked_on"] = main_method
    report.checks.append(
        check(f"restart median, {args.tasks} tasks ({main_method})", median, TARGET_MEDIAN_MS, "ms")
    )
    return report


class Fleet:
    """The running tasks of ``daemon`` (one per cmdline of ``lines``), killed
    one at a time: each kill is of a task that has run ``args.stable``
    seconds, every task once before any twice."""

    def __init__(
        self, daemon: BenchDaemon, lines: Sequence[bytes], args: argparse.Namespace
    ) -> None:
        self.daemon = daemon
        self.args = args
        _, found = daemon.wait_running(dict.fromkeys(lines, 1), timeout=60)
        assert daemon.children is not None
        self.watcher = daemon.children
        self.pid_of = {line: pid for pid, line in found.items()}
        self.since = dict.fromkeys(lines, time.perf_counter())
        self.order = list(lines)
        random.Random(args.seed).shuffle(self.order)

    def kill_one(self, method: str, events: common.ProcEvents | None) -> dict[str, float]:
        """SIGKILL one stable task; the times (s) until it runs again, by part."""
        line = _next_stable(self.order, self.since, self.args.stable)
        old = self.pid_of[line]
        if old not in self.watcher.children() or common.cmdline(old) != line:
            raise RuntimeError(
                f"task {line!r} is not running as pid {old} any more; "
                f"log:\n{self.daemon.log_tail(40)}"
            )
        if method == "poll":
            new, seen = _round_poll(self.daemon, self.watcher, old, line, self.args)
        else:
            assert events is not None
            new, seen = _round_netlink(self.daemon, events, old, line, self.args)
        self.pid_of[line] = new
        self.since[line] = time.perf_counter()
        return seen


def _round_poll(
    daemon: BenchDaemon,
    watcher: common.ChildWatcher,
    old: int,
    line: bytes,
    args: argparse.Namespace,
) -> tuple[int, dict[str, float]]:
    """Kill ``old``; poll the daemon's children until ``line`` runs again."""
    before = set(watcher.children())
    t_reaped = None
    pause = args.poll_sleep / 1e6
    t0 = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    while True:
        kids = watcher.children()
        t = time.perf_counter()
        if t_reaped is None and old not in kids:
            t_reaped = t
        for pid in kids:
            if pid not in before and common.cmdline(pid) == line:
                reaped = t if t_reaped is None else t_reaped
                return pid, {"total": t - t0, "reaped": reaped - t0, "respawn": t - reaped}
        if t - t0 > args.timeout:
            raise RuntimeError(
                f"no replacement for pid {old} after {args.timeout:g}s; log:\n{daemon.log_tail()}"
            )
        if pause:
            time.sleep(pause)


def _round_netlink(
    daemon: BenchDaemon,
    events: common.ProcEvents,
    old: int,
    line: bytes,
    args: argparse.Namespace,
) -> tuple[int, dict[str, float]]:
    """Kill ``old``; follow the kernel's exit, fork and exec events."""
    events.drain()
    forked: dict[int, int] = {}
    t_exit = None
    deadline = time.monotonic() + args.timeout
    t0 = time.monotonic_ns()
    os.kill(old, signal.SIGKILL)
    for what, ts, a, b in events.events(args.timeout):
        if what == events.EXIT and a == old:
            t_exit = ts
        elif what == events.FORK and a == daemon.pid:
            forked[b] = ts
        elif what == events.EXEC and a in forked and common.cmdline(a) == line:
            exited = t_exit if t_exit is not None else forked[a]
            return a, {
                "total": (ts - t0) / 1e9,
                "exit": (exited - t0) / 1e9,
                "react": (forked[a] - exited) / 1e9,
                "exec": (ts - forked[a]) / 1e9,
            }
        if time.monotonic() > deadline:
            break
    raise RuntimeError(
        f"no replacement for pid {old} after {args.timeout:g}s; log:\n{daemon.log_tail()}"
    )


def _next_stable(order: list[bytes], since: dict[bytes, float], stable: float) -> bytes:
    """The first task in ``order`` that has run ``stable`` seconds; it moves
    to the end, so every task is killed once before any is killed twice."""
    deadline = time.monotonic() + stable + 5
    while True:
        now = time.perf_counter()
        for line in order:
            if now - since[line] >= stable:
                order.remove(line)
                order.append(line)
                return line
        if time.monotonic() > deadline:
            raise RuntimeError("no task has run stably")
        time.sleep(max(0.001, min(since.values()) + stable - now))


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks running (default 200)")
    parser.add_argument("--repeats", type=int, default=40, help="kills per method (default 40)")
    parser.add_argument(
        "--method",
        choices=("poll", "netlink", "both"),
        default="both",
        help="how to see the replacement (default both; netlink is skipped when unavailable)",
    )
    parser.add_argument(
        "--stable",
        type=float,
        default=1.5,
        help="kill a task only once it has run this long (default 1.5 s; "
        "the core's stable_after is 1 s)",
    )
    parser.add_argument("--gap", type=float, default=0.05, help="pause between kills (s)")
    parser.add_argument(
        "--child", choices=sorted(common.CHILDREN), default="sleep", help="task program"
    )
    parser.add_argument(
        "--poll-sleep", type=float, default=0, help="microseconds between polls (default 0)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per-kill limit (s)")
    parser.add_argument(
        "--reference",
        choices=("spawn", "fork"),
        help="measure a minimal supervisor instead (posix_spawn or fork+exec)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--task-output",
        choices=("log", "discard"),
        help="taskforce's settings.output (discard: no pipe per task, for 10,000 tasks "
        "under a 20,000 descriptor limit)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(
        measure,
        build_parser(),
        argv,
        lambda a: 90 + 2 * a.repeats * (a.stable + a.timeout + a.gap + 0.1),
    )


if __name__ == "__main__":
    sys.exit(main())
