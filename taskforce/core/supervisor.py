"""The supervisor: every decision taskforce makes, as a pure function of events.

``Supervisor.handle(event)`` returns the effects the shell must perform.  The
supervisor reads no clock (time is ``event.at``), touches no process and no
file, and iterates in sorted order, so the same events always give the same
effects -- which is what lets a recorded run be replayed and a simulated one
be trusted.

How it decides: every event updates facts (a process exited, a config
arrived, a timer came due), then ``_converge`` walks the tasks in dependency
order and moves each slot towards what its task wants (run ``count``
processes, or none), through the lifecycle declared in ``lifecycle``.  Being
level-triggered rather than edge-triggered is what makes it hard to lose a
process: whatever happened, the next pass compares want with have.

The ``Supervisor`` is one class built in layers, one module each, every
layer using only those below it:

- ``state``: every field, the effects being collected, slot lookup;
- ``timers``: the deadline heap;
- ``actions``: what is done to one slot (spawn, stop, judge an exit, retry);
- ``rollout``: readiness of a slot, and a task's rollout (surge, floor, halt);
- ``convergence``: the converge pass -- keep running, keep stopped, leftovers;
- ``reconcile``: a new config applied (diff, overrides, order, watches);
- ``handlers``: one ``_on_<Event>`` per event type, and due timers;
- ``supervisor`` (here): ``handle``, which runs them in the order above.

This module must never do IO, read a clock or draw unseeded random numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.handlers import EventHandlers
from taskforce.core.requests import handle_request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Supervisor(EventHandlers):
    """The pure core.  Feed it events with ``handle``; perform what it returns.

    Its public face, for the shell, the tools and the sibling modules
    (``requests``, ``status``, ``snapshot``); every other method and every
    name starting with ``_`` belongs to its layers alone:

    - driving it: ``handle(event)``, ``next_deadline()``;
    - reading it: the attributes ``now``, ``facts``, ``config``, ``roles``,
      ``role_values``, ``settings``, ``tasks``, ``order``, ``dependents``,
      ``shutdown``, ``exited``, ``counters``, ``leftovers``; and
      ``slot(task, instance)``, ``live_pids()``, ``wants_run(task)``,
      ``describe_overrides(task)``;
    - acting within a ``handle`` call (operator requests): ``emit``, ``log``,
      ``stop_slot``, ``request_run``, ``fire_action``, ``retry_failed``,
      ``update_watches``, ``rolls``, ``replace`` and ``resume`` (rollouts);
    - copying it: ``snapshot()``, ``restore(data)``, and ``shadow()`` with
      ``release()`` (a copy to try events on, for ``status.plan``).
    """

    def handle(self, event: ev.Event) -> tuple[fx.Effect, ...]:
        """Take one event; return the effects to perform, in order."""
        self._out = []
        if event.at > self.now:
            self.now = event.at
        if not self.exited:
            # The event first: it is the newest fact.  A timer that came due
            # while the shell was busy must not act on a process this very
            # event reports gone (a SIGKILL to a reaped, maybe reused, pid).
            self._touch_for(event)
            _HANDLERS[type(event)](self, event)
            self._run_due_timers()
            reload = self._reload
            if reload is not None:
                reload.counting = True
            self._converge()
            if reload is not None:
                # One line for what a reload did, from what converging on it did.
                self._reload = None
                self.log("info", reload.line())
            self._arm_timer()
        out, self._out = tuple(self._out), []
        return out

    # Operator requests (``requests``) use the Supervisor's whole face, so
    # their handler sits on the whole class, not on a layer below it.
    def _on_ControlRequested(self, event: ev.ControlRequested) -> None:
        handle_request(self, event)


#: each event type's handler, ``Supervisor._on_<EventType>``
_HANDLERS: dict[type[Any], Callable[[Supervisor, Any], None]] = {
    cls: getattr(Supervisor, "_on_" + name) for name, cls in ev.EVENT_TYPES.items()
}


def run(events: Iterable[ev.Event]) -> list[tuple[fx.Effect, ...]]:
    """Feed ``events`` to a fresh supervisor; the effects of each, in order."""
    core = Supervisor()
    return [core.handle(event) for event in events]
