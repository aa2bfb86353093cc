"""The chaos test of ``tests/test_chaos.py``, for as long as you like.

A real daemon with about nine cheap tasks (one whose grandchildren escape
by ``setsid`` and a double fork) is put through random faults and changes
for ``--seconds`` (SIGKILL and SIGTERM of its processes, edits of watched
files, config rewrites, valid and broken, roles file edits, control requests
over its Unix socket, storms of SIGHUP, SIGUSR1 and SIGUSR2 at taskforce,
SIGKILL of taskforce and a start again); every ``--checkpoint-every``
seconds, and at the end, the plan is put in place and the state checked
exactly once it settles (see ``tests/test_chaos.py`` for the list):
duplicates (a slot running two process trees), survivors (a process of a
slot that should not run, or of a tree that is not its slot's), zombies;
no slot may run two trees at any sampled instant either.  Then the daemon's
memory and fds are compared with an early checkpoint, taskforce is shut down
(nothing of its tasks may be left), and every incarnation's recorded event
log is replayed.  A summary is printed; the exit code is 0 when every check
held, 1 otherwise.

    python bench/chaos.py --seconds 600 [--seed N] [--cgroups off] [--keep]

The seed is printed first; ``--seed`` (or ``TASKFORCE_CHAOS_SEED``) runs the
same sequence of choices again (the timing of a real system still differs).
Linux only: it reads /proc.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from daemon_harness import Daemon  # noqa: E402
from test_chaos import Chaos, ChaosFailure, chaos_seed, format_summary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to inject faults")
    parser.add_argument("--seed", type=int, default=None, help="the random seed (default: new)")
    parser.add_argument(
        "--checkpoint-every", type=float, default=60.0, help="settle and check every N s"
    )
    parser.add_argument(
        "--cgroups",
        choices=("auto", "off"),
        default="auto",
        help="TASKFORCE_CGROUPS for the daemon (off: process groups and the marker)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (log, events)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("chaos: Linux only (reads /proc)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else chaos_seed()
    root = Path(tempfile.mkdtemp(prefix="tfchaos-run-"))
    daemon = Daemon(root, f"tfmark-{uuid.uuid4().hex[:12]}")
    chaos = Chaos(
        daemon,
        seed,
        args.seconds,
        log=lambda text: print(text, flush=True),
        checkpoint_every=args.checkpoint_every,
        env={"TASKFORCE_CGROUPS": args.cgroups},
    )
    failures: list[str] = []

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        chaos.run()
    except ChaosFailure as exc:
        failures.append(str(exc))
    except KeyboardInterrupt:
        failures.append("interrupted")
    finally:
        summary = chaos.summary or chaos.partial_summary()
        chaos.close()
        leftovers = daemon.cleanup()
        if leftovers:
            failures.append(f"left running after the run: {leftovers[:10]}")
    started = time.monotonic()
    problems = daemon.replay_problems()
    replay_seconds = time.monotonic() - started
    if problems:
        failures.append(f"the recorded run did not replay: {problems}")
    events = sum(1 for path in root.glob("events.jsonl*") for _ in open(path, "rb"))
    if summary:
        summary["replay"] = {
            "logs": len(list(root.glob("events.jsonl*"))),
            "records": events,
            "seconds": round(replay_seconds, 1),
            "exact": not problems,
        }
        if args.json:
            print(json.dumps(summary, indent=1))
        else:
            print(format_summary(summary))
            print(
                f"  event logs: {summary['replay']['logs']} ({events} records), replayed "
                f"{'exactly' if not problems else 'WITH DIFFERENCES'} in {replay_seconds:.1f}s"
            )
    if failures:
        print("\nCHAOS FAILED:", file=sys.stderr)
        for failure in failures:
            print(failure, file=sys.stderr)
        print(f"(folder: {root})", file=sys.stderr)
        return 1
    print(f"chaos: every check held (seed {seed})")
    if args.keep:
        print(f"folder: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
