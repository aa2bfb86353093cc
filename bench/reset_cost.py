"""SIGHUP (a reset) -> every task running again: what it costs the tasks.

A fleet of tiny sleepers (``sleep N``, N naming the task) runs under
taskforce.  Each round sends the daemon SIGHUP: it stops every task, re-executes
itself and starts them all again.  Measured per round:

- every task running again: from the SIGHUP until the last new process has
  exec'd its program (a child counts as running once its cmdline is the
  task's argv);
- downtime of each task: from its old process gone (exited) to its new one
  running; the median, p90 and max over every task of every round;
- where the time goes: SIGHUP -> last old process gone, -> the daemon's
  re-exec (its execve), -> the first new task running.

Two ways to see it:

- ``netlink``: the kernel's process events (exit, fork, exec), stamped in the
  kernel with CLOCK_MONOTONIC; the benchmark sleeps in ``recv``.  Needs root.
- ``poll``: a tight loop over ``/proc`` (the old pids, the daemon's
  children).  Works unprivileged; the loop holds a CPU, which slows the
  daemon on a small machine.

    python bench/reset_cost.py [--tasks 200] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

import common
from common import BenchDaemon, Report, summary_ms

LABELS = {
    "total": "SIGHUP -> every task running again",
    "stopped": "  SIGHUP -> last old process gone",
    "reexec": "  SIGHUP -> taskforce re-exec'd",
    "first": "  re-exec'd -> first task running",
    "downtime": "downtime of one task (old gone -> new running)",
}


def measure(args: argparse.Namespace) -> Report:
    argvs = [common.sleeper_argv(i) for i in range(args.tasks)]
    lines = [common.argv_bytes(argv) for argv in argvs]
    report = Report("reset_cost", {"tasks": args.tasks, "repeats": args.repeats})
    events = common.ProcEvents.open() if args.method != "poll" else None
    if events is None and args.method != "poll":
        if args.method == "netlink":
            raise RuntimeError("the netlink proc connector is unavailable (needs root)")
        report.notes.append("netlink proc connector unavailable (not root?): polling")
    method = "netlink" if events is not None else "poll"
    parts: dict[str, list[float]] = {}
    try:
        with BenchDaemon(common.fleet_config(argvs)) as daemon:
            daemon.start()
            _, found = daemon.wait_running(dict.fromkeys(lines, 1), timeout=60)
            pid_of = {line: pid for pid, line in found.items()}
            for _ in range(args.repeats):
                time.sleep(args.gap)
                if events is not None:
                    seen, new = _round_netlink(daemon, events, pid_of, args)
                else:
                    seen, new = _round_poll(daemon, pid_of, args)
                for key, values in seen.items():
                    parts.setdefault(key, []).extend(values)
                pid_of = new
                if not daemon.alive():
                    raise RuntimeError(f"taskforce exited; log:\n{daemon.log_tail()}")
    finally:
        if events is not None:
            events.close()

    how = {
        "netlink": "kernel timestamps (netlink proc connector)",
        "poll": "tight poll of /proc",
    }[method]
    report.row(f"[{method}] {how}", "")
    for key in ("total", "stopped", "reexec", "first", "downtime"):
        values = parts.get(key)
        if not values:
            continue
        s = summary_ms(values)
        report.figures[key] = s
        report.row(
            LABELS[key],
            f"median {s['median_ms']:7.1f} ms  p90 {s['p90_ms']:7.1f} ms  "
            f"max {s['max_ms']:7.1f} ms  min {s['min_ms']:6.1f} ms",
        )
    report.row("rounds", f"{args.repeats} resets of {args.tasks} tasks")
    report.figures["method"] = method
    return report


def _round_netlink(
    daemon: BenchDaemon,
    events: common.ProcEvents,
    pid_of: dict[bytes, int],
    args: argparse.Namespace,
) -> tuple[dict[str, list[float]], dict[bytes, int]]:
    """SIGHUP; follow exits, forks and execs until every task runs again."""
    line_of = {pid: line for line, pid in pid_of.items()}
    gone: dict[bytes, int] = {}
    forked: set[int] = set()
    exec_at: dict[int, int] = {}  # the last exec of each forked child
    running: dict[bytes, int] = {}
    reexec_at = None
    events.drain()
    deadline = time.monotonic() + args.timeout
    t0 = time.monotonic_ns()
    os.kill(daemon.pid, signal.SIGHUP)
    quiet = args.timeout
    for what, ts, a, b in events.events(quiet):
        if what == events.EXIT and a == b and a in line_of:
            gone[line_of[a]] = ts
        elif what == events.FORK and a == daemon.pid:
            forked.add(b)
        elif what == events.EXEC and a == daemon.pid:
            reexec_at = ts
        elif what == events.EXEC and a in forked:
            exec_at[a] = ts  # the shim's exec, then the program's
            line = common.cmdline(a)
            if line in pid_of and line not in running:
                running[line] = a
        if len(running) == len(pid_of) and len(gone) == len(pid_of):
            # Every task seen running; a last exec (the program's, after the
            # shim's) may still be in the queue: read until it is quiet.
            if quiet == args.timeout:
                quiet = 0.2
                events.sock.settimeout(quiet)
        if time.monotonic() > deadline:
            break
    if len(running) < len(pid_of) or reexec_at is None:
        raise RuntimeError(
            f"after {args.timeout:g}s {len(running)} of {len(pid_of)} tasks run again; "
            f"log:\n{daemon.log_tail()}"
        )
    new_at = {line: exec_at[pid] for line, pid in running.items()}
    downtime = [(new_at[line] - gone[line]) / 1e9 for line in pid_of]
    seen = {
        "total": [(max(new_at.values()) - t0) / 1e9],
        "stopped": [(max(gone.values()) - t0) / 1e9],
        "reexec": [(reexec_at - t0) / 1e9],
        "first": [(min(new_at.values()) - reexec_at) / 1e9],
        "downtime": downtime,
    }
    return seen, running


def _round_poll(
    daemon: BenchDaemon, pid_of: dict[bytes, int], args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[bytes, int]]:
    """SIGHUP; poll /proc until every task runs again as a new process."""
    assert daemon.children is not None
    watcher = daemon.children
    gone: dict[bytes, float] = {}
    running: dict[bytes, int] = {}
    new_at: dict[bytes, float] = {}
    deadline = time.monotonic() + args.timeout
    t0 = time.perf_counter()
    os.kill(daemon.pid, signal.SIGHUP)
    while len(running) < len(pid_of):
        now = time.perf_counter()
        for line, pid in pid_of.items():
            if line not in gone and common.state(pid) in (None, "Z", "X"):
                gone[line] = now
        watcher.refresh_threads()
        for pid in watcher.children():
            line = common.cmdline(pid)
            if line in pid_of and line not in running and pid != pid_of[line]:
                running[line] = pid
                new_at[line] = now
                gone.setdefault(line, now)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"after {args.timeout:g}s {len(running)} of {len(pid_of)} tasks run again; "
                f"log:\n{daemon.log_tail()}"
            )
    seen = {
        "total": [max(new_at.values()) - t0],
        "stopped": [max(gone.values()) - t0],
        "downtime": [new_at[line] - gone[line] for line in pid_of],
    }
    return seen, running


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks running (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="resets (default 5)")
    parser.add_argument(
        "--method",
        choices=("netlink", "poll", "auto"),
        default="auto",
        help="how to watch (default: netlink when available, else poll)",
    )
    parser.add_argument("--gap", type=float, default=1.0, help="pause before each reset (s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-reset limit (s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(
        measure,
        build_parser(),
        argv,
        lambda a: 120 + a.repeats * (a.gap + a.timeout + 1),
    )


if __name__ == "__main__":
    sys.exit(main())
