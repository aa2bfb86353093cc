"""Run every benchmark with its defaults; one summary table at the end.

Each benchmark runs as its own process (``python bench/NAME.py --json``), one
after the other, so that none disturbs another; their own tables are printed
as they finish, then the summary: target, limit, measured, pass.

    python bench/run_all.py [--quick] [--only NAME[,NAME...]] [--json]

``--quick`` shortens the runs (idle over 10 s, 1 start-up run, 30 kills) for
a fast look; the figures to quote come from a run without it.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common

HERE = Path(__file__).resolve().parent

BENCHES: dict[str, tuple[list[str], list[str]]] = {
    # name: (default arguments, --quick arguments)
    "restart_latency": ([], ["--repeats", "30"]),
    "idle": ([], ["--seconds", "10"]),
    "memory": ([], []),
    "startup": ([], ["--runs", "1"]),
    "reaction": (
        [],
        ["--repeats", "10", "--config-repeats", "4", "--poll-repeats", "8", "--idle-seconds", "8"],
    ),
    "replay_speed": ([], ["--events", "200000", "--sizes", "50000"]),
}


def run_one(name: str, extra: list[str]) -> dict[str, Any] | None:
    argv = [sys.executable, str(HERE / f"{name}.py"), "--json", *extra]
    print(f"-- running {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate()
    except BaseException:
        # Ctrl-C reached the benchmark too (same process group); SIGTERM may
        # not have: pass it on, then let it clean up before we go.
        common.terminate(proc, 60)
        raise
    took = time.monotonic() - started
    if proc.returncode != 0:
        print(f"-- {name}: failed (exit {proc.returncode}) after {took:.0f} s", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out)
    result["took_s"] = took
    common.print_table(
        f"{result['bench']} [{took:.0f} s]", result["params"], result["table"], result["notes"]
    )
    sys.stdout.flush()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (not for quoting)")
    parser.add_argument("--only", help="comma list of benchmarks: " + ", ".join(BENCHES))
    parser.add_argument("--json", action="store_true", help="print every result as JSON")
    args = parser.parse_args(argv)
    names = list(BENCHES) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt))
    results: dict[str, dict[str, Any] | None] = {}
    try:
        for name in names:
            default, quick = BENCHES[name]
            results[name] = run_one(name, quick if args.quick else default)
    except KeyboardInterrupt:
        print("run_all: interrupted", file=sys.stderr)
        return 130

    if args.json:
        json.dump({"machine": common.machine(), "results": results}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0 if all(results.values()) else 1

    machine = common.machine()
    print()
    print(
        f"machine: {machine['cpu']}, {machine['cpus']} CPUs, Linux {machine['kernel']}, "
        f"Python {machine['python']}, taskforce {machine['taskforce_rev']}, "
        f"load {' '.join(f'{x:.2f}' for x in machine['loadavg'])} at start"
        + (" (--quick)" if args.quick else "")
    )
    checks = []
    for result in results.values():
        if result is None:
            checks.append(common.Check("(failed to run)", "-", float("nan"), "", False))
            continue
        for c in result["checks"]:
            checks.append(common.Check(c["what"], c["target"], c["measured"], c["unit"], c["pass"]))
    common.print_checks(checks)
    failed = [n for n, r in results.items() if r is None]
    if failed:
        print(f"  failed to run: {', '.join(failed)}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
