"""The daemon's memory with a fleet running: PSS, RSS and USS.

taskforce runs ``--tasks`` sleepers; once all run and ``--settle`` seconds
have passed, ``/proc/DAEMON/smaps_rollup`` is read:

- PSS: proportional set size, pages shared with other processes counted as a
  share (the target);
- RSS: every resident page, shared or not;
- USS: unique set size, the private pages: what exiting the daemon frees.

For scale, the same is read for a bare interpreter (``python -S -c`` blocked
in ``signal.pause()``) started the same way: that much is Python's, not
ours.  PSS depends on which other processes map the same files (this
benchmark is itself a Python process, which shares the interpreter's pages);
USS does not.

``--imports`` adds where the memory comes from: USS growth across each
module's import, nested as imported, in a fresh interpreter.

    python bench/memory.py [--tasks 100] [--imports [MIB]] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence

import common
from common import BenchDaemon, Report, check

TARGET_PSS_MIB = 20.0

#: Run in a fresh interpreter: import the modules named in argv, recording
#: the growth of the unique set size (USS) across each module's execution
#: (its own code and data plus whatever it imports first).  Prints JSON.
IMPORT_PROBE = r"""
import json, sys


def uss():
    values = {}
    with open("/proc/self/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                values[parts[0][:-1]] = int(parts[1])
    return values["Private_Clean"] + values["Private_Dirty"]


records, depth = [], [0]


class Loader:
    def __init__(self, loader, name):
        self._loader, self._name = loader, name

    def __getattr__(self, attr):
        return getattr(self._loader, attr)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        index = len(records)
        records.append(None)
        depth[0] += 1
        before = uss()
        try:
            self._loader.exec_module(module)
        finally:
            depth[0] -= 1
            records[index] = (depth[0], self._name, uss() - before)


class Finder:
    def find_spec(self, name, path=None, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = Loader(spec.loader, name)
                return spec
        return None


sys.meta_path.insert(0, Finder())
start = uss()
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
json.dump({"start_kib": start, "end_kib": uss(), "modules": records}, sys.stdout)
"""


def bare_interpreter_kib(settle: float) -> dict[str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", "import signal; signal.pause()"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(min(settle, 1.0))
        return common.memory_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)


def import_costs(args: argparse.Namespace) -> dict[str, object]:
    """USS growth by imported module, as the daemon imports them."""
    with BenchDaemon({"tasks": {}}) as probe:  # not started: for its snapshot
        out = subprocess.run(
            [sys.executable, "-c", IMPORT_PROBE, "taskforce.cli", "taskforce.daemon"],
            env=probe.env,
            cwd=probe.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def measure(args: argparse.Namespace) -> Report:
    argvs = [common.sleeper_argv(i) for i in range(args.tasks)]
    lines = dict.fromkeys((common.argv_bytes(a) for a in argvs), 1)
    report = Report("memory", {"tasks": args.tasks})
    with BenchDaemon(common.fleet_config(argvs)) as daemon:
        daemon.start()
        daemon.wait_running(lines, timeout=60)
        time.sleep(args.settle)
        mem = common.memory_kib(daemon.pid)
        threads = len(common.threads(daemon.pid))
    bare = bare_interpreter_kib(args.settle)
    report.figures = {"daemon_kib": mem, "bare_python_kib": bare, "threads": threads}

    def mib(kib: int) -> str:
        return f"{kib / 1024:6.2f} MiB"

    report.row("", "      PSS   PSS alone*        RSS         USS")
    for label, m in (
        (f"taskforce, {args.tasks} tasks", mem),
        ("bare python -S (for scale)", bare),
    ):
        report.row(
            label,
            f"{mib(m['pss'])}  {mib(m['pss_sole_python'])}  {mib(m['rss'])}  {mib(m['uss'])}",
        )
    report.row(
        "taskforce minus bare python",
        "  ".join(mib(mem[k] - bare[k]) for k in ("pss", "pss_sole_python", "rss", "uss")),
    )
    report.notes.append(
        "PSS alone*: PSS with the interpreter's files (python, libpython, extension "
        "modules) counted whole, as if no other Python process shared them; the "
        "target is checked on it, since plain PSS falls as other Python processes "
        "start on the host"
    )
    if args.imports:
        costs = import_costs(args)
        report.figures["imports"] = costs
        start, end = costs["start_kib"], costs["end_kib"]
        assert isinstance(start, int) and isinstance(end, int)
        report.row(
            "imports (fresh interpreter, USS)",
            f"{mib(start)} at start -> {mib(end)} after importing taskforce.cli and .daemon",
        )
        modules = costs["modules"]
        assert isinstance(modules, list)
        for depth, name, kib in modules:
            if kib >= args.imports * 1024 and depth < 4:
                report.row(f"  {'  ' * depth}{name}", f"+{mib(kib)}")
    if mem["swap"]:
        report.notes.append(f"{mem['swap']} KiB of the daemon were swapped out")
    report.checks.append(
        check(
            f"daemon PSS alone*, {args.tasks} tasks",
            mem["pss_sole_python"] / 1024,
            TARGET_PSS_MIB,
            "MiB",
            strict=True,
        )
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100, help="tasks running (default 100)")
    parser.add_argument("--settle", type=float, default=2.0, help="wait before reading (s)")
    parser.add_argument(
        "--imports",
        type=float,
        nargs="?",
        const=0.25,
        metavar="MIB",
        help="also show what each import adds to USS (modules adding at least MIB, "
        "default 0.25), measured in a fresh interpreter",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(measure, build_parser(), argv, lambda a: 120 + a.settle * 2)


if __name__ == "__main__":
    sys.exit(main())
