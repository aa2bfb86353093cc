"""``tfctl logs`` without ``-f``: the ring, then the output files, filtered.

The daemon keeps each task's recent lines in a ring (``taskforce.recent``)
and answers ``/status/logs`` with them and with where the task's output
files are.  When the ring does not hold all that was asked (more lines than
it keeps, a ``--since`` older than its oldest line, a daemon restarted since),
older lines are read back from those files -- PATH, then PATH.1 ... PATH.N
as rotation left them -- **here, by tfctl**, with the file permissions of
whoever runs it: the daemon never reads a file back, so a large file can
never hold up its loop.  Each file is read backwards in blocks and only as
far as needed (enough lines, or a line older than ``--since``).

Lines in files written with ``timestamps: true`` carry their time and
stream (``2026-12-07T01:00:00.123456+00:00 stderr text``): those are joined
to the ring by time (a line older than the ring's oldest comes from the
file) and merged across files (stdout and stderr files, one per slot) by
time.  Lines of a file without timestamps have neither: they are shown
undated, a time filter skips them, and they are only used when the ring has
fewer lines than asked (the file then stands in for the ring, whole).

Times (``--since``/``--until``) are read as journalctl reads them:
``2026-12-07 01:00:00``, ``2026-12-07``, ``01:00``, ISO 8601 with an offset,
``@EPOCH``, ``now``, ``today``, ``yesterday``, ``tomorrow``, and relative
``-5m``, ``+1h``, ``1h 30m ago``, ``2 days ago``.

This module only reads: it never writes a file or asks the daemon to change
anything.
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from taskforce.tfclient import Client, Usage
from taskforce.tfformat import format_log_line

#: Bytes read from the end of a file per step, backwards.
BLOCK = 64 * 1024
#: Lines shown without ``-n`` (unless a time filter is given: then all).
DEFAULT_LINES = 50

_UNITS = {
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
    "weeks": 604800.0,
}
_SPAN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)")


def _span(text: str) -> float | None:
    """``1h 30m``, ``5min``, ``2 days``: seconds, or None."""
    total, at = 0.0, 0
    while at < len(text):
        match = _SPAN.match(text, at)
        if match is None or match.group(2) not in _UNITS:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        at = match.end()
        while at < len(text) and text[at] == " ":
            at += 1
    return total if at else None


def parse_time(text: str, now: float) -> float:
    """``text`` as a moment, seconds since the epoch; ValueError if it is none."""
    word = text.strip().lower()
    today = datetime.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    days = {"today": 0, "yesterday": -1, "tomorrow": 1}
    if word == "now":
        return now
    if word in days:
        return (today + datetime.timedelta(days=days[word])).timestamp()
    if word.startswith("@"):
        return float(word[1:])
    if word[:1] in "+-" and word[1:2].isdigit():
        seconds = _span(word[1:])
        if seconds is not None:
            return now + seconds if word[0] == "+" else now - seconds
    if word.endswith(" ago"):
        seconds = _span(word.removesuffix(" ago"))
        if seconds is not None:
            return now - seconds
    if word.endswith(" left"):
        seconds = _span(word.removesuffix(" left"))
        if seconds is not None:
            return now + seconds
    if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?", word):
        word = f"{today.date().isoformat()} {word}"
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(word)
        except ValueError:
            raise ValueError(
                f"not a time: {text!r} (try 2026-12-07 01:00:00, today, -5m, 1h ago)"
            ) from None
    return moment.timestamp()  # naive: local time


class FileLine(NamedTuple):
    """A line read back from an output file."""

    time: float | None
    stream: str | None
    instance: int | None
    text: str


def backwards(path: str) -> Iterator[bytes]:
    """The lines of ``path``, last first, without their newlines.

    Raises OSError if it cannot be opened; a file that vanishes on the way
    (rotated) just ends.
    """
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        rest = b""
        while end > 0:
            start = max(0, end - BLOCK)
            handle.seek(start)
            data = handle.read(end - start) + rest
            end = start
            lines = data.split(b"\n")
            rest = lines[0]
            yield from reversed(lines[1:])
        yield rest


def _parse(raw: bytes, entry: dict[str, Any]) -> FileLine:
    text = raw.decode(errors="replace").removesuffix("\r")
    if entry.get("timestamps"):
        stamp, _, rest = text.partition(" ")
        stream, _, body = rest.partition(" ")
        if stream in ("stdout", "stderr"):
            try:
                moment = datetime.datetime.fromisoformat(stamp).timestamp()
            except ValueError:
                pass
            else:
                return FileLine(moment, stream, entry.get("instance"), body)
    return FileLine(None, entry.get("stream"), entry.get("instance"), text)


def file_lines(entry: dict[str, Any], problems: list[str]) -> Iterator[FileLine]:
    """The lines of one output file and its rotated backups, newest first."""
    path = entry["path"]
    names = [path] + [f"{path}.{n}" for n in range(1, int(entry.get("backups", 0)) + 1)]
    for name in names:
        try:
            lines = backwards(name)
            first = True
            for raw in lines:
                if first and not raw:
                    first = False
                    continue  # after the last newline
                first = False
                yield _parse(raw, entry)
        except FileNotFoundError:
            if name == path:
                problems.append(f"{path}: no such file here")
            return  # rotation keeps no gaps: nothing older
        except OSError as exc:
            problems.append(f"{name}: {exc.strerror or exc}")
            return


def older_lines(files: list[dict[str, Any]], problems: list[str]) -> Iterator[FileLine]:
    """Lines of all ``files``, newest first: merged by time when every file
    has timestamps, else one file after the other."""
    streams = [file_lines(entry, problems) for entry in files]
    if all(entry.get("timestamps") for entry in files):
        return heapq.merge(*streams, key=lambda line: line.time or 0.0, reverse=True)
    return (line for stream in streams for line in stream)


class Filter:
    """``--since``, ``--until``, ``--grep`` and ``--stream`` as one test."""

    def __init__(self, args: argparse.Namespace, now: float) -> None:
        try:
            self.since = None if args.since is None else parse_time(args.since, now)
            self.until = None if args.until is None else parse_time(args.until, now)
        except ValueError as exc:
            raise Usage(str(exc)) from None
        self.grep: re.Pattern[str] | None = None
        if args.grep is not None:
            sensitive = args.case_sensitive
            if sensitive is None:  # as journalctl: a pattern in lower case ignores case
                sensitive = args.grep != args.grep.lower()
            try:
                self.grep = re.compile(args.grep, 0 if sensitive else re.IGNORECASE)
            except re.error as exc:
                raise Usage(f"--grep {args.grep!r}: {exc}") from None
        self.stream = args.stream
        self.timed = self.since is not None or self.until is not None

    def __call__(self, when: float | None, stream: str | None, text: str) -> bool:
        if self.timed:
            if when is None:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when > self.until:
                return False
        if self.stream is not None and stream not in (None, self.stream):
            return False
        return self.grep is None or self.grep.search(text) is not None


def _take(lines: Iterable[FileLine], keep: Filter, count: int | None) -> list[FileLine]:
    """Up to ``count`` of ``lines`` (newest first) that pass ``keep``;
    stops at the first one older than ``--since``."""
    found: list[FileLine] = []
    for line in lines:
        if count is not None and len(found) >= count:
            break
        if keep.since is not None and line.time is not None and line.time < keep.since:
            break
        if keep(line.time, line.stream, line.text):
            found.append(line)
    return found


def _before(lines: Iterator[FileLine], ring: list[FileLine]) -> Iterator[FileLine]:
    """``lines`` (from files, newest first) less those the ring has shown.

    The ring hands out the newest lines it keeps, so it has shown every line
    newer than its oldest one shown, and the last few of the block that one
    came from (same time, same stream): skip as many of those.
    """
    times = [line.time for line in ring if line.time is not None]
    if not times:
        yield from lines
        return
    oldest = min(times)
    shown = Counter(
        line.stream for line in ring if line.time is not None and line.time <= oldest + 1e-6
    )
    for line in lines:
        if line.time is not None:
            if line.time > oldest + 1e-6:
                continue
            if line.time >= oldest - 1e-6 and shown[line.stream] > 0:
                shown[line.stream] -= 1
                continue
        yield line


def show(
    args: argparse.Namespace,
    client: Client,
    now: float,
    refused: Callable[[int, dict[str, str], str], int],
) -> int:
    """Print the lines asked for, oldest first; the exit code."""
    keep = Filter(args, now)
    count = args.lines
    if count is None:
        count = None if keep.timed else DEFAULT_LINES
    if count is not None and count < 0:
        raise Usage(f"-n wants a number of lines >= 0, got {count}")
    asked = [("task", args.task)]
    if args.stream is not None:
        asked.append(("stream", args.stream))
    filtered = keep.timed or keep.grep is not None
    if count is not None and not filtered:
        asked.append(("lines", str(count)))
    code, headers, body = client.request("GET", "/status/logs", asked)
    if code >= 400:
        return refused(code, headers, body)
    answer = json.loads(body)
    name = answer["task"]
    ring = [
        FileLine(line["time"], line.get("stream"), line["instance"], line["text"])
        for line in answer["lines"]
    ]
    chosen = _take(reversed(ring), keep, count)
    files = answer.get("files") or []
    problems: list[str] = []
    if files and (count is None or len(chosen) < count):
        if all(entry.get("timestamps") for entry in files):
            older = _before(older_lines(files, problems), ring)
            chosen += _take(older, keep, None if count is None else count - len(chosen))
        elif not keep.timed:
            # Undated files hold all the ring holds, and more: they stand in for it.
            chosen = _take(older_lines(files, problems), keep, count)
    for problem in problems:
        print(f"tfctl: cannot read older lines: {problem}", file=sys.stderr)
    for line in reversed(chosen):
        print(format_log_line(name, line._asdict()))
    return 0
