"""Start-up: from launching ``python -m taskforce`` until every task runs.

Two fleets, each started ``--runs`` times from cold (a new daemon each run):

- ``--tasks`` separate tasks (200 sleepers);
- one task with ``count: --count`` (1,000 slots of one sleeper).

A task counts as running once its process has exec'd (its cmdline is the
task's argv; before the exec it is still the daemon's).  The clock starts
just before the daemon is launched.  Also timed, so that what is ours is
clear:

- ``python -c pass``: the interpreter's own start-up (with site, as the
  daemon runs);
- ``python -c "import taskforce.cli, taskforce.daemon"``: interpreter plus
  our imports;
- the daemon's first log line ("taskforce started"): imports, plus reading
  and validating the config;
- the daemon's CPU time when every task runs (utime + stime), which a busy
  machine moves far less than the wall times.

The daemon runs a byte-compiled copy of the package (as an installed package
would); see README.

    python bench/startup.py [--tasks 200] [--count 1000] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import common
from common import BenchDaemon, Report, check

TARGET_FLEET_S = 0.5
TARGET_COUNT_S = 3.0


def time_command(argv: list[str], env: dict[str, str], cwd: str, runs: int) -> float:
    """Median wall time of ``argv`` over ``runs`` runs, in seconds."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL, timeout=60)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one_start(
    config: dict[str, Any],
    expected: dict[bytes, int],
    timeout: float,
    events: common.ProcEvents | None,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    """Launch a daemon (``env`` added to its environment); times (s) to its
    first log line, first task, all tasks.

    With ``events``, also the time per spawn on the child's side (fork ->
    exec) and on the daemon's (a child's exec -> the next fork).
    """
    total = sum(expected.values())
    with BenchDaemon(config, env=env) as daemon:
        if events is not None:
            events.drain()
        t0 = daemon.start()
        assert daemon.children is not None
        watcher = daemon.children
        confirmed: set[int] = set()
        first_log = first_task = None
        deadline = time.monotonic() + timeout
        while True:
            now = time.perf_counter()
            if first_log is None and daemon.log.stat().st_size > 0:
                first_log = now - t0
            for pid in watcher.children():
                if pid not in confirmed and common.cmdline(pid) in expected:
                    confirmed.add(pid)
            if confirmed and first_task is None:
                first_task = now - t0
            if len(confirmed) >= total:
                all_running = now - t0
                daemon_cpu = common.cpu_seconds(daemon.pid)
                break
            if not daemon.alive():
                raise RuntimeError(f"taskforce exited early; log:\n{daemon.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(confirmed)} of {total} running after {timeout:g}s; "
                    f"log:\n{daemon.log_tail()}"
                )
            time.sleep(0.0005)
        running = daemon.running(expected)
        if len(running) != total:
            raise RuntimeError(f"{total} expected running, {len(running)} are")
        result = {
            "first_log_s": first_log if first_log is not None else all_running,
            "first_task_s": first_task if first_task is not None else all_running,
            "all_running_s": all_running,
            # Imports and config included; CPU, so that a busy machine moves it little.
            "daemon_cpu_s": daemon_cpu,
        }
        if events is not None:
            result.update(spawn_split(events, daemon.pid, confirmed))
    return result


def spawn_split(events: common.ProcEvents, daemon_pid: int, tasks: set[int]) -> dict[str, float]:
    """From the kernel's events: per task, fork -> exec (the child's part) and
    the previous task's exec -> this fork (the daemon's part), as means (they
    add up to the spawning time) and medians."""
    forks: dict[int, int] = {}
    execs: dict[int, int] = {}
    try:
        for what, ts, a, b in events.events(0.2):
            if what == events.FORK and a == daemon_pid:
                forks[b] = ts
            elif what == events.EXEC and a in tasks:
                execs[a] = ts
    except OSError:  # ENOBUFS: the host made more events than the buffer held
        return {}
    pids = sorted((p for p in tasks if p in forks and p in execs), key=forks.__getitem__)
    if len(pids) < 2:
        return {}
    child = [(execs[p] - forks[p]) / 1e9 for p in pids]
    daemon = [(forks[b] - execs[a]) / 1e9 for a, b in zip(pids, pids[1:], strict=False)]
    return {
        "child_fork_to_exec_s": statistics.fmean(child),
        "daemon_exec_to_next_fork_s": statistics.fmean(daemon),
        "child_fork_to_exec_median_s": statistics.median(child),
        "daemon_exec_to_next_fork_median_s": statistics.median(daemon),
    }


def measure(args: argparse.Namespace) -> Report:
    report = Report("startup", {"tasks": args.tasks, "count": args.count, "runs": args.runs})
    # Interpreter alone, then with our imports (from the same byte-compiled
    # snapshot the daemon runs).
    with BenchDaemon({"tasks": {}}) as probe:
        # In the probe's folder: ``-c`` puts the current folder first on
        # sys.path, and the working tree's taskforce must not win.
        env, cwd = dict(probe.env), str(probe.root)
        python_pass = time_command([sys.executable, "-c", "pass"], env, cwd, args.runs * 3)
        python_import = time_command(
            [sys.executable, "-c", "import taskforce.cli, taskforce.daemon"],
            env,
            cwd,
            args.runs * 3,
        )

    fleet_argvs = [common.sleeper_argv(i) for i in range(args.tasks)]
    fleet = common.fleet_config(fleet_argvs)
    fleet_expected = dict.fromkeys((common.argv_bytes(a) for a in fleet_argvs), 1)
    count_argv = common.sleeper_argv(0)
    counted = {
        "tasks": {
            "pool": {"control": "wait", "count": args.count, "commands": {"start": count_argv}}
        }
    }
    count_expected = {common.argv_bytes(count_argv): args.count}

    events = common.ProcEvents.open()
    results: dict[str, list[dict[str, float]]] = {"fleet": [], "count": []}
    try:
        for _ in range(args.runs):
            results["fleet"].append(one_start(fleet, fleet_expected, args.timeout, events))
            results["count"].append(one_start(counted, count_expected, args.timeout, events))
    finally:
        if events is not None:
            events.close()

    def med(which: str, key: str) -> float:
        values = [r[key] for r in results[which] if key in r]
        return statistics.median(values) if values else float("nan")

    report.figures = {
        "python_pass_s": python_pass,
        "python_import_taskforce_s": python_import,
        "runs": results,
        "fleet_median": {k: med("fleet", k) for k in results["fleet"][0]},
        "count_median": {k: med("count", k) for k in results["count"][0]},
        "events": events is not None,
    }
    ms = 1000
    report.row("python -c pass", f"{python_pass * ms:7.1f} ms  (interpreter start-up)")
    report.row(
        "python -c 'import taskforce.cli, .daemon'",
        f"{python_import * ms:7.1f} ms  (+{(python_import - python_pass) * ms:.1f} ms our imports)",
    )
    for which, label in (("fleet", f"{args.tasks} tasks"), ("count", f"count: {args.count}")):
        runs = results[which]
        report.row(
            f"{label}: first log line",
            f"{med(which, 'first_log_s') * ms:7.1f} ms",
        )
        report.row(f"{label}: first task running", f"{med(which, 'first_task_s') * ms:7.1f} ms")
        report.row(
            f"{label}: all running",
            f"{med(which, 'all_running_s') * ms:7.1f} ms  (runs: "
            + ", ".join(f"{r['all_running_s'] * ms:.0f}" for r in runs)
            + " ms)",
        )
        spawning = med(which, "all_running_s") - med(which, "first_task_s")
        n = args.tasks if which == "fleet" else args.count
        report.row(
            f"{label}: first -> last task",
            f"{spawning * ms:7.1f} ms  ({spawning / max(1, n - 1) * 1e6:.0f} us per task)",
        )
        cpu = med(which, "daemon_cpu_s")
        report.row(
            f"{label}: daemon CPU until all running",
            f"{cpu * ms:7.1f} ms  ({cpu / n * 1e6:.0f} us per task, imports and config included)",
        )
        if any("child_fork_to_exec_s" in r for r in runs):
            report.row(
                f"{label}: per task (kernel events)",
                f"daemon {med(which, 'daemon_exec_to_next_fork_s') * 1e6:5.0f} us "
                f"(exec'd -> next fork) + child {med(which, 'child_fork_to_exec_s') * 1e6:5.0f} us "
                "(fork -> exec'd), means",
            )
    report.checks.append(
        check(f"{args.tasks} tasks all running", med("fleet", "all_running_s"), TARGET_FLEET_S, "s")
    )
    report.checks.append(
        check(
            f"count: {args.count} all running", med("count", "all_running_s"), TARGET_COUNT_S, "s"
        )
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="separate tasks (default 200)")
    parser.add_argument("--count", type=int, default=1000, help="slots of one task (default 1000)")
    parser.add_argument("--runs", type=int, default=3, help="starts of each fleet (default 3)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per start (s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(
        measure, build_parser(), argv, lambda a: 60 + a.runs * 2 * (a.timeout + 30)
    )


if __name__ == "__main__":
    os.environ.pop("TASKFORCE_WATCHER", None)
    sys.exit(main())
