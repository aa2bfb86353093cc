"""Run a real taskforce daemon against a config in a temporary folder.

Tests look at the processes it starts through the process table (children
carry a marker in their argv), wait for conditions with a deadline, and on
teardown make sure nothing the test started is left alive.

The process table and the other facts of a process come from
``proctable`` (the same on every Unix; re-exported here); tests use them
rather than ``/proc``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from proctable import (  # noqa: F401 (the harness's public face)
    FEATURES,
    USE_PROC,
    cpu_seconds,
    environ_of,
    fd_target,
    ignored_signals,
    open_fd_count,
    parent_of,
    proc_table,
    process_state,
    resident_kib,
    running,
    signal_mask,
    socket_count,
    start_time,
)

T = TypeVar("T")

DEFAULT_DEADLINE = 10.0


def wait_for(
    condition: Callable[[], T], timeout: float = DEFAULT_DEADLINE, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class Daemon:
    """One taskforce process under test."""

    def __init__(self, root: Path, marker: str) -> None:
        self.root = root
        self.marker = marker
        self.config = root / "taskforce.conf"
        self.roles = root / "roles"
        self.log = root / "taskforce.log"
        self.pidfile = root / "taskforce.pid"
        self.events = root / "events.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, text: str | dict[str, Any]) -> None:
        data = text if isinstance(text, str) else json.dumps(text, indent=1)
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(textwrap.dedent(data))
        os.replace(tmp, self.config)

    def write_roles(self, *roles: str) -> None:
        tmp = self.roles.with_suffix(".tmp")
        tmp.write_text("".join(f"{role}\n" for role in roles))
        os.replace(tmp, self.roles)

    def command(self, *extra: str) -> list[str]:
        roles = str(self.roles) if self.roles.exists() else "-"
        return [
            sys.executable,
            "-m",
            "taskforce",
            "-e",
            "-v",
            "-f",
            str(self.config),
            "-r",
            roles,
            "--expires",
            "300",
            "--record",
            str(self.events),
            *extra,
        ]

    def start(
        self, *extra: str, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()
    ) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(*extra),
                stdout=log,
                stderr=log,
                cwd=self.root,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                pass_fds=pass_fds,
            )

    @property
    def own_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, text: str, timeout: float = DEFAULT_DEADLINE) -> None:
        wait_for(lambda: text in self.log_text(), timeout, f"log line {text!r}")

    def processes(self, name: str | None = None) -> dict[int, str]:
        """Live, non-zombie processes carrying the marker (and ``name``)."""
        found = {}
        for pid, (_, _, state, cmdline) in proc_table().items():
            if cmdline.startswith("/bin/sh -c ") and "Task_pid=$$" in cmdline:
                continue  # taskforce's spawn shim, not yet the task's program
            if self.marker in cmdline and state != "Z" and pid != self.own_pid:
                if name is None or f" {name} " in f" {cmdline} ":
                    found[pid] = cmdline
        return found

    def pids(self, name: str) -> set[int]:
        return set(self.processes(name))

    def wait_pids(self, name: str, count: int, timeout: float = DEFAULT_DEADLINE) -> set[int]:
        return wait_for(
            lambda: (lambda p: p if len(p) == count else None)(self.pids(name)),
            timeout,
            f"{count} process(es) of {name}",
        )

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def replay_problems(self) -> list[str]:
        """Replay every recorded log of this daemon; what did not match."""
        from taskforce.tools import replay

        problems = []
        for path in sorted(self.root.glob("events.jsonl*")):
            out = io.StringIO()
            if replay(str(path), out=out) != 0:
                problems.append(f"{path.name}: {out.getvalue()}")
        return problems

    def cleanup(self) -> list[str]:
        """Kill whatever is left; the names of what had to be killed."""
        leftovers = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                leftovers.append(f"taskforce pid {self.proc.pid} ignored SIGTERM")
                self.proc.kill()
                self.proc.wait(5)
        for pid, cmdline in self.processes().items():
            leftovers.append(f"{pid} {cmdline}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.remove_cgroups()
        return leftovers

    def remove_cgroups(self) -> None:
        """Remove the empty cgroups a taskforce for this config could leave
        (killed, or with an adopted daemon that outlived it)."""
        from taskforce.tracking import Tracker, instance_id

        roles = str(self.roles) if self.roles.exists() else None
        for ident in {instance_id(str(self.config), roles), instance_id(str(self.config), None)}:
            Tracker(ident, lambda slot: None).close()


SLEEP = "import time; time.sleep(1000)"
IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)"


def task(
    marker: str, name: str, code: str = SLEEP, *, args: tuple[str, ...] = (), **keys: Any
) -> dict[str, Any]:
    """A task running Python ``code``; its argv shows ``marker``, ``name``
    and any further ``args``."""
    return {"commands": {"start": [sys.executable, "-c", code, marker, name, *args]}, **keys}


def shell_task(marker: str, name: str, script: str, **keys: Any) -> dict[str, Any]:
    """A task running ``sh -c script``; ``$0`` is the marker, ``$1`` the name."""
    return {"commands": {"start": ["sh", "-c", script, marker, name]}, **keys}


def alias_bomb(start: list[str], *, deep: bool = False) -> str:
    """A config whose one task ``a`` runs ``start``, with a YAML alias bomb
    ("billion laughs") as a conditional value of its command: under 1 KiB
    that stands for 9**9 values (wide: nine lists of nine) or 2**40
    (``deep``: forty lists of two)."""
    width, levels = (2, 40) if deep else (9, 9)
    lists = ["[" + ", ".join(["lol"] * width) + "]"]
    lists += ["[" + ", ".join([f"*l{level - 1}"] * width) + "]" for level in range(1, levels)]
    argv = "".join(f"        - {json.dumps(arg)}\n" for arg in start)
    anchored = "".join(f"          - &l{level} {text}\n" for level, text in enumerate(lists))
    return f"tasks:\n  a:\n    commands:\n      start:\n{argv}        - NOT_SET:\n{anchored}"
