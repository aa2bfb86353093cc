"""A supervisor restored from a snapshot carries on exactly as the original."""

from __future__ import annotations

import json

from taskforce.core.snapshot import restore, snapshot
from taskforce.core.supervisor import Supervisor
from taskforce.simulator import IGNORE_TERM, WRAPPER, Simulation

CONFIG = {
    "tasks": {
        "db": {"commands": {"start": ("db",)}, "start_delay": 1},
        "migrate": {"control": "once", "requires": ("db",), "commands": {"start": ("migrate",)}},
        "web": {
            "count": 3,
            "requires": ("migrate",),
            "time_limit": 30,
            "commands": {"start": ("web", "{Task_instance}")},
            "events": ({"type": "file_change", "path": ("/etc/web.conf",), "command": "stop"},),
        },
        "crashy": {"commands": {"start": ("crashy",)}},
    }
}


def scenario() -> Simulation:
    sim = Simulation(behaviours={"web": IGNORE_TERM, "db": WRAPPER})
    sim.boot(CONFIG)
    sim.advance(2)
    sim.exit(sim.running()[("migrate", 0)], 0)
    for _ in range(3):
        sim.exit(sim.running()[("crashy", 0)], 1)
        sim.advance(5)  # past its backoff
    sim.touch("/etc/web.conf")
    sim.advance(3)
    sim.advance(40)
    web0 = sim.running()[("web", 0)]
    sim.kill(web0)
    sim.reload({"tasks": {**CONFIG["tasks"], "web": {**CONFIG["tasks"]["web"], "count": 1}}})
    sim.advance(1)
    sim.request_stop()
    sim.settle()
    return sim


def test_restored_core_replays_the_rest_of_the_run_identically() -> None:
    log = scenario().log
    assert len(log) > 30
    for cut in range(0, len(log), 3):
        core = Supervisor()
        for event, _ in log[:cut]:
            core.handle(event)
        saved = json.loads(json.dumps(snapshot(core)))
        restored = restore(saved)
        assert snapshot(restored) == saved
        for step, (event, recorded) in enumerate(log[cut:], start=cut):
            assert restored.handle(event) == recorded, f"diverged at step {step} (cut {cut})"


def test_every_supervisor_attribute_is_saved_or_declared_derived() -> None:
    # A new attribute of the Supervisor that the snapshot neither carries nor
    # rebuilds would make a restored core (and a checkpointed replay) differ.
    from taskforce.core.snapshot import DERIVED, SAVED

    attributes = set(vars(Supervisor()))
    assert attributes - SAVED - DERIVED == set(), "add it to snapshot.SAVED or DERIVED"
    assert (SAVED | DERIVED) - attributes == set()
    assert {name.lstrip("_") for name in SAVED} <= set(snapshot(Supervisor()))
