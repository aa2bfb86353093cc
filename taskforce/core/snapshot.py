"""The whole state of a ``Supervisor`` as plain JSON-able data, and back.

A rotated event log starts each new file with a snapshot, so any file can be
replayed on its own: restore the snapshot, then feed the file's events.
``restore(snapshot(core))`` behaves exactly as ``core`` would from then on
(the property tests check that it snapshots back to the same data).

The work is done beside the fields it copies (``state.SupervisorState``,
which declares each attribute saved or transient); this module is the
entry point the shell and the tools use.  It must never do IO.
"""

from __future__ import annotations

from taskforce.core.state import FORMAT, SupervisorState
from taskforce.core.supervisor import Supervisor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DERIVED", "FORMAT", "SAVED", "restore", "snapshot"]

#: The Supervisor's attributes that a snapshot carries (declared beside them).
SAVED = SupervisorState.SAVED
#: The Supervisor's attributes that a snapshot does not carry: rebuilt, or
#: alive only within one ``handle`` call (declared beside them).
DERIVED = SupervisorState.TRANSIENT


def snapshot(core: Supervisor) -> dict[str, Any]:
    """Everything ``core`` knows, as JSON-able data."""
    return core.snapshot()


def restore(data: dict[str, Any]) -> Supervisor:
    """A supervisor in exactly the state ``snapshot`` described."""
    return Supervisor.restore(data)
