"""The simulated world's readiness: probes answered, ``READY=1`` sent.

Part of the fake shell (``taskforce.simos``, ``taskforce.simulator``): a
slot's process is ready ``ready_delays[task]`` seconds after it started (at
once by default; never for a task in ``never_ready``).  A ``Probe`` is
answered by exactly one ``ProbeFinished`` -- ok once the process is ready,
"connection refused" with no live process, "timed out after Ns" when it is
not ready within the probe's timeout -- and a ``Spawn`` with ``notify`` is
followed by that process's ``Notified("READY=1")`` when it becomes ready,
if it is still alive.

This module must never touch the OS, read a clock or draw random numbers.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.simworld import FakeProcess, Reap

TYPE_CHECKING = False


class FakeReadiness:
    """Readiness answers of the fake world, due at their times."""

    now: float
    processes: dict[int, FakeProcess]
    finished: fx.Exit | None
    _queue: deque[ev.Event | Reap]
    #: how long after its start a task's process is ready (default 0)
    ready_delays: dict[str, float]
    #: tasks whose processes never become ready
    never_ready: set[str]
    #: readiness answers to come, by when: (when, event, the pid it needs alive)
    _readiness: list[tuple[float, ev.Event, int | None]]

    if TYPE_CHECKING:

        def running(self) -> dict[tuple[str, int], int]: ...

    def _ready_at(self, proc: FakeProcess) -> float | None:
        """When ``proc`` is ready (None: never)."""
        if proc.task in self.never_ready:
            return None
        return proc.started_at + self.ready_delays.get(proc.task, 0.0)

    def _probe(self, probe: fx.Probe) -> None:
        """Answer ``probe`` as the shell's probe of a process that listens
        once it is ready would: exactly one ``ProbeFinished``."""
        pid = self.running().get((probe.task, probe.instance))
        ready_at = None if pid is None else self._ready_at(self.processes[pid])

        def finished(ok: bool, detail: str) -> ev.ProbeFinished:
            return ev.ProbeFinished(
                at=self.now,
                task=probe.task,
                instance=probe.instance,
                run=probe.run,
                ok=ok,
                detail=detail,
            )

        if pid is None:
            self._queue.append(finished(False, "connection refused"))
        elif ready_at is None or ready_at > self.now + probe.timeout:
            late = finished(False, f"timed out after {probe.timeout:g}s")
            self._expect(self.now + probe.timeout, late, None)
        else:
            self._expect(max(self.now, ready_at), finished(True, ""), pid)

    def _notify_ready(self, proc: FakeProcess) -> None:
        """A ``notify`` process sends ``READY=1`` once it is ready."""
        ready_at = self._ready_at(proc)
        if ready_at is not None:
            notified = ev.Notified(
                at=ready_at, task=proc.task, instance=proc.instance, pid=proc.pid, message="READY=1"
            )
            self._expect(ready_at, notified, proc.pid)

    def _expect(self, when: float, event: ev.Event, pid: int | None) -> None:
        """``event`` happens at ``when`` (if process ``pid`` is alive then)."""
        if when <= self.now and pid is None:
            self._queue.append(dataclasses.replace(event, at=self.now))
            return
        self._readiness.append((when, event, pid))
        self._readiness.sort(key=lambda item: item[0])  # (stable: ties keep their order)
        if when <= self.now:
            self._deliver_readiness()

    def _next_readiness(self) -> float | None:
        """When the next readiness answer is due (None: none is)."""
        return self._readiness[0][0] if self._readiness else None

    def _deliver_readiness(self) -> None:
        """Queue the readiness answers that are due, in their order; a
        process that died meanwhile sends nothing, and its probe is refused."""
        while self._readiness and self._readiness[0][0] <= self.now:
            _, event, pid = self._readiness.pop(0)
            if self.finished:
                continue  # the shell stopped: pending probes are dropped
            alive = pid is None or self.processes[pid].alive
            if isinstance(event, ev.ProbeFinished) and not alive:
                event = dataclasses.replace(event, ok=False, detail="connection refused")
            elif not alive:
                continue
            self._queue.append(dataclasses.replace(event, at=self.now))
