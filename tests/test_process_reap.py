"""``process.reaped``: children's ends, one at a time, as they are reaped.

Run in an interpreter of its own: ``waitpid(-1)`` would reap any child of
the test process (another test's ``Popen``, say), and be reaped by theirs.
"""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import os
from taskforce import process

def spawn(script):
    return os.posix_spawn("/bin/sh", ["/bin/sh", "-c", script], dict(os.environ))

pids = [spawn("exit 3"), spawn("kill -9 $$")]
for pid in pids:
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
ends = process.reaped()
first = next(ends)
other = next(pid for pid in pids if pid != first[0])
# Lazy: the other child is still there to be reaped.
assert os.waitid(os.P_PID, other, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
got = {pid: (code, signame) for pid, code, signame in [first, *ends]}
assert got == {pids[0]: (3, None), pids[1]: (None, "SIGKILL")}, got
assert process.reap() == []
print("ok")
"""


def test_each_end_is_given_before_the_next_is_looked_for() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
