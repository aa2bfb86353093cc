"""``Rare`` fields read and write as ordinary ones, and cost a running fleet nothing.

A ``Slot`` or ``TaskState`` keeps a field declared ``Rare(default)`` in its
``rare`` dict only while the value differs from the default (see
``taskforce.core.rare``); the snapshot round trip is in test_snapshot.py.
"""

from __future__ import annotations

import copy
import dataclasses

from taskforce.core.lifecycle import Intent
from taskforce.core.rare import rare_fields
from taskforce.core.slots import Slot, TaskState
from taskforce.simulator import Simulation


def test_a_rare_field_reads_its_default_until_written() -> None:
    slot = Slot(task="web", instance=0)
    assert (slot.fails, slot.intent, slot.waiting_on, slot.status) == (0, None, (), "")
    assert slot.rare is None
    slot.fails = 2
    slot.intent = Intent.RESTART
    assert (slot.fails, slot.intent) == (2, Intent.RESTART)
    assert slot.rare == {"fails": 2, "intent": Intent.RESTART}


def test_writing_the_default_back_gives_the_room_back() -> None:
    slot = Slot(task="web", instance=0)
    slot.check_fails = 3
    slot.status = "warming up"
    slot.check_fails = 0
    assert slot.rare == {"status": "warming up"}
    slot.status = ""
    assert slot.rare is None
    slot.waiting_on = ()  # (a default written while none is kept: nothing made)
    assert slot.rare is None


def test_a_value_equal_to_the_default_but_of_another_type_reads_back_as_written() -> None:
    slot = Slot(task="web", instance=0)
    slot.pidfile_deadline = 0  # the default is 0.0
    slot.fails = False  # type: ignore[assignment]  # the default is 0
    assert type(slot.pidfile_deadline) is int and slot.fails is False
    assert slot.rare == {"pidfile_deadline": 0, "fails": False}


def test_a_copy_shares_nothing_a_write_could_change() -> None:
    slot = Slot(task="web", instance=0)
    slot.stale = "spec"
    twin = dataclasses.replace(slot)
    twin.stale = ""
    twin.trial = True
    assert (slot.stale, slot.trial) == ("spec", False)
    task = TaskState(spec=None)  # type: ignore[arg-type]
    task.rollout = "config changed"
    other = copy.copy(task)
    other.rollout_replaced = 2
    assert task.rare == {"rollout": "config changed"}
    assert other.rare == {"rollout": "config changed", "rollout_replaced": 2}


def test_rare_fields_are_the_ones_declared_in_order() -> None:
    assert rare_fields(Slot)[:3] == ("fails", "intent", "waiting_on")
    assert "rollout" in rare_fields(TaskState)
    fields = {f.name for f in dataclasses.fields(Slot)}
    assert not fields & set(rare_fields(Slot))


def _rare_held(sim: Simulation) -> dict[str, object]:
    core = sim.core
    held: dict[str, object] = {}
    for name, task in core.tasks.items():
        if task.rare is not None:
            held[name] = task.rare
        for slot in task.slots:
            if slot.rare is not None:
                held[f"{name}[{slot.instance}]"] = slot.rare
    return held


def test_a_settled_fleet_holds_no_rare_values_even_after_a_rollout() -> None:
    config = {
        "tasks": {
            "db": {"commands": {"start": ("db",)}},
            "web": {"count": 3, "requires": ("db",), "commands": {"start": ("web", "1")}},
            "cron": {"control": "once", "commands": {"start": ("cron",)}},
        }
    }
    sim = Simulation()
    sim.boot(config)
    sim.advance(5)
    sim.exit(sim.running()[("cron", 0)], 0)
    sim.advance(5)
    assert len(sim.running()) == 4
    assert _rare_held(sim) == {}
    # A change that replaces every web process, one at a time.
    sim.reload(
        {
            "tasks": {
                **config["tasks"],
                "web": {**config["tasks"]["web"], "commands": {"start": ("web", "2")}},
            }
        }
    )
    sim.advance(30)
    assert sorted(sim.running()) == [("db", 0), ("web", 0), ("web", 1), ("web", 2)]
    assert all(slot.restarts == 1 for slot in sim.core.tasks["web"].slots)
    assert _rare_held(sim) == {}


def test_a_slot_status_shows_its_rare_fields_once_set() -> None:
    # status.slot_status skips the Rare fields of a slot with no rare dict.
    from taskforce.core.status import slot_status

    slot = Slot(task="web", instance=0)
    assert set(slot_status(slot)) == {"instance", "state", "restarts"}
    slot.fails = 2
    slot.intent = Intent.RESTART
    slot.waiting_on = ("db",)
    slot.status = "warming up"
    slot.main_pid = 42
    slot.surge = True
    slot.stale = "spec"
    shown = slot_status(slot)
    assert {key: shown[key] for key in shown if key not in ("instance", "state", "restarts")} == {
        "backoff_step": 2,
        "intent": str(Intent.RESTART),
        "waiting_on": ["db"],
        "status": "warming up",
        "main_pid": 42,
        "surge": True,
        "outdated": "spec",
    }
