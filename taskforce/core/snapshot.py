"""The whole state of a ``Supervisor`` as plain JSON-able data, and back.

A rotated event log starts each new file with a snapshot, so any file can be
replayed on its own: restore the snapshot, then feed the file's events.
``restore(snapshot(core))`` behaves exactly as ``core`` would from then on
(the property tests check that it snapshots back to the same data).

This module must never do IO.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from taskforce.core import effects as fx
from taskforce.core.codec import decode, encode, freeze
from taskforce.core.lifecycle import LIFECYCLE, SlotState
from taskforce.core.model import Action, EventSpec, HostFacts, ProcessSpec, TaskSpec, settings_of
from taskforce.core.slots import Leftover, Slot, TaskState
from taskforce.core.supervisor import Supervisor

FORMAT = 1
_CLASSES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (TaskSpec, ProcessSpec, Action, EventSpec, HostFacts)
}
_SLOT_FIELDS = tuple(
    f.name for f in dataclasses.fields(Slot) if f.name not in ("state", "spec", "timers")
)
_TASK_FIELDS = tuple(
    f.name for f in dataclasses.fields(TaskState) if f.name not in ("spec", "slots")
)
_LEFTOVER_FIELDS = tuple(f.name for f in dataclasses.fields(Leftover))

#: The Supervisor's attributes that a snapshot carries (by attribute name).
SAVED = frozenset(
    {
        "now",
        "facts",
        "config",
        "roles",
        "role_values",
        "tasks",
        "order",
        "shutdown",
        "exited",
        "counters",
        "_watches",
        "_heap",
        "_seq",
        "_generation",
        "_runs",
        "_armed",
        "leftovers",
    }
)
#: The Supervisor's attributes that ``restore`` rebuilds from the saved ones,
#: or that only live within one ``handle`` call.  A new attribute must go in
#: one of the two sets (tests/test_snapshot.py checks), so none is forgotten.
DERIVED = frozenset(
    {
        "settings",
        "_rank",
        "dependents",
        "_by_pid",
        "_out",
        "_dirty",
        "_all_dirty",
        "_reload",
    }
)


_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
#: field names by dataclass (None: not a dataclass), looked up once per class
_FIELD_NAMES: dict[type[Any], tuple[str, ...] | None] = {}


def _plain(value: Any) -> Any:
    # The exact common types first: a checkpoint of a big config walks
    # tens of thousands of values, and it is taken while supervision waits.
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return value
    if kind is tuple or kind is list:
        return [_plain(item) for item in value]
    if kind is dict:
        return {key: _plain(item) for key, item in value.items()}
    if kind not in _FIELD_NAMES:
        _FIELD_NAMES[kind] = (
            tuple(fld.name for fld in dataclasses.fields(kind))
            if dataclasses.is_dataclass(kind)
            else None
        )
    names = _FIELD_NAMES[kind]
    if names is not None:
        out = {"__class__": kind.__name__}
        for name in names:
            out[name] = _plain(getattr(value, name))
        return out
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _object(value: Any) -> Any:
    if isinstance(value, dict):
        if "__class__" in value:
            fields = {k: _object(v) for k, v in value.items() if k != "__class__"}
            return _CLASSES[value["__class__"]](**fields)
        return {key: _object(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_object(item) for item in value)
    return value


def snapshot(core: Supervisor) -> dict[str, Any]:
    """Everything ``core`` knows, as JSON-able data."""
    tasks = {}
    for name, task in core.tasks.items():
        slots = []
        for slot in task.slots:
            data = {field: _plain(getattr(slot, field)) for field in _SLOT_FIELDS}
            data["state"] = slot.state.name
            data["spec"] = _plain(slot.spec)
            data["timers"] = dict(slot.timers)
            slots.append(data)
        tasks[name] = {"spec": _plain(task.spec), "slots": slots}
        for field in _TASK_FIELDS:
            tasks[name][field] = _plain(getattr(task, field))
    return {
        "format": FORMAT,
        "now": core.now,
        "facts": _plain(core.facts),
        "config": _plain(core.config),
        "roles": None if core.roles is None else list(core.roles),
        "role_values": dict(core.role_values),
        "tasks": tasks,
        "order": list(core.order),
        "shutdown": core.shutdown,
        "exited": core.exited,
        "counters": dict(core.counters),
        "watches": {key: encode(watch) for key, watch in core._watches.items()},
        "heap": [list(entry) for entry in core._heap],
        "seq": core._seq,
        "generation": core._generation,
        "runs": core._runs,
        "armed": core._armed,
        "leftovers": [
            [task, instance, *(_plain(getattr(leftover, field)) for field in _LEFTOVER_FIELDS)]
            for (task, instance), leftover in sorted(core.leftovers.items())
        ],
    }


def restore(data: dict[str, Any]) -> Supervisor:
    """A supervisor in exactly the state ``snapshot`` described."""
    if data.get("format") != FORMAT:
        raise ValueError(f"unknown snapshot format {data.get('format')!r}")
    core = Supervisor()
    core.now = data["now"]
    core.facts = _object(data["facts"])
    core.config = freeze(data["config"])
    core.roles = None if data["roles"] is None else tuple(data["roles"])
    core.role_values = dict(data["role_values"])
    core.settings = settings_of(core.config)
    for name, saved in data["tasks"].items():
        task = TaskState(spec=_object(saved["spec"]))
        # A field missing from an older log keeps its default.
        for field in _TASK_FIELDS:
            if field in saved:
                setattr(task, field, _object(saved[field]))
        for slot_data in saved["slots"]:
            slot = Slot(task=name, instance=slot_data["instance"])
            LIFECYCLE.attach(slot)
            for field in _SLOT_FIELDS:
                if field in slot_data:
                    setattr(slot, field, _object(slot_data[field]))
            slot.state = SlotState[slot_data["state"]]
            slot.spec = _object(slot_data["spec"])
            slot.timers = dict(slot_data["timers"])
            task.slots.append(slot)
            if slot.pid is not None:
                core._by_pid[slot.pid] = slot
        core.tasks[name] = task
    core._set_order(list(data["order"]))
    core.shutdown = data["shutdown"]
    core.exited = data["exited"]
    core.counters.update(data["counters"])
    core._watches = {}
    for key, watch in data["watches"].items():
        effect = decode(watch)
        assert isinstance(effect, fx.Watch)
        core._watches[key] = effect
    core._heap = [tuple(entry) for entry in data["heap"]]
    core._seq = data["seq"]
    core._generation = data["generation"]
    core._runs = data.get("runs", 0)
    core._armed = data["armed"]
    for task_name, instance, *fields in data.get("leftovers", ()):
        core.leftovers[(task_name, instance)] = Leftover(*(_object(value) for value in fields))
    return core
