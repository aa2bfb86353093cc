"""Everything the supervisor knows, in one place: its fields, and its output.

``SupervisorState`` is the bottom layer of the ``Supervisor`` (see
``supervisor``): it declares every attribute, holds the effects one
``handle`` call produces (``_emit``, ``_log``) and finds slots.  The layers
above it (``timers``, ``actions``, ``convergence``, ``reconcile``,
``handlers``) add behaviour, never attributes.

This module must never do IO, read a clock or draw random numbers.
"""

from __future__ import annotations

from typing import Any

from taskforce.core import effects as fx
from taskforce.core.model import HostFacts, Settings, settings_of
from taskforce.core.slots import Leftover, ReloadNote, Slot, TaskState


class SupervisorState:
    """The supervisor's fields, and the primitives every layer uses."""

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
        self.shutdown: str | None = None  # None, "stop" or "reset"
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
        }
        #: what an earlier taskforce left running, by (task, instance); a
        #: slot with a leftover waits until it is gone
        self.leftovers: dict[tuple[str, int], Leftover] = {}
        self._by_pid: dict[int, Slot] = {}
        self._watches: dict[str, fx.Watch] = {}
        self._heap: list[tuple[float, int, str, int, int, str]] = []
        self._seq = 0
        self._generation = 0
        #: the last health check run number given out
        self._runs = 0
        self._armed: float | None = None
        self._out: list[fx.Effect] = []
        self._dirty: set[str] = set()
        self._all_dirty = True
        #: the reload being applied by the current event (see ``handle``)
        self._reload: ReloadNote | None = None

    def slot(self, task: str, instance: int) -> Slot | None:
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

    def _set_order(self, order: list[str]) -> None:
        """Set the start order, and what follows from it."""
        self.order = order
        self._rank = {name: index for index, name in enumerate(order)}
        deps: dict[str, list[str]] = {}
        for name in order:
            for required in self.tasks[name].spec.requires:
                deps.setdefault(required, []).append(name)
        self.dependents = {name: tuple(sorted(found)) for name, found in deps.items()}

    def _emit(self, effect: fx.Effect) -> None:
        self._out.append(effect)

    def _log(self, level: str, message: str, task: str | None = None) -> None:
        self._out.append(fx.Log(level, message, task))

    @staticmethod
    def _name(slot: Slot) -> str:
        return f"{slot.task}[{slot.instance}]"
