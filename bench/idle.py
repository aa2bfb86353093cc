"""An idle daemon: how often does it wake up, and how much CPU does it use?

taskforce runs a fleet of sleepers that never exit.  Once start-up has
settled (every task running, then ``--settle`` seconds more, past the core's
``stable_after``), the daemon's context switches and CPU time are sampled
before and after ``--seconds`` of nothing happening.  Every wake-up of an
idle daemon is a context switch (voluntary: it blocked again; involuntary:
it was preempted), so the switch count is the wake-up count.

CPU time is read two ways: utime + stime from ``/proc/PID/stat`` (in clock
ticks, 10 ms on most kernels) and the scheduler's run time from
``/proc/PID/task/*/schedstat`` (nanoseconds).

Measured with the default file watcher (inotify on Linux) and, for
information, with ``TASKFORCE_WATCHER=poll``.

    python bench/idle.py [--tasks 200] [--seconds 30] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import common
from common import BenchDaemon, Report, check

TARGET_WAKEUPS = 0
TARGET_CPU_S = 0.02


def run_time_ns(pid: int) -> int:
    """Nanoseconds on CPU, summed over every thread (schedstat)."""
    total = 0
    for tid in common.threads(pid):
        data = common.read_bytes(f"/proc/{pid}/task/{tid}/schedstat")
        if data:
            total += int(data.split()[0])
    return total


def sample(pid: int) -> tuple[int, int, float, int, int]:
    voluntary, involuntary = common.context_switches(pid)
    return (
        voluntary,
        involuntary,
        common.cpu_seconds(pid),
        run_time_ns(pid),
        len(common.threads(pid)),
    )


def idle_window(
    daemon: BenchDaemon, lines: dict[bytes, int], settle: float, seconds: float
) -> dict[str, float]:
    """Once ``lines`` run, wait ``settle``, then watch the idle daemon for
    ``seconds``: its wake-ups, CPU and run time, and the tasks replaced."""
    _, first = daemon.wait_running(lines, timeout=60)
    time.sleep(settle)
    v0, i0, c0, r0, threads = sample(daemon.pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    v1, i1, c1, r1, _ = sample(daemon.pid)
    elapsed = time.monotonic() - t0
    _, last = daemon.wait_running(lines, timeout=5)
    return {
        "seconds": elapsed,
        "voluntary": v1 - v0,
        "involuntary": i1 - i0,
        "wakeups": (v1 - v0) + (i1 - i0),
        "cpu_s": c1 - c0,
        "run_time_s": (r1 - r0) / 1e9,
        "threads": threads,
        "tasks_replaced": len(set(first) - set(last)),
    }


def measure_one(args: argparse.Namespace, watcher: str) -> dict[str, float]:
    argvs = [common.sleeper_argv(i) for i in range(args.tasks)]
    lines = dict.fromkeys((common.argv_bytes(a) for a in argvs), 1)
    env = None if watcher == "default" else {"TASKFORCE_WATCHER": watcher}
    with BenchDaemon(common.fleet_config(argvs), env=env) as daemon:
        daemon.start()
        result = idle_window(daemon, lines, args.settle, args.seconds)
        if not daemon.alive():
            raise RuntimeError(f"taskforce exited during the run; log:\n{daemon.log_tail()}")
    return result


def measure(args: argparse.Namespace) -> Report:
    watchers = [w.strip() for w in args.watchers.split(",") if w.strip()]
    report = Report("idle", {"tasks": args.tasks, "seconds": args.seconds})
    for watcher in watchers:
        r = measure_one(args, watcher)
        report.figures[watcher] = r
        report.row(
            f"watcher={watcher}",
            f"wake-ups {r['wakeups']:4d} (vol {r['voluntary']}, invol {r['involuntary']})  "
            f"CPU {r['cpu_s']:.3f} s (ticks), {r['run_time_s'] * 1000:.2f} ms (schedstat)  "
            f"over {r['seconds']:.1f} s, {r['threads']} thread(s)",
        )
        if r["tasks_replaced"]:
            report.notes.append(
                f"watcher={watcher}: {r['tasks_replaced']} task(s) were restarted during the run"
            )
    main = "default" if "default" in report.figures else watchers[0]
    r = report.figures[main]
    report.checks.append(
        check(f"idle wake-ups, {args.tasks} tasks", r["wakeups"], TARGET_WAKEUPS, "wake-ups")
    )
    report.checks.append(
        check(f"idle CPU, {args.tasks} tasks", r["cpu_s"], TARGET_CPU_S, "CPU-s", strict=True)
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="idle tasks (default 200)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window (default 30)")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="wait after start-up before measuring (s)"
    )
    parser.add_argument(
        "--watchers",
        default="default,poll",
        help="comma list: default (what taskforce picks), inotify, poll (default: default,poll)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(
        measure,
        build_parser(),
        argv,
        lambda a: len(a.watchers.split(",")) * (a.seconds + a.settle + 120),
    )


if __name__ == "__main__":
    sys.exit(main())
