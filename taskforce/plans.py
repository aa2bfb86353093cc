"""``taskforce plan``: what a config runs on each kind of host, or would change.

- ``scope_plan``: for each roles file (one per kind of host), which tasks
  the config runs there and which requirement cannot be met there;
- ``diff_plan``: what applying a config would start, stop, restart or leave
  waiting after a recorded run (``--against LOG``).

Every judgement here is the core's (``core.status.plan``,
``core.status.scope``); these functions load the files and format the
answer.  They never start, stop or signal a process.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from taskforce.config import ConfigError, host_facts, load_config, load_roles
from taskforce.core import status
from taskforce.core.model import SpecError
from taskforce.core.snapshot import restore
from taskforce.core.supervisor import Supervisor
from taskforce.eventlog import Marker, read_log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def scope_plan(config_path: str, roles_paths: Sequence[str], *, out: Any = sys.stdout) -> int:
    """What each kind of host (one roles file each) runs, and what cannot run."""
    facts = host_facts()
    try:
        config = load_config(config_path)
    except (ConfigError, OSError) as exc:
        print(f"taskforce plan: {exc}", file=out)
        return 1
    runs_somewhere: set[str] = set()
    problems = 0
    for roles_path in roles_paths or ["-"]:
        try:
            roles = load_roles(None if roles_path == "-" else roles_path)
            runs = status.scope(config, facts, roles.names, roles.values)
        except (ConfigError, OSError) as exc:
            print(f"taskforce plan: {exc}", file=out)
            return 1
        except SpecError as exc:
            print(f"taskforce plan: {roles_path}: {exc.message}", file=out)
            return 1
        label = roles_path if roles_path != "-" else "(no roles file)"
        print(f"{label}:", file=out)
        for run in runs:
            name = run["task"]
            runs_somewhere.add(name)
            note = f" x{run['count']}" if run["count"] != 1 else ""
            print(f"  {name} ({run['control']}){note}", file=out)
            for gap in run["blocked"]:
                problems += 1
                why = "not run on this host" if gap["why"] == "out of scope" else gap["why"]
                print(
                    f"    ! requires {gap['requires']}, which is {why}: {name} will wait", file=out
                )
    idle = sorted(set(config["tasks"]) - runs_somewhere)
    if idle:
        print("tasks no host runs: " + ", ".join(idle), file=out)
    return 1 if problems else 0


def diff_plan(
    config_path: str, roles_path: str | None, against: str, *, out: Any = sys.stdout
) -> int:
    """What applying a config would start, stop or restart after a recorded run."""
    core = Supervisor()
    try:
        for item in read_log(against):
            if isinstance(item, Marker):
                if item.kind == "snapshot":
                    core = restore(item.data)
                continue
            core.handle(item.event)
        roles = load_roles(roles_path)
        config = load_config(config_path, roles=roles.names, role_values=roles.values)
        answer = status.plan(core, dict(config), roles.names, dict(roles.values), notes=True)
    except (ConfigError, OSError, ValueError) as exc:  # (a SpecError is a ValueError)
        print(f"taskforce plan: {exc}", file=out)
        return 1
    print_plan(answer, out)
    return 0


def print_plan(answer: Mapping[str, Any], out: Any) -> None:
    """The core's plan (``core.status.plan``), one line per kind of change,
    then what the core would log on applying it.  A ``wait:`` line appears
    only when something would wait."""

    def slots(kind: str) -> list[str]:
        names = {f"{c['task']}[{i}]" for c in answer.get(kind) or () for i in c["instances"]}
        return sorted(names)

    print("start:   " + (", ".join(slots("start")) or "nothing"), file=out)
    print("stop:    " + (", ".join(slots("stop")) or "nothing"), file=out)
    print("restart: " + (", ".join(slots("restart")) or "nothing"), file=out)
    waits = slots("wait")
    if waits:
        print("wait:    " + ", ".join(waits), file=out)
    for note in answer.get("notes") or ():
        print(f"  {note}", file=out)
