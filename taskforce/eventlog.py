"""The event log: every step of the core written down, so a run can be replayed.

A log is JSON Lines.  Each file opens with a header line, then (in every
file after the first) a snapshot of the core's whole state, then one line per
step: the event and the effects the core answered with.  Files rotate by
size; because each rotated file starts with a snapshot, any one of them
replays on its own.  Every 8 MiB of steps (more for a big state: see
``Checkpoints``) a snapshot is written again, as a checkpoint: replay checks
the state it reached against it, and can start there, so a long file
replays in parallel segments.

``Recorder`` is called by the daemon after every step.  It never blocks
supervision: lines go to a bounded queue drained by one writer thread, which
touches nothing but its queue and its files; if the disk falls behind and the
queue fills, steps are dropped and a ``gap`` line says how many.  (A
checkpoint is the exception: the state is copied while the daemon waits.)

``read_log`` streams a log back without holding it in memory, from any line
on; ``find_checkpoint`` finds where a segment of it can start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType

from taskforce import __version__, files, heap
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core import secrets
from taskforce.core.codec import decode, encode
from taskforce.core.sha import sha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUPS = 3
DEFAULT_CHECKPOINT_BYTES = 8 * 1024 * 1024
QUEUE_LINES = 100_000
#: A line longer than this gives its memory back once written (``heap.trim``).
_BIG_LINE = 1 << 20
_ROTATE = object()
_STOP = object()


_SEPARATORS = (",", ":")


def step_line(
    number: int, event: ev.Event, effects: Iterable[fx.Effect], hider: Digests | None = None
) -> str:
    """One step, as a log line (without its newline); with ``hider``, its
    secrets digested."""
    if hider is not None and isinstance(event, ev.ConfigLoaded):
        line = hider.config_line(number, event, tuple(effects))
        if line is not None:
            return line
    step = {"step": number, "event": encode(event), "effects": [encode(e) for e in effects]}
    if hider is not None:
        step = hider.step(event, step)
    return json.dumps(step, separators=_SEPARATORS)


class Digests:
    """Keeps secrets out of the event log: each is written as a digest salted
    per log (the salt is in every header), the same for the same value, so
    replay sees the same changes and stays exact (see ``core.secrets``).

    A config's line is written as ``json.dumps`` would write the whole step,
    but each task's entry is looked at and written once (``config_line``):
    a reload of a big config with one task changed writes the same line in
    a fraction of the time.
    """

    def __init__(self, salt: str, names: secrets.SecretNames | None = None) -> None:
        self.salt = salt
        self.hider = secrets.Hider(
            names or secrets.SecretNames(), lambda value: secrets.digest(salt, value)
        )
        self.entries = secrets.EntryValues()
        #: stands for the tasks in the line written around them (the salt
        #: makes it a text no config holds)
        self.marker = f"<tasks {salt}>"
        #: the last config's tasks as written: the mapping itself (not a
        #: copy: a config is never changed once loaded), its entries'
        #: ``"name":{...}`` joined by commas, in the mapping's order, with
        #: where each one ends (one text and one array, not a string and a
        #: dict slot per task: 80 bytes a task less), and what hid them (the
        #: names matcher, how many secret values were known)
        self._tasks: Mapping[Any, Any] = {}
        self._text = ""
        self._ends = array("Q")
        self._hidden_by: tuple[secrets.SecretNames | None, int] = (None, 0)

    def step(self, event: ev.Event, step: dict[str, Any]) -> Any:
        if isinstance(event, ev.ConfigLoaded):
            self._learn_names(event.config)
        self.hider.learn(secrets.secret_values(step, self.hider.is_secret))
        return self.hider.hide(step)

    def _learn_names(self, config: dict[str, Any]) -> None:
        self.hider.is_secret = secrets.SecretNames.of(config).same_as(self.hider.is_secret)

    def config_line(
        self, number: int, event: ev.ConfigLoaded, effects: tuple[fx.Effect, ...]
    ) -> str | None:
        """The line of a step whose event is a config (None: write it whole)."""
        tasks = event.config.get("tasks")
        if not isinstance(tasks, dict):
            return None
        self._learn_names(event.config)
        is_secret = self.hider.is_secret
        light = dataclasses.replace(event, config={**event.config, "tasks": self.marker})
        event_data = encode(light)
        self.hider.learn(secrets.secret_values(event_data, is_secret))
        self.hider.learn(self.entries.of(tasks, is_secret))
        effects_text = self._effects_text(effects)
        known = len(self.hider.values)
        head = {"step": number, "event": self.hider.hide(event_data)}
        # What json.dumps writes for the whole step, its effects put in.
        line = f'{json.dumps(head, separators=_SEPARATORS)[:-1]},"effects":[{effects_text}]}}'
        marker = json.dumps(self.marker)
        if line.count(marker) != 1:
            return None  # a secret spliced into the marker: write it whole
        # Secrets learnt since, or other secret names: every entry again.
        same = self._hidden_by == (is_secret, known)
        before: Mapping[Any, Any] = self._tasks if same else {}
        old_text, old_ends = self._text, self._ends
        old_names = list(before)
        #: each old name's position, made only if the order changed
        positions: dict[Any, int] | None = None
        parts = []
        ends = array("Q")
        end = -1
        for at, (name, entry) in enumerate(tasks.items()):
            if before.get(name, self) is not entry:
                hidden = self.hider.hide(entry, False, name in secrets.ENV_HOLDERS)
                text = json.dumps({name: hidden}, separators=_SEPARATORS)[1:-1]
            else:
                if at >= len(old_names) or old_names[at] != name:
                    if positions is None:
                        positions = {old: index for index, old in enumerate(old_names)}
                    at = positions[name]
                text = old_text[old_ends[at - 1] + 1 if at else 0 : old_ends[at]]
            parts.append(text)
            end += 1 + len(text)
            ends.append(end)
        self._text = ",".join(parts)
        self._tasks, self._ends, self._hidden_by = tasks, ends, (is_secret, known)
        return line.replace(marker, "{" + self._text + "}")

    def _effects_text(self, effects: tuple[fx.Effect, ...]) -> str:
        """A step's effects as its line's list holds them, without the
        brackets, their secrets hidden: each effect is encoded, learnt from,
        hidden and written in turn, so that a start-up's ten thousand
        spawns are never held as plain data all at once (they left 4 MiB
        of the allocator's memory behind them)."""
        while True:
            known = len(self.hider.values)
            parts = []
            for effect in effects:
                data = encode(effect)
                self.hider.learn(secrets.secret_values(data, self.hider.is_secret))
                parts.append(json.dumps(self.hider.hide(data), separators=_SEPARATORS))
            if len(self.hider.values) == known:
                return ",".join(parts)
            # A secret first found in a later effect may be in an earlier one.

    def state(self, state: dict[str, Any]) -> Any:
        self.hider.learn(secrets.secret_values(state, self.hider.is_secret))
        return self.hider.hide(state)


def snapshot_line(state: dict[str, Any]) -> str:
    return json.dumps({"snapshot": state}, separators=(",", ":"))


class Checkpoints:
    """Says when a checkpoint is due: after every ``every`` bytes of steps (0:
    never), or more, so that checkpoints are at most 1/16 of the log.

    A checkpoint is taken while supervision waits (about 50 ms for 1,000
    tasks), so a big state is written less often; so is a state after a
    step bigger than the interval (a config of thousands of tasks: the
    interval becomes ``ratio`` times that step).
    """

    def __init__(self, every: int = DEFAULT_CHECKPOINT_BYTES, *, ratio: int = 16) -> None:
        self.every = every
        self.ratio = ratio
        self.interval = every
        self.since = 0

    def wrote(self, size: int) -> bool:
        """Count a step line of ``size`` bytes; whether a checkpoint is now due."""
        if size > self.interval:
            # One step bigger than a whole interval: the config of thousands
            # of tasks, whose state is bigger still.  A checkpoint right
            # after it would cost more to write (and hold the daemon and its
            # memory longer) than replaying the step saves.
            self.interval = max(self.interval, self.ratio * size)
        self.since += size
        if self.every and self.since >= self.interval:
            self.since = 0
            return True
        return False

    def taken(self, size: int) -> None:
        """A checkpoint of ``size`` bytes was written."""
        self.since = 0
        self.interval = max(self.every, self.ratio * size)


def config_digest(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return str(sha256(handle.read()).hexdigest())
    except OSError:
        return ""


class Recorder:
    """Writes steps to ``path`` from a background thread, rotating by size."""

    def __init__(
        self,
        path: str,
        *,
        snapshot: Callable[[], dict[str, Any]],
        config_sha256: str = "",
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        checkpoints: Checkpoints | None = None,
        secret_names: secrets.SecretNames | None = None,
    ) -> None:
        self.path = path
        self.digests = Digests(os.urandom(16).hex(), secret_names)
        self.checkpoints = Checkpoints() if checkpoints is None else checkpoints
        self.snapshot = snapshot
        self.max_bytes = max_bytes
        self.backups = backups
        self.header = {
            "taskforce_eventlog": FORMAT,
            "taskforce": __version__,
            "config_sha256": config_sha256,
            "seed": 0,
            "secret_salt": self.digests.salt,
        }
        self.step = 0
        self.part = 0
        self.bytes = 0
        self.dropped = 0
        self.lines: queue.Queue[object] = queue.Queue(QUEUE_LINES)
        self.error: str | None = None
        self._open()
        self.thread = threading.Thread(target=self._write, name="taskforce-eventlog", daemon=True)
        self.thread.start()

    def __call__(self, event: ev.Event, effects: tuple[fx.Effect, ...]) -> None:
        line = step_line(self.step, event, effects, self.digests)
        self.step += 1
        self._put(line)
        checkpoint = self.checkpoints.wrote(len(line) + 1)
        if self.bytes >= self.max_bytes:
            self.part += 1
            state = snapshot_line(self.digests.state(self.snapshot()))
            self.bytes = 0
            self.checkpoints.taken(len(state))
            self._put(_ROTATE)
            self._put(json.dumps({**self.header, "part": self.part}))
            self._put(state)
        elif checkpoint:
            state = snapshot_line(self.digests.state(self.snapshot()))
            self.checkpoints.taken(len(state))
            self._put(state)

    def _put(self, item: object) -> None:
        if self.dropped and item is not _ROTATE:
            try:
                self.lines.put_nowait(json.dumps({"gap": self.dropped}))
                self.dropped = 0
            except queue.Full:
                pass
        try:
            self.lines.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            return
        if isinstance(item, str):
            self.bytes += len(item) + 1

    def _open(self) -> None:
        if os.path.exists(self.path):
            self._shift()  # an earlier run's log (before a reset) is kept
        self.file = _create(self.path)
        self.file.write(json.dumps({**self.header, "part": 0}) + "\n")

    def _rotate(self) -> None:
        self.file.close()
        self._shift()
        self.file = _create(self.path)

    def _shift(self) -> None:
        for index in range(self.backups - 1, 0, -1):
            older = f"{self.path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{index + 1}")
        if self.backups > 0:
            os.replace(self.path, f"{self.path}.1")

    def _write(self) -> None:
        while True:
            item = self.lines.get()
            try:
                if item is _STOP:
                    self.file.flush()
                    return
                if item is _ROTATE:
                    self._rotate()
                else:
                    self.file.write(item)  # (not f"{item}\n": a copy of a big line)
                    self.file.write("\n")
                if self.lines.empty():
                    self.file.flush()
            except OSError as exc:
                self.error = str(exc)
            if isinstance(item, str) and len(item) > _BIG_LINE:
                # A start-up's or a reload's line of a big fleet (tens of MB
                # at 10,000 tasks), freed here after the daemon's own trim:
                # its pages would otherwise stay with the daemon for good.
                item = None
                heap.trim()

    def close(self) -> None:
        self.lines.put(_STOP)
        self.thread.join(timeout=10)
        self.file.close()


def _create(path: str) -> Any:
    """A new log file, private (see ``taskforce.files``)."""
    fd = files.open_private(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    return open(fd, "w", encoding="utf-8")  # noqa: SIM115


def write_steps(
    path: str,
    steps: Iterable[tuple[ev.Event, tuple[fx.Effect, ...]]],
    *,
    note: str = "",
    snapshot: Callable[[], dict[str, Any]] | None = None,
    checkpoints: Checkpoints | None = None,
) -> None:
    """Write ``(event, effects)`` steps (a simulated run, say) as a log file.

    With ``snapshot`` (the core's state once the step just taken from
    ``steps`` is handled), checkpoints are written as the Recorder does, or
    as ``checkpoints`` says.
    """
    if checkpoints is None:
        checkpoints = Checkpoints(DEFAULT_CHECKPOINT_BYTES if snapshot is not None else 0)
    with _create(path) as handle:
        header = {"taskforce_eventlog": FORMAT, "taskforce": __version__, "seed": 0, "part": 0}
        if note:
            header["note"] = note
        handle.write(json.dumps(header) + "\n")
        for number, (event, effects) in enumerate(steps):
            line = step_line(number, event, effects)
            handle.write(line + "\n")
            if checkpoints.wrote(len(line) + 1) and snapshot is not None:
                state = snapshot_line(snapshot())
                checkpoints.taken(len(state))
                handle.write(state + "\n")


@dataclass(slots=True)
class Step:
    """One recorded step: its number, the event, the effects as recorded (plain)."""

    number: int
    event: ev.Event
    effects: list[dict[str, Any]]


@dataclass(slots=True)
class Marker:
    """A non-step line: ``header``, ``snapshot`` or ``gap``; ``where`` names its place."""

    kind: str
    data: Any
    where: str
    offset: int


SNAPSHOT_PREFIX = b'{"snapshot"'


def _parse(raw: bytes, fast: ModuleType) -> Any:
    # orjson (``fast``) parses a log line about 2.5 times as fast as ``json``;
    # it refuses what it does not know (NaN, integers past 64 bits), which
    # ``json`` writes and reads, so those lines take the slow road.
    try:
        return fast.loads(raw)
    except fast.JSONDecodeError:
        return json.loads(raw)


_MARKERS = ("snapshot", "taskforce_eventlog", "gap")


def _line(raw: bytes, fast: ModuleType) -> Step | tuple[str, Any] | None:
    """A step, a marker's (kind, data), or None for a blank line."""
    try:
        data = _parse(raw, fast)
    except json.JSONDecodeError as exc:
        if not raw.strip():
            return None
        raise ValueError(f"not JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc.reason}") from None
    if type(data) is not dict:
        raise ValueError("not an object")
    if "step" in data:
        try:
            return Step(data["step"], decode(data["event"]), data["effects"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an event: {exc}") from None
    for kind in _MARKERS:
        if kind in data:
            return kind, (data if kind == "taskforce_eventlog" else data[kind])
    raise ValueError("unknown line")


def read_log(path: str, *, start: int = 0, stop: int | None = None) -> Iterator[Step | Marker]:
    """Stream a log file's lines as steps and markers, in order.

    From byte ``start`` (the beginning of a line); with ``stop``, up to and
    including the first snapshot that begins at or after byte ``stop``.
    Places are ``file:line``, or ``file@byte`` when not read from the start.
    """
    # Imported here: it costs a recording daemon 2.4 MiB, and only reading needs it.
    import orjson

    with open(path, "rb") as handle:
        handle.seek(start)
        offset = start
        for number, raw in enumerate(handle, start=1):
            here = offset
            offset += len(raw)
            try:
                item = _line(raw, orjson)
            except ValueError as exc:
                raise ValueError(f"{_where(path, start, number, here)}: {exc}") from None
            if isinstance(item, Step):
                yield item
            elif item is not None:
                kind, data = item
                where = _where(path, start, number, here)
                yield Marker("header" if kind == "taskforce_eventlog" else kind, data, where, here)
                if kind == "snapshot" and stop is not None and here >= stop:
                    return


def _where(path: str, start: int, number: int, offset: int) -> str:
    return f"{path}:{number}" if start == 0 else f"{path}@{offset}"


def find_checkpoint(path: str, begin: int) -> int | None:
    """Where the first snapshot line at or after byte ``begin`` starts (None: none)."""
    with open(path, "rb") as handle:
        if begin > 0:
            handle.seek(begin - 1)
            handle.readline()  # the rest of the line ``begin`` falls in
        offset = handle.tell()
        for raw in handle:
            if raw.startswith(SNAPSHOT_PREFIX):
                return offset
            offset += len(raw)
    return None
