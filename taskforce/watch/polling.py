"""The fallback watcher: stat every watched path every ``poll_interval``.

A path's signature (``targets.signature``) is the stat of what it resolves
to -- ``(st_mtime_ns, st_size, st_ino, st_dev)`` or ``None`` when missing --
together with the symlinks on its way, so writes, replacements, deletions,
appearances and symlink swaps are all seen, one poll late.

It only reports that a watched path changed.  It must never decide what to
restart, and it polls only from ``take_changes``: no thread, no sleeping.
"""

from __future__ import annotations

import time

from taskforce.watch import Watcher
from taskforce.watch.targets import Signature, signature


class PollingWatcher(Watcher):
    """Compares stat signatures on a timer; costs a wake-up per interval."""

    backend = "poll"

    def __init__(self, settle: float = 0.1, poll_interval: float = 1.0) -> None:
        super().__init__(settle)
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.poll_interval = poll_interval
        self._interval = poll_interval
        #: path -> signature at the last poll
        self._seen: dict[str, Signature] = {}
        self._next_poll: float | None = None

    def _add_paths(self, paths: list[str]) -> None:
        for path in paths:
            self._seen[path] = signature(path)
        if self._next_poll is None and self._seen:
            self._next_poll = time.monotonic() + self._interval

    def _remove_paths(self, paths: list[str]) -> None:
        for path in paths:
            self._seen.pop(path, None)
        if not self._seen:
            self._next_poll = None  # nothing to watch: no wake-ups at all

    def _own_deadline(self) -> float | None:
        return None if self._closed else self._next_poll

    def _before_flush(self, now: float) -> None:
        if self._closed or self._next_poll is None or now < self._next_poll:
            return
        self.poll(now)
        # Missed polls (a busy loop) are not made up for: poll again one
        # interval from now.
        self._next_poll = now + self._interval

    def poll(self, now: float) -> None:
        """Stat every path now; a different signature is a change."""
        for path in sorted(self._seen):
            current = signature(path)
            if current != self._seen[path]:
                self._seen[path] = current
                self._hit(path, now, strong=True)

    def close(self) -> None:
        super().close()
        self._seen.clear()
        self._next_poll = None
