"""Control requests from operators, decided purely (see ``ControlRequested``).

This module must never do IO: it changes the supervisor's wishes and answers
with a ``Reply`` effect; the supervisor's converge pass does the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskforce.core import effects as fx
from taskforce.core import events as ev

if TYPE_CHECKING:
    from taskforce.core.supervisor import Supervisor


def handle_control(sup: Supervisor, event: ev.ControlRequested) -> None:
    """Apply one control request to ``sup`` and emit its ``Reply``."""
    sup._emit(fx.Reply(event.request, 404, f"unknown action {event.action!r}"))
