"""Replay speed: events per second of ``taskforce replay`` on a long log, and its memory.

A log of ``--events`` events (one million by default) is made by simulating
a realistic run with ``taskforce.simulator`` -- the real core, a fake clock,
fake processes -- and writing every step in the event log's format through
``taskforce.eventlog.step_line``, with a checkpoint (a snapshot of the
core) every 8 MiB as ``taskforce.eventlog.Recorder`` writes them.  The run:
16 tasks, 25 slots (services watching their config files, a pool of web
workers that requires a service and has a start delay, workers with a time
limit and a role, a crash-looping task, a task reloaded by SIGHUP on a file
change, a once task); at random simulated times, processes are killed or
crash, watched files change, and now and then the config is edited (one
task changed), a broken config is rejected or the host's roles change.
Timers (start delays, back-offs, time limits) fire as the clock moves.
Generating is timed apart.

The first ``--sizes`` events of the same run are written to shorter logs
(100,000 and 300,000 by default) at the same time, to show the replay's
memory does not grow with the log's length.

Each log is replayed by ``taskforce.tools.replay`` in a fresh process (the
package byte-compiled, as installed) as ``taskforce replay FILE`` runs it:
one process per CPU for a long log, each replaying a segment between
checkpoints.  The longest is replayed again in one process, for the cost of
the replay itself.  Timed from the first line read to the verdict
(interpreter start-up and imports apart); memory is the peak RSS of any one
process (``VmHWM`` of the first, reset after the imports through
``/proc/self/clear_refs``; the workers' from ``getrusage``).  Every replay
must end with every effect and every checkpoint matched.

If the target is missed (or with ``--profile always``), the replay of the
shortest log is run again in one process under cProfile, and the time is
broken down by layer (reading + decoding, the core, comparing the produced
effects, checking checkpoints) with the top functions.

    python bench/replay_speed.py [--events 1000000] [--sizes 100000,300000]
        [--profile auto|always|never] [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
from common import Report, check

TARGET_EVENTS_PER_S = 50_000
#: Peak RSS of the longest replay over that of the shortest: "flat".
TARGET_RSS_GROWTH_MIB = 4.0

#: The replay, in a fresh interpreter: timed from just before the first line.
REPLAY_CHILD = r"""
import io, json, resource, sys, time
def status(name):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return None
t0 = time.perf_counter()
from taskforce.tools import replay
t1 = time.perf_counter()
rss_imports = status("VmRSS")
try:  # reset the peak (VmHWM) to the current RSS: the peak of the replay alone
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    reset = True
except OSError:
    reset = False
out = io.StringIO()
rc = replay(sys.argv[1], out=out, jobs=int(sys.argv[2]))
t2 = time.perf_counter()
json.dump({"rc": rc, "output": out.getvalue(), "import_s": t1 - t0, "replay_s": t2 - t1,
           "rss_imports_kib": rss_imports, "hwm_reset": reset,
           "replay_peak_kib": status("VmHWM") if reset else None,
           "rss_end_kib": status("VmRSS"),
           "workers_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss},
          sys.stdout)
"""

#: The same under cProfile: the time by layer and the top functions.
PROFILE_CHILD = r"""
import cProfile, io, json, pstats, sys
from taskforce.tools import replay
profile = cProfile.Profile()
out = io.StringIO()
profile.enable()
rc = replay(sys.argv[1], out=out)
profile.disable()
stats = pstats.Stats(profile).stats
total = sum(
    v[3] for k, v in stats.items()
    if k[0].endswith("taskforce/tools.py") and k[2] == "replay_segment"
)
def where(key):
    path, line, name = key
    for marker in ("site-packages/", "/taskforce/", "python3."):
        if marker in path:
            path = path[path.index(marker):]
            break
    return f"{path}:{line}({name})"
layers = {
    "read_log": ("taskforce/eventlog.py", "read_log"),
    "orjson.loads": ("~", "<orjson.loads>"),
    "codec.decode": ("taskforce/core/codec.py", "decode"),
    "Supervisor.handle": ("taskforce/core/supervisor.py", "handle"),
    "lifecycle.fire": ("taskforce/core/lifecycle.py", "fire"),
    "codec.matches": ("taskforce/core/codec.py", "matches"),
    "checkpoints": ("taskforce/tools.py", "state_differences"),
}
found = {}
for label, (suffix, name) in layers.items():
    found[label] = sum(v[3] for k, v in stats.items() if k[0].endswith(suffix) and k[2] == name)
top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
cumulative = sorted(stats.items(), key=lambda kv: kv[1][3], reverse=True)[:15]
json.dump({
    "rc": rc, "total_s": total, "layers": found,
    "top_tottime": [[where(k), v[1], v[2], v[3]] for k, v in top],
    "top_cumtime": [[where(k), v[1], v[2], v[3]] for k, v in cumulative],
}, sys.stdout)
"""

#: The daemon's environment in the simulated run (handed to every task).
ENVIRON = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "LOGNAME": "root",
    "USER": "root",
    "SHELL": "/bin/bash",
    "TERM": "xterm-256color",
    "TZ": "UTC",
    "INVOCATION_ID": "9f6c1e2a5b7d4c3e8f0a1b2c3d4e5f60",
    "JOURNAL_STREAM": "8:23456",
}

SERVICES = 8


def raw_config(rev: int) -> dict[str, Any]:
    """The simulated host's config; ``rev`` changes one service's define."""
    tasks: dict[str, Any] = {}
    for i in range(SERVICES):
        tasks[f"svc{i}"] = {
            "defines": {"conf": f"/etc/svc{i}.conf", "rev": str(rev if rev % SERVICES == i else 0)},
            "commands": {"start": [f"/usr/sbin/svc{i}", "-f", "{conf}", "--rev", "{rev}"]},
            "events": [{"type": "file_change", "path": "{conf}", "command": "stop"}],
        }
    tasks["web"] = {
        "count": 4,
        "requires": "svc0",
        "start_delay": 2,
        "commands": {"start": ["/usr/bin/web", "--port", "80{Task_instance}"]},
    }
    tasks["worker"] = {
        "count": 3,
        "roles": ["batch"],
        "time_limit": 600,
        "commands": {"start": ["/usr/bin/worker", "--queue", "jobs"]},
    }
    tasks["flaky"] = {"commands": {"start": ["/usr/bin/flaky"]}}
    tasks["logger"] = {
        "commands": {"start": ["/usr/sbin/logger-daemon", "-c", "/etc/logger.conf"]},
        "events": [{"type": "file_change", "path": "/etc/logger.conf", "signal": "HUP"}],
    }
    tasks["report"] = {"control": "once", "commands": {"start": ["/usr/bin/report"]}}
    tasks["metrics"] = {"count": 2, "commands": {"start": ["/usr/bin/metrics", "{Task_instance}"]}}
    tasks["cron"] = {"commands": {"start": ["/usr/sbin/cron", "-f"]}}
    return {"settings": {"stop_timeout": 5}, "tasks": tasks}


class Generator:
    """Simulates the run and writes its steps to one or more log files."""

    def __init__(self, seed: int, paths: dict[int, Path]) -> None:
        from taskforce import __version__
        from taskforce.config import load_config_text
        from taskforce.core.snapshot import snapshot
        from taskforce.eventlog import Checkpoints, snapshot_line, step_line
        from taskforce.simulator import Simulation

        self.step_line = step_line
        self.checkpoint_line = lambda: snapshot_line(snapshot(self.sim.core))
        self.checkpoints = Checkpoints()
        self.load = load_config_text
        self.rng = random.Random(seed)
        self.sim = Simulation()
        self.rev = 0
        self.roles: tuple[str, ...] = ("batch",)
        first = json.dumps(raw_config(0), indent=1)
        header = {
            "taskforce_eventlog": 1,
            "taskforce": __version__,
            "config_sha256": hashlib.sha256(first.encode()).hexdigest(),
            "seed": 0,
        }
        # limit -> file, longest first: a step goes to every file whose limit is above it.
        self.files = {
            limit: open(path, "w", encoding="utf-8")  # noqa: SIM115
            for limit, path in sorted(paths.items(), reverse=True)
        }
        for handle in self.files.values():
            handle.write(json.dumps({**header, "part": 0}) + "\n")
        self.steps = 0
        self.kinds: Counter[str] = Counter()
        self.violations = 0

    def config(self) -> Any:
        return self.load(json.dumps(raw_config(self.rev), indent=1), "bench.conf")

    def flush(self) -> None:
        sim = self.sim
        limit = max(self.files)
        due = False
        for event, effects in sim.log:
            if self.steps >= limit:
                break
            line = self.step_line(self.steps, event, effects)
            for size, handle in self.files.items():
                if self.steps < size:
                    handle.write(line + "\n")
            due = self.checkpoints.wrote(len(line) + 1) or due
            self.kinds[type(event).__name__] += 1
            self.steps += 1
        if due:
            # As the daemon's Recorder writes them, but after this batch of
            # steps: the simulation's core has already handled all of it.
            line = self.checkpoint_line()
            self.checkpoints.taken(len(line))
            for size, handle in self.files.items():
                if self.steps < size:
                    handle.write(line + "\n")
        sim.log.clear()
        sim.logs.clear()
        sim.commands.clear()
        sim.replies.clear()
        self.violations += len(sim.violations)
        sim.violations.clear()
        # Dead, reaped processes are of no more use: keep the table small.
        for pid in [pid for pid, proc in sim.processes.items() if not proc.present]:
            del sim.processes[pid]

    def happen(self) -> None:
        """Time passes, then one thing happens."""
        sim, rng = self.sim, self.rng
        sim.advance(rng.uniform(0.2, 3.0))
        running = sim.running()
        roll = rng.random()
        if roll < 0.45 and running:
            slot = rng.choice(sorted(running))
            sim.kill(running[slot], rng.choice(("SIGKILL", "SIGTERM")))
        elif roll < 0.60:
            sim.touch(f"/etc/svc{rng.randrange(SERVICES)}.conf")
        elif roll < 0.65:
            sim.touch("/etc/logger.conf")
        elif roll < 0.75 and ("flaky", 0) in running:
            sim.exit(running[("flaky", 0)], 1)  # often within 1 s of its start: back-off
        elif roll < 0.77 and ("report", 0) in running:
            sim.exit(running[("report", 0)], 0)
        elif roll < 0.9990:
            pass  # only timers
        elif roll < 0.9995:
            self.rev += 1
            sim.reload(self.config())
        elif roll < 0.9997:
            sim.reject("bench.conf:3: tasks.svc0.count: count must be a whole number; got 'x'")
        else:
            self.roles = () if self.roles else ("batch",)
            sim.reload(roles=self.roles)

    def run(self, events: int) -> None:
        self.sim.boot(self.config(), self.roles, environ=ENVIRON)
        self.flush()
        while self.steps < events:
            self.happen()
            self.flush()
        for handle in self.files.values():
            handle.close()


def generate(args: argparse.Namespace, root: Path) -> tuple[dict[int, Path], dict[str, Any]]:
    sizes = sorted({n for n in args.sizes if 0 < n < args.events} | {args.events})
    paths = {n: root / f"replay-{n}.jsonl" for n in sizes}
    gen = Generator(args.seed, paths)
    t0 = time.perf_counter()
    gen.run(args.events)
    took = time.perf_counter() - t0
    if gen.steps < args.events:
        raise RuntimeError(f"generated only {gen.steps} events")
    return paths, {
        "seconds": took,
        "events_per_s": gen.steps / took,
        "kinds": dict(gen.kinds.most_common()),
        "violations": gen.violations,
        "simulated_s": gen.sim.now,
        "bytes": {n: p.stat().st_size for n, p in paths.items()},
    }


def replay_once(
    path: Path, env: dict[str, str], cwd: Path, timeout: float, jobs: int
) -> dict[str, Any]:
    """Replay ``path`` in a fresh process; its own timings and its peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", REPLAY_CHILD, str(path), str(jobs)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"replay of {path} failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    if result["rc"] != 0:
        raise RuntimeError(f"replay of {path} did not match: {result['output'].strip()}")
    result["wall_s"] = wall
    result["maxrss_kib"] = usage.ru_maxrss
    return result


def profile_once(path: Path, env: dict[str, str], cwd: Path, timeout: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROFILE_CHILD, str(path)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def peak_kib(result: dict[str, Any]) -> int:
    """Peak RSS of any one process of the replay: the first (VmHWM reset after
    the imports, else its whole life from ``wait4``) or a worker's."""
    peak = result.get("replay_peak_kib")
    first = peak if peak is not None else result["maxrss_kib"]
    return int(max(first, result.get("workers_peak_kib") or 0))


def measure(args: argparse.Namespace) -> Report:
    report = Report("replay_speed", {"events": args.events, "seed": args.seed})
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tfreplay-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        # One byte-compiled copy of the package serves the generator (here)
        # and the replays (child processes), so both run the same code.
        src = common.snapshot_package(root / "pkg")
        sys.path.insert(0, str(src))
        env = {**os.environ, "PYTHONPATH": str(src)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        paths, gen = generate(args, root)
        report.figures["generation"] = gen
        kinds = ", ".join(f"{k} {v}" for k, v in list(gen["kinds"].items())[:6])
        report.row(
            f"generate {args.events:,} events (simulated)",
            f"{gen['seconds']:.1f} s ({gen['events_per_s']:,.0f} events/s), "
            f"{gen['simulated_s'] / 86400:.1f} simulated days",
        )
        report.row("  events by kind", kinds)
        if gen["violations"]:
            report.notes.append(f"the simulator saw {gen['violations']} shell-contract violations")

        from taskforce.tools import auto_jobs

        def replay_row(size: int, jobs: int) -> dict[str, Any]:
            r = replay_once(paths[size], env, root, args.timeout, jobs)
            r["events"] = size
            r["jobs"] = jobs
            r["bytes"] = gen["bytes"][size]
            r["events_per_s"] = size / r["replay_s"]
            report.row(
                f"replay {size:>9,} events ({r['bytes'] / 2**20:,.0f} MiB), {jobs} process"
                + ("es" if jobs > 1 else ""),
                f"{r['replay_s']:6.1f} s = {r['events_per_s']:8,.0f} events/s  "
                f"({r['bytes'] / r['replay_s'] / 2**20:.1f} MiB/s); "
                f"peak RSS of one process {peak_kib(r) / 1024:.1f} MiB "
                f"(after imports {r['rss_imports_kib'] / 1024:.1f}); "
                f"start-up + imports {r['import_s'] * 1000:.0f} ms",
            )
            return r

        # As `taskforce replay FILE` runs: one process per CPU for a long log.
        results = {size: replay_row(size, auto_jobs(str(paths[size]))) for size in sorted(paths)}
        report.figures["replays"] = results
        # And in one process, for the cost per event of the replay itself.
        single = replay_row(max(paths), 1)
        report.figures["single_process"] = single
        longest = results[max(results)]
        # Memory, like with like: the shortest and the longest log, each in one process.
        shortest = results[min(results)]
        if shortest["jobs"] != 1:
            shortest = replay_row(min(results), 1)
        growth = (peak_kib(single) - peak_kib(shortest)) / 1024
        report.checks.append(
            common.Check(
                f"replay speed, {args.events:,} events",
                f">= {TARGET_EVENTS_PER_S:,} events/s",
                round(longest["events_per_s"]),
                "events/s",
                longest["events_per_s"] >= TARGET_EVENTS_PER_S,
            )
        )
        if len(results) > 1:
            report.checks.append(
                check(
                    f"peak RSS growth, {min(results):,} -> {max(results):,} events, one process",
                    round(growth, 2),
                    TARGET_RSS_GROWTH_MIB,
                    "MiB",
                )
            )

        report.row(
            "  one process against the parallel replay",
            f"{single['events_per_s']:,.0f} events/s; "
            f"{longest['events_per_s'] / single['events_per_s']:.2f}x with {longest['jobs']}",
        )
        missed = longest["events_per_s"] < TARGET_EVENTS_PER_S
        if args.profile == "always" or (args.profile == "auto" and missed):
            size = min(results)
            prof = profile_once(paths[size], env, root, args.timeout)
            report.figures["profile"] = prof
            total = prof["total_s"]
            report.row(f"[cProfile, replay of {size:,} events: {total:.1f} s profiled]", "")
            layers = prof["layers"]
            compare = layers["codec.matches"]
            rest = (
                total
                - layers["read_log"]
                - layers["Supervisor.handle"]
                - compare
                - layers["checkpoints"]
            )
            for label, value in (
                ("reading: read_log (orjson.loads + codec.decode)", layers["read_log"]),
                ("  orjson.loads", layers["orjson.loads"]),
                ("  codec.decode", layers["codec.decode"]),
                ("the core: Supervisor.handle", layers["Supervisor.handle"]),
                ("  lifecycle.fire (transitions)", layers["lifecycle.fire"]),
                ("comparing: codec.matches of the produced effects", compare),
                ("checking the state at checkpoints", layers["checkpoints"]),
                ("the rest (replay loop)", rest),
            ):
                report.row(f"  {label}", f"{value:6.2f} s  {value / total * 100:5.1f}%")
            report.row("  top 15 by own time", "ncalls     own s   cumul s")
            for where, ncalls, tottime, cumtime in prof["top_tottime"]:
                report.row(f"    {where}", f"{ncalls:>8} {tottime:8.2f} {cumtime:9.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="events in the log (default 1,000,000)"
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        default=[100_000, 300_000],
        help="also replay the first N events, comma list (default 100000,300000)",
    )
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="profile the shortest replay: when the target is missed (auto), always, never",
    )
    parser.add_argument("--keep", metavar="DIR", help="write the logs to DIR and keep them")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="per replay (s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(
        measure,
        build_parser(),
        argv,
        # generation >= 2,000 events/s; replays >= 5,000 events/s; profile.
        lambda a: 120 + a.events / 2000 + (a.events + sum(a.sizes)) / 5000 + 300,
    )


if __name__ == "__main__":
    sys.exit(main())
