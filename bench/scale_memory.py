"""Where taskforce's memory per task goes: tracemalloc at two sizes, compared.

    python bench/scale_memory.py [--sizes 100,1000] [--frames 12] [--top 25]
                                 [--task-output discard] [--json]

(also ``python bench/scale.py --memory-profile``). A real daemon runs
``sleep`` tasks under a small wrapper that starts ``tracemalloc`` before
taskforce is imported and, when asked (a trigger file appears), collects
garbage and dumps a snapshot; the daemon is otherwise the usual one
(``common.BenchDaemon``: a byte-compiled copy of the package, cleaned up on
every way out), measured once it has been quiet (under 1 % of a CPU) for a
second. One daemon per size; the snapshots of the smallest and the
largest size are compared: Python allocations that grew, by file:line, by
file, and the few largest by call stack, each divided by the number of
tasks added (bytes per task). The daemon's PSS and USS at each size are
printed beside them, for what tracemalloc cannot see (C allocations,
interpreter arenas, fragmentation).

The wrapper's thread wakes 5 times a second: do not read idle figures
here. Measurements, not tests: nothing is asserted. Linux only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WRAPPER = r"""
import os, sys, threading, time, tracemalloc
if int(sys.argv[3]):
    tracemalloc.start(int(sys.argv[3]))
trigger, dump = sys.argv[1], sys.argv[2]
def watch():
    while True:
        time.sleep(0.2)
        if os.path.exists(trigger):
            import gc
            gc.collect()
            if tracemalloc.is_tracing():
                tracemalloc.take_snapshot().dump(dump + ".tmp")
                os.replace(dump + ".tmp", dump)
            else:
                open(dump, "w").close()
            os.unlink(trigger)
threading.Thread(target=watch, daemon=True).start()
args = sys.argv[4:]
if args[:2] == ["-m", "taskforce"]:
    args = args[2:]
from taskforce.cli import main
sys.exit(main(args))
"""


def where(frame: tracemalloc.Frame) -> str:
    """file:line, shortened to the package path or the module's name."""
    name = frame.filename
    if "/taskforce/" in name:
        name = "taskforce/" + name.rsplit("/taskforce/", 1)[1]
    else:
        name = name.rsplit("/", 1)[-1]
    return f"{name}:{frame.lineno}"


def quiet(pid: int, limit: float) -> None:
    """Wait until ``pid`` used under 1 % of a CPU for a whole second
    (bounded by ``limit`` seconds)."""
    end = time.monotonic() + limit
    before = common.cpu_seconds(pid)
    while time.monotonic() < end:
        time.sleep(1.0)
        now = common.cpu_seconds(pid)
        if now - before < 0.01:
            return
        before = now


def snapshot_at(
    size: int, frames: int, settle: float, output: str | None = None
) -> tuple[tracemalloc.Snapshot | None, dict[str, int]]:
    """The daemon's memory with ``size`` tasks, and its tracemalloc snapshot
    (none when ``frames`` is 0: the daemon runs untraced); ``output``: the
    config's ``settings.output`` (None: the default)."""
    argvs = [common.sleeper_argv(i) for i in range(size)]
    folder = Path(tempfile.mkdtemp(prefix="tfscale-mem-"))
    trigger, dump = folder / "dump-now", folder / "snapshot"
    python = [sys.executable, "-c", WRAPPER, str(trigger), str(dump), str(frames)]
    config = common.fleet_config(argvs)
    if output is not None:
        config["settings"] = {"output": output}
    with common.BenchDaemon(config, python=python) as daemon:
        daemon.start()
        expected = {common.argv_bytes(argv): 1 for argv in argvs}
        daemon.wait_running(expected, 120 + size * 0.3, interval=0.05)
        time.sleep(settle)
        # Every task runs well before the start-up's tail is done (more so
        # traced, on a loaded machine): what it still holds is not per task.
        quiet(daemon.pid, 120 + size * 0.1)
        memory = common.memory_kib(daemon.pid)
        trigger.touch()
        deadline = time.monotonic() + 120
        while not dump.exists() or trigger.exists():
            if time.monotonic() > deadline or not daemon.alive():
                raise RuntimeError(f"no snapshot from the daemon; log:\n{daemon.log_tail()}")
            time.sleep(0.1)
        snapshot = tracemalloc.Snapshot.load(str(dump)) if frames else None
    shutil.rmtree(folder, ignore_errors=True)
    return snapshot, memory


def measure(args: argparse.Namespace) -> dict[str, Any]:
    small, large = args.sizes
    added = large - small
    snaps: dict[int, tracemalloc.Snapshot] = {}
    memory: dict[int, dict[str, int]] = {}
    traced_memory: dict[int, dict[str, int]] = {}
    for size in (small, large):
        # Untraced first: tracemalloc's own tables would inflate the PSS.
        print(f"untraced: {size} tasks ...", file=sys.stderr, flush=True)
        memory[size] = snapshot_at(size, 0, args.settle, args.task_output)[1]
        print(f"tracemalloc: {size} tasks ...", file=sys.stderr, flush=True)
        snap, traced_memory[size] = snapshot_at(size, args.frames, args.settle, args.task_output)
        assert snap is not None
        snaps[size] = snap
    traced = {
        size: sum(s.size for s in snap.statistics("filename")) for size, snap in snaps.items()
    }
    out: dict[str, Any] = {
        "sizes": [small, large],
        "pss_kib": {size: memory[size]["pss"] for size in memory},
        "uss_kib": {size: memory[size]["uss"] for size in memory},
        "traced_kib": {size: traced[size] / 1024 for size in traced},
        "per_task_bytes": {
            "pss": (memory[large]["pss"] - memory[small]["pss"]) * 1024 / added,
            "uss": (memory[large]["uss"] - memory[small]["uss"]) * 1024 / added,
            "traced": (traced[large] - traced[small]) / added,
            "pss_while_tracing": (traced_memory[large]["pss"] - traced_memory[small]["pss"])
            * 1024
            / added,
        },
    }
    for key in ("lineno", "filename"):
        diffs = snaps[large].compare_to(snaps[small], key)
        diffs.sort(key=lambda d: d.size_diff, reverse=True)
        out[f"by_{key}"] = [
            {
                "where": where(d.traceback[0])
                if key == "lineno"
                else where(d.traceback[0]).split(":")[0],
                "bytes_per_task": d.size_diff / added,
                "blocks_per_task": d.count_diff / added,
            }
            for d in diffs[: args.top]
        ]
    diffs = snaps[large].compare_to(snaps[small], "traceback")
    diffs.sort(key=lambda d: d.size_diff, reverse=True)
    out["by_traceback"] = [
        {
            "bytes_per_task": d.size_diff / added,
            # Innermost first; the package's own frames say who asked.
            "stack": [where(f) for f in reversed(d.traceback)][: args.frames],
        }
        for d in diffs[:8]
    ]
    return out


def print_report(out: dict[str, Any]) -> None:
    small, large = out["sizes"]
    per = out["per_task_bytes"]
    print(f"== where taskforce's memory per task goes ({small} -> {large} tasks)")
    for name in ("pss", "uss", "traced", "pss_while_tracing"):
        print(f"  {name:<17} {per[name] / 1024:7.2f} KiB/task")
    print("  (pss, uss: the daemon untraced; traced: the Python allocations that")
    print("  tracemalloc sees, after gc.collect(), in a second daemon run traced)")
    print("\n  by file:line                                  B/task  blocks/task")
    for row in out["by_lineno"]:
        print(f"  {row['where']:<44} {row['bytes_per_task']:7.0f}  {row['blocks_per_task']:6.1f}")
    print("\n  by file                                       B/task")
    for row in out["by_filename"][:10]:
        print(f"  {row['where']:<44} {row['bytes_per_task']:7.0f}")
    print("\n  largest by call stack (innermost first)")
    for row in out["by_traceback"]:
        print(f"  {row['bytes_per_task']:7.0f} B/task  " + " <- ".join(row["stack"][:6]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="two sizes: small,large")
    parser.add_argument("--frames", type=int, default=12, help="frames kept per allocation")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after all run")
    parser.add_argument(
        "--task-output",
        choices=("log", "discard", "inherit"),
        help="the tasks' settings.output (default: the config's default, log: two pipes "
        "per task; discard: none, as bench/scale.py's --task-output for 10,000 tasks)",
    )
    args = parser.parse_args(argv)
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    if len(args.sizes) != 2 or args.sizes[0] >= args.sizes[1]:
        parser.error("--sizes takes two different sizes")
    with common.bounded(600 + args.sizes[1] * 0.2):
        out = measure(args)
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
