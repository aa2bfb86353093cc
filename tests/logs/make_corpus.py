"""Write the recorded-run corpus: one small event log per scenario.

Each log is a run of the real core in the simulator, kept so that any change
in the core's behaviour shows up as a replay divergence in
tests/test_replay.py.  When a change is meant, look at the divergence, then
run ``python tests/logs/make_corpus.py`` and commit the new logs with it.
A failing property test's shrunk run (property_tests/failures/) belongs here
too, once the bug it found is fixed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from taskforce.core.codec import freeze
from taskforce.eventlog import write_steps
from taskforce.simulator import IGNORE_TERM, WRAPPER, Simulation

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root"}


def cfg(tasks: dict[str, Any], **top: Any) -> dict[str, Any]:
    return freeze({"tasks": tasks, **top})


def restart() -> Simulation:
    sim = Simulation(behaviours={"wrapped": WRAPPER})
    sim.boot(
        cfg(
            {
                "web": {"commands": {"start": ("/usr/bin/web",)}, "count": 2},
                "wrapped": {"commands": {"start": ("/bin/sh", "-c", "app")}},
            }
        ),
        environ=ENV,
    )
    sim.advance(5)
    sim.kill(sim.running()[("web", 1)])
    sim.advance(5)
    sim.kill(sim.running()[("wrapped", 0)])
    sim.settle()
    return sim


def reload() -> Simulation:
    base = {f"t{i}": {"commands": {"start": (f"/usr/bin/t{i}",)}} for i in range(4)}
    sim = Simulation()
    sim.boot(cfg(base), environ=ENV)
    sim.advance(2)
    changed = dict(
        base,
        t2={"commands": {"start": ("/usr/bin/t2", "--new")}},
        t4={"commands": {"start": ("/usr/bin/t4",)}, "count": 2},
    )
    del changed["t0"]
    sim.reload(cfg(changed))
    sim.reject("tasks.t1.count: expected a whole number")
    sim.advance(2)
    sim.settle()
    return sim


def roles() -> Simulation:
    tasks = {
        "web": {"commands": {"start": ("/usr/bin/web",)}, "roles": ("web",)},
        "db": {"commands": {"start": ("/usr/bin/db",)}, "roles": ("db",), "start_delay": 1},
        "app": {"commands": {"start": ("/usr/bin/app",)}, "requires": ("db",)},
    }
    sim = Simulation()
    sim.boot(cfg(tasks), roles=("web",), environ=ENV)
    sim.advance(3)
    sim.reload(roles=("web", "db"))
    sim.advance(3)
    sim.reload(roles=("db",))
    sim.advance(3)
    # A value reaches every task: db and app restart with it.
    sim.reload(roles=("db", "dc"), role_values={"dc": "eu-west-1"})
    sim.settle()
    return sim


def crash_loop() -> Simulation:
    sim = Simulation()
    # (a start limit above what this scenario reaches: it shows the backoff)
    crashy = {"commands": {"start": ("/usr/bin/crashy",)}, "start_limit": {"burst": 10}}
    sim.boot(cfg({"crashy": crashy}), environ=ENV)
    for _ in range(5):
        sim.exit(sim.running()[("crashy", 0)], 3)
        sim.advance(sim.timer - sim.now if sim.timer else 1)
    sim.advance(10)
    sim.exit(sim.running()[("crashy", 0)], 3)
    sim.settle(max_time=60)
    return sim


def shutdown() -> Simulation:
    tasks = {
        "db": {"commands": {"start": ("/usr/bin/db",)}},
        "migrate": {"control": "once", "requires": ("db",), "commands": {"start": ("/usr/bin/m",)}},
        "web": {"commands": {"start": ("/usr/bin/web",)}, "requires": ("migrate",), "count": 2},
    }
    sim = Simulation(behaviours={"web": IGNORE_TERM})
    sim.boot(cfg(tasks), environ=ENV)
    sim.advance(1)
    sim.exit(sim.running()[("migrate", 0)], 0)
    sim.advance(1)
    sim.request_stop(reason="SIGTERM")
    sim.settle()
    return sim


SCENARIOS: dict[str, Callable[[], Simulation]] = {
    "restart": restart,
    "reload": reload,
    "roles": roles,
    "crash_loop": crash_loop,
    "shutdown": shutdown,
}


def main() -> None:
    for name, scenario in SCENARIOS.items():
        path = os.path.join(HERE, f"{name}.jsonl")
        write_steps(path, scenario().log, note=f"scenario {name}: tests/logs/make_corpus.py")
        print(path)


if __name__ == "__main__":
    main()
