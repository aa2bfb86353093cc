"""``tfctl logs -f``: a task's output lines as they arrive.

The lines come over ``/status/logs/follow`` (server-sent events): the last
``-n`` kept lines first, then each new batch the moment taskforce reads it,
with no polling on either side.  When the stream ends (taskforce reset or
restarted, a proxy closed it, nothing heard for a while) it is opened again
from the last line shown, for up to ``RECONNECT`` seconds before giving up.

This module only reads and prints; it never changes anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from taskforce import tflogs
from taskforce.tfclient import Client, Refused, Unreachable
from taskforce.tfformat import format_log_line

#: How long a lost stream is tried again before tfctl gives up.
RECONNECT = 10.0
#: Pause between two tries.
PAUSE = 0.25

Finish = Callable[[int, dict[str, str], str, str], int]


def follow(args: argparse.Namespace, client: Client, finish: Finish) -> int:
    """Print the last ``args.lines`` lines of ``args.task``, then follow it
    until interrupted; ``finish`` reports a refusal as tfctl does."""
    keep = tflogs.Filter(args, time.time())
    params: list[tuple[str, str]] = [("task", args.task)]
    if args.stream:
        params.append(("stream", args.stream))
    first_params = [*params, ("lines", str(args.lines))]
    resume: str | None = None
    lost_since: float | None = None
    try:
        while True:
            try:
                for kind, data in client.stream("/status/logs/follow", first_params, resume=resume):
                    if kind != "lines":
                        continue
                    lost_since = None
                    answer = json.loads(data)
                    name = answer["task"]
                    if answer["dropped"]:
                        print(
                            f"tfctl: {answer['dropped']} lines of {name} were dropped before "
                            "they could be shown",
                            file=sys.stderr,
                        )
                    for line in answer["lines"]:
                        if keep(line.get("time"), line.get("stream"), line["text"]):
                            print(format_log_line(name, line))
                    sys.stdout.flush()
                    resume = str(answer["next"])
            except Refused as refused:
                return finish(refused.code, refused.headers, refused.body, client.address)
            except Unreachable:
                if lost_since is None or time.monotonic() - lost_since < RECONNECT:
                    lost_since = lost_since or time.monotonic()
                    time.sleep(PAUSE)
                    continue
                raise
            # The stream ended: open it again from the next line.
            lost_since = lost_since or time.monotonic()
            first_params = params
            time.sleep(PAUSE)
    except KeyboardInterrupt:
        return 0
