"""Deadlines: one heap of them for every slot and leftover.

A timer is an entry ``(at, seq, task, instance, generation, purpose)``; it
counts only while its slot still has that generation and that deadline for
that purpose (``slot.timers``), so a restart or a cancelled deadline needs no
removal from the heap: stale entries are dropped when they come up.  A
leftover's entry has generation -1.  What a due timer does is the
handlers' business (``handlers._run_due_timers``); this layer only keeps
time, and tells the shell when to wake it (``ArmTimer``).

This module must never do IO or read a clock: ``now`` comes from events.
"""

from __future__ import annotations

import heapq

from taskforce.core import effects as fx
from taskforce.core.lifecycle import TIMER_LEFTOVER, TimerPurpose
from taskforce.core.slots import NO_TIMERS, Leftover, Slot
from taskforce.core.state import SupervisorState

#: (at, seq, task, instance, generation, purpose); generation -1: a leftover's
TimerEntry = tuple[float, int, str, int, int, TimerPurpose]


class Timers(SupervisorState):
    """The supervisor's deadline heap."""

    def next_deadline(self) -> float | None:
        """When the core next needs a ``TimerFired`` (None: never)."""
        self._drop_stale_timers()
        return self._heap[0][0] if self._heap else None

    def _set_timer(self, slot: Slot, purpose: TimerPurpose, at: float) -> None:
        if slot.timers is NO_TIMERS:
            slot.timers = {}
        slot.timers[purpose] = at
        self._seq += 1
        heapq.heappush(
            self._heap, (at, self._seq, slot.task, slot.instance, slot.generation, purpose)
        )

    def _set_leftover_timer(self, task: str, instance: int, at: float) -> None:
        """The deadline of a leftover's stop (``Leftover.deadline``)."""
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, task, instance, -1, TIMER_LEFTOVER))

    def _pop_due(self) -> TimerEntry | None:
        """The soonest entry if it is due by now, taken off the heap."""
        if self._heap and self._heap[0][0] <= self.now:
            return heapq.heappop(self._heap)
        return None

    def _timer_slot(self, entry: TimerEntry) -> Slot | None:
        at, _, task, instance, generation, purpose = entry
        if generation < 0:
            return None  # a leftover's, not a slot's (see _leftover_due)
        slot = self.slot(task, instance)
        if slot is None or slot.generation != generation or slot.timers.get(purpose) != at:
            return None
        return slot

    def _leftover_due(self, entry: TimerEntry) -> Leftover | None:
        at, _, task, instance, generation, _ = entry
        leftover = self.leftovers.get((task, instance)) if generation < 0 else None
        return leftover if leftover is not None and leftover.deadline == at else None

    def _drop_stale_timers(self) -> None:
        heap = self._heap
        while heap and self._timer_slot(heap[0]) is None and self._leftover_due(heap[0]) is None:
            heapq.heappop(heap)

    def _arm_timer(self) -> None:
        due = self.next_deadline()
        if due != self._armed:
            self._armed = due
            self.emit(fx.ArmTimer(due))
