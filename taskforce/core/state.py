"""Everything the supervisor knows, in one place: its fields, and its output.

``SupervisorState`` is the bottom layer of the ``Supervisor`` (see
``supervisor``): it declares every attribute, holds the effects one
``handle`` call produces (``emit``, ``log``) and finds slots.  The layers
above it (``timers``, ``actions``, ``convergence``, ``reconcile``,
``handlers``) add behaviour, never attributes.

The snapshot lives here, beside the fields it copies: each attribute is
declared either ``SAVED`` (a snapshot carries it) or ``TRANSIENT`` (rebuilt
by ``restore``, or alive only within one ``handle`` call), and a test fails
for an attribute that is neither -- so a new field cannot be forgotten.
Every field of ``Slot``, ``TaskState`` and ``Leftover`` is saved as it is.

This module must never do IO, read a clock or draw random numbers.
"""

from __future__ import annotations

import copy
import dataclasses

from taskforce.core import effects as fx
from taskforce.core.codec import decode, encode, freeze, from_plain, to_plain
from taskforce.core.lifecycle import LIFECYCLE, Intent, Phase, Shutdown, SlotState, TimerPurpose
from taskforce.core.model import HostFacts, Settings, settings_of
from taskforce.core.rare import rare_fields
from taskforce.core.slots import NO_TIMERS, Leftover, ReloadNote, Slot, TaskState

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

#: the snapshot format (``restore`` refuses any other)
FORMAT = 1
# Saved with their own encoding, so left out of the field-by-field copy;
# ``rare`` is saved as the fields it holds (each by its name).
_SLOT_FIELDS = tuple(
    f.name for f in dataclasses.fields(Slot) if f.name not in ("state", "spec", "timers", "rare")
) + rare_fields(Slot)
_TASK_FIELDS = tuple(
    f.name for f in dataclasses.fields(TaskState) if f.name not in ("spec", "slots", "rare")
) + rare_fields(TaskState)
_LEFTOVER_FIELDS = tuple(f.name for f in dataclasses.fields(Leftover))

if TYPE_CHECKING:
    _State = TypeVar("_State", bound="SupervisorState")


class SupervisorState:
    """The supervisor's fields, and the primitives every layer uses."""

    #: The attributes that a snapshot carries (by attribute name).
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
    #: The attributes that ``restore`` rebuilds from the saved ones, or that
    #: only live within one ``handle`` call.  A new attribute must go in one
    #: of the two sets (tests/test_snapshot.py checks), so none is forgotten.
    TRANSIENT = frozenset(
        {
            "settings",
            "_rank",
            "dependents",
            "_by_pid",
            "_out",
            "_dirty",
            "_dirty_slots",
            "_settled",
            "_all_dirty",
            "_reload",
            "_spare",
        }
    )

    def __init__(self) -> None:
        self.now = 0.0
        self.facts = HostFacts()
        self.config: dict[str, Any] = {}
        self.roles: tuple[str, ...] | None = None
        self.role_values: dict[str, str] = {}
        self.settings: Settings = settings_of({})
        self.tasks: dict[str, TaskState] = {}
        self.order: list[str] = []
        self._rank: dict[str, int] = {}
        self.dependents: dict[str, tuple[str, ...]] = {}
        self.shutdown: Shutdown | None = None
        self.exited = False
        self.counters: dict[str, int] = {
            "starts": 0,
            "restarts": 0,
            "exits": 0,
            "spawn_failures": 0,
            "reloads": 0,
            "reload_errors": 0,
            "check_runs": 0,
            "check_failures": 0,
            "check_timeouts": 0,
            "start_limit_hits": 0,
            "rollouts": 0,
            "rollout_halts": 0,
        }
        #: what an earlier taskforce left running, by (task, instance); a
        #: slot with a leftover waits until it is gone
        self.leftovers: dict[tuple[str, int], Leftover] = {}
        self._by_pid: dict[int, Slot] = {}
        self._watches: dict[str, fx.Watch] = {}
        self._heap: list[tuple[float, int, str, int, int, TimerPurpose]] = []
        self._seq = 0
        self._generation = 0
        #: the last health check run number given out
        self._runs = 0
        self._armed: float | None = None
        self._out: list[fx.Effect] = []
        self._dirty: set[str] = set()
        #: slots an event touched, by task, where nothing else of the task
        #: changed: the converge pass may visit just these (see ``_converge``)
        self._dirty_slots: dict[str, set[int]] = {}
        self._all_dirty = True
        #: at shutdown, the tasks a pass found with no live dependents: each
        #: slot has had its stop (see ``_stop_touched``)
        self._settled: set[str] = set()
        #: the reload being applied by the current event (see ``handle``)
        self._reload: ReloadNote | None = None
        #: ready processes each rolling task may still lose in this
        #: converge pass (see ``rollout``)
        self._spare: dict[str, int] = {}

    def slot(self, task: str, instance: int) -> Slot | None:
        """Slot ``instance`` of ``task`` (None: no such slot)."""
        state = self.tasks.get(task)
        if state is None or instance >= len(state.slots):
            return None
        return state.slots[instance]

    def live_pids(self) -> dict[int, tuple[str, int]]:
        """Every live process group leader the core knows, by pid."""
        return {pid: (slot.task, slot.instance) for pid, slot in sorted(self._by_pid.items())}

    def _touch(self, name: str | None = None) -> None:
        """Mark a task (None: every task) for the next converge pass."""
        if name is None:
            self._all_dirty = True
        else:
            self._dirty.add(name)

    def _touch_slot(self, task: str, instance: int) -> None:
        """Mark one slot of ``task`` for the next converge pass (the rest of
        the task stays as the last pass left it, unless touched too)."""
        found = self._dirty_slots.get(task)
        if found is None:
            self._dirty_slots[task] = {instance}
        else:
            found.add(instance)

    def _set_order(self, order: list[str]) -> None:
        """Set the start order, and what follows from it."""
        self.order = order
        self._rank = {name: index for index, name in enumerate(order)}
        deps: dict[str, list[str]] = {}
        for name in order:
            for required in self.tasks[name].spec.requires:
                deps.setdefault(required, []).append(name)
        self.dependents = {name: tuple(sorted(found)) for name, found in deps.items()}

    def emit(self, effect: fx.Effect) -> None:
        """Add ``effect`` to what the current ``handle`` call returns."""
        self._out.append(effect)

    def log(self, level: str, message: str, task: str | None = None) -> None:
        """Emit a ``Log`` line (``task``: the task it is about, if one)."""
        self._out.append(fx.Log(level, message, task))

    @staticmethod
    def _name(slot: Slot) -> str:
        return f"{slot.task}[{slot.instance}]"

    # ------------------------------------------------------------ snapshot

    def snapshot(self) -> dict[str, Any]:
        """Everything the supervisor knows, as JSON-able data (``SAVED``)."""
        tasks = {}
        for name, task in self.tasks.items():
            slots = []
            for slot in task.slots:
                data = {field: to_plain(getattr(slot, field)) for field in _SLOT_FIELDS}
                data["state"] = slot.state.name
                data["spec"] = to_plain(slot.spec)
                data["timers"] = {str(purpose): at for purpose, at in slot.timers.items()}
                slots.append(data)
            tasks[name] = {"spec": to_plain(task.spec), "slots": slots}
            for field in _TASK_FIELDS:
                tasks[name][field] = to_plain(getattr(task, field))
        return {
            "format": FORMAT,
            "now": self.now,
            "facts": to_plain(self.facts),
            "config": to_plain(self.config),
            "roles": None if self.roles is None else list(self.roles),
            "role_values": dict(self.role_values),
            "tasks": tasks,
            "order": list(self.order),
            "shutdown": None if self.shutdown is None else str(self.shutdown),
            "exited": self.exited,
            "counters": dict(self.counters),
            "watches": {key: encode(watch) for key, watch in self._watches.items()},
            "heap": [[*entry[:5], str(entry[5])] for entry in self._heap],
            "seq": self._seq,
            "generation": self._generation,
            "runs": self._runs,
            "armed": self._armed,
            "leftovers": [
                [task, instance, *(to_plain(getattr(left, field)) for field in _LEFTOVER_FIELDS)]
                for (task, instance), left in sorted(self.leftovers.items())
            ],
        }

    @classmethod
    def restore(cls: type[_State], data: dict[str, Any]) -> _State:
        """A supervisor in exactly the state ``snapshot`` described."""
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown snapshot format {data.get('format')!r}")
        core = cls()
        core.now = data["now"]
        core.facts = from_plain(data["facts"])
        core.config = freeze(data["config"])
        core.roles = None if data["roles"] is None else tuple(data["roles"])
        core.role_values = dict(data["role_values"])
        core.settings = settings_of(core.config)
        for name, saved in data["tasks"].items():
            task = TaskState(spec=from_plain(saved["spec"]))
            # A field missing from an older log keeps its default.
            for field in _TASK_FIELDS:
                if field in saved:
                    setattr(task, field, from_plain(saved[field]))
            for slot_data in saved["slots"]:
                slot = Slot(task=name, instance=slot_data["instance"])
                LIFECYCLE.attach(slot)
                for field in _SLOT_FIELDS:
                    if field in slot_data:
                        setattr(slot, field, from_plain(slot_data[field]))
                slot.state = SlotState[slot_data["state"]]
                slot.spec = from_plain(slot_data["spec"])
                timers = slot_data["timers"]
                if timers:
                    slot.timers = {TimerPurpose(purpose): at for purpose, at in timers.items()}
                slot.intent = None if slot.intent is None else Intent(slot.intent)
                slot.phase = None if slot.phase is None else Phase(slot.phase)
                task.slots.append(slot)
                if slot.pid is not None:
                    core._by_pid[slot.pid] = slot
            core.tasks[name] = task
        core._set_order(list(data["order"]))
        core.shutdown = None if data["shutdown"] is None else Shutdown(data["shutdown"])
        core.exited = data["exited"]
        core.counters.update(data["counters"])
        core._watches = {}
        for key, watch in data["watches"].items():
            effect = decode(watch)
            assert isinstance(effect, fx.Watch)
            core._watches[key] = effect
        core._heap = [(*entry[:5], TimerPurpose(entry[5])) for entry in data["heap"]]
        core._seq = data["seq"]
        core._generation = data["generation"]
        core._runs = data.get("runs", 0)
        core._armed = data["armed"]
        for task_name, instance, *fields in data.get("leftovers", ()):
            core.leftovers[(task_name, instance)] = Leftover(
                *(from_plain(value) for value in fields)
            )
        return core

    # -------------------------------------------------------------- shadow

    def shadow(self: _State) -> _State:
        """A copy that can be fed events without touching this supervisor.

        Containers are copied one level down and every task and slot is
        copied, so nothing the copy changes is shared.  The copied slots are
        attached to the lifecycle machine; ``release`` the copy when done.
        """
        shadow = copy.copy(self)
        for key, value in vars(self).items():
            if isinstance(value, (dict, list, set)):
                setattr(shadow, key, copy.copy(value))
        slots: dict[int, Slot] = {}
        shadow.tasks = {}
        try:
            for name, task in self.tasks.items():
                twin = copy.copy(task)
                twin.slots = []
                shadow.tasks[name] = twin
                for slot in task.slots:
                    # A fresh Slot (not copy.copy), registered with the machine
                    # only: the triggers are pulled through the machine, never
                    # through methods bound to the model, and binding them all
                    # (what ``LIFECYCLE.attach`` does) costs ~1 ms a slot.
                    timers = dict(slot.timers) if slot.timers else NO_TIMERS
                    copied = dataclasses.replace(slot, timers=timers)
                    copied.state = slot.state
                    LIFECYCLE.machine.models.append(copied)
                    twin.slots.append(copied)
                    slots[id(slot)] = copied
        except BaseException:
            shadow.release()
            raise
        shadow._by_pid = {pid: slots[id(slot)] for pid, slot in self._by_pid.items()}
        shadow._out = []
        return shadow

    def release(self) -> None:
        """Take a ``shadow``'s slots off the machine (in one pass, not one by one)."""
        gone = {id(slot) for task in self.tasks.values() for slot in task.slots}
        models = LIFECYCLE.machine.models
        models[:] = [model for model in models if id(model) not in gone]
