"""What the daemon's own decisions cost as a fleet grows: the core and the
config loader alone, in this process, timed in CPU seconds.

No process is started: the events a daemon would see are fed to a real
``Supervisor`` as the shell feeds them (every ``Spawn`` answered by a
``ProcessStarted``), so what is timed is Python work that grows with the
fleet, and CPU time (``time.process_time``) keeps the figure steady on a
machine shared with other jobs, where wall-clock figures of a real daemon
move by several times.  For each size and shape (``fleet``: N separate
tasks; ``count``: one task with ``count: N``):

- ``config``: reading, checking and building the config file (JSON text,
  one entry per task; the daemon's start-up does this once);
- ``start``: the core's answer to the config, then one ``ProcessStarted``
  per slot (the start-up's decisions);
- ``restart``: a slot's process killed, its replacement started: the
  core's work for one restart (median of ``--restarts``);
- ``change``: one task's argv changed in the file: reading, checking and
  building it again, and the core's answer (the ``Signal`` that stops the
  changed task) -- the CPU part of applying a one-task change;
- ``shutdown``: a stop asked, then every process's exit.

One run per size and shape, in this process, with its caches warm as in a
running daemon (run it twice to see the spread).  Any taskforce importable
as ``taskforce`` is measured (``PYTHONPATH=`` another checkout for a
before/after).  A measurement, not a test.

    python bench/core_scale.py [--sizes 100,1000,10000] [--restarts 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from taskforce.config import load_config
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.supervisor import Supervisor


def config_of(shape: str, size: int, changed: int | None = None) -> dict[str, Any]:
    if shape == "count":
        argv = ["/bin/sleep", "100000" if changed is None else "99999"]
        return {"tasks": {"w": {"control": "wait", "count": size, "commands": {"start": argv}}}}
    tasks = {}
    for i in range(size):
        seconds = "99999" if i == changed else str(100000 + i)
        tasks[f"t{i:05d}"] = {"control": "wait", "commands": {"start": ["/bin/sleep", seconds]}}
    return {"tasks": tasks}


class Fleet:
    """A core fed as the shell feeds it, with pids of its own."""

    def __init__(self) -> None:
        self.core = Supervisor()
        self.pid = 1000
        self.now = 1.0

    def feed(self, event: ev.Event) -> list[fx.Effect]:
        """Feed ``event``, and a ``ProcessStarted`` for every ``Spawn`` it asks."""
        effects = list(self.core.handle(event))
        for effect in effects:
            if isinstance(effect, fx.Spawn):
                self.pid += 1
                self.core.handle(
                    ev.ProcessStarted(
                        at=self.now,
                        task=effect.task,
                        instance=effect.instance,
                        generation=effect.generation,
                        pid=self.pid,
                    )
                )
        return effects

    def tick(self) -> float:
        self.now += 1.0
        return self.now


def measure(shape: str, size: int, restarts: int, folder: Path) -> dict[str, float]:
    path = folder / f"{shape}-{size}.conf"
    path.write_text(json.dumps(config_of(shape, size), indent=1))
    fleet = Fleet()
    out: dict[str, float] = {}
    began = time.process_time()
    fleet.core.handle(ev.Booted(at=fleet.now, environ=dict(os.environ), host="h", fqdn="h", pid=1))
    config = load_config(str(path), roles=None)
    out["config_s"] = time.process_time() - began
    began = time.process_time()
    fleet.feed(ev.ConfigLoaded(at=fleet.tick(), config=config, roles=None))
    out["start_s"] = time.process_time() - began
    live = sorted(slot.pid for task in fleet.core.tasks.values() for slot in task.slots if slot.pid)
    times = []
    for i in range(restarts):
        pid = live[(i * 7919) % len(live)]
        began = time.process_time()
        effects = fleet.feed(
            ev.ProcessExited(
                at=fleet.tick(), pid=pid, exit_code=None, signal="SIGKILL", group_alive=False
            )
        )
        times.append(time.process_time() - began)
        live[(i * 7919) % len(live)] = fleet.pid
        assert any(isinstance(e, fx.Spawn) for e in effects), "a killed process is replaced"
    out["restart_ms"] = statistics.median(times) * 1000
    path.write_text(json.dumps(config_of(shape, size, changed=size // 2), indent=1))
    began = time.process_time()
    config = load_config(str(path), roles=None)
    effects = fleet.feed(
        ev.ConfigLoaded(at=fleet.tick(), config=config, roles=None, source="config")
    )
    out["change_s"] = time.process_time() - began
    signals = [e for e in effects if isinstance(e, fx.Signal)]
    assert signals, "the changed task is stopped"
    began = time.process_time()
    fleet.feed(ev.StopRequested(at=fleet.tick()))
    for task in list(fleet.core.tasks.values()):
        for slot in list(task.slots):
            if slot.pid is not None:
                fleet.feed(
                    ev.ProcessExited(
                        at=fleet.now,
                        pid=slot.pid,
                        exit_code=None,
                        signal="SIGTERM",
                        group_alive=False,
                    )
                )
    out["shutdown_s"] = time.process_time() - began
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="fleet sizes (100,1000,10000)")
    parser.add_argument("--shapes", default="fleet,count", help="fleet, count or both")
    parser.add_argument("--restarts", type=int, default=200, help="restarts timed per size")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="tfcore") as folder:
        for shape in args.shapes.split(","):
            for size in (int(word) for word in args.sizes.split(",")):
                figures = measure(shape, size, args.restarts, Path(folder))
                results.append({"shape": shape, "size": size, **figures})
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print("core and config loader, CPU seconds in this process (restart: ms)")
    header = ("shape", "size", "config_s", "start_s", "restart_ms", "change_s", "shutdown_s")
    print("  ".join(f"{word:>10}" for word in header))
    for row in results:
        cells = [row["shape"], str(row["size"])]
        cells += [f"{row[key]:.3f}" for key in header[2:]]
        print("  ".join(f"{cell:>10}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
