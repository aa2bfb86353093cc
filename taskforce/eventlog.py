"""The event log: every step of the core written down, so a run can be replayed.

A log is JSON Lines.  Each file opens with a header line, then (in every
file after the first) a snapshot of the core's whole state, then one line per
step: the event and the effects the core answered with.  Files rotate by
size; because each rotated file starts with a snapshot, any one of them
replays on its own.

``Recorder`` is called by the daemon after every step.  It never blocks
supervision: lines go to a bounded queue drained by one writer thread, which
touches nothing but its queue and its files; if the disk falls behind and the
queue fills, steps are dropped and a ``gap`` line says how many.

``read_steps`` streams a log back without holding it in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from taskforce import __version__
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.codec import decode, encode

FORMAT = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUPS = 3
QUEUE_LINES = 100_000
_ROTATE = object()
_STOP = object()


def config_digest(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
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
    ) -> None:
        self.path = path
        self.snapshot = snapshot
        self.max_bytes = max_bytes
        self.backups = backups
        self.header = {
            "taskforce_eventlog": FORMAT,
            "taskforce": __version__,
            "config_sha256": config_sha256,
            "seed": 0,
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
        line = json.dumps(
            {"step": self.step, "event": encode(event), "effects": [encode(e) for e in effects]},
            separators=(",", ":"),
        )
        self.step += 1
        self._put(line)
        if self.bytes >= self.max_bytes:
            self.part += 1
            state = json.dumps({"snapshot": self.snapshot()}, separators=(",", ":"))
            self.bytes = 0
            self._put(_ROTATE)
            self._put(json.dumps({**self.header, "part": self.part}))
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
        self.file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self.file.write(json.dumps({**self.header, "part": 0}) + "\n")

    def _rotate(self) -> None:
        self.file.close()
        self._shift()
        self.file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115

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
                    self.file.write(f"{item}\n")
                if self.lines.empty():
                    self.file.flush()
            except OSError as exc:
                self.error = str(exc)

    def close(self) -> None:
        self.lines.put(_STOP)
        self.thread.join(timeout=10)
        self.file.close()


def write_steps(
    path: str, steps: Iterable[tuple[ev.Event, tuple[fx.Effect, ...]]], *, note: str = ""
) -> None:
    """Write ``(event, effects)`` steps (a simulated run, say) as a log file."""
    with open(path, "w", encoding="utf-8") as handle:
        header = {"taskforce_eventlog": FORMAT, "taskforce": __version__, "seed": 0, "part": 0}
        if note:
            header["note"] = note
        handle.write(json.dumps(header) + "\n")
        for number, (event, effects) in enumerate(steps):
            line = {"step": number, "event": encode(event), "effects": [encode(e) for e in effects]}
            handle.write(json.dumps(line, separators=(",", ":")) + "\n")


@dataclass
class Step:
    """One recorded step: its number, the event, the effects as recorded (plain)."""

    number: int
    event: ev.Event
    effects: list[dict[str, Any]]


@dataclass
class Marker:
    """A non-step line: ``header``, ``snapshot`` or ``gap``."""

    kind: str
    data: Any
    line: int


def read_log(path: str) -> Iterator[Step | Marker]:
    """Stream a log file's lines as steps and markers, in order."""
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc.msg}") from None
            if "step" in data:
                try:
                    event = decode(data["event"])
                except (KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{number}: not an event: {exc}") from None
                yield Step(data["step"], event, data["effects"])
            elif "taskforce_eventlog" in data:
                yield Marker("header", data, number)
            elif "snapshot" in data:
                yield Marker("snapshot", data["snapshot"], number)
            elif "gap" in data:
                yield Marker("gap", data["gap"], number)
            else:
                raise ValueError(f"{path}:{number}: unknown line")
