"""Requests failed during a code change under load, taskforce and its peers.

    python bench/rollout.py --peers-bin /tmp/peers/bin

Each supervisor runs a pool of ``--workers`` (3) HTTP workers on one
loopback port; ``--clients`` (4) clients send requests on a new connection
each (``bench/loadgen.py``).  Once every worker answers, the workers' code
is changed ``--changes`` times (the version in their source is edited) and
the change is applied the supervisor's way:

- **taskforce**: nothing to run; it sees the edited module (``python``
  event).  With the rollout features (``sockets:``, ``ready: notify``,
  ``rollout:``) the workers take a socket held by taskforce and say when
  they are ready; where the config checker refuses those keys (before the
  features), the workers bind the port with ``SO_REUSEPORT`` and
  ``start_delay`` stands for readiness, and the output says so.
  ``--taskforce-refs worktree,main`` runs the code this Python imports and
  the code of git ref ``main`` side by side (a "before" figure);
- **supervisord**: a program with ``numprocs`` workers, each binding the
  port with ``SO_REUSEPORT``; ``supervisorctl restart web:*``;
- **circus**: its own socket (``[socket:web]``, ``use_sockets``);
  ``circusctl reload``;
- **pm2**: cluster mode, ``wait_ready: true``, a Node worker that calls
  ``process.send('ready')``; ``pm2 reload web``.  pm2 is looked for on PATH,
  by ``--pm2``, in a cache folder, else installed there with npm; when it
  cannot be had, the peer is skipped with a line saying why.

Per supervisor: requests ok and failed (by kind), the p99 latency during
the changes (from each change until every answer comes from the new code)
and outside them, and the time until every answer comes from the new
version.  Every worker warms up ``--warmup`` seconds (0.3) before it
serves, as a real program loads its code, so readiness matters.

Bounded and clean, as every benchmark here: each wait has a deadline, the
whole run has a budget (``--budget``), and on every exit path (error,
Ctrl-C, SIGTERM, SIGHUP, the budget) each daemon is stopped, then every
process carrying this run's marker in its environment is killed.  Linux
only.  It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pids_with_marker, read_bytes  # noqa: E402
from loadgen import Load, Result, Sample, percentile, request  # noqa: E402
from rollout_peers import MARKER_VAR, PEERS, Supervisor, Taskforce, find_pm2  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


class Interrupted(BaseException):
    """SIGTERM, SIGHUP or the time budget: unwind and clean up."""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def snapshot(ref: str, python: str) -> Path:
    """A private copy of taskforce: the package ``python`` imports
    (``worktree``) or the tree of git ``ref``.  taskforce resets itself when
    its own code changes; a copy is not disturbed by edits meanwhile."""
    folder = Path(tempfile.mkdtemp(prefix=f"tfroll-{ref.replace('/', '_')}-"))
    if ref == "worktree":
        where = subprocess.run(
            [python, "-c", "import os, taskforce; print(os.path.dirname(taskforce.__file__))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        shutil.copytree(where, folder / "taskforce", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", ref, "taskforce"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def commit_of(ref: str) -> str:
    """`` (git abc1234)`` for a ref, or for the work tree (``, modified``)."""
    head = "HEAD" if ref == "worktree" else ref
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", head], capture_output=True, text=True
    )
    if done.returncode != 0:
        return ""
    dirty = ""
    if ref == "worktree":
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "taskforce"],
            capture_output=True,
            text=True,
        )
        dirty = ", modified" if status.stdout.strip() else ""
    return f" (git {done.stdout.strip()}{dirty})"


def wait_serving(port: int, deadline: float, sup: Supervisor) -> None:
    while time.monotonic() < deadline:
        sup.alive()
        if request("127.0.0.1", port, 2.0).outcome == "ok":
            return
        time.sleep(0.05)
    raise TimeoutError(f"{sup.name}: nothing answered on port {port}")


def run_one(sup: Supervisor, options: argparse.Namespace) -> dict[str, Any]:
    """Start ``sup``'s pool, change its code ``--changes`` times under load."""
    sup.prepare(version="1")
    sup.start()
    load: Load | None = None
    try:
        wait_serving(sup.port, time.monotonic() + options.deadline, sup)
        load = Load("127.0.0.1", sup.port, options.clients, timeout=options.timeout).start()
        if not load.wait_version("1", options.workers, options.deadline):
            raise TimeoutError(f"{sup.name}: {options.workers} workers of version 1 never answered")
        time.sleep(options.steady)
        changes = []
        for number in range(2, options.changes + 2):
            version = str(number)
            changed = time.monotonic()
            sup.change(version)
            done = load.wait_version(version, options.workers, options.deadline)
            settled = time.monotonic()
            changes.append((changed, settled, version, done, sup.tool_seconds))
            time.sleep(options.steady)
        result = load.stop()
        load = None
    finally:
        if load is not None:
            load.stop()
        sup.stop()
    return figures(result, changes, options)


def figures(result: Result, changes: list[Any], options: argparse.Namespace) -> dict[str, Any]:
    whole = result.summary()
    during = [(changed, settled) for changed, settled, *_ in changes]
    in_changes: list[Sample] = []
    outside: list[Sample] = []
    for sample in result.samples:
        hit = any(sample.end >= a and sample.start <= b for a, b in during)
        (in_changes if hit else outside).append(sample)

    def p99(samples: Sequence[Sample]) -> float | None:
        values = [s.latency * 1000 for s in samples if s.outcome == "ok"]
        return percentile(values, 99) if values else None

    converged = []
    for changed, settled, version, done, _tool in changes:
        seconds = result.converged_after(changed, version, settled) if done else None
        converged.append(seconds)
    return {
        "requests": whole["requests"],
        "ok": whole["ok"],
        "failed": whole["failed"],
        "failures": whole["failures"],
        "failed_during_changes": sum(1 for s in in_changes if s.outcome != "ok"),
        "requests_during_changes": len(in_changes),
        "p99_during_ms": p99(in_changes),
        "max_during_ms": max(
            (s.latency * 1000 for s in in_changes if s.outcome == "ok"), default=None
        ),
        "p99_steady_ms": p99(outside),
        "p50_ms": whole.get("p50_ms"),
        "max_ms": whole.get("max_ms"),
        "converged_s": converged,
        "converged_median_s": statistics.median([c for c in converged if c is not None])
        if any(c is not None for c in converged)
        else None,
        "tool_s": [tool for *_, tool in changes],
        "changes": len(changes),
        "not_converged": sum(1 for c in converged if c is None),
        "seconds": whole["seconds"],
    }


def fmt(value: Any, digits: str = ".0f") -> str:
    return "—" if value is None else format(value, digits)


ROWS = [
    ("requests", "requests", lambda r: fmt(r["requests"])),
    ("failed", "failed (all)", lambda r: fmt(r["failed"])),
    (
        "kinds",
        "  by kind",
        lambda r: ", ".join(f"{k} {v}" for k, v in r["failures"].items()) or "—",
    ),
    (
        "during",
        "requests / failed during the changes",
        lambda r: f"{r['requests_during_changes']} / {r['failed_during_changes']}",
    ),
    ("p99d", "p99 latency during the changes (ms)", lambda r: fmt(r["p99_during_ms"], ".1f")),
    ("maxd", "max latency during the changes (ms)", lambda r: fmt(r["max_during_ms"], ".0f")),
    ("p99s", "p99 latency otherwise (ms)", lambda r: fmt(r["p99_steady_ms"], ".1f")),
    (
        "conv",
        "change -> all answers new (s), median",
        lambda r: fmt(r["converged_median_s"], ".2f"),
    ),
    ("convs", "  each change (s)", lambda r: " ".join(fmt(c, ".2f") for c in r["converged_s"])),
    (
        "tool",
        "  of which the command applying it (s)",
        lambda r: " ".join(fmt(t, ".2f") for t in r["tool_s"]),
    ),
]


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    rows = [["", *names]]
    for _key, label, cell in ROWS:
        rows.append([label, *(cell(results[name]) for name in names)])
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    out = []
    for index, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        out.append("| " + " | ".join(cells) + " |")
        if index == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_bin = Path(sys.executable).parent
    if not (default_bin / "supervisord").exists() and Path("/tmp/peers/bin").is_dir():
        default_bin = Path("/tmp/peers/bin")
    parser.add_argument("--peers-bin", type=Path, default=default_bin)
    parser.add_argument(
        "--supervisors",
        default="taskforce,supervisord,circus,pm2",
        help="comma-separated subset of taskforce,supervisord,circus,pm2",
    )
    parser.add_argument(
        "--taskforce-refs",
        default="worktree,main",
        help="taskforce code to run: 'worktree' (what this Python imports) and/or git refs",
    )
    parser.add_argument("--legacy", action="store_true", help="taskforce: SO_REUSEPORT config only")
    parser.add_argument("--pm2", help="the pm2 program (default: PATH, cache, else npm install)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--changes", type=int, default=3, help="code changes per supervisor")
    parser.add_argument("--warmup", type=float, default=0.3, help="a worker's start-up, seconds")
    parser.add_argument("--steady", type=float, default=2.0, help="seconds of load between changes")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--deadline", type=float, default=60.0, help="longest single wait")
    parser.add_argument("--budget", type=float, default=900.0, help="longest whole run")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    options = parser.parse_args(argv)
    options.supervisors = [s for s in options.supervisors.split(",") if s]
    for name in options.supervisors:
        if name not in PEERS and name != "taskforce":
            parser.error(f"unknown supervisor {name!r}")
    options.taskforce_refs = [r for r in options.taskforce_refs.split(",") if r]
    return options


def versions(plan: Sequence[Supervisor]) -> str:
    """What ran: each supervisor's version, as it reports it."""
    found = [f"Python {sys.version.split()[0]}", f"{os.cpu_count()} CPUs"]
    for sup in plan:
        argv = sup.version_command()
        if not argv:
            continue
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=sup.env)
            text = (done.stdout or done.stderr).strip().splitlines()
            said = text[-1] if text else "?"
            # taskforce -V says "taskforce X"; the label already names it.
            said = said.removeprefix(sup.name.split("@")[0]).strip()
            found.append(f"{sup.name} {said}{getattr(sup, 'commit', '')}")
        except (OSError, subprocess.SubprocessError):
            found.append(f"{sup.name} ?")
    return ", ".join(found)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    marker = uuid.uuid4().hex

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(signum, interrupted)
    signal.setitimer(signal.ITIMER_REAL, options.budget)
    env = {**os.environ, MARKER_VAR: marker}
    base = Path(tempfile.mkdtemp(prefix="tfroll-"))
    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    snapshots: list[Path] = []
    status = 0
    plan: list[Supervisor] = []
    try:
        for name in options.supervisors:
            folder = base / name
            if name == "taskforce":
                for ref in options.taskforce_refs:
                    tree = snapshot(ref, sys.executable)
                    snapshots.append(tree)
                    label = "taskforce" if ref == "worktree" else f"taskforce@{ref}"
                    tf = Taskforce(base / label, env, options, tree, label)
                    tf.commit = commit_of(ref)
                    if not options.legacy and not tf.accepts_rollout():
                        tf.legacy = True
                        notes.append(
                            f"{label}: the config checker refuses sockets:/ready:/rollout:, "
                            "so its workers bind the port with SO_REUSEPORT and start_delay "
                            "stands for readiness"
                        )
                    elif options.legacy:
                        tf.legacy = True
                    plan.append(tf)
                continue
            if name == "pm2":
                pm2, why = find_pm2(options.pm2, env)
                if pm2 is None:
                    line = f"pm2: skipped: {why}"
                    log(line)
                    notes.append(line)
                    continue
                plan.append(PEERS[name](folder, env, options, pm2))
                continue
            peer = PEERS[name](folder, env, options, None)
            missing = peer.missing()
            if missing:
                line = f"{name}: skipped: {missing}"
                log(line)
                notes.append(line)
                continue
            plan.append(peer)
        for one in plan:
            one.port = free_port()
            log(f"{one.name} ({one.describe()}) ...")
            try:
                results[one.name] = run_one(one, options)
                results[one.name]["how"] = one.describe()
                got = results[one.name]
                log(f"  {one.name}: {got['failed']} of {got['requests']} failed")
            except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
                log(f"  {one.name} failed: {exc}")
                notes.append(f"{one.name}: failed: {exc}")
                status = 1
            finally:
                left = pids_with_marker(marker)
                if left:
                    log(f"  {one.name}: left running, killed: {sorted(left)}")
                    kill_all(left)
    except (Interrupted, KeyboardInterrupt) as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); stopping everything")
        status = 130
        for sup in plan:
            sup.stop()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        kill_all(pids_with_marker(marker))
        for tree in snapshots:
            shutil.rmtree(tree, ignore_errors=True)
        if options.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    load = (read_bytes("/proc/loadavg") or b"").decode().split()[:3]
    print(
        f"== rollout: {options.workers} workers, {options.clients} clients, "
        f"{options.changes} code changes each, warm-up {options.warmup:g} s; "
        f"load average {' '.join(load)}"
    )
    print(f"  {versions(plan)}")
    if results:
        print(table(results))
    for sup in plan:
        print(f"  {sup.name}: {sup.describe()}")
    for note in notes:
        print(f"  note: {note}")
    if options.json:
        payload = {
            "options": {
                k: v
                for k, v in vars(options).items()
                if isinstance(v, (int, float, str, list, bool))
            },
            "results": results,
            "notes": notes,
        }
        options.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return status


def kill_all(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    sys.exit(main())
