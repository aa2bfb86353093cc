"""``tfctl rollout`` and ``tfctl wait``: where a rollout stands, and waiting
until every task is ready.

``tfctl wait [TASK...] [--timeout S]`` is the hook for deploys driven by
other tools (an Ansible ``serial`` play, a CI job): it returns 0 once the
tasks named (default: all) are ready and no rollout of theirs runs, 1 as
soon as one is halted or failed (or the timeout passes), saying which and
why.  It asks ``/status/tasks`` a few times a second: a client's wait, not
the daemon's (which stays asleep between requests).

This module must never change anything but what a request asks for.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from taskforce.tfclient import Client
from taskforce.tfformat import describe_rollout, format_table, status_rows

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: how often ``tfctl wait`` asks (seconds)
WAIT_POLL = 0.1
#: task states with nothing to wait for
SETTLED = frozenset(
    {"running", "done", "idle", "suspended", "stopped", "off", "out_of_scope", "removed"}
)
#: task states that will not get better by themselves
STUCK = frozenset({"failed"})


def _tasks(client: Client) -> tuple[int, dict[str, Any] | str]:
    code, _, body = client.request("GET", "/status/tasks")
    if code >= 400:
        return code, body
    answer: dict[str, Any] = json.loads(body)
    return code, answer


def rollout(args: argparse.Namespace, client: Client) -> int:
    """``tfctl rollout TASK [--resume]``."""
    if args.resume:
        code, _, body = client.request(
            "POST", "/manage/rollout", [("task", args.task), ("resume", "1")]
        )
        print(
            body,
            end="" if body.endswith("\n") else "\n",
            file=sys.stdout if code < 400 else sys.stderr,
        )
        return 0 if code < 400 else 1
    code, tasks = _tasks(client)
    if isinstance(tasks, str):
        print(f"tfctl: {tasks.strip()}", file=sys.stderr)
        return 1
    task = tasks.get(args.task)
    if task is None:
        print(f"tfctl: no such task: {args.task}", file=sys.stderr)
        return 1
    now = time.time()
    if args.json:
        print(json.dumps(task.get("rollout"), indent=2))
    else:
        print(describe_rollout(args.task, task, now))
        print(format_table(status_rows({args.task: task}, now)))
    return 1 if (task.get("rollout") or {}).get("halted") else 0


def _verdict(name: str, task: dict[str, Any]) -> tuple[str, str]:
    """("ready" | "waiting" | "halted", what to say) for one task."""
    roll = task.get("rollout") or {}
    if roll.get("halted"):
        return "halted", roll["halted"]
    state = task.get("state", "?")
    if state in STUCK:
        reasons = [
            s.get("reason", "") for s in task.get("processes", []) if s.get("state") == "failed"
        ]
        return "halted", f"{name}: failed ({reasons[0] if reasons else 'start limit hit'})"
    if roll:
        return "waiting", describe_rollout(name, task, time.time())
    if state in SETTLED:
        return "ready", f"{name}: {state}"
    slots = task.get("processes", [])
    ready = sum(1 for slot in slots if slot.get("state") == "ready")
    return "waiting", f"{name}: {state} ({ready} of {task.get('count', len(slots))} ready)"


def wait(args: argparse.Namespace, client: Client) -> int:
    """``tfctl wait [TASK...] [--timeout S]``: 0 ready, 1 halted, failed or timed out."""
    deadline = None if args.wait_timeout is None else time.monotonic() + args.wait_timeout
    while True:
        code, tasks = _tasks(client)
        if isinstance(tasks, str):
            print(f"tfctl: {tasks.strip()}", file=sys.stderr)
            return 1
        names = args.tasks or sorted(tasks)
        missing = [name for name in names if name not in tasks]
        if missing:
            print(f"tfctl: no such task: {', '.join(missing)}", file=sys.stderr)
            return 1
        verdicts = {name: _verdict(name, tasks[name]) for name in names}
        halted = [why for kind, why in verdicts.values() if kind == "halted"]
        if halted:
            for why in halted:
                print(f"tfctl: {why}", file=sys.stderr)
            return 1
        waiting = [why for kind, why in verdicts.values() if kind == "waiting"]
        if not waiting:
            if not args.quiet:
                print("ready: " + (", ".join(names) if names else "no tasks"))
            return 0
        if deadline is not None and time.monotonic() >= deadline:
            print(f"tfctl: timed out after {args.wait_timeout:g}s waiting for:", file=sys.stderr)
            for why in waiting:
                print(f"  {why}", file=sys.stderr)
            return 1
        time.sleep(WAIT_POLL)


def add_commands(sub: Any) -> None:
    """The ``rollout`` and ``wait`` subcommands of tfctl's parser."""
    roll = sub.add_parser(
        "rollout", help="where a task's rollout stands; --resume: go on after a halt"
    )
    roll.add_argument("task", metavar="TASK")
    roll.add_argument("--resume", action="store_true", help="resume a halted rollout")
    roll.add_argument("--json", action="store_true", help="print the JSON of the rollout")
    waiter = sub.add_parser(
        "wait",
        help="block until the tasks (default: all) are ready and no rollout runs; "
        "exit 1 on a halt, a failed task or the timeout",
    )
    waiter.add_argument("tasks", nargs="*", metavar="TASK")
    waiter.add_argument(
        "--timeout", dest="wait_timeout", type=float, metavar="S", help="give up after S seconds"
    )
    waiter.add_argument("-q", "--quiet", action="store_true", help="print nothing when ready")
