"""The core of taskforce: every decision, as a pure function of events.

Read this first.  The rules of the core -- each one kept by a test:

1. **Pure.**  Nothing here touches the OS, reads a clock or draws a random
   number: no module under ``taskforce/core`` imports ``os``, ``time``,
   ``select``, ``signal``, ``subprocess``, ``socket``, ``logging``,
   ``random`` or ``yaml`` (tests/test_core_purity.py).
2. **Every nondeterminism enters as an event.**  Time is ``event.at``; a
   delay is an ``ArmTimer`` effect that comes back as ``TimerFired``; what
   the shell found -- an exit, a changed file, a pidfile, an operator's
   request, a failed fork -- is an event (``events``), never a call into the
   core and never an exception through it.
3. **Effects are the only output.**  ``Supervisor.handle(event)`` returns the
   effects (``effects``) the shell must perform, in order; the core keeps no
   handle on anything outside itself.  The same events always give the same
   effects, which is what lets a recorded run be replayed (tests/test_replay.py).
4. **The lifecycle is declared in one table.**  ``lifecycle.TRANSITIONS``
   says which trigger moves a slot from which state to which; a slot's state
   changes only through ``LIFECYCLE.fire``, and a move the table does not
   allow raises before anything changes (tests/lifecycle_table.golden).
5. **A snapshot carries every field.**  Each attribute of the supervisor is
   declared ``SAVED`` or ``TRANSIENT`` beside its definition
   (``state.SupervisorState``); a test fails for one that is neither, and
   ``restore(snapshot(core))`` behaves exactly as ``core`` (tests/test_snapshot.py).
6. **Deterministic order.**  Iterate sorted names, never a set.  Every timer
   and delayed answer carries its slot's generation; stale ones are dropped.
7. **A small public face.**  Outside the supervisor's own layers, no module
   uses a name of it that starts with ``_``; operator requests, status and
   snapshot use the methods listed in ``supervisor``.

Where things are, in reading order:

- ``events``, ``effects``: what comes in, what goes out (frozen dataclasses;
  ``records`` gives them equality, hash and repr).
- ``lifecycle``: a slot's states and the transition table; the closed sets
  of words beside them (``Intent``, ``Phase``, ``TimerPurpose``, ``Shutdown``).
- ``model``: a config built into task and process specs (pure, validated);
  ``specs`` declares them, ``readiness`` reads a task's ``ready``/``rollout``.
- ``supervisor``: ``Supervisor.handle``, and the map of its layers --
  ``state``, ``timers``, ``actions``, ``rollout`` (readiness, and replacing
  a pool without downtime), ``convergence``, ``reconcile``, ``handlers`` --
  with the records they keep in ``slots``.
- ``requests``: operator requests (``ControlRequested``), judged and applied.
- ``status``: what the supervisor knows, as data, and ``plan`` (a shadow core).
- ``snapshot``, ``codec``: the supervisor's state and the events and effects
  as plain JSON-able data, and back.
- ``access``, ``secrets``, ``context``: who may ask, what is redacted, how a
  task's ``{tags}`` expand.
"""

from __future__ import annotations

from taskforce.core.codec import decode, encode, freeze
from taskforce.core.effects import EFFECT_TYPES, Effect
from taskforce.core.events import EVENT_TYPES, Event
from taskforce.core.lifecycle import (
    ONE_SHOT_CONTROLS,
    TRANSITIONS,
    Intent,
    Phase,
    Shutdown,
    SlotState,
    TimerPurpose,
)
from taskforce.core.model import HostFacts, SpecError, build
from taskforce.core.requests import split_slot, task_word
from taskforce.core.supervisor import Supervisor, run

#: What the shell, the simulator and the tools may use.  The modules
#: ``events``, ``effects``, ``status``, ``snapshot``, ``access`` and
#: ``secrets`` are public as a whole; everything else is here.
__all__ = [
    "EFFECT_TYPES",
    "EVENT_TYPES",
    "ONE_SHOT_CONTROLS",
    "TRANSITIONS",
    "Effect",
    "Event",
    "HostFacts",
    "Intent",
    "Phase",
    "Shutdown",
    "SlotState",
    "SpecError",
    "Supervisor",
    "TimerPurpose",
    "build",
    "decode",
    "encode",
    "freeze",
    "run",
    "split_slot",
    "task_word",
]
