"""What the control server needs of the shell it serves, and nothing more.

The server is written against ``Shell``, not against
``taskforce.daemon.Daemon``: the daemon is one shell, and
``taskforce.simulator.Simulation`` is another, so the server's every
endpoint can be driven in-process against a simulated world (see
``property_tests/test_fuzz_inputs.py``).  A member added here is a promise
both must keep; the server must never reach past it (no ``daemon.output``,
no ``daemon.tracker``).

The loop's resources -- its selector and its wake-up -- are the other half
of what the server runs on: the selector is handed to ``ControlServer``
itself, ``wake`` is here because only the shell knows how to make its loop
take a turn.

This module only declares: it imports nothing of the server, HTTP or TLS,
so that naming the protocol costs a daemon without a listener nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from taskforce.core import effects as fx
    from taskforce.core import events as ev
    from taskforce.core.supervisor import Supervisor
    from taskforce.output import Recent


@runtime_checkable
class Shell(Protocol):
    """The daemon as the control server sees it.

    ``core`` is read between feeds only (status, health, metrics, the
    plan's shadow); every change goes through ``feed`` as an event, stamped
    with ``now``.  Answers computed from the core hold while ``fed`` stays
    the same.
    """

    @property
    def core(self) -> Supervisor:
        """The core, to read (status, config, facts, roles); never to call
        ``handle`` on."""
        ...

    @property
    def now(self) -> float:
        """The monotonic time to stamp an event with."""
        ...

    @property
    def fed(self) -> int:
        """How many events the core has been fed so far."""
        ...

    def feed(self, event: ev.Event) -> tuple[fx.Effect, ...]:
        """Hand ``event`` to the core and perform what follows; effects the
        core gave for ``event`` itself, a ``ControlRequested``'s ``Reply``
        among them (the daemon gives only the replies)."""
        ...

    def load_inputs(self, source: str) -> ev.Event:
        """Read the config and roles files: ``ConfigLoaded`` or
        ``ConfigRejected``.  Safe on a worker thread; changes nothing."""
        ...

    def apply_loaded(self, loaded: ev.Event) -> ev.Event:
        """Feed what ``load_inputs`` read, stamped now; the event fed."""
        ...

    def request_reset(self, reason: str) -> bool:
        """Stop every task and re-execute, if the shell can start again
        (False: refused, and said so in the log)."""
        ...

    def captured(self, task: str) -> Recent | None:
        """``task``'s recent output lines (None: none captured yet)."""
        ...

    def wake(self) -> None:
        """Make the loop take a turn soon (safe from any thread)."""
        ...
