"""Reading the config and roles files off the loop that supervises.

A config can be large (a thousand tasks take most of a second to read and
check), and while the loop reads it nothing is reaped and no task is
restarted.  ``BackgroundLoad`` reads them on a worker thread instead, one
read at a time: changes that arrive meanwhile are folded into one more read
once it is done, so the last version on disk is always the one applied.  The
loop takes the result (``take``) and feeds it to the core itself.

The worker only reads files and builds a plain event; it never touches the
core, a process or the selector, and it decides nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from taskforce.core import events as ev


class BackgroundLoad:
    """One read of the inputs at a time, on a worker thread."""

    def __init__(self, load: Callable[[str], ev.Event], wake: Callable[[], None]) -> None:
        self._load = load
        self._wake = wake
        self._lock = threading.Lock()
        self._running = False
        #: a read asked for while one runs (its source), done after it
        self._again: str | None = None
        self._result: ev.Event | None = None

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._running or self._result is not None

    def request(self, source: str) -> None:
        """Read the inputs again, soon; what prompted it is ``source``."""
        with self._lock:
            if self._running:
                self._again = source
                return
            self._running = True
        threading.Thread(
            target=self._run, args=(source,), name="taskforce-load", daemon=True
        ).start()

    def _run(self, source: str) -> None:
        try:
            result = self._load(source)
        except BaseException as exc:  # noqa: BLE001 -- reported as a rejected config
            result = ev.ConfigRejected(
                at=0.0, source=source, error=f"cannot read the config: {exc!r}"
            )
        with self._lock:
            self._result = result
        self._wake()

    def take(self) -> ev.Event | None:
        """The finished read, if there is one (then the next one starts)."""
        with self._lock:
            result, self._result = self._result, None
            if result is None:
                return None
            again, self._again = self._again, None
            self._running = False
        if again is not None:
            self.request(again)
        return result
