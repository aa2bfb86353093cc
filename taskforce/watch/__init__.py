"""File watching for the shell: one interface, one module per OS backend.

``make_watcher`` picks the backend once (inotify on Linux, kqueue on BSD and
macOS, polling as the fallback, ``TASKFORCE_WATCHER`` to override).  Every
backend shares the bookkeeping here: which keys watch which paths (reference
counted, so a path watched twice is watched once), how bursts of events are
coalesced into one change, and the stat signature check that drops events
which changed nothing.

A watcher only reports ``(key, path)`` changes.  It must never decide what a
change means -- what to restart is the core's answer -- and it must never let
an OS failure escape from ``watch``/``unwatch``: those are logged.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
from dataclasses import dataclass, field

from taskforce.core.effects import Watch
from taskforce.watch.targets import Signature, signature, targets_for

log = logging.getLogger("taskforce")

__all__ = ["BACKENDS", "Watcher", "make_watcher"]

#: Names accepted by ``make_watcher`` and ``TASKFORCE_WATCHER``.
BACKENDS = ("inotify", "kqueue", "poll")

_ALIASES = {"polling": "poll"}

#: A path that keeps changing is still reported after this many coalescing
#: windows, so a file written without pause cannot starve its watchers.
MAX_DELAY_WINDOWS = 10


@dataclass
class _Keyed:
    """What one key watches: the effect and its paths (absolute -> as given)."""

    effect: Watch
    targets: dict[str, str]


@dataclass
class _Pending:
    """A path with unreported events: when they began and last came."""

    first: float
    last: float
    strong: bool = False


@dataclass
class _Registry:
    """Every watched key and path, and what was last seen of each path."""

    keys: dict[str, _Keyed] = field(default_factory=dict)
    #: absolute path -> keys watching it
    refs: dict[str, set[str]] = field(default_factory=dict)
    #: absolute path -> signature when last reported (or first watched)
    baseline: dict[str, Signature] = field(default_factory=dict)
    pending: dict[str, _Pending] = field(default_factory=dict)


class Watcher:
    """The interface the daemon uses; backends subclass it.

    ``attach`` registers the backend's descriptors with the daemon's selector;
    the daemon calls each registration's ``data`` when it is readable, and
    calls ``take_changes`` on every turn of its loop, sleeping no longer than
    ``next_deadline``.  Backends implement ``_add_paths``/``_remove_paths``
    and report what the OS says through ``_hit``.
    """

    #: Name of the backend (``BACKENDS``).
    backend = "none"

    def __init__(self, settle: float = 0.05) -> None:
        #: Quiet time after the last event before a change is reported.
        self.settle = settle
        #: Seconds between polls; ``None`` for event-driven backends.
        self.poll_interval: float | None = None
        self._max_delay = max(1.0, MAX_DELAY_WINDOWS * settle)
        self._reg = _Registry()
        self._closed = False

    # ----------------------------------------------------------- interface

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Register descriptors with ``selector``; ``data`` reads them."""

    def watch(self, effect: Watch) -> None:
        """Start watching what ``effect`` names, replacing its key's watch."""
        old = self._reg.keys.get(effect.key)
        try:
            targets = targets_for(effect, old.targets if old is not None else None)
        except Exception:  # discovery must never take the daemon down
            log.exception("watch %s: cannot work out what to watch", effect.key)
            targets = dict(old.targets) if old is not None else {}
        self._set(effect.key, effect, targets)

    def unwatch(self, key: str) -> None:
        """Stop watching under ``key``; release what no other key needs."""
        keyed = self._reg.keys.get(key)
        if keyed is None:
            return
        self._set(key, keyed.effect, {})
        del self._reg.keys[key]

    def next_deadline(self) -> float | None:
        """Monotonic time ``take_changes`` is due even without fd activity."""
        due = [self._due(pending) for pending in self._reg.pending.values()]
        own = self._own_deadline()
        if own is not None:
            due.append(own)
        return min(due) if due else None

    def take_changes(self, now: float) -> list[tuple[str, str]]:
        """``(key, path)`` pairs whose change has been quiet for ``settle``."""
        self._before_flush(now)
        reg = self._reg
        ready = sorted(p for p, pending in reg.pending.items() if now >= self._due(pending))
        changes: list[tuple[str, str]] = []
        rediscover: set[str] = set()
        for path in ready:
            pending = reg.pending.pop(path)
            current = signature(path)
            # Events that changed nothing (attribute noise, a link touched in
            # passing) are dropped; a write, create, delete or rename is not.
            if not pending.strong and current == reg.baseline.get(path):
                continue
            reg.baseline[path] = current
            for key in sorted(reg.refs.get(path, ())):
                keyed = reg.keys[key]
                changes.append((key, keyed.targets[path]))
                if keyed.effect.kind != "file":
                    rediscover.add(key)
        # A changed script may import other modules now; a program may have
        # appeared on the PATH: work out again what these keys watch.
        for key in sorted(rediscover):
            if key in reg.keys:
                self.watch(reg.keys[key].effect)
        return sorted(changes)

    def close(self) -> None:
        """Release every OS resource; the watcher is unusable afterwards."""
        self._closed = True

    def watched(self) -> dict[str, dict[str, str]]:
        """Key -> {absolute path: path as reported}; for tests and status."""
        return {key: dict(keyed.targets) for key, keyed in self._reg.keys.items()}

    # ------------------------------------------------------ backend hooks

    def _add_paths(self, paths: list[str]) -> None:
        """Start OS watches for ``paths`` (absolute, new to this watcher)."""
        raise NotImplementedError

    def _remove_paths(self, paths: list[str]) -> None:
        """Release OS watches for ``paths``, which no key needs any more."""
        raise NotImplementedError

    def _own_deadline(self) -> float | None:
        """When the backend itself must run (the next poll), if ever."""
        return None

    def _before_flush(self, now: float) -> None:
        """Called first in ``take_changes`` (the polling backend polls)."""

    # -------------------------------------------------- shared machinery

    def _hit(self, path: str, now: float, strong: bool) -> None:
        """The OS says ``path`` may have changed at ``now``."""
        if path not in self._reg.refs:
            return
        pending = self._reg.pending.get(path)
        if pending is None:
            self._reg.pending[path] = _Pending(now, now, strong)
        else:
            pending.last = max(pending.last, now)
            pending.strong = pending.strong or strong

    def _hit_all(self, now: float, strong: bool) -> None:
        for path in self._reg.refs:
            self._hit(path, now, strong)

    def _due(self, pending: _Pending) -> float:
        return min(pending.last + self.settle, pending.first + self._max_delay)

    def _set(self, key: str, effect: Watch, targets: dict[str, str]) -> None:
        reg = self._reg
        old = reg.keys.get(key)
        old_paths = set(old.targets) if old is not None else set()
        new_paths = set(targets)
        added: list[str] = []
        removed: list[str] = []
        for path in sorted(new_paths - old_paths):
            users = reg.refs.setdefault(path, set())
            if not users:
                added.append(path)
            users.add(key)
        for path in sorted(old_paths - new_paths):
            users = reg.refs.get(path, set())
            users.discard(key)
            if not users:
                reg.refs.pop(path, None)
                reg.baseline.pop(path, None)
                reg.pending.pop(path, None)
                removed.append(path)
        reg.keys[key] = _Keyed(effect, dict(targets))
        if self._closed:
            return
        try:
            if removed:
                self._remove_paths(removed)
            if added:
                self._add_paths(added)
        except OSError as exc:
            log.warning("watch %s: %s", key, exc)
        # The baseline is taken after the OS watch exists: a change racing
        # with it is then either in the baseline or seen as an event.
        for path in added:
            reg.baseline[path] = signature(path)


class DescriptorWatcher(Watcher):
    """A backend whose events arrive on one descriptor (inotify, kqueue):
    ``attach`` registers it, ``close`` unregisters it before the backend
    releases the rest."""

    def __init__(self, settle: float) -> None:
        super().__init__(settle)
        self._selector: selectors.BaseSelector | None = None

    def fileno(self) -> int:
        raise NotImplementedError

    def _read(self) -> None:
        """The descriptor is readable: take what the OS says."""
        raise NotImplementedError

    def attach(self, selector: selectors.BaseSelector) -> None:
        selector.register(self.fileno(), selectors.EVENT_READ, self._read)
        self._selector = selector

    def close(self) -> None:
        super().close()
        if self._selector is not None:
            try:
                self._selector.unregister(self.fileno())
            except (KeyError, ValueError):
                pass
            self._selector = None


def has_inotify() -> bool:
    """Whether this libc has inotify (asked of the library, not of the
    platform's name)."""
    from taskforce.watch.inotify import Inotify

    try:
        Inotify()
    except OSError:
        return False
    return True


def _auto_backend() -> str:
    if has_inotify():
        return "inotify"
    if hasattr(select, "kqueue"):
        return "kqueue"
    return "poll"


def _build(choice: str, settle: float, poll_interval: float) -> Watcher:
    if choice == "inotify":
        from taskforce.watch.inotify import InotifyWatcher

        return InotifyWatcher(settle=settle)
    if choice == "kqueue":
        if not hasattr(select, "kqueue"):
            raise OSError("kqueue is not available on this system")
        from taskforce.watch.kqueue import KqueueWatcher

        return KqueueWatcher(settle=settle)
    from taskforce.watch.polling import PollingWatcher

    return PollingWatcher(settle=settle, poll_interval=poll_interval)


def make_watcher(
    backend: str | None = None, *, settle: float = 0.05, poll_interval: float = 1.0
) -> Watcher:
    """The watcher for this host, chosen once.

    ``backend`` if given, else ``$TASKFORCE_WATCHER``, else inotify on Linux,
    kqueue where the OS has it, else polling (with a warning: it costs a
    wake-up every ``poll_interval`` and reacts only that fast).  A backend
    that cannot start (no inotify instance left, say) falls back to polling.
    """
    choice: str | None
    if backend is not None:
        choice = _ALIASES.get(backend, backend)
        if choice not in BACKENDS:
            raise ValueError(f"unknown watcher backend {backend!r}; use one of {BACKENDS}")
    else:
        env = os.environ.get("TASKFORCE_WATCHER", "").strip().lower()
        choice = _ALIASES.get(env, env) or None
        if choice is not None and choice not in BACKENDS:
            log.warning(
                "TASKFORCE_WATCHER=%s is not one of %s; choosing automatically",
                env,
                ", ".join(BACKENDS),
            )
            choice = None
        if choice is None:
            choice = _auto_backend()
            if choice == "poll":
                log.warning(
                    "no inotify or kqueue here: watching files by polling every %gs",
                    poll_interval,
                )
    try:
        return _build(choice, settle, poll_interval)
    except OSError as exc:
        if choice == "poll":
            raise
        log.warning(
            "cannot use %s (%s): watching files by polling every %gs",
            choice,
            exc,
            poll_interval,
        )
        return _build("poll", settle, poll_interval)
